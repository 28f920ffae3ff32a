"""Action spaces: Minecraft keyboard-and-mouse (VPT's joint hierarchical space) and Crafter's 17 actions.

``get_action_space("minecraft" | "crafter")`` is what the other stages use; the modules below hold the pieces:
``camera`` (mu-law quantiser), ``minecraft`` (buttons, joint tables, MineRL dicts), ``contractor`` (recorded
``.jsonl`` steps -> env actions), ``crafter`` (actions and keymap), ``space`` (the ``ActionSpace`` interface).
"""

from vpt_ray.actions.camera import VPT_CAMERA, CameraQuantizer
from vpt_ray.actions.contractor import (
    ContractorActionError,
    ContractorStep,
    convert_episode,
    data_loader_actions,
    episode_env_arrays,
    json_action_to_env_action,
)
from vpt_ray.actions.crafter import CRAFTER_ACTIONS, CRAFTER_KEYMAP, crafter_action_to_keys, crafter_keys_to_action
from vpt_ray.actions.minecraft import BUTTONS, env_action_to_policy, policy_to_env_action
from vpt_ray.actions.space import ActionSpace, CrafterActionSpace, MinecraftActionSpace, get_action_space

__all__ = [
    "BUTTONS",
    "CRAFTER_ACTIONS",
    "CRAFTER_KEYMAP",
    "VPT_CAMERA",
    "ActionSpace",
    "CameraQuantizer",
    "ContractorActionError",
    "ContractorStep",
    "CrafterActionSpace",
    "MinecraftActionSpace",
    "convert_episode",
    "crafter_action_to_keys",
    "crafter_keys_to_action",
    "data_loader_actions",
    "env_action_to_policy",
    "episode_env_arrays",
    "get_action_space",
    "json_action_to_env_action",
    "policy_to_env_action",
]
