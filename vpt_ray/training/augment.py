"""Temporally consistent clip augmentation (method doc §5), in torch on the training device.

Each clip draws ONE random transform, applied identically to all of its frames, so the motion between frames
(what the IDM reads actions from) is untouched while colours and framing vary between clips.

The colour part is one affine colour map per clip, composed in this order: brightness (scale), contrast (blend
with the clip's mean grey level), saturation (blend with each pixel's luma), hue (rotation of the chroma plane
of YIQ by ``2 pi * shift``, the linear form of a hue shift). The geometric part is one affine warp about the
frame centre (scale, shear, rotation, translation), sampled bilinearly with edge replication.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F

from vpt_ray.models.device import to_device
from vpt_ray.training.config import AugmentConfig

# ITU-R BT.601 luma weights, and RGB -> YIQ (rows Y, I, Q).
_LUMA = (0.299, 0.587, 0.114)
_RGB_TO_YIQ = ((0.299, 0.587, 0.114), (0.595716, -0.274453, -0.321263), (0.211456, -0.522591, 0.311135))


@dataclasses.dataclass
class AugmentParams:
    """One row per clip (N clips)."""

    hue: torch.Tensor  # (N,) fraction of the hue circle
    saturation: torch.Tensor  # (N,)
    brightness: torch.Tensor  # (N,)
    contrast: torch.Tensor  # (N,)
    rotation_deg: torch.Tensor  # (N,)
    scale: torch.Tensor  # (N,)
    shear_deg: torch.Tensor  # (N,)
    translate_px: torch.Tensor  # (N, 2) [x, y]

    def __len__(self) -> int:
        return len(self.hue)


def _uniform(n: int, lo: float, hi: float, generator: torch.Generator | None) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=generator, dtype=torch.float64)


def sample_params(n: int, cfg: AugmentConfig, generator: torch.Generator | None = None) -> AugmentParams:
    """Random transforms for ``n`` clips (the identity for every part that ``cfg`` switches off)."""
    u = lambda lo, hi: _uniform(n, lo, hi, generator)  # noqa: E731
    return AugmentParams(
        hue=u(-cfg.hue, cfg.hue),
        saturation=u(*cfg.saturation),
        brightness=u(*cfg.brightness),
        contrast=u(*cfg.contrast),
        rotation_deg=u(-cfg.rotation_deg, cfg.rotation_deg),
        scale=u(*cfg.scale),
        shear_deg=u(-cfg.shear_deg, cfg.shear_deg),
        translate_px=torch.stack([u(-cfg.translate_px, cfg.translate_px), u(-cfg.translate_px, cfg.translate_px)], 1),
    )


def colour_matrix(p: AugmentParams, i: int) -> torch.Tensor:
    """Clip ``i``'s saturation-then-hue map, a (3, 3) matrix on RGB that keeps grey pixels grey."""
    s = float(p.saturation[i])
    luma = torch.tensor(_LUMA, dtype=torch.float64)
    saturate = s * torch.eye(3, dtype=torch.float64) + (1 - s) * torch.ones(3, 1, dtype=torch.float64) * luma
    theta = 2 * math.pi * float(p.hue[i])
    c, sn = math.cos(theta), math.sin(theta)
    rotate_iq = torch.tensor([[1.0, 0.0, 0.0], [0.0, c, -sn], [0.0, sn, c]], dtype=torch.float64)
    yiq = torch.tensor(_RGB_TO_YIQ, dtype=torch.float64)
    return torch.linalg.solve(yiq, rotate_iq @ yiq) @ saturate


def affine_theta(p: AugmentParams, i: int, height: int, width: int) -> torch.Tensor:
    """Clip ``i``'s warp as the (2, 3) ``affine_grid`` matrix (output normalised coords -> input coords)."""
    rot = math.radians(float(p.rotation_deg[i]))
    shear = math.radians(float(p.shear_deg[i]))
    scale = float(p.scale[i])
    # Forward map in pixel coordinates centred on the frame: q = R @ Sh @ (scale * p) + t.
    r = torch.tensor([[math.cos(rot), -math.sin(rot)], [math.sin(rot), math.cos(rot)]], dtype=torch.float64)
    sh = torch.tensor([[1.0, math.tan(shear)], [0.0, 1.0]], dtype=torch.float64)
    m = r @ sh * scale
    t = p.translate_px[i].to(torch.float64)
    # Normalised (align_corners=False) coords u = n * pixel, n = diag(2/W, 2/H); inverse map for grid_sample.
    n = torch.diag(torch.tensor([2.0 / width, 2.0 / height], dtype=torch.float64))
    m_inv = torch.linalg.inv(m)
    a = n @ m_inv @ torch.linalg.inv(n)
    b = -(n @ m_inv @ t)
    return torch.cat([a, b[:, None]], dim=1)


def apply_augment(frames_bthwc: torch.Tensor, params: AugmentParams) -> torch.Tensor:
    """uint8 (B, T, H, W, 3) -> uint8 (B, T, H, W, 3): clip b transformed by ``params`` row b, every frame alike."""
    if frames_bthwc.dtype != torch.uint8 or frames_bthwc.ndim != 5 or frames_bthwc.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 (B, T, H, W, 3), got {frames_bthwc.dtype} {tuple(frames_bthwc.shape)}")
    b, t, h, w, _ = frames_bthwc.shape
    if len(params) != b:
        raise ValueError(f"{len(params)} augmentation rows for {b} clips")
    out = torch.empty_like(frames_bthwc)
    # The small per-clip tables go to the frames' device in one non-blocking copy: a copy per clip from pageable
    # memory would wait for the GPU each time.
    device = frames_bthwc.device
    luma = to_device(torch.tensor(_LUMA, dtype=torch.float32), device)
    colour_bij = to_device(torch.stack([colour_matrix(params, i) for i in range(b)]).to(torch.float32), device)
    theta_bij = to_device(torch.stack([affine_theta(params, i, h, w) for i in range(b)]).to(torch.float32), device)
    # One clip at a time bounds the float copy's memory to one clip (128 frames of 128x128 are ~25 MB).
    for i in range(b):
        x_tchw = frames_bthwc[i].permute(0, 3, 1, 2).to(torch.float32)
        brightness, contrast = float(params.brightness[i]), float(params.contrast[i])
        x_tchw = brightness * x_tchw
        # Contrast blends with the clip's mean grey level: one value for the whole clip, like every parameter.
        mean_grey = torch.einsum("c,tchw->", luma, x_tchw) / (t * h * w)
        x_tchw = contrast * x_tchw + (1 - contrast) * mean_grey
        x_tchw = torch.einsum("ij,tjhw->tihw", colour_bij[i], x_tchw)
        theta = theta_bij[i][None].expand(t, 2, 3)
        grid = F.affine_grid(theta, [t, 3, h, w], align_corners=False)
        x_tchw = F.grid_sample(x_tchw, grid, mode="bilinear", padding_mode="border", align_corners=False)
        out[i] = x_tchw.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    return out


class ClipAugmenter:
    """Draws a transform per clip from its own seeded generator and applies it; off when ``cfg.enabled`` is false."""

    def __init__(self, cfg: AugmentConfig, seed: int):
        self.cfg = cfg
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, frames_bthwc: torch.Tensor) -> torch.Tensor:
        if not self.cfg.enabled:
            return frames_bthwc
        return apply_augment(frames_bthwc, sample_params(frames_bthwc.shape[0], self.cfg, self.generator))
