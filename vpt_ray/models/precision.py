"""Numeric precision of a run, one name from the YAML to the code: ``precision: auto | fp32 | bf16``.

- ``fp32``: float32 throughout (on a GPU with PyTorch's defaults: cuDNN convolutions may use TF32).
- ``bf16``: the forward pass runs under ``torch.autocast(dtype=torch.bfloat16)``: convolutions, linear layers and
  the attention matmuls compute in bf16 (accumulating in fp32). Parameters, gradients, optimizer state and the
  recurrent memory stay float32 (autocast, not a bf16 model), so no loss scaling is needed.
- ``auto``: bf16 on a CUDA device that supports it, fp32 elsewhere. CPU bf16 autocast is correct (the CPU tests
  use it), but whether it is faster depends on the CPU's bf16 units, so the CPU default stays the exact fp32.

What stays float32 under bf16, on every device (:data:`FP32_OPS`): the norms (``models.layers.LayerNorm`` /
``GroupNorm`` / ``BatchNorm2d`` upcast their input, as CUDA autocast does for norms and CPU autocast would not),
the attention softmax, and the heads (action logits and log-softmax, value and auxiliary value heads, the EWMA
normaliser), which run outside autocast on an fp32 latent. So log-probs, entropies, KL terms and every loss built
from them are fp32, and the CPU's bf16 numbers are the GPU's up to kernel differences.

Use: ``resolved = resolve_precision(cfg.precision, device)`` once at start-up (runs report the resolved value),
then ``with autocast(resolved, device): out = model(...)`` around the forward only; losses and ``backward()``
outside it.
"""

from __future__ import annotations

import contextlib
import typing
from typing import Literal

import torch

Precision = Literal["auto", "fp32", "bf16"]
PRECISIONS: tuple[str, ...] = typing.get_args(Precision)
FP32_OPS = (
    "layer/group/batch norms (input upcast to fp32)",
    "attention softmax",
    "action heads: logits and log-softmax",
    "value and auxiliary value heads, EWMA value normaliser",
    "log-probs, entropy, KL and every loss (computed from the fp32 head outputs)",
)


class PrecisionError(ValueError):
    """A precision that is not one of :data:`PRECISIONS`, or bf16 asked of a device without it."""


def check_precision(value: object, where: str = "precision") -> str:
    if value not in PRECISIONS:
        raise PrecisionError(f"{where}: {value!r} is not one of {list(PRECISIONS)}")
    return typing.cast(str, value)


def bf16_supported(device: torch.device | str) -> bool:
    """Native bf16 arithmetic: every CPU (autocast), CUDA devices of compute capability 8.0 (Ampere) and later."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.get_device_capability(device)[0] >= 8
    return device.type == "cpu"


def resolve_precision(precision: str, device: torch.device | str) -> Literal["fp32", "bf16"]:
    """``auto`` -> bf16 on a CUDA device with bf16, else fp32; ``bf16`` on a device without it is an error."""
    device = torch.device(device)
    check_precision(precision)
    if precision == "auto":
        return "bf16" if device.type == "cuda" and bf16_supported(device) else "fp32"
    if precision == "bf16" and not bf16_supported(device):
        raise PrecisionError(f"precision bf16: device {device} has no bf16 arithmetic (use fp32 or auto)")
    return typing.cast(Literal["fp32", "bf16"], precision)


def autocast(precision: str, device: torch.device | str) -> contextlib.AbstractContextManager:
    """The context to run a forward pass in: bf16 autocast on ``device``'s type, or nothing for fp32."""
    device = torch.device(device)
    if resolve_precision(precision, device) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def full_precision(device: torch.device | str) -> contextlib.AbstractContextManager:
    """Autocast off on ``device``'s type: for the parts of a model that must stay fp32 (the heads)."""
    return torch.autocast(torch.device(device).type, enabled=False)


@torch.no_grad()
def logprob_error(reference: dict[str, torch.Tensor], other: dict[str, torch.Tensor]) -> dict[str, float]:
    """How far ``other``'s log-probs (head -> (..., n)) are from ``reference``'s, over all heads and frames.

    ``max_abs``: the largest |difference| of any class's log-prob; ``mean_abs``: the worst head's |difference|
    averaged over the reference distribution and the frames (what a sampled action sees); ``kl_max``: the largest
    per-frame, per-head KL(ref || other); ``argmax_agree``: the fraction of (frame, head) with the same most
    likely class.
    """
    max_abs = mean_abs = kl_max = 0.0
    agree, count = 0, 0
    for head, ref in reference.items():
        ref, lp = ref.double(), other[head].double()
        p = ref.exp()
        diff = ref - lp
        max_abs = max(max_abs, diff.abs().max().item())
        mean_abs = max(mean_abs, (p * diff.abs()).sum(-1).mean().item())
        kl_max = max(kl_max, (p * diff).sum(-1).max().item())
        agree += int((ref.argmax(-1) == lp.argmax(-1)).sum())
        count += ref[..., 0].numel()
    return {"max_abs": max_abs, "mean_abs": mean_abs, "kl_max": kl_max, "argmax_agree": agree / max(count, 1)}
