"""Env runner connectors that carry the VPT memory per episode, never per step (docs/rl-design.md §1.3).

RLlib's default stateful pipeline stores every step's ``STATE_OUT`` in the episode (8 MiB per step for the 2x
model). Instead:

- :class:`VPTMemoryIn` (env-to-module, inserted before ``AddStatesFromEpisodesToBatch``, which then does nothing)
  puts the episode's current memory (``custom_data["vpt_state"]``, the initial state for a fresh episode) and the
  ``first`` flag of its latest observation into the batch.
- :class:`VPTMemoryOut` (module-to-env, inserted before ``NormalizeAndClipActions``) pops ``STATE_OUT`` from the
  batch, stores it as the episode's current memory and, on a chunk's first step, remembers the memory at the
  chunk's start (``custom_data["vpt_state_in"]``): the ``state_in`` of the row that chunk becomes.

``SingleAgentEpisode.cut()`` copies ``custom_data`` into the continuation chunk, so the memory crosses
``sample()`` calls by itself.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from ray.rllib.connectors.connector_v2 import ConnectorV2
from ray.rllib.core.columns import Columns

from vpt_ray.rl.continuing_env import VPT_INFO
from vpt_ray.rl.module import FIRST

STATE = "vpt_state"  # custom_data key: the memory after the episode's latest step
STATE_AT_CHUNK_START = "vpt_state_in"  # custom_data key: the memory before the chunk's first step


class VPTMemoryIn(ConnectorV2):
    """Env-to-module: ``state_in`` from ``episode.custom_data`` and ``first`` (B, 1) from the latest info."""

    def __call__(self, *, rl_module, batch: dict[str, Any], episodes, explore=None, shared_data=None, **kwargs):
        for episode in self.single_agent_episode_iterator(episodes):
            state = episode.custom_data.get(STATE)
            if state is None:
                state = rl_module.get_initial_state()
            self.add_batch_item(batch, Columns.STATE_IN, state, episode)
            first = episode.get_infos(-1)[VPT_INFO]["first"]
            self.add_batch_item(batch, FIRST, np.array([first]), episode)
        return batch


class VPTMemoryOut(ConnectorV2):
    """Module-to-env: ``state_out`` into ``episode.custom_data`` (and out of the batch, so never stored per step)."""

    def __call__(self, *, rl_module, batch: dict[str, Any], episodes, explore=None, shared_data=None, **kwargs):
        by_id = {episode.id_: episode for episode in episodes}
        for (episode_id, *_), items in batch.pop(Columns.STATE_OUT).items():
            episode = by_id[episode_id]
            if len(episode) == 0:
                before = episode.custom_data.get(STATE)
                episode.custom_data[STATE_AT_CHUNK_START] = rl_module.get_initial_state() if before is None else before
            episode.custom_data[STATE] = items[0]
        return batch


__all__ = ["STATE", "STATE_AT_CHUNK_START", "VPTMemoryIn", "VPTMemoryOut"]
