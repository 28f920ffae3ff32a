# CPU image for rollout nodes and the head node (cluster/vpt.yaml): Java 8 and MineRL 1.0 built at image-build
# time, the CPU build of torch, redis-server for the run ledger, and the project with its `minerl` extra.
#
#   docker build -f docker/rollout.Dockerfile -t REGISTRY/vpt-ray-rollout:0.1.0 .     (context: repo root)
#
# Ray's own image as the base: the cluster launcher expects its layout (user `ray`, conda Python, sudo, rsync),
# and its Ray version must equal the project's pin (tests/test_docker.py checks every pin against pyproject.toml).
FROM rayproject/ray:2.60.0-py311-cpu

# Root (uid 0) for the system packages, then back to Ray's user `ray` (uid 1000) for everything else.
USER 0
# Java 8 is the only JDK MineRL 1.0's Minecraft (MCP-Reborn) runs on; Xvfb gives it a headless display.
# Unpinned apt versions on purpose: the Ubuntu archive drops superseded versions, so exact pins break rebuilds;
# the base image tag fixes the release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        openjdk-8-jdk-headless xvfb xauth libgl1 libglu1-mesa git redis-server \
    && rm -rf /var/lib/apt/lists/*
ENV JAVA_HOME=/usr/lib/jvm/java-8-openjdk-amd64

USER 1000
WORKDIR /home/ray
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# torch first, from the CPU wheel index, so nothing installed later can pull the multi-GB CUDA build.
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

# MineRL 1.0 is not published as a wheel: install its release tag, which compiles Minecraft (MCP-Reborn) with
# gradle and fetches the game's jars now, so rollout nodes never download anything at run time.
RUN pip install --no-cache-dir "git+https://github.com/minerllabs/minerl@v1.0.2" \
    && python -c "import minerl"

# The project, installed in editable mode at the path where the cluster launcher syncs the checkout
# (file_mounts in cluster/vpt.yaml), so `ray up` ships code changes without an image rebuild.
COPY --chown=ray:users pyproject.toml README.md constraints.txt /home/ray/vpt_ray/
COPY --chown=ray:users vpt_ray /home/ray/vpt_ray/vpt_ray
COPY --chown=ray:users policies /home/ray/vpt_ray/policies
COPY --chown=ray:users rollouts /home/ray/vpt_ray/rollouts
RUN pip install --no-cache-dir -c /home/ray/vpt_ray/constraints.txt -e "/home/ray/vpt_ray[minerl]" \
    && python -c "import torch, minerl, vpt_ray; assert not torch.cuda.is_available()" \
    && vpt-ray --help > /dev/null

# MineRL renders through X: rollout nodes start Xvfb on this display (worker_setup_commands in cluster/vpt.yaml)
# and env runners inherit DISPLAY from the node's Ray processes.
ENV DISPLAY=:99
