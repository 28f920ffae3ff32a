"""Model configs: the released VPT network keyword arguments as a typed, validated dataclass.

``NetConfig`` holds exactly the keyword arguments the released ``MinecraftPolicy`` / ``InverseActionNet`` take
(same names, same defaults), so a released ``.model`` file maps onto it one to one and an exported one loads in
the released code. ``ModelConfig`` adds what the released code keeps elsewhere: the kind of model, the action
space and the head temperature. Presets live in ``policies/<name>.yaml``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal, Optional

from vpt_ray.config import ConfigError, from_dict, load_config, named_yaml, to_dict

PRESET_DIR = Path(__file__).resolve().parents[2] / "policies"

# Keyword arguments the released network classes accept but never read (``**unused_kwargs`` or stored and
# ignored). Released ``.model`` files carry some of them; they are dropped on load and change nothing.
IGNORED_OFFICIAL_KWARGS = frozenset(
    {"only_img_input", "diff_mlp_embedding", "single_output", "active_reward_monitors", "input_shape",
     "obs_processing_width"}
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class ImpalaKwargs:
    # GroupNorm with this many groups after each stack's max-pool; None: no norm there.
    post_pool_groups: Optional[int] = None


@dataclasses.dataclass(frozen=True)
class InitNormKwargs:
    # Norm applied to the INPUT of each Impala conv (the released layers normalise before the layer).
    batch_norm: bool = False
    group_norm_groups: Optional[int] = None


@dataclasses.dataclass(frozen=True)
class Conv3dParams:
    # The IDM's temporal convolution in front of the Impala CNN (passed to nn.Conv3d in the released code).
    inchan: int
    outchan: int
    kernel_size: tuple[int, int, int]
    padding: tuple[int, int, int] = (0, 0, 0)

    def __post_init__(self):
        if self.inchan != 3:
            raise ValueError(f"conv3d_params.inchan must be 3 (RGB frames), got {self.inchan}")
        if self.outchan <= 0 or min(self.kernel_size) <= 0 or min(self.padding) < 0:
            raise ValueError(f"conv3d_params need positive outchan/kernel_size and padding >= 0, got {self}")
        if self.kernel_size[1] != 2 * self.padding[1] + 1 or self.kernel_size[2] != 2 * self.padding[2] + 1:
            raise ValueError(f"conv3d_params must keep the frame size (kernel = 2 * padding + 1 spatially), got {self}")
        if self.kernel_size[0] != 2 * self.padding[0] + 1:
            raise ValueError(f"conv3d_params must keep the clip length (kernel = 2 * padding + 1 in time), got {self}")


@dataclasses.dataclass(frozen=True)
class NetConfig:
    """The released network kwargs (names and defaults of ``lib.policy.MinecraftPolicy``)."""

    img_shape: tuple[int, int, int]  # [H, W, C]; C = 3, or the conv3d output channels for the IDM
    timesteps: int  # chunk length the model was built for; memory length = attention_memory_size - timesteps
    hidsize: int = 512
    impala_width: int = 1
    impala_chans: tuple[int, ...] = (16, 32, 32)
    impala_kwargs: ImpalaKwargs = ImpalaKwargs()
    init_norm_kwargs: InitNormKwargs = InitNormKwargs()
    first_conv_norm: bool = False
    scale_input_img: bool = True
    img_statistics: Optional[str] = None
    recurrence_type: str = "transformer"
    attention_mask_style: Literal["clipped_causal", "none"] = "clipped_causal"
    attention_heads: int = 8
    attention_memory_size: int = 2048
    use_pointwise_layer: bool = True
    pointwise_ratio: int = 4
    pointwise_use_activation: bool = False
    n_recurrence_layers: int = 1
    recurrence_is_residual: bool = True
    use_pre_lstm_ln: bool = True
    conv3d_params: Optional[Conv3dParams] = None

    def __post_init__(self):
        h, w, c = self.img_shape
        if h <= 0 or w <= 0 or c <= 0:
            raise ValueError(f"img_shape must be positive [H, W, C], got {list(self.img_shape)}")
        if self.recurrence_type != "transformer":
            raise ValueError(f"recurrence_type {self.recurrence_type!r} is not supported (only 'transformer')")
        if self.img_statistics is not None:
            raise ValueError("img_statistics (a remote mean/std image) is not supported; leave it null")
        if self.hidsize <= 0 or self.attention_heads <= 0 or self.hidsize % self.attention_heads:
            raise ValueError(f"hidsize {self.hidsize} must be a positive multiple of attention_heads {self.attention_heads}")
        if self.n_recurrence_layers < 1:
            raise ValueError(f"n_recurrence_layers must be >= 1, got {self.n_recurrence_layers}")
        if not self.impala_chans or min(self.impala_chans) <= 0 or self.impala_width <= 0:
            raise ValueError(f"impala_chans and impala_width must be positive, got {self.impala_chans} x {self.impala_width}")
        if self.use_pointwise_layer and self.pointwise_ratio < 1:
            raise ValueError(f"pointwise_ratio must be >= 1, got {self.pointwise_ratio}")
        if self.timesteps <= 0:
            raise ValueError(f"timesteps must be positive, got {self.timesteps}")
        if self.maxlen < 0:
            raise ValueError(
                f"attention_memory_size {self.attention_memory_size} must be >= timesteps {self.timesteps}"
            )
        if self.attention_mask_style == "clipped_causal" and self.maxlen == 0:
            raise ValueError(
                "clipped_causal attention needs attention_memory_size > timesteps (each frame attends to "
                "attention_memory_size - timesteps frames)"
            )
        if self.conv3d_params is not None and self.conv3d_params.outchan != c:
            raise ValueError(f"img_shape[2] ({c}) must equal conv3d_params.outchan ({self.conv3d_params.outchan})")
        if self.conv3d_params is None and c != 3:
            raise ValueError(f"img_shape[2] must be 3 (RGB) without a conv3d front end, got {c}")
        for groups, what in (
            (self.init_norm_kwargs.group_norm_groups, "init_norm_kwargs.group_norm_groups"),
            (self.impala_kwargs.post_pool_groups, "impala_kwargs.post_pool_groups"),
        ):
            if groups is not None and (groups <= 0 or any(ch % groups for ch in self.chans)):
                raise ValueError(f"{what} ({groups}) must divide every Impala channel count {self.chans}")

    @property
    def maxlen(self) -> int:
        """Frames of memory each query sees (the released ``attention_memory_size - timesteps``)."""
        return self.attention_memory_size - self.timesteps

    @property
    def chans(self) -> tuple[int, ...]:
        return tuple(int(self.impala_width * c) for c in self.impala_chans)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    kind: Literal["policy", "idm"]
    action_space: Literal["minecraft", "crafter"]
    net: NetConfig
    temperature: float = 1.0

    def __post_init__(self):
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        if self.kind == "idm":
            if self.net.attention_mask_style != "none":
                raise ValueError("an IDM is non-causal: net.attention_mask_style must be 'none'")
            if self.net.first_conv_norm:
                raise ValueError("an IDM sets first_conv_norm from conv3d_params (as the released code does)")
        elif self.net.conv3d_params is not None:
            raise ValueError("conv3d_params belongs to the IDM; the released policy ignores it")


def load_preset(name_or_path: str | Path) -> ModelConfig:
    """A preset by name (``policies/<name>.yaml``) or a YAML path; errors name the file and field."""
    return load_config(ModelConfig, named_yaml(name_or_path, PRESET_DIR, "preset"))


def config_from_official(
    net_kwargs: dict[str, Any],
    temperature: float,
    kind: Literal["policy", "idm"],
    action_space: Literal["minecraft", "crafter"] = "minecraft",
    where: str = "<official kwargs>",
) -> ModelConfig:
    """Released kwargs (``policy_kwargs`` / ``idm_net_kwargs``) + head temperature -> ModelConfig."""
    if not isinstance(net_kwargs, dict):
        raise ConfigError(f"{where}: network kwargs must be a mapping, got {type(net_kwargs).__name__}")
    net = {k: v for k, v in net_kwargs.items() if k not in IGNORED_OFFICIAL_KWARGS}
    data = {"kind": kind, "action_space": action_space, "temperature": temperature, "net": net}
    return from_dict(ModelConfig, data, where=where)


def official_net_kwargs(config: ModelConfig) -> dict[str, Any]:
    """ModelConfig -> the kwargs dict the released classes take (plain types only)."""
    kwargs = to_dict(config.net)
    if config.kind == "idm":
        # InverseActionNet derives first_conv_norm from conv3d_params and refuses it as a kwarg.
        kwargs.pop("first_conv_norm")
        kwargs["single_output"] = True  # as in the released IDM kwargs
    return kwargs
