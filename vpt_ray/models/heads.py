"""Output heads: categorical action heads (log-probs with temperature) and the value head with its EWMA normaliser."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from vpt_ray.models.layers import fan_in_init_


class CategoricalHead(nn.Module):
    """latent (..., in) -> log-probs (..., *shape): linear, divide by the temperature, log-softmax (float32)."""

    def __init__(self, insize: int, shape: tuple[int, ...], init_scale: float = 0.01):
        super().__init__()
        self.shape = tuple(shape)
        self.linear_layer = nn.Linear(insize, math.prod(self.shape))
        # Small rows give a near-uniform initial policy (the released heads' reset_parameters intent).
        fan_in_init_(self.linear_layer, init_scale)

    def forward(self, latent: torch.Tensor, temperature: float) -> torch.Tensor:
        logits = self.linear_layer(latent).reshape(*latent.shape[:-1], *self.shape) / temperature
        return F.log_softmax(logits.float(), dim=-1)


class EwmaNormalizer(nn.Module):
    """Running (EWMA, debiased) mean/variance of a scalar target; the released ``NormalizeEwma``.

    ``mean = running_mean / d``, ``var = max(running_mean_sq / d - mean**2, 1e-2)`` with
    ``d = max(debiasing_term, eps)``. Each :meth:`update` is one EWMA step with weight ``beta``.
    """

    def __init__(self, beta: float = 0.99999, epsilon: float = 1e-5):
        super().__init__()
        self.beta = beta
        self.epsilon = epsilon
        self.register_buffer("running_mean", torch.zeros(1))
        self.register_buffer("running_mean_sq", torch.zeros(1))
        self.register_buffer("debiasing_term", torch.zeros(()))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        x = x.detach().float()
        w = self.beta
        self.running_mean.mul_(w).add_(x.mean() * (1.0 - w))
        self.running_mean_sq.mul_(w).add_((x**2).mean() * (1.0 - w))
        self.debiasing_term.mul_(w).add_(1.0 - w)

    @torch.no_grad()
    def reset(self) -> None:
        self.running_mean.zero_()
        self.running_mean_sq.zero_()
        self.debiasing_term.zero_()

    def mean_var(self) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.debiasing_term.clamp(min=self.epsilon)
        mean = self.running_mean / d
        var = (self.running_mean_sq / d - mean**2).clamp(min=1e-2)
        return mean, var

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        mean, var = self.mean_var()
        return (x.float() - mean) / torch.sqrt(var)

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        mean, var = self.mean_var()
        return x * torch.sqrt(var) + mean


class ValueHead(nn.Module):
    """latent -> normalised value (the released ``ScaledMSEHead`` with one output)."""

    def __init__(self, insize: int):
        super().__init__()
        self.linear = nn.Linear(insize, 1)
        fan_in_init_(self.linear, 1.0)
        self.normalizer = EwmaNormalizer()

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.linear(latent)[..., 0]
