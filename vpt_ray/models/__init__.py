"""Networks: the VPT policy, the inverse dynamics model, presets, checkpoints and released-file I/O.

Public API (see docs of each): ``ModelConfig`` / ``NetConfig`` / ``load_preset`` / ``config_from_official``,
``build_model``, ``VPTPolicy`` (+ ``PolicyOutput``), ``InverseDynamicsModel``, ``save_checkpoint`` /
``load_checkpoint``, ``load_official`` / ``export_official``. Running them: ``models.precision`` (the
``precision: auto | fp32 | bf16`` option: validation, autocast, what stays fp32), ``models.device`` (pinned,
non-blocking batch copies; device names for reports).
"""

from vpt_ray.models.checkpoint import WeightsError, build_model, load_checkpoint, save_checkpoint
from vpt_ray.models.config import ModelConfig, NetConfig, config_from_official, load_preset
from vpt_ray.models.idm import InverseDynamicsModel
from vpt_ray.models.official import OfficialFileError, export_official, load_official, read_model_file
from vpt_ray.models.policy import PolicyOutput, VPTPolicy

__all__ = [
    "InverseDynamicsModel",
    "ModelConfig",
    "NetConfig",
    "OfficialFileError",
    "PolicyOutput",
    "VPTPolicy",
    "WeightsError",
    "build_model",
    "config_from_official",
    "export_official",
    "load_checkpoint",
    "load_official",
    "load_preset",
    "read_model_file",
    "save_checkpoint",
]
