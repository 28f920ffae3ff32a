"""AdamW with decoupled weight decay on weights only, and the linear learning-rate decay of the method doc."""

from __future__ import annotations

import torch
from torch import nn

from vpt_ray.training.config import OptimConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay for matrices and conv kernels; none for biases, norm gains and 1-D parameters.

    The relative-position bases (``b_nd``, 2-D) are decayed like weights: they are learned tables, not gains.
    """
    decay, no_decay = [], []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        (decay if param.ndim >= 2 else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_factor(step: int, total_steps: int, cfg: OptimConfig) -> float:
    """Multiplier of ``cfg.lr`` at ``step`` (0-based): linear warm-up, then linear decay to ``final_lr_fraction``."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    decay_steps = max(1, total_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / decay_steps)
    return 1.0 - (1.0 - cfg.final_lr_fraction) * progress


def build_optimizer(model: nn.Module, cfg: OptimConfig, total_steps: int):
    """-> (AdamW, LambdaLR stepping once per optimizer step)."""
    optimizer = torch.optim.AdamW(
        param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total_steps, cfg))
    return optimizer, scheduler


def clip_gradients(model: nn.Module, cfg: OptimConfig) -> torch.Tensor:
    """Clip the global gradient norm to ``cfg.max_grad_norm`` (if set); returns the norm before clipping, as a
    tensor on the parameters' device (reading it is a host sync: do it once per reporting interval)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if cfg.max_grad_norm is None:
        return torch.nn.utils.get_total_norm(grads)
    return torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], cfg.max_grad_norm)


def optimizer_step(loss: torch.Tensor, model: nn.Module, optimizer, scheduler, cfg: OptimConfig) -> torch.Tensor:
    """Backward, gradient clipping, the optimizer and LR-schedule steps; returns the norm before clipping (a
    device tensor: nothing here waits for the GPU)."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = clip_gradients(model, cfg)
    optimizer.step()
    scheduler.step()
    return grad_norm
