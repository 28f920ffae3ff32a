"""Getting batches onto a run's device without stalling it, and naming the device in reports.

On a GPU, a batch is copied from page-locked (pinned) host memory with a non-blocking copy: the host goes on
preparing the next batch while the copy and the queued kernels run. PyTorch's caching host allocator keeps a
pinned block until the copy that reads it has finished, so a fresh ``pin_memory()`` per batch is safe and cheap
after the first few. On a CPU, tensors are used as they are.
"""

from __future__ import annotations

import numpy as np
import torch


def to_device(x: np.ndarray | torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``x`` on ``device``: shared with the array on a CPU, a pinned non-blocking copy on a GPU."""
    device = torch.device(device)
    t = torch.from_numpy(x) if isinstance(x, np.ndarray) else x
    if device.type != "cuda" or t.device.type != "cpu":
        return t.to(device)
    if not t.is_pinned():
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


def describe_device(device: torch.device | str) -> str:
    """``"cpu"`` or ``"cuda:0 (NVIDIA H200)"``: what a run's report says it computed on."""
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return device.type


def prepare_device(device: torch.device | str) -> torch.device:
    """``device`` set up for fixed-shape work: on a GPU it becomes the current device and cuDNN times its
    convolution algorithms once per input shape and keeps the fastest (benchmark mode: the Impala CNN's
    shapes repeat at every step, so the one-off search pays for itself)."""
    device = torch.device(device)
    if device.type == "cuda":
        if device.index is not None:
            torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    return device
