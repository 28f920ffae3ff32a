"""Evaluating agents on a task: item progression, returns, and the Crafter score, with their uncertainty.

An *agent* is a VPT policy checkpoint (``vpt_ray.models.load_checkpoint``; actions sampled from the policy, its
transformer memory carried from step to step and cut at every episode start), the scripted Crafter player
(``demonstrator``) or uniformly random actions (``random``). :func:`evaluate` plays ``episodes`` episodes on Ray
actors (each steps several envs in lockstep with one batched forward per step) and :func:`summarize` turns the
per-episode records (``info["episode"]`` of :func:`vpt_ray.envs.make_env`, plus Crafter's achievement counters)
into rates:

* per item (task order): the fraction of episodes that obtained it, its binomial standard error
  ``sqrt(p (1 - p) / n)`` and the 95 % Wilson score interval (which stays inside [0, 1] at 0 % and 100 %);
* mean return (with its standard error) and mean length;
* Crafter only: the success rate (in percent) of each of Crafter's 22 achievements and the **Crafter score**
  ``exp(mean_i ln(1 + s_i)) - 1`` over those 22 rates (Hafner, "Benchmarking the Spectrum of Agent
  Capabilities", 2021). It is computed over the evaluated episodes of *this task* (its length cap and world
  size), so it compares agents on the same task but is not comparable to published scores (1 M training steps,
  10,000-step episodes in 64x64 worlds).

Seeds: episode ``i`` plays world ``episode_seed(seed, i)`` and draws its actions from a generator of its own
(``(seed, i)``), whatever worker and batch it lands in. (Crafter itself is not bit-reproducible across processes:
its creature balancing picks from sets ordered by memory address, so two runs of an episode can part ways after
a few dozen steps; rates are statistics over episodes, never exact replays.) The default
:data:`EVAL_SEED` is far from the small seeds training runs use (recordings and RL start at 0), so evaluation
worlds are never training worlds.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

EVAL_SEED = 1_000_003
Z_95 = 1.959963984540054  # two-sided 95 % normal quantile


class EvaluationError(ValueError):
    """An agent or task that cannot be evaluated (the message names the agent, file or value)."""


# ------------------------------------------------------------------------------------------------ statistics


def binomial_stderr(successes: int, n: int) -> float:
    """Standard error of a success fraction: ``sqrt(p (1 - p) / n)`` (0 for n = 0)."""
    if n <= 0:
        return 0.0
    p = successes / n
    return math.sqrt(p * (1.0 - p) / n)


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (default 95 %); (0, 1) for n = 0."""
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= successes <= n:
        raise ValueError(f"successes must lie in [0, n={n}], got {successes}")
    p = successes / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def crafter_score(success_rates_percent: Sequence[float]) -> float:
    """Hafner's Crafter score: ``exp(mean_i ln(1 + s_i)) - 1`` over success rates ``s_i`` in percent (0..100)."""
    s = np.asarray(list(success_rates_percent), dtype=np.float64)
    if s.size == 0:
        raise ValueError("crafter_score needs at least one success rate")
    if (s < 0).any() or (s > 100).any():
        raise ValueError(f"success rates must be percentages in [0, 100], got {s.tolist()}")
    return float(np.exp(np.mean(np.log1p(s))) - 1.0)


def crafter_achievements() -> tuple[str, ...]:
    """Crafter's 22 achievements, in ``crafter.constants.achievements`` order."""
    import crafter

    return tuple(crafter.constants.achievements)


# ---------------------------------------------------------------------------------------------------- agents


