"""Running an IDM over a whole video, and its training loss."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from vpt_ray.models import InverseDynamicsModel


def window_starts(n_frames: int, window: int, stride: int) -> np.ndarray:
    """Starts of windows of ``window`` frames every ``stride`` frames, the last one ending at the video's end."""
    if n_frames <= window:
        return np.zeros(1, np.int64)
    starts = list(range(0, n_frames - window + 1, stride))
    if starts[-1] + window < n_frames:
        starts.append(n_frames - window)
    return np.asarray(starts, np.int64)


def most_central_window(n_frames: int, starts: np.ndarray, window: int) -> np.ndarray:
    """For each frame, the window in which it lies closest to the centre (ties: the earlier window)."""
    t = np.arange(n_frames)[:, None]
    centre = starts[None, :] + (window - 1) / 2
    inside = (t >= starts[None, :]) & (t < starts[None, :] + window)
    distance = np.where(inside, np.abs(t - centre), np.inf)
    return distance.argmin(1)


@torch.no_grad()
def predict_video(idm: InverseDynamicsModel, frames_thwc: np.ndarray, *, window: int | None = None,
                  stride: int | None = None, batch_windows: int = 8) -> dict[str, np.ndarray]:  # fmt: skip
    """IDM indices (head -> int64 (T, factors)) for every frame of a video.

    The IDM sees windows of ``window`` frames (default: its context length) every ``stride`` frames (default:
    half a window) and each frame takes the prediction of the window where it is most central: with the
    released 128/64 that keeps frames 32..96 of each window, and the first and last frames of the video from the
    first and last windows (method doc §5). A video shorter than a window is padded with its last frame.
    """
    window = window or idm.context_len
    stride = stride or max(1, window // 2)
    n = len(frames_thwc)
    if n == 0:
        raise ValueError("predict_video needs at least one frame")
    if n < window:
        frames_thwc = np.concatenate([frames_thwc, np.repeat(frames_thwc[-1:], window - n, axis=0)])
    starts = window_starts(len(frames_thwc), window, stride)
    choice = most_central_window(n, starts, window)
    out: dict[str, np.ndarray] = {}
    for lo in range(0, len(starts), batch_windows):
        batch_starts = starts[lo:lo + batch_windows]
        clips = np.stack([frames_thwc[s:s + window] for s in batch_starts])
        pred = idm.predict(torch.from_numpy(clips).to(idm.device))
        for w, s in enumerate(batch_starts):
            frames = np.nonzero(choice == lo + w)[0]
            for head, idx in pred.items():
                if head not in out:
                    out[head] = np.zeros((n, idx.shape[-1]), np.int64)
                out[head][frames] = idx[w, frames - s].cpu().numpy()
    return out


def idm_loss(logprobs: Mapping[str, torch.Tensor], labels: Mapping[str, torch.Tensor],
             valid_bt: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:  # fmt: skip
    """Sum over heads (and their factors) of the NLL of the labels, averaged over valid frames.

    ``logprobs``: head -> (B, T, factors, classes); ``labels``: head -> int64 (B, T, factors); returns
    (loss, head -> that head's mean NLL) — the heads' parts add up to the loss.
    """
    weight_bt = valid_bt.to(torch.float32)
    frames = weight_bt.sum().clamp_min(1.0)
    parts = {}
    for head, lp in logprobs.items():
        nll_bt = -lp.gather(-1, labels[head].unsqueeze(-1)).squeeze(-1).sum(-1)
        parts[head] = (nll_bt * weight_bt).sum() / frames
    return sum(parts.values()), parts
