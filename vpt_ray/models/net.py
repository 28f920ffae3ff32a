"""The VPT trunk shared by the policy and the IDM: frames -> latent (B, T, hidsize).

pixels / 255 -> [IDM: 3-D temporal conv + ReLU] -> Impala CNN -> dense 256 -> dense hidsize -> [pre-LN] ->
residual transformer blocks -> ReLU -> lastlayer (dense) -> LayerNorm.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from vpt_ray.models.attention import ResidualRecurrentBlocks
from vpt_ray.models.config import NetConfig
from vpt_ray.models.layers import ImpalaCNN, LayerNorm, NormedLayer, dense_norm

CNN_OUTSIZE = 256  # hard-coded in the released code


class ImgObsProcess(nn.Module):
    def __init__(self, cfg: NetConfig, first_conv_norm: bool):
        super().__init__()
        self.cnn = ImpalaCNN(cfg, CNN_OUTSIZE, first_conv_norm)
        self.linear = NormedLayer("linear", CNN_OUTSIZE, cfg.hidsize, norm=dense_norm(cfg))

    def forward(self, x_bthwc: torch.Tensor) -> torch.Tensor:
        return self.linear(self.cnn(x_bthwc))


class VPTNet(nn.Module):
    """The trunk. ``inverse=True`` builds the IDM variant (conv3d front end, released IDM quirks)."""

    def __init__(self, cfg: NetConfig, inverse: bool = False):
        super().__init__()
        self.cfg = cfg
        self.inverse = inverse
        self.img_process = ImgObsProcess(cfg, cfg.first_conv_norm or (inverse and cfg.conv3d_params is not None))
        # The released IDM builds pre_lstm_ln when asked but never applies it; it is kept for weight parity.
        self.pre_lstm_ln = LayerNorm(cfg.hidsize) if cfg.use_pre_lstm_ln else None
        self.recurrent_layer = ResidualRecurrentBlocks(cfg)
        # The released IDM computes lastlayer and discards its output; it is kept (unused) for weight parity.
        self.lastlayer = NormedLayer("linear", cfg.hidsize, cfg.hidsize, norm=dense_norm(cfg))
        self.final_ln = LayerNorm(cfg.hidsize)
        p = cfg.conv3d_params
        self.conv3d_layer = (
            NormedLayer("conv3d", p.inchan, p.outchan, kernel_size=tuple(p.kernel_size), padding=tuple(p.padding))
            if p is not None
            else None
        )

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        h, w, _ = self.cfg.img_shape
        return (h, w, 3)

    def initial_state(self, batch_size: int, device=None) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        shape = (batch_size, cfg.n_recurrence_layers, cfg.maxlen)
        dtype = self.final_ln.weight.dtype
        return {
            "mask": torch.zeros(shape, dtype=torch.bool, device=device),
            "k": torch.zeros((*shape, cfg.hidsize), dtype=dtype, device=device),
            "v": torch.zeros((*shape, cfg.hidsize), dtype=dtype, device=device),
        }

    def check_frames(self, frames_bthwc: torch.Tensor) -> None:
        if frames_bthwc.dtype != torch.uint8 or frames_bthwc.ndim != 5 or tuple(frames_bthwc.shape[2:]) != self.frame_shape:
            raise ValueError(
                f"frames must be uint8 (B, T, {', '.join(map(str, self.frame_shape))}), "
                f"got {frames_bthwc.dtype} {tuple(frames_bthwc.shape)}"
            )

    def forward(self, frames_bthwc: torch.Tensor, first_bt: torch.Tensor, state: dict[str, torch.Tensor]):
        """-> (latent (B, T, hidsize), new state)."""
        x = frames_bthwc.to(self.final_ln.weight.dtype)
        if self.cfg.scale_input_img:
            x = x / 255.0
        if self.conv3d_layer is not None:
            x = self.conv3d_layer(x.permute(0, 4, 1, 2, 3)).permute(0, 2, 3, 4, 1)
        x = self.img_process(x)
        if self.pre_lstm_ln is not None and not self.inverse:
            x = self.pre_lstm_ln(x)
        x, state = self.recurrent_layer(x, first_bt, state)
        x = F.relu(x)
        if not self.inverse:
            x = self.lastlayer(x)
        return self.final_ln(x), state
