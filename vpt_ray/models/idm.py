"""The inverse dynamics model: non-causal over a clip, factored heads (Minecraft 20 x 2 buttons, 2 x 11 camera bins).

State-dict keys equal the released ``InverseActionPolicy``'s. Reproduced quirks of the released IDM, needed to
match its weights: the first Impala conv has a norm when there is a conv3d front end; the latent is
``final_ln(relu(blocks_out))`` (``lastlayer`` exists but its output is discarded); ``pre_lstm_ln`` is never
applied; the attention (mask style "none") sees every frame of the clip and, when ``attention_memory_size >
timesteps``, also an all-zero memory of that length, as a released IDM does from its initial state.
"""

from __future__ import annotations

import torch
from torch import nn

from vpt_ray.actions import get_action_space
from vpt_ray.models.config import ModelConfig
from vpt_ray.models.heads import CategoricalHead
from vpt_ray.models.net import VPTNet
from vpt_ray.models.precision import full_precision


class InverseDynamicsModel(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.kind != "idm":
            raise ValueError(f"InverseDynamicsModel needs a config of kind 'idm', got {config.kind!r}")
        self.config = config
        self.action_space = get_action_space(config.action_space)
        self.context_len = config.net.timesteps
        self.net = VPTNet(config.net, inverse=True)
        hid = config.net.hidsize
        self.pi_head = nn.ModuleDict({k: CategoricalHead(hid, fc) for k, fc in self.action_space.idm_heads.items()})

    @property
    def device(self) -> torch.device:
        return self.net.final_ln.weight.device

    def latent(self, frames_bthwc) -> torch.Tensor:
        """uint8 (B, T, H, W, 3) -> (B, T, hidsize)."""
        frames_bthwc = torch.as_tensor(frames_bthwc, device=self.device)
        self.net.check_frames(frames_bthwc)
        b, t = frames_bthwc.shape[:2]
        first_bt = torch.zeros((b, t), dtype=torch.bool, device=self.device)
        latent, _ = self.net(frames_bthwc, first_bt, self.net.initial_state(b, device=self.device))
        return latent

    def forward(self, frames_bthwc) -> dict[str, torch.Tensor]:
        """uint8 (B, T, H, W, 3) -> head -> log-probs (B, T, factors, classes) (temperature applied)."""
        latent = self.latent(frames_bthwc)
        with full_precision(latent.device):  # the heads in fp32 under bf16 autocast too (models.precision)
            latent = latent.float()
            return {k: head(latent, self.config.temperature) for k, head in self.pi_head.items()}

    @torch.no_grad()
    def predict(self, frames_bthwc) -> dict[str, torch.Tensor]:
        """head -> int64 (B, T, factors): the most likely class of each factor (decode with
        ``action_space.from_idm``)."""
        return {k: lp.argmax(-1) for k, lp in self(frames_bthwc).items()}
