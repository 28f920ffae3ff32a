"""Elastic env runners: grow and shrink a PPG job's env runner group between iterations (docs/rl-design.md §4).

:func:`rescale_env_runners` runs once at the top of every ``PPG.training_step``. The group's **target** is
``min(desired, max)``: ``desired`` is what ``vpt-ray scale RUN --env-runners N`` stored in the ledger (``None``:
the spec's maximum, ``rl.scale.env_runners``), never more than the spec's maximum and never less than 1.

- **Grow** when the cluster has room: free slots are ``available // per-runner demand`` for every resource a
  runner asks for (CPU, its custom resources; on a cluster with a ``rollout`` resource, free ``rollout`` too, so
  runners are only counted onto rollout nodes). Beyond the free slots, at most :data:`MAX_WAITING` runners may
  wait for capacity: that pending actor is the demand a Ray autoscaler answers with a node, and once the node is up
  the next iterations fill it. New runners get the learners' current weights before their first sample.
- **Fewer runners when nodes leave**: RLlib restarts a runner whose node died; it stays pending (unhealthy) until
  capacity returns, and the iteration goes on with the others. Nothing to do here but count it.
- **Shrink** when the target drops below the group's size: unhealthy runners go first, then runners still
  starting, then the newest. RLlib has no public way to drop one runner, so this uses the actor manager's private
  ``remove_actor`` (``tests/test_rl_elastic.py`` checks every private name used here, so an RLlib upgrade fails
  loudly).

Env seeds stay distinct: RLlib's ``add_workers`` numbers new runners ``num_actors + 1, ...``, which repeats a live
runner's index after a removal. Runners added here get the actor manager's next id as their worker index instead
(the manager never reuses ids), and :class:`vpt_ray.rl.env_runner.VPTEnvRunner` derives its env seeds from
``(seed, worker index, env builds, fresh entropy after a restart)``.

The returned counts go into the iteration's summary (TensorBoard ``env_runners/*``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import ray

logger = logging.getLogger(__name__)

MAX_WAITING = 1  # runners that may wait for capacity that is not there yet (an autoscaler's cue to add a node)
ROLLOUT_RESOURCE = "rollout"  # custom resource of the cluster's CPU rollout nodes (cluster/vpt.yaml)


@dataclass
class _ElasticState:
    """Per-algorithm bookkeeping: runners added here that have not answered yet, lifetime counts."""

    starting: dict[int, Any] = field(default_factory=dict)  # actor id -> ObjectRef of its first ping
    added_lifetime: int = 0
    removed_lifetime: int = 0


@dataclass(frozen=True)
class RescalePlan:
    add: int  # runners to add
    remove: tuple[int, ...]  # actor ids to remove, in order


def env_runner_demand(config) -> dict[str, float]:
    """The resources one env runner asks Ray for (an ``AlgorithmConfig``)."""
    demand = {"CPU": float(config.num_cpus_per_env_runner), "GPU": float(config.num_gpus_per_env_runner or 0)}
    demand.update({k: float(v) for k, v in (config.custom_resources_per_env_runner or {}).items()})
    return {k: v for k, v in demand.items() if v > 0}


def free_env_runner_slots(demand: Mapping[str, float], available: Mapping[str, float],
                          cluster: Mapping[str, float]) -> int:  # fmt: skip
    """How many more runners of ``demand`` fit into ``available``; a cluster that has rollout nodes (``rollout`` in
    ``cluster``) counts their free ``rollout`` units too, one per runner CPU, so runners are grown onto them."""
    counted = dict(demand)
    if ROLLOUT_RESOURCE in cluster and ROLLOUT_RESOURCE not in counted:
        counted[ROLLOUT_RESOURCE] = counted.get("CPU", 1.0)
    if not counted:
        raise ValueError("an env runner that asks for no resources: its count cannot follow the cluster's size")
    # A small epsilon: fractional demands (0.5 CPU) leave float residue in Ray's bookkeeping.
    return max(0, min(int(available.get(r, 0.0) / amount + 1e-9) for r, amount in counted.items()))


def plan_rescale(actor_ids: Sequence[int], unhealthy: Sequence[int], starting: Sequence[int], target: int,
                 free_slots: int, max_waiting: int = MAX_WAITING) -> RescalePlan:  # fmt: skip
    """What to change so the group moves towards ``target`` runners.

    ``actor_ids`` are the group's runners (ids grow with age), ``unhealthy`` those RLlib took out of service
    (restarting, or pending on a node that left), ``starting`` those added and not up yet. Shrinking removes
    unhealthy runners first, then starting ones, then the newest. Growing adds up to ``free_slots`` runners plus as
    many as keep at most ``max_waiting`` runners waiting for capacity (unhealthy and starting ones wait too).
    """
    ids = sorted(actor_ids)
    if len(ids) > target:
        bad, young = set(unhealthy), set(starting)
        order = sorted(ids, key=lambda i: (i not in bad, i not in young, -i))
        return RescalePlan(0, tuple(order[: len(ids) - target]))
    waiting = len(set(unhealthy) | set(starting))
    room = max(0, free_slots) + max(0, max_waiting - waiting)
    return RescalePlan(min(target - len(ids), room), ())


def target_env_runners(config, desired: int | None) -> int:
    """``min(desired, spec max)``, at least 1; ``desired=None`` means the spec's maximum."""
    most = config.max_env_runners or config.num_env_runners
    if desired is None:
        return most
    if desired < 1:
        logger.warning("desired env runners %s is below 1; keeping 1 (a job needs a runner to sample)", desired)
    elif desired > most:
        logger.warning("desired env runners %d is above the spec's maximum (rl.scale.env_runners = %d); using %d",
                       desired, most, most)  # fmt: skip
    return max(1, min(int(desired), most))


