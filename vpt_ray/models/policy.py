"""The VPT policy: trunk + one categorical head per action-space head + value head (+ PPG's auxiliary value head).

State-dict keys equal the released ``MinecraftAgentPolicy``'s (``net.*``, ``pi_head.<head>.linear_layer.*``,
``value_head.linear.*``, ``value_head.normalizer.*``), so released weights load strictly.

Distribution helpers (``log_prob``, ``entropy``, ``kl``) follow the action space's ``policy_loss_masks``: a head
whose choice is ignored for some classes of another head (Minecraft: the camera head when the joint button
class has the camera meta button off) counts only where it takes effect. For a taken action that is the mask
itself; for whole distributions (entropy, KL) it is the probability, under the first distribution, that the
head takes effect, which gives the exact entropy/KL of the distribution over effective actions.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn

from vpt_ray.actions import get_action_space
from vpt_ray.models.config import ModelConfig
from vpt_ray.models.heads import CategoricalHead, EwmaNormalizer, ValueHead
from vpt_ray.models.layers import fan_in_init_
from vpt_ray.models.net import VPTNet
from vpt_ray.models.precision import full_precision

STATE_KEYS = ("mask", "k", "v")
AUX_VALUE_HEAD = "aux_value_head"
AUX_VALUE_INIT_SCALE = 0.1  # fan-in norm of the auxiliary head's random rows: small initial predictions


@dataclasses.dataclass
class PolicyOutput:
    logprobs: dict[str, torch.Tensor]  # head -> (B, T, n) normalised log-probs, temperature applied
    vpred: torch.Tensor  # (B, T) normalised value prediction
    value: torch.Tensor  # (B, T) denormalised value
    aux_vpred: torch.Tensor | None  # (B, T) auxiliary (PPG) value prediction, normalised; None before RL
    latent: torch.Tensor  # (B, T, hidsize) the input of every head
    state: dict[str, torch.Tensor]  # the recurrent state after the call


def _head_gates(action_space) -> dict[str, tuple[str, np.ndarray]]:
    """head -> (gating head, float (n_gating,)): where each head's loss mask depends on another head's class."""
    heads = action_space.policy_heads
    gates: dict[str, tuple[str, np.ndarray]] = {}
    for gating, n in heads.items():
        probe = {name: np.zeros(n, dtype=np.int64) for name in heads}
        probe[gating] = np.arange(n, dtype=np.int64)
        masks = action_space.policy_loss_masks(probe)
        for head in heads:
            if head != gating and not np.all(masks[head] == 1.0):
                if head in gates:
                    raise NotImplementedError(f"head {head!r} is gated by more than one head")
                gates[head] = (gating, np.asarray(masks[head], dtype=np.float32))
    return gates


class VPTPolicy(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.kind != "policy":
            raise ValueError(f"VPTPolicy needs a config of kind 'policy', got {config.kind!r}")
        self.config = config
        self.action_space = get_action_space(config.action_space)
        self.memory_len = config.net.maxlen
        self.context_len = config.net.timesteps
        hid = config.net.hidsize
        self.net = VPTNet(config.net)
        self.value_head = ValueHead(hid)
        self.pi_head = nn.ModuleDict({k: CategoricalHead(hid, (n,)) for k, n in self.action_space.policy_heads.items()})
        self.aux_value_head: nn.Linear | None = None
        self._gating = {}
        for head, (gating, gate) in _head_gates(self.action_space).items():
            self._gating[head] = gating
            self.register_buffer(f"_gate_{head}", torch.from_numpy(gate), persistent=False)

    # ----------------------------------------------------------------------------------------------- running
    @property
    def device(self) -> torch.device:
        return self.net.final_ln.weight.device

    @property
    def value_normalizer(self) -> EwmaNormalizer:
        return self.value_head.normalizer

    def initial_state(self, batch_size: int, device=None) -> dict[str, torch.Tensor]:
        """{"mask": bool (B, L, M), "k"/"v": float (B, L, M, hidsize)}: empty memory."""
        return self.net.initial_state(batch_size, device=self.device if device is None else device)

    def _check_state(self, state: dict[str, torch.Tensor], batch: int) -> None:
        if not isinstance(state, dict) or set(state) != set(STATE_KEYS):
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"state must be a dict with keys {list(STATE_KEYS)}, got {got}")
        net = self.config.net
        mask_shape = (batch, net.n_recurrence_layers, net.maxlen)
        for key, shape in (("mask", mask_shape), ("k", (*mask_shape, net.hidsize)), ("v", (*mask_shape, net.hidsize))):
            if tuple(state[key].shape) != shape:
                raise ValueError(f"state[{key!r}] must have shape {shape}, got {tuple(state[key].shape)}")
        if state["mask"].dtype != torch.bool:
            raise ValueError(f"state['mask'] must be bool, got {state['mask'].dtype}")

    def forward(self, frames_bthwc, first_bt, state: dict[str, torch.Tensor] | None = None) -> PolicyOutput:
        """frames uint8 (B, T, H, W, 3), first bool (B, T) (episode starts, honoured at any t), state or None
        (= initial state)."""
        device = self.device
        frames_bthwc = torch.as_tensor(frames_bthwc, device=device)
        first_bt = torch.as_tensor(first_bt, device=device)
        self.net.check_frames(frames_bthwc)
        b, t = frames_bthwc.shape[:2]
        if first_bt.dtype != torch.bool or tuple(first_bt.shape) != (b, t):
            raise ValueError(f"first must be bool ({b}, {t}), got {first_bt.dtype} {tuple(first_bt.shape)}")
        if state is None:
            state = self.initial_state(b)
        else:
            self._check_state(state, b)
        latent, state = self.net(frames_bthwc, first_bt, state)
        # The heads in fp32 under bf16 autocast too (models.precision): log-probs, KL and value losses use them.
        with full_precision(device):
            latent = latent.float()
            logprobs = {k: head(latent, self.config.temperature) for k, head in self.pi_head.items()}
            vpred = self.value_head(latent)
            aux_vpred = self.aux_value_head(latent)[..., 0] if self.aux_value_head is not None else None
        return PolicyOutput(logprobs, vpred, self.value_normalizer.denormalize(vpred), aux_vpred, latent, state)

    # ------------------------------------------------------------------------------------------ distributions
    @staticmethod
    def sample(logprobs: dict[str, torch.Tensor], deterministic: bool = False,
               generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:  # fmt: skip
        """head -> int64 (B, T): the argmax, or a sample (Gumbel-max) drawn with ``generator``."""
        if deterministic:
            return {k: lp.argmax(dim=-1) for k, lp in logprobs.items()}
        out = {}
        for k, lp in logprobs.items():
            device = generator.device if generator is not None else lp.device
            u = torch.rand(lp.shape, generator=generator, device=device, dtype=lp.dtype).to(lp.device)
            out[k] = (lp - torch.log(-torch.log(u))).argmax(dim=-1)
        return out

    def log_prob(self, logprobs: dict[str, torch.Tensor], actions: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, T): sum over heads of log p(action), each head masked by ``policy_loss_masks(actions)``."""
        actions = {k: torch.as_tensor(a, device=logprobs[k].device) for k, a in actions.items()}
        masks = self.action_space.policy_loss_masks(actions)
        total = 0.0
        for k, lp in logprobs.items():
            total = total + masks[k] * lp.gather(-1, actions[k].unsqueeze(-1)).squeeze(-1)
        return total

    def _head_weights(self, logprobs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor | float]:
        weights: dict[str, torch.Tensor | float] = {}
        for k in logprobs:
            if k in self._gating:
                weights[k] = (logprobs[self._gating[k]].exp() * getattr(self, f"_gate_{k}")).sum(-1)
            else:
                weights[k] = 1.0
        return weights

    def entropy(self, logprobs: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, T) entropy of the distribution over effective actions (gated heads weighted by P(effective))."""
        weights = self._head_weights(logprobs)
        return sum(weights[k] * -(lp.exp() * lp).sum(-1) for k, lp in logprobs.items())

    def kl(self, logprobs_p: dict[str, torch.Tensor], logprobs_q: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, T) KL(p || q) over effective actions (gated heads weighted by P_p(effective))."""
        weights = self._head_weights(logprobs_p)
        return sum(
            weights[k] * (lp.exp() * (lp - logprobs_q[k])).sum(-1) for k, lp in logprobs_p.items()
        )

    # ------------------------------------------------------------------------------------------------- RL
    @torch.no_grad()
    def add_aux_value_head(self, generator: torch.Generator | None = None) -> nn.Linear:
        """Attach PPG's auxiliary value head (one linear layer on the latent), randomly initialised."""
        ref = self.net.final_ln.weight
        aux = nn.Linear(self.config.net.hidsize, 1, device=ref.device, dtype=ref.dtype)
        aux.weight.copy_(torch.randn(aux.weight.shape, generator=generator))
        fan_in_init_(aux, AUX_VALUE_INIT_SCALE)
        self.aux_value_head = aux
        return aux

    @torch.no_grad()
    def reset_value_heads_for_rl(self, generator: torch.Generator | None = None) -> None:
        """PPG start: value head zero (its normaliser reset too), a new randomly initialised auxiliary value head."""
        self.value_head.linear.weight.zero_()
        self.value_head.linear.bias.zero_()
        self.value_normalizer.reset()
        self.add_aux_value_head(generator)
