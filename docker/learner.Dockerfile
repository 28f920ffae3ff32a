# GPU image for the learner node (cluster/vpt.yaml `gpu_learner`): CUDA torch and the project. No Java or
# MineRL: the learner only sees sampled fragments, never a game.
#
#   docker build -f docker/learner.Dockerfile -t REGISTRY/vpt-ray-learner:0.1.0 .     (context: repo root)
#
# Ray's GPU image (CUDA runtime, NCCL, user `ray`); its Ray version must equal the project's pin.
FROM rayproject/ray:2.60.0-py311-gpu

WORKDIR /home/ray
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# The default Linux torch wheels are the CUDA build; pinned to the same version as the CPU images.
RUN pip install --no-cache-dir torch==2.13.0

COPY --chown=ray:users pyproject.toml README.md constraints.txt /home/ray/vpt_ray/
COPY --chown=ray:users vpt_ray /home/ray/vpt_ray/vpt_ray
COPY --chown=ray:users policies /home/ray/vpt_ray/policies
COPY --chown=ray:users rollouts /home/ray/vpt_ray/rollouts
RUN pip install --no-cache-dir -c /home/ray/vpt_ray/constraints.txt -e /home/ray/vpt_ray \
    && python -c "import torch, vpt_ray; assert torch.version.cuda, 'expected the CUDA build of torch'" \
    && vpt-ray --help > /dev/null
