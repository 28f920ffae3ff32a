"""VPT's residual transformer blocks: Transformer-XL-style memory, clipped-causal masks, relative position bias.

Each block keeps a memory of the projected keys/values of the last ``maxlen`` frames it saw and a validity mask
for them. A query frame attends to exactly ``maxlen`` frames, itself and the ``maxlen - 1`` before it (memory
first, then the frames of the current call): "clipped causal". Attention logits are scaled by ``1/head_dim``
and get a learned bias per head and time distance, ``r_layer(x) . b_nd[:, distance]`` (10 basis functions).

Episode starts: the released code honours ``first`` only at t=0 of a call. Here a ``first`` at any t cuts the
memory exactly as a fresh start would: a query attends only to frames of its own episode. With starts at t=0
only, this is the released computation.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from vpt_ray.models.config import NetConfig
from vpt_ray.models.layers import LayerNorm, NormedLayer, fan_in_init_

N_BASIS = 10  # relative-position basis functions per head
# Fan-in scales of the attention projections in the released code (before the block's own init scale).
Q_SCALE, K_SCALE, V_SCALE, PROJ_SCALE, R_SCALE, B_SCALE = 0.1, 0.2, 1.0, 1.0, 0.1, 0.2


def _linear(inp: int, out: int, scale: float, bias: bool = True) -> nn.Linear:
    layer = nn.Linear(inp, out, bias=bias)
    fan_in_init_(layer, scale)
    return layer


class RelativeSelfAttention(nn.Module):
    """Multi-head self-attention over [memory, current frames] with a relative-position bias; residual output.

    The released name of this module is ``orc_block``. Its output is ``x + proj(attention(x))``.
    """

    def __init__(self, hidsize: int, heads: int, maxlen: int, init_scale: float):
        super().__init__()
        s = math.sqrt(init_scale)
        self.heads = heads
        self.maxlen = maxlen
        self.q_layer = _linear(hidsize, hidsize, Q_SCALE)
        self.k_layer = _linear(hidsize, hidsize, K_SCALE, bias=False)
        self.v_layer = _linear(hidsize, hidsize, V_SCALE * s, bias=False)
        self.proj_layer = _linear(hidsize, hidsize, PROJ_SCALE * s)
        self.r_layer = _linear(hidsize, N_BASIS * heads, R_SCALE)
        self.b_nd = nn.Parameter(torch.randn(N_BASIS, maxlen) * B_SCALE)

    def _split(self, x_bte: torch.Tensor) -> torch.Tensor:
        b, t, e = x_bte.shape
        return x_bte.view(b, t, self.heads, e // self.heads).transpose(1, 2)  # (B, heads, t, e/heads)

    def forward(self, x_bte: torch.Tensor, mem_k_bme: torch.Tensor, mem_v_bme: torch.Tensor,
                allowed_btT: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
        """-> (output (B, t, E), keys (B, M+t, E), values (B, M+t, E)); ``allowed`` None: attend to all."""
        b, t, e = x_bte.shape
        m = self.maxlen
        k_bTe = torch.cat([mem_k_bme, self.k_layer(x_bte)], dim=1)
        v_bTe = torch.cat([mem_v_bme, self.v_layer(x_bte)], dim=1)
        q_bhtd, k_bhTd, v_bhTd = self._split(self.q_layer(x_bte)), self._split(k_bTe), self._split(v_bTe)
        head_dim = e // self.heads
        logits_bhtT = torch.matmul(q_bhtd, k_bhTd.transpose(-1, -2)) * (1.0 / head_dim)
        if m > 0:
            # Bias of query r (absolute position m + r) for key c depends on the distance d = m + r - c.
            r_bhtn = self._split(self.r_layer(x_bte))
            bias_bhtd = torch.matmul(r_bhtn, self.b_nd)  # (B, heads, t, m): bias for each distance
            dist_tT = (m + torch.arange(t, device=x_bte.device))[:, None] - torch.arange(m + t, device=x_bte.device)
            in_band_tT = (dist_tT >= 0) & (dist_tT < m)
            index = dist_tT.clamp(0, m - 1).expand(b, self.heads, t, m + t)
            logits_bhtT = logits_bhtT + bias_bhtd.gather(-1, index) * in_band_tT
        if allowed_btT is not None:
            logits_bhtT = logits_bhtT.masked_fill(~allowed_btT[:, None], float("-inf"))
        # The softmax in fp32 under bf16 autocast too (models.precision): CPU autocast would run it in bf16.
        a_bhtd = torch.matmul(torch.softmax(logits_bhtT.float(), dim=-1), v_bhTd)
        a_bte = a_bhtd.transpose(1, 2).reshape(b, t, e)
        return x_bte + self.proj_layer(a_bte), k_bTe, v_bTe


def episode_ids(first_bt: torch.Tensor) -> torch.Tensor:
    """Episode index of each frame within the call: how many starts occurred at or before it."""
    return torch.cumsum(first_bt.to(torch.int32), dim=1)


def clipped_causal_mask(ep_bt: torch.Tensor, mem_mask_bm: torch.Tensor, maxlen: int) -> torch.Tensor:
    """Which of the M + t keys each of the t queries may attend to: bool (B, t, M + t).

    ``ep_bt`` are the frames' :func:`episode_ids`. Key at absolute position p (memory 0..M-1, then the call's
    frames) is visible to query r (position M + r) when it lies in the clipped-causal band r < p <= M + r,
    belongs to the query's episode, and (for memory) is valid.
    """
    t = ep_bt.shape[1]
    device = ep_bt.device
    r = torch.arange(t, device=device)[:, None]
    p = torch.arange(maxlen + t, device=device)[None, :]
    band_tT = (p > r) & (p <= maxlen + r)
    mem_ok_btm = mem_mask_bm[:, None, :] & (ep_bt == 0)[:, :, None]
    same_episode_btt = ep_bt[:, :, None] == ep_bt[:, None, :]
    return torch.cat([mem_ok_btm, same_episode_btt], dim=2) & band_tT


class MaskedAttention(nn.Module):
    """One block's attention with its memory; holds the released ``orc_block``."""

    def __init__(self, hidsize: int, heads: int, maxlen: int, clipped_causal: bool, init_scale: float):
        super().__init__()
        self.maxlen = maxlen
        self.clipped_causal = clipped_causal
        self.orc_block = RelativeSelfAttention(hidsize, heads, maxlen, init_scale)

    def forward(self, x_bte: torch.Tensor, ep_bt: torch.Tensor, mask_bm: torch.Tensor, k_bme: torch.Tensor,
                v_bme: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:  # fmt: skip
        """``ep_bt``: :func:`episode_ids` of the call's frames; mask/k/v: this block's memory."""
        m = self.maxlen
        # "none" (the IDM) attends to everything, memory included, as the released code does.
        allowed = clipped_causal_mask(ep_bt, mask_bm, m) if self.clipped_causal else None
        out_bte, k_bTe, v_bTe = self.orc_block(x_bte, k_bme, v_bme, allowed)
        # A memory entry stays valid for the next call if it belongs to the episode of the call's last frame.
        last_b1 = ep_bt[:, -1:]
        new_mask = torch.cat([mask_bm & (last_b1 == 0), ep_bt == last_b1], dim=1)
        keep = k_bTe.shape[1] - m
        # Memory is a stop-gradient context (Transformer-XL): carried values never backpropagate.
        return out_bte, (new_mask[:, keep:], k_bTe[:, keep:].detach(), v_bTe[:, keep:].detach())


class ResidualRecurrentBlock(nn.Module):
    """LayerNorm -> attention (residual around the normed input, as released) -> optional residual MLP."""

    def __init__(self, cfg: NetConfig, init_scale: float):
        super().__init__()
        hid = cfg.hidsize
        s = init_scale
        self.use_pointwise_layer = cfg.use_pointwise_layer
        self.is_residual = cfg.recurrence_is_residual
        if cfg.use_pointwise_layer:
            if cfg.recurrence_is_residual:
                s *= 2**-0.5
            self.mlp0 = NormedLayer("linear", hid, hid * cfg.pointwise_ratio, norm="layer")
            self.mlp1 = NormedLayer("linear", hid * cfg.pointwise_ratio, hid, init_scale=s,
                                    activation=cfg.pointwise_use_activation)  # fmt: skip
        self.pre_r_ln = LayerNorm(hid)
        self.r = MaskedAttention(hid, cfg.attention_heads, cfg.maxlen, cfg.attention_mask_style == "clipped_causal", s)

    def forward(self, x_bte, ep_bt, mask_bm, k_bme, v_bme):
        x_bte, state = self.r(self.pre_r_ln(x_bte), ep_bt, mask_bm, k_bme, v_bme)
        if self.use_pointwise_layer:
            mlp_bte = self.mlp1(self.mlp0(x_bte))
            x_bte = x_bte + mlp_bte if self.is_residual else mlp_bte
        return x_bte, state


class ResidualRecurrentBlocks(nn.Module):
    """The stack of transformer blocks; the state is stacked over blocks (dim 1)."""

    def __init__(self, cfg: NetConfig):
        super().__init__()
        n = cfg.n_recurrence_layers
        init_scale = n**-0.5 if cfg.recurrence_is_residual else 1.0
        self.blocks = nn.ModuleList(ResidualRecurrentBlock(cfg, init_scale) for _ in range(n))

    def forward(self, x_bte: torch.Tensor, first_bt: torch.Tensor, state: dict[str, torch.Tensor]):
        masks, ks, vs = [], [], []
        ep_bt = episode_ids(first_bt)
        for i, block in enumerate(self.blocks):
            x_bte, (mask, k, v) = block(x_bte, ep_bt, state["mask"][:, i], state["k"][:, i], state["v"][:, i])
            masks.append(mask)
            ks.append(k)
            vs.append(v)
        return x_bte, {"mask": torch.stack(masks, 1), "k": torch.stack(ks, 1), "v": torch.stack(vs, 1)}