def _state(algo) -> _ElasticState:
    state = getattr(algo, "_elastic_state", None)
    if state is None:
        state = algo._elastic_state = _ElasticState()
    return state


def _add_env_runners(group, n: int) -> list[int]:
    """Start ``n`` runners whose worker indices are their (never reused) actor-manager ids; returns the ids.

    ``EnvRunnerGroup.add_workers`` would number them ``num_actors + i + 1``: after a removal that repeats a live
    runner's index, and with it its env seeds.
    """
    manager = group._worker_manager
    first = manager._next_id
    actors = [
        group._make_worker(env_creator=group._env_creator, validate_env=None, worker_index=first + i,
                           num_workers=manager.num_actors() + n, config=group._remote_config_obj_ref)  # fmt: skip
        for i in range(n)
    ]
    manager.add_actors(actors)
    ids = manager.actor_ids()[-n:]
    if ids != list(range(first, first + n)):  # add_actors numbers them from _next_id, in order
        raise RuntimeError(f"RLlib's actor manager numbered new env runners {ids}, expected from {first}")
    return ids


def add_env_runners(algo, n: int) -> list[int]:
    """Start ``n`` env runners in ``algo``'s group with worker indices no runner of this group had (distinct env
    seeds) and the learners' current weights; returns their actor ids. They count as starting until they answer.
    Also the way to replace a runner that is dead for good (``EnvRunnerGroup.add_workers`` would reuse indices)."""
    group, state = algo.env_runner_group, _state(algo)
    new_ids = _add_env_runners(group, n)
    actors = group._worker_manager._actors
    for actor_id in new_ids:
        state.starting[actor_id] = actors[actor_id].ping.remote()
    # Queued ahead of any sample call (a caller's actor tasks run in order): the first rows use current weights.
    group.sync_weights(from_worker_or_learner_group=algo.learner_group, to_worker_indices=new_ids,
                       inference_only=True)  # fmt: skip
    state.added_lifetime += n
    return new_ids


