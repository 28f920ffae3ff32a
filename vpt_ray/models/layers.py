"""Building blocks of the VPT trunk: fan-in initialised layers and the Impala CNN.

Module attribute names follow the released code so that state-dict keys are identical
(``stacks.0.firstconv.layer.weight``, ``dense.norm.weight``, ...).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from vpt_ray.models.config import NetConfig


@torch.no_grad()
def fan_in_init_(layer: nn.Module, scale: float) -> None:
    """Rescale every output unit's weights to L2 norm ``scale`` and zero the bias (the released init)."""
    w = layer.weight
    w.mul_(scale / torch.linalg.vector_norm(w, dim=tuple(range(1, w.ndim)), keepdim=True))
    if layer.bias is not None:
        layer.bias.zero_()


class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` computed in float32 whatever the input dtype (see :mod:`vpt_ray.models.precision`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float())


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` computed in float32 whatever the input dtype (see :mod:`vpt_ray.models.precision`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float())


class BatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` computed in float32 whatever the input dtype (see :mod:`vpt_ray.models.precision`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float())


class NormedLayer(nn.Module):
    """Optional norm of the input -> linear/conv layer -> optional ReLU.

    The layer has a bias only when there is no norm, as in the released ``FanInInitReLULayer``.
    """

    def __init__(self, layer_type: str, inchan: int, outchan: int, *, norm: str | None = None, groups: int = 1,
                 init_scale: float = 1.0, activation: bool = True, **layer_kwargs):  # fmt: skip
        super().__init__()
        if norm == "layer":
            self.norm = LayerNorm(inchan)
        elif norm == "group":
            self.norm = GroupNorm(groups, inchan)
        elif norm == "batch":
            self.norm = BatchNorm2d(inchan)
        else:
            self.norm = None
        layer_cls = {"linear": nn.Linear, "conv": nn.Conv2d, "conv3d": nn.Conv3d}[layer_type]
        self.layer = layer_cls(inchan, outchan, bias=self.norm is None, **layer_kwargs)
        fan_in_init_(self.layer, init_scale)
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm is not None:
            x = self.norm(x)
        x = self.layer(x)
        # In place: the layer output is fresh and nothing else needs it (halves the memory traffic of the CNN).
        return F.relu(x, inplace=True) if self.activation else x


def conv_norm(cfg: NetConfig) -> tuple[str | None, int]:
    """(norm kind, groups) of the Impala convs, from ``init_norm_kwargs``."""
    if cfg.init_norm_kwargs.batch_norm:
        return "batch", 1
    if cfg.init_norm_kwargs.group_norm_groups is not None:
        return "group", cfg.init_norm_kwargs.group_norm_groups
    return None, 1


def dense_norm(cfg: NetConfig) -> str | None:
    """Dense layers get a LayerNorm wherever the convs get any norm (the released ``dense_init_norm_kwargs``)."""
    return "layer" if conv_norm(cfg)[0] is not None else None


class CnnBasicBlock(nn.Module):
    """Residual block: x + conv1(conv0(x)), each conv normed before and ReLU'd after."""

    def __init__(self, chans: int, init_scale: float, norm: str | None, groups: int):
        super().__init__()
        s = math.sqrt(init_scale)
        self.conv0 = NormedLayer("conv", chans, chans, norm=norm, groups=groups, init_scale=s, kernel_size=3, padding=1)
        self.conv1 = NormedLayer("conv", chans, chans, norm=norm, groups=groups, init_scale=s, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv1(self.conv0(x))


class CnnDownStack(nn.Module):
    """conv -> 3x3 max-pool (stride 2) -> optional GroupNorm -> residual blocks."""

    def __init__(self, inchan: int, outchan: int, nblock: int, init_scale: float, first_norm: str | None,
                 norm: str | None, groups: int, post_pool_groups: int | None):  # fmt: skip
        super().__init__()
        self.firstconv = NormedLayer("conv", inchan, outchan, norm=first_norm, groups=groups, kernel_size=3, padding=1)
        self.n = GroupNorm(post_pool_groups, outchan) if post_pool_groups is not None else None
        self.blocks = nn.ModuleList(
            CnnBasicBlock(outchan, init_scale / math.sqrt(nblock), norm, groups) for _ in range(nblock)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(self.firstconv(x), kernel_size=3, stride=2, padding=1)
        if self.n is not None:
            x = self.n(x)
        for block in self.blocks:
            x = block(x)
        return x


class ImpalaCNN(nn.Module):
    """Frames (B, T, H, W, C) float -> features (B, T, outsize): conv stacks, flatten, dense + ReLU."""

    def __init__(self, cfg: NetConfig, outsize: int, first_conv_norm: bool, nblock: int = 2):
        super().__init__()
        h, w, c = cfg.img_shape
        norm, groups = conv_norm(cfg)
        self.stacks = nn.ModuleList()
        for i, outchan in enumerate(cfg.chans):
            first_norm = norm if (i > 0 or first_conv_norm) else None
            self.stacks.append(
                CnnDownStack(c, outchan, nblock, math.sqrt(len(cfg.chans)), first_norm, norm, groups,
                             cfg.impala_kwargs.post_pool_groups)  # fmt: skip
            )
            c, h, w = outchan, (h + 1) // 2, (w + 1) // 2
        self.dense = NormedLayer("linear", c * h * w, outsize, norm=dense_norm(cfg), init_scale=1.4)

    def forward(self, x_bthwc: torch.Tensor) -> torch.Tensor:
        b, t = x_bthwc.shape[:2]
        x = x_bthwc.reshape(b * t, *x_bthwc.shape[2:]).permute(0, 3, 1, 2)
        for stack in self.stacks:
            x = stack(x)
        return self.dense(x.reshape(b, t, -1))