@dataclasses.dataclass(frozen=True)
class AgentSpec:
    """What plays: ``kind`` "policy" (a checkpoint directory), "demonstrator" (scripted Crafter player) or
    "random"; ``name`` labels it in tables and plots; ``deterministic`` takes the policy's argmax action."""

    name: str
    kind: Literal["policy", "demonstrator", "random"]
    checkpoint: str | None = None
    deterministic: bool = False

    def __post_init__(self):
        if self.kind not in ("policy", "demonstrator", "random"):
            raise EvaluationError(f"agent {self.name!r}: kind must be policy, demonstrator or random, got {self.kind!r}")
        if (self.kind == "policy") != (self.checkpoint is not None):
            raise EvaluationError(f"agent {self.name!r}: a checkpoint goes with kind 'policy' (and only with it)")

    def describe(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def parse_agent(text: str, *, deterministic: bool = False) -> AgentSpec:
    """``random``, ``demonstrator``, a checkpoint directory, each optionally as ``NAME=...`` to label it."""
    name, sep, what = text.partition("=")
    if not sep:
        name, what = "", text
    what = what.strip()
    if not what:
        raise EvaluationError(f"--agent {text!r}: expected random, demonstrator, or a checkpoint directory")
    if what in ("random", "demonstrator"):
        return AgentSpec(name or what, what)  # type: ignore[arg-type]
    path = Path(what).expanduser()
    check_policy_checkpoint(path, f"--agent {text!r}")
    default = path.resolve().parent.name if path.name == "final" else path.name  # RUN_DIR/final -> RUN_DIR's name
    return AgentSpec(name or default, "policy", str(path.resolve()), deterministic)


def check_policy_checkpoint(path: str | Path, where: str, spec=None) -> None:
    """Refuse (before any work) a directory that is not a policy checkpoint whose weights load, or (with task
    ``spec``) one that does not fit the task's env."""
    from vpt_ray.config import ConfigError
    from vpt_ray.models.checkpoint import WeightsError, check_checkpoint

    fits = {}
    if spec is not None:
        from vpt_ray.rl.config import ACTION_SPACE_OF_ENV

        fits = {"action_space": ACTION_SPACE_OF_ENV[spec.env.kind], "frame_size": spec.env.frame_size}
    try:
        check_checkpoint(path, kind="policy", **fits)
    except (ConfigError, WeightsError) as e:
        raise EvaluationError(f"{where}: {e}") from None


def check_agent_for_task(agent: AgentSpec, spec) -> None:
    """Refuse an agent that cannot play task ``spec`` (before any worker starts)."""
    if agent.kind == "demonstrator" and spec.env.kind != "crafter":
        raise EvaluationError(f"agent {agent.name!r}: the scripted player plays Crafter only, not {spec.env.kind}")
    if agent.kind == "policy":
        check_policy_checkpoint(agent.checkpoint, f"agent {agent.name!r} on task {spec.name!r}", spec)


# --------------------------------------------------------------------------------------------------- playing


def _episode_rng(seed: int, episode: int) -> np.random.Generator:
    return np.random.default_rng([seed, episode, 7])


class _Player:
    """Plays episodes of one agent with ``num_envs`` envs in lockstep (one batched policy forward per step)."""

    def __init__(self, agent: AgentSpec, task: Mapping[str, Any], num_envs: int, torch_threads: int = 1):
        import torch

        from vpt_ray.actions import get_action_space
        from vpt_ray.envs import make_env
        from vpt_ray.spec import load_task

        torch.set_num_threads(torch_threads)
        self.agent = agent
        self.spec = load_task(dict(task))
        self.envs = [make_env(self.spec) for _ in range(num_envs)]
        self.space = get_action_space(self.envs[0].unwrapped.action_space_name)
        self.policy = None
        if agent.kind == "policy":
            from vpt_ray.models import load_checkpoint

            self.policy = load_checkpoint(agent.checkpoint)

    def play(self, episodes: Sequence[int], seed: int) -> list[dict[str, Any]]:
        """Play episodes ``episodes`` (indices into the run seeded with ``seed``); one record per episode."""
        import torch

        from vpt_ray.envs import episode_seed
        from vpt_ray.envs.crafter_scripted import CrafterDemonstrator

        queue = list(episodes)
        n = len(self.envs)
        slot_episode: list[int | None] = [None] * n
        rngs: list[np.random.Generator | None] = [None] * n
        players: list[Any] = [None] * n
        obs = np.zeros((n, *self.envs[0].observation_space.shape), np.uint8)
        first = np.zeros(n, bool)
        records: list[dict[str, Any]] = []

        def start(i: int) -> None:
            ep = queue.pop(0)
            slot_episode[i], rngs[i], first[i] = ep, _episode_rng(seed, ep), True
            obs[i] = self.envs[i].reset(seed=episode_seed(seed, ep))[0]
            if self.agent.kind == "demonstrator":
                players[i] = CrafterDemonstrator(seed=int(rngs[i].integers(2**31)))

        for i in range(min(n, len(queue))):
            start(i)
        # Memory of every slot; a slot's `first` flag at its episode's first step cuts it (a fresh start).
        state = self.policy.initial_state(n) if self.policy is not None else None
        with torch.no_grad():
            while any(e is not None for e in slot_episode):
                active = [i for i in range(n) if slot_episode[i] is not None]
                if self.agent.kind == "demonstrator":
                    actions = {"action": np.zeros(n, np.int64)}
                    for i in active:
                        actions["action"][i] = players[i].act(self.envs[i])
                elif self.agent.kind == "random":
                    actions = self.space.from_policy({head: np.array([rngs[i].integers(k) if rngs[i] else 0
                                                                      for i in range(n)])
                                                      for head, k in self.space.policy_heads.items()})  # fmt: skip
                else:
                    actions, state = self._policy_act(obs, first, state, rngs)
                first[:] = False
                for i in active:
                    env = self.envs[i]
                    obs[i], _, terminated, truncated, info = env.step(self.space.to_env_action(actions, i))
                    if terminated or truncated:
                        records.append(self._record(slot_episode[i], seed, info["episode"], env, terminated))
                        slot_episode[i] = rngs[i] = None
                        if queue:
                            start(i)
        return records

    def _policy_act(self, obs: np.ndarray, first: np.ndarray, state, rngs):
        import torch

        out = self.policy(torch.from_numpy(obs[:, None]), torch.from_numpy(first[:, None]), state)
        idx = {}
        for head, lp in out.logprobs.items():
            lp = lp[:, 0].float().cpu().numpy()
            if not self.agent.deterministic:
                # Gumbel-max with each episode's own generator: a sample of softmax(lp) that does not depend on
                # which other episodes share the batch.
                lp = lp + np.stack([r.gumbel(size=lp.shape[-1]) if r is not None else np.zeros(lp.shape[-1])
                                    for r in rngs])  # fmt: skip
            idx[head] = lp.argmax(-1)
        return self.space.from_policy(idx), out.state

    def _record(self, episode: int, seed: int, info: dict[str, Any], env, terminated: bool) -> dict[str, Any]:
        from vpt_ray.envs import episode_seed

        record = {"episode": int(episode), "world_seed": int(episode_seed(seed, episode)),
                  "return": float(info["return"]), "length": int(info["length"]), "died": bool(terminated),
                  "items": dict(info["items"]), "item_steps": dict(info["item_steps"]),
                  "env_failures": int(info["env_failures"]), "achievements": None}  # fmt: skip
        if self.spec.env.kind == "crafter":
            record["achievements"] = _crafter_achievement_counts(env)
        return record

    def close(self) -> None:
        for env in self.envs:
            env.close()


def _crafter_achievement_counts(env) -> dict[str, int] | None:
    """The episode's achievement counters, read off the game; None when a failure replaced the game (the
    episode's counters are gone with it)."""
    from vpt_ray.envs.crafter_scripted import unwrap_crafter

    try:
        game = unwrap_crafter(env)
    except (TypeError, ValueError, AttributeError):
        return None
    counts = game._player.achievements
    return {name: int(counts.get(name, 0)) for name in crafter_achievements()}


class _EvalWorker:
    """Ray actor body: plays chunks of episodes of whichever agent it is handed, keeping that agent's player (its
    envs and loaded policy) until a chunk of another agent comes (chunks arrive agent by agent)."""

    def __init__(self, task: Mapping[str, Any], num_envs: int):
        self.task, self.num_envs = task, num_envs
        self.agent: AgentSpec | None = None
        self.player: _Player | None = None

    def play(self, agent: AgentSpec, episodes: Sequence[int], seed: int) -> list[dict[str, Any]]:
        if agent != self.agent:
            self.close()
            self.agent, self.player = agent, _Player(agent, self.task, self.num_envs)
        return self.player.play(episodes, seed)

    def close(self) -> None:
        if self.player is not None:
            self.player.close()
            self.agent = self.player = None


def resolve_task(task: Any, max_steps: int | None = None):
    """The validated task spec of ``task`` (name, path, mapping or spec), its length capped at ``max_steps``."""
    from vpt_ray.spec import TaskSpec, load_task

    spec = task if isinstance(task, TaskSpec) else load_task(dict(task) if isinstance(task, Mapping) else task)
    if max_steps is not None:
        if max_steps < 1:
            raise EvaluationError(f"max_steps must be >= 1, got {max_steps}")
        spec = dataclasses.replace(spec, env=dataclasses.replace(spec.env, max_steps=max_steps))
    return spec


def evaluate(agent: AgentSpec, task: Any, **kwargs) -> dict[str, Any]:
    """:func:`evaluate_agents` of one agent: its summary."""
    return evaluate_agents([agent], task, **kwargs)[agent.name]


def evaluate_agents(agents: Sequence[AgentSpec], task: Any, *, episodes: int, seed: int = EVAL_SEED,
                    workers: int = 2, envs_per_worker: int = 8, max_steps: int | None = None, progress: bool = True,
                    address: str | None = None,
                    on_result: Callable[[str, dict[str, Any]], None] | None = None) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Play ``episodes`` episodes of ``task`` with each agent (the same worlds for all) and return agent name ->
    :func:`summarize` (``per_episode`` included); ``on_result(name, summary)`` sees each agent as soon as its last
    episode is in.

    One pool of ``workers`` Ray actors (one CPU each) serves every agent: chunks of ``envs_per_worker`` episodes,
    stepped in lockstep by the actor that takes them, are handed out agent by agent to whichever actor is free.
    ``workers=0`` plays in this process (no Ray). Ray: the connected cluster, else ``address``/RAY_ADDRESS, else a
    new local one (shut down again at the end). Every agent and the task are checked before anything plays.
    """
    from tqdm import tqdm

    from vpt_ray.spec import task_to_dict

    if episodes < 1:
        raise EvaluationError(f"episodes must be >= 1, got {episodes}")
    if workers < 0 or envs_per_worker < 1:
        raise EvaluationError(f"workers must be >= 0 and envs_per_worker >= 1, got {workers}, {envs_per_worker}")
    names = [a.name for a in agents]
    if len(set(names)) != len(names):
        raise EvaluationError(f"agent names must differ, got {names}")
    spec = resolve_task(task, max_steps)
    for agent in agents:
        check_agent_for_task(agent, spec)
    task_dict = task_to_dict(spec)
    items = list(spec.rewards.item_names)
    # Chunks of one batch each, agent by agent: an actor rarely switches agents, and the tail stays short.
    chunks = [(agent, list(range(lo, min(lo + envs_per_worker, episodes))))
              for agent in agents for lo in range(0, episodes, envs_per_worker)]  # fmt: skip
    records: dict[str, list[dict[str, Any]]] = {a.name: [] for a in agents}
    summaries: dict[str, dict[str, Any]] = {}
    bar = tqdm(total=episodes * len(agents), desc="evaluate", unit="episode", disable=not progress)

    def done(agent: AgentSpec, chunk_records: list[dict[str, Any]]) -> None:
        records[agent.name] += chunk_records
        bar.update(len(chunk_records))
        bar.set_postfix(agent=agent.name)
        if len(records[agent.name]) == episodes:
            eps = sorted(records[agent.name], key=lambda r: r["episode"])
            summaries[agent.name] = summarize(eps, items, agent=agent, task=spec.name, seed=seed)
            if on_result is not None:
                on_result(agent.name, summaries[agent.name])

    try:
        if workers == 0:
            worker = _EvalWorker(task_dict, envs_per_worker)
            try:
                for agent, eps in chunks:
                    done(agent, worker.play(agent, eps, seed))
            finally:
                worker.close()
        else:
            _evaluate_on_ray(chunks, task_dict, seed, workers, envs_per_worker, address, done)
    finally:
        bar.close()
    return {a.name: summaries[a.name] for a in agents}


def _evaluate_on_ray(chunks: list, task_dict: dict, seed: int, workers: int, envs_per_worker: int,
                     address: str | None, done: Callable) -> None:  # fmt: skip
    import ray

    from vpt_ray.ray_session import init_ray

    started = init_ray(address, num_cpus=workers, configure_logging=False)
    actor_cls = ray.remote(num_cpus=1, max_restarts=1, max_task_retries=1)(_EvalWorker)
    queue = list(chunks)
    actors = [actor_cls.remote(task_dict, envs_per_worker) for _ in range(min(workers, len(queue)))]
    try:
        pending = {}
        for actor in actors:
            if queue:
                agent, eps = queue.pop(0)
                pending[actor.play.remote(agent, eps, seed)] = (actor, agent)
        while pending:
            [ready], _ = ray.wait(list(pending), num_returns=1)
            actor, agent = pending.pop(ready)
            done(agent, ray.get(ready))
            if queue:
                agent, eps = queue.pop(0)
                pending[actor.play.remote(agent, eps, seed)] = (actor, agent)
        ray.get([a.close.remote() for a in actors])
    finally:
        for actor in actors:
            ray.kill(actor)
        if started:
            ray.shutdown()


# --------------------------------------------------------------------------------------------------- summary


def summarize(records: Sequence[Mapping[str, Any]], items: Sequence[str], *, agent: AgentSpec | None = None,
              task: str | None = None, seed: int | None = None) -> dict[str, Any]:  # fmt: skip
    """Rates with their uncertainty from per-episode records (see the module docstring); JSON-ready."""
    n = len(records)
    if n == 0:
        raise EvaluationError("no episodes to summarize")
    item_rates = {}
    for item in items:
        k = sum(bool(r["items"].get(item, False)) for r in records)
        lo, hi = wilson_interval(k, n)
        steps = [r["item_steps"][item] for r in records if r["item_steps"].get(item) is not None]
        item_rates[item] = {"rate": k / n, "count": k, "stderr": binomial_stderr(k, n), "wilson95": [lo, hi],
                            "median_step": float(np.median(steps)) if steps else None}  # fmt: skip
    returns = np.array([r["return"] for r in records], np.float64)
    summary: dict[str, Any] = {
        "agent": agent.describe() if agent is not None else None,
        "task": task,
        "seed": seed,
        "episodes": n,
        "return": {"mean": float(returns.mean()),
                   "stderr": float(returns.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0},  # fmt: skip
        "length_mean": float(np.mean([r["length"] for r in records])),
        "died_fraction": float(np.mean([bool(r.get("died", False)) for r in records])),
        "env_failures": int(sum(r["env_failures"] for r in records)),
        "items": item_rates,
        "crafter": _crafter_summary(records),
        "per_episode": [dict(r) for r in records],
    }
    return summary


def _crafter_summary(records: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    scored = [r["achievements"] for r in records if r.get("achievements") is not None]
    if not scored:
        return None
    names = crafter_achievements()
    rates = {a: 100.0 * float(np.mean([c.get(a, 0) > 0 for c in scored])) for a in names}
    return {
        "score": crafter_score(list(rates.values())),
        "episodes": len(scored),
        "success_rates_percent": rates,
        "computed_over": f"the {len(scored)} evaluated episodes of this task (its length cap and world size); "
        f"{len(names)} achievements; comparable across agents on this task, not to published Crafter scores",
    }


def item_rates(summary: Mapping[str, Any]) -> dict[str, float]:
    """item -> fraction of episodes, in task order."""
    return {item: v["rate"] for item, v in summary["items"].items()}


def format_table(summaries: Mapping[str, Mapping[str, Any]]) -> str:
    """A Markdown table: one column per agent, rows = items (rate % +- standard error), mean return, Crafter
    score, episodes."""
    names = list(summaries)
    if not names:
        return ""
    items = list(next(iter(summaries.values()))["items"])
    header = "| | " + " | ".join(names) + " |"
    lines = [header, "|---" * (len(names) + 1) + "|"]
    for item in items:
        cells = []
        for name in names:
            v = summaries[name]["items"].get(item)
            cells.append("-" if v is None else f"{100 * v['rate']:.0f} % ± {100 * v['stderr']:.0f}")
        lines.append(f"| {item} | " + " | ".join(cells) + " |")
    lines.append("| mean return | " + " | ".join(
        f"{s['return']['mean']:.2f} ± {s['return']['stderr']:.2f}" for s in summaries.values()) + " |")  # fmt: skip
    lines.append("| Crafter score | " + " | ".join(
        "-" if s.get("crafter") is None else f"{s['crafter']['score']:.2f}" for s in summaries.values()) + " |")  # fmt: skip
    lines.append("| episodes | " + " | ".join(str(s["episodes"]) for s in summaries.values()) + " |")
    return "\n".join(lines)


def plot_item_rates(summaries: Mapping[str, Mapping[str, Any]], out_png: str | Path, *, title: str | None = None) -> Path:
    """Grouped bar chart (the paper's Fig. 7 style): for each item in task order, the fraction of episodes each
    agent obtained it in, with 95 % Wilson intervals as error bars."""
    from matplotlib.figure import Figure

    names = list(summaries)
    if not names:
        raise EvaluationError("plot_item_rates: no agents")
    items = list(next(iter(summaries.values()))["items"])
    x = np.arange(len(items))
    width = 0.8 / len(names)
    fig = Figure(figsize=(min(16.0, max(7.0, 0.25 * len(items) * (len(names) + 1))), 4.2), layout="constrained")
    ax = fig.subplots()
    for j, name in enumerate(names):
        rates = np.array([summaries[name]["items"][i]["rate"] for i in items])
        lo = np.array([summaries[name]["items"][i]["wilson95"][0] for i in items])
        hi = np.array([summaries[name]["items"][i]["wilson95"][1] for i in items])
        ax.bar(x + (j - (len(names) - 1) / 2) * width, rates, width, yerr=[rates - lo, hi - rates], capsize=2,
               label=f"{name} (n={summaries[name]['episodes']})", color=f"C{j % 10}", error_kw={"linewidth": 0.6, "ecolor": "0.35"})  # fmt: skip
    ax.set_xticks(x, items, rotation=30, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("fraction of episodes")
    ax.set_title(title or "item progression (95 % Wilson intervals)")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, ncols=min(3, len(names)))
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    return out_png


__all__ = [
    "EVAL_SEED", "AgentSpec", "EvaluationError", "binomial_stderr", "check_agent_for_task", "check_policy_checkpoint",
    "crafter_achievements", "crafter_score", "evaluate", "evaluate_agents", "format_table", "item_rates",
    "parse_agent", "plot_item_rates", "resolve_task", "summarize", "wilson_interval",
]