def _remove_env_runner(group, actor_id: int) -> None:
    # Removed from the manager first: its in-flight sample is forgotten, not reported as a failure.
    ray.kill(group._worker_manager.remove_actor(actor_id), no_restart=True)


def rescale_env_runners(algo, desired: int | None) -> dict[str, float]:
    """Move ``algo``'s env runner group towards ``min(desired, spec max)`` (see the module docstring); returns the
    iteration's ``env_runners/*`` scalars: ``total``, ``healthy`` (up and in service), ``waiting`` (restarting,
    pending on capacity or starting), ``desired`` (the target), ``free_slots``, ``added``, ``removed`` and the
    lifetime counts."""
    config, group = algo.config, algo.env_runner_group
    state = _state(algo)
    if config.num_env_runners == 0:  # sampling in the driver's own runner (tests, debugging): nothing to scale
        return {"env_runners/total": 0, "env_runners/healthy": 0, "env_runners/desired": 0}
    target = target_env_runners(config, desired)
    manager = group._worker_manager

    if state.starting:  # runners that answered their first ping are up
        ready, _ = ray.wait(list(state.starting.values()), num_returns=len(state.starting), timeout=0)
        ready = set(ready)
        state.starting = {i: ref for i, ref in state.starting.items() if ref not in ready and i in manager.actor_ids()}
    ids = manager.actor_ids()
    healthy = set(manager.healthy_actor_ids())
    unhealthy = [i for i in ids if i not in healthy]
    free = free_env_runner_slots(env_runner_demand(config), ray.available_resources(), ray.cluster_resources())
    plan = plan_rescale(ids, unhealthy, list(state.starting), target, free)

    for actor_id in plan.remove:
        _remove_env_runner(group, actor_id)
        state.starting.pop(actor_id, None)
    if plan.remove:
        logger.info("env runners: removed %s (target %d)", list(plan.remove), target)
    if plan.add:
        new_ids = add_env_runners(algo, plan.add)
        logger.info("env runners: added %s (target %d, %d free slots)", new_ids, target, free)
    state.removed_lifetime += len(plan.remove)

    ids = manager.actor_ids()
    up = [i for i in manager.healthy_actor_ids() if i not in state.starting]
    return {
        "env_runners/total": len(ids),
        "env_runners/healthy": len(up),
        "env_runners/waiting": len(ids) - len(up),
        "env_runners/desired": target,
        "env_runners/free_slots": free,
        "env_runners/added": plan.add,
        "env_runners/removed": len(plan.remove),
        "env_runners/added_lifetime": state.added_lifetime,
        "env_runners/removed_lifetime": state.removed_lifetime,
    }


def stop_waiting_env_runners(algo) -> list[int]:
    """Remove the runners that are not up (pending on capacity, restarting, starting): RLlib's
    ``EnvRunnerGroup.stop`` waits without a timeout for every runner's ``stop()``, forever for one with no node.
    Call before ``Algorithm.stop``; returns the removed ids."""
    group = getattr(algo, "env_runner_group", None)
    if group is None or group.num_remote_env_runners() == 0:
        return []
    state = _state(algo)
    manager = group._worker_manager
    if state.starting:
        ready, _ = ray.wait(list(state.starting.values()), num_returns=len(state.starting), timeout=0)
        state.starting = {i: ref for i, ref in state.starting.items() if ref not in set(ready)}
    healthy = set(manager.healthy_actor_ids())
    gone = [i for i in manager.actor_ids() if i not in healthy or i in state.starting]
    for actor_id in gone:
        _remove_env_runner(group, actor_id)
        state.starting.pop(actor_id, None)
    return gone


__all__ = [
    "MAX_WAITING", "ROLLOUT_RESOURCE", "RescalePlan", "add_env_runners", "env_runner_demand", "free_env_runner_slots",
    "plan_rescale", "rescale_env_runners", "stop_waiting_env_runners", "target_env_runners",
]  # fmt: skip
