"""Networks: the VPT policy, the inverse dynamics model, presets, checkpoints and released-file I/O."""

from vpt_ray.models.config import ModelConfig, NetConfig, config_from_official, load_preset
from vpt_ray.models.idm import InverseDynamicsModel
from vpt_ray.models.policy import PolicyOutput, VPTPolicy

__all__ = ["InverseDynamicsModel", "ModelConfig", "NetConfig", "PolicyOutput", "VPTPolicy", "config_from_official", "load_preset"]
