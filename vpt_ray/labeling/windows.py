"""Sliding-window IDM labeling of one clip (VPT §5): windows of ``window`` frames every ``stride`` frames, each
labeling only its centre ``[keep_start, keep_end)``; the first window also labels the clip's first frames and the
last window its last frames, so every frame gets exactly one label, predicted with context on both sides
wherever the clip allows.

The released setting: window 128, stride 64, keep 32..96. A clip shorter than a window is one window.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class WindowSpec:
    window: int
    stride: int
    keep_start: int
    keep_end: int

    def __post_init__(self):
        if self.window <= 0 or self.stride <= 0:
            raise ValueError(f"window and stride must be positive, got window {self.window}, stride {self.stride}")
        if not 0 <= self.keep_start < self.keep_end <= self.window:
            raise ValueError(f"keep range [{self.keep_start}, {self.keep_end}) must lie inside the window "
                             f"[0, {self.window})")  # fmt: skip
        if self.keep_end - self.keep_start != self.stride:
            raise ValueError(f"keep range [{self.keep_start}, {self.keep_end}) must be as long as the stride "
                             f"({self.stride}) so that consecutive windows' kept frames tile the clip")  # fmt: skip

    @classmethod
    def centred(cls, window: int, stride: int | None = None) -> WindowSpec:
        """``stride`` (default window / 2) frames kept from the middle of each window: 128 -> 64, keep 32..96."""
        stride = stride if stride is not None else max(1, window // 2)
        start = (window - stride) // 2
        return cls(window, stride, start, start + stride)


@dataclasses.dataclass(frozen=True)
class Window:
    """Frames ``[start, stop)`` go through the IDM; its labels for ``[keep_lo, keep_hi)`` are kept (absolute)."""

    start: int
    stop: int
    keep_lo: int
    keep_hi: int


def plan_windows(n_frames: int, spec: WindowSpec) -> list[Window]:
    """The windows that label a clip of ``n_frames``; their keep ranges tile ``[0, n_frames)`` in order."""
    if n_frames <= 0:
        return []
    w, s = spec.window, spec.stride
    if n_frames <= w:
        return [Window(0, n_frames, 0, n_frames)]
    starts = list(range(0, n_frames - w + 1, s))
    if starts[-1] + w < n_frames:
        starts.append(n_frames - w)  # end-aligned so the last frames have a window too
    out = []
    lo = 0
    for i, start in enumerate(starts):
        hi = n_frames if i == len(starts) - 1 else start + spec.keep_end
        out.append(Window(start, start + w, lo, hi))
        lo = hi
    return out


def label_clip(idm, frames_thwc: np.ndarray, spec: WindowSpec, batch_windows: int = 8,
               precision: str = "fp32") -> dict[str, np.ndarray]:  # fmt: skip
    """IDM labels of every frame of a clip: head -> int64 (T, factors) (decode with ``action_space.from_idm``).

    ``frames_thwc`` uint8 at the IDM's frame size; windows of equal length go through the model
    ``batch_windows`` at a time, under ``precision`` (``vpt_ray.models.precision``) on the IDM's device. On a
    GPU each group of windows is copied from pinned memory without waiting, the labels stay on the GPU, and the
    clip's labels come back in one copy at the end: the host never waits for the GPU between groups.
    """
    import torch

    from vpt_ray.models.device import to_device
    from vpt_ray.models.precision import autocast

    n = len(frames_thwc)
    device = idm.device
    windows = plan_windows(n, spec)
    out = {k: torch.zeros((n, factors), dtype=torch.int64, device=device)
           for k, (factors, _) in idm.action_space.idm_heads.items()}  # fmt: skip
    frames = torch.from_numpy(np.ascontiguousarray(frames_thwc))
    for i in range(0, len(windows), batch_windows):
        group = windows[i : i + batch_windows]
        clips_bthwc = to_device(torch.stack([frames[w.start : w.stop] for w in group]), device)
        with autocast(precision, device):
            pred = idm.predict(clips_bthwc)
        for b, w in enumerate(group):
            for k, v in pred.items():
                out[k][w.keep_lo : w.keep_hi] = v[b, w.keep_lo - w.start : w.keep_hi - w.start]
    return {k: v.cpu().numpy() for k, v in out.items()}
