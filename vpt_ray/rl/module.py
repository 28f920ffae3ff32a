"""VPTRLModule: the VPT policy (``vpt_ray.models.VPTPolicy``) as a stateful RLlib ``TorchRLModule``.

The Transformer-XL memory is the module's recurrent state (``{"mask", "k", "v"}``, batch first). The connectors
of :mod:`vpt_ray.rl.connectors` keep it per episode in ``episode.custom_data`` and never per step.

| caller | batch | returns |
|---|---|---|
| env runner (``_forward_exploration``) | ``obs`` uint8 (B, 1, H, W, 3), ``first`` bool (B, 1), ``state_in`` | ``actions`` {head: (B, 1)}, ``action_logp`` (B, 1), ``vf_preds`` (B, 1) denormalised value, ``state_out`` |
| learner (``_forward_train``) | rows: ``obs`` (B, T, ...), ``first`` (B, T), ``state_in`` (state at row start) | ``logprobs`` {head: (B, T, n)}, ``vpred`` (B, T) normalised, ``aux_vpred`` (B, T) |
| runner bootstrap (``compute_values``) | the runner's next-step batch | (B, 1) denormalised value |

The module samples its multi-head action itself (RLlib's ``GetActions`` then does nothing), and returns nothing
else per step: no distribution inputs, no embeddings, which RLlib would store per step.

At RL start the value heads are new (method doc §6): the value head zero-initialised, the auxiliary value head
random, the same on every process (seeded), so DDP learners and env runners agree before the first weight sync.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.apis.value_function_api import ValueFunctionAPI
from ray.rllib.core.rl_module.torch.torch_rl_module import TorchRLModule

from vpt_ray.config import from_dict
from vpt_ray.models import ModelConfig, VPTPolicy, build_model

FIRST = "first"  # batch column: the observation starts an episode (the policy cuts its memory there)
# Parameters BC never trained for RL: a pretrained checkpoint's value head (and aux head, if any) are replaced.
RL_VALUE_PREFIXES = ("value_head.", "aux_value_head.")


def module_model_config(model: ModelConfig, *, value_norm_beta: float, seed: int) -> dict[str, Any]:
    """The ``model_config`` of :class:`VPTRLModule` (plain data: it travels inside the algorithm config)."""
    from vpt_ray.config import to_dict

    return {"model": to_dict(model), "value_norm_beta": float(value_norm_beta), "seed": int(seed)}


def load_pretrained_weights(policy: VPTPolicy, state_dict: Mapping[str, torch.Tensor], where: str) -> None:
    """Load a BC policy's weights into an RL policy, keeping the RL value heads (fresh per the paper).

    Every other parameter must be present and fit; the checkpoint's own value head is ignored (BC never trains
    it), so RL starts with the value head at zero, its normaliser empty and the auxiliary head random.
    """
    from vpt_ray.models.checkpoint import WeightsError

    own = policy.state_dict()
    body = {k: v for k, v in state_dict.items() if not k.startswith(RL_VALUE_PREFIXES)}
    wanted = {k for k in own if not k.startswith(RL_VALUE_PREFIXES)}
    missing, unexpected = sorted(wanted - set(body)), sorted(set(body) - wanted)
    shapes = [f"{k}: {list(v.shape)} vs {list(own[k].shape)}" for k, v in body.items() if k in own and v.shape != own[k].shape]
    if missing or unexpected or shapes:
        raise WeightsError(f"{where}: weights do not fit the RL policy: missing {missing}, unexpected {unexpected}, "
                           f"shape mismatch {shapes}")  # fmt: skip
    policy.load_state_dict(body, strict=False)


class VPTRLModule(TorchRLModule, ValueFunctionAPI):
    """See the module docstring. ``model_config``: :func:`module_model_config`."""

    def setup(self):
        config = from_dict(ModelConfig, self.model_config["model"], where="rl_module.model_config")
        self.policy: VPTPolicy = build_model(config)
        self.policy.reset_value_heads_for_rl(generator=torch.Generator().manual_seed(int(self.model_config["seed"])))
        self.policy.value_normalizer.beta = float(self.model_config["value_norm_beta"])
        self._initial_state = {k: v[0].numpy() for k, v in self.policy.initial_state(1, device="cpu").items()}

    def get_initial_state(self) -> dict[str, np.ndarray]:
        """The empty memory of one sub-env, without a batch dim (RLlib stacks these)."""
        return self._initial_state

    def _act(self, batch: dict[str, Any], deterministic: bool) -> dict[str, Any]:
        with torch.no_grad():
            out = self.policy(batch[Columns.OBS], batch[FIRST], batch[Columns.STATE_IN])
            actions = self.policy.sample(out.logprobs, deterministic=deterministic)
            return {
                Columns.ACTIONS: actions,
                Columns.ACTION_LOGP: self.policy.log_prob(out.logprobs, actions),
                Columns.VF_PREDS: out.value,
                Columns.STATE_OUT: out.state,
            }

    def _forward_exploration(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        return self._act(batch, deterministic=False)

    def _forward_inference(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        return self._act(batch, deterministic=True)

    def _forward_train(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        out = self.policy(batch[Columns.OBS], batch[FIRST], batch[Columns.STATE_IN])
        return {"logprobs": out.logprobs, "vpred": out.vpred, "aux_vpred": out.aux_vpred}

    def compute_values(self, batch: dict[str, Any], embeddings: Any = None) -> torch.Tensor:
        """Denormalised value of each step of ``batch`` (state and ``first`` as in exploration); no state kept."""
        with torch.no_grad():
            return self.policy(batch[Columns.OBS], batch[FIRST], batch[Columns.STATE_IN]).value


__all__ = ["FIRST", "RL_VALUE_PREFIXES", "VPTRLModule", "load_pretrained_weights", "module_model_config"]
