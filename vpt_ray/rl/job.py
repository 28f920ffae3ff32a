"""The RL fine-tuning job behind ``vpt-ray rl``: run directory, ledger, TensorBoard, checkpoints, resume.

Run directory (default ``$VPT_RUNS_DIR/<run id>``, else ``~/runs/<run id>``)::

    RUN_DIR/task.yaml                    the task spec the run trains with (rl: section included, as resolved)
    RUN_DIR/run.json                     run id, initial checkpoint, KL on/off: what --resume needs (exactly
                                         these fields: a directory whose run.json `vpt-ray rl` did not write is
                                         not resumed)
    RUN_DIR/checkpoints/iteration_<n>/   algorithm checkpoints (weights, optimizer, normaliser, rho, counters)
    RUN_DIR/tensorboard/                 scalars per iteration + item-progression charts (vpt_ray.rl.metrics)
    RUN_DIR/progress.jsonl               the same scalars, one JSON line per iteration
    RUN_DIR/final/                       the trained policy (vpt_ray.models checkpoint) when the job ends

Starting points: ``init`` (a BC checkpoint: initial weights and, with ``kl``, the frozen KL target on Ray Serve)
or none (random init from ``rl.policy``, entropy bonus: the scratch baseline). ``resume`` continues a run
directory from its latest checkpoint: iteration count, rho, optimizer and normaliser state, TensorBoard steps
(events written after that checkpoint by a crashed run are purged).

The run is registered in the ledger (``$VPT_RUN_ID`` if set) and updated every iteration (status, iteration,
checkpoint, item fractions, headline metrics); a ledger that is down never stops training (writes queue).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from vpt_ray.config import ConfigError
from vpt_ray.spec import TaskSpec, load_task, task_to_dict

logger = logging.getLogger(__name__)

TASK_FILE = "task.yaml"
RUN_FILE = "run.json"
CHECKPOINTS_DIR = "checkpoints"
TENSORBOARD_DIR = "tensorboard"
PROGRESS_FILE = "progress.jsonl"
FINAL_DIR = "final"
# The fields of run.json, each with what it holds. Resuming restores RLlib checkpoints, which unpickle their
# state, so a run directory is trusted like code: --resume refuses a directory whose run.json is not exactly what
# `vpt-ray rl` writes.
RUN_FIELDS = {"run_id": "a run id", "init": "a checkpoint path or null", "kl": "true or false"}
RUNS_DIR_ENV = "VPT_RUNS_DIR"
RUN_ID_ENV = "VPT_RUN_ID"
# The headline numbers stored in the ledger each iteration (`vpt-ray status` shows them).
LEDGER_METRICS = ("episode/return_mean", "episode/length_mean", "ppg/rho", "kl/pretrained", "perf/frames_sampled_per_s",
                  "env/steps_lifetime", "env/failures_lifetime", "ppg/dropped_stale_rows_lifetime")  # fmt: skip


class RLJobError(RuntimeError):
    """A run that cannot start (bad run directory, missing checkpoint); the message says what to do."""


def default_run_dir(run_id: str) -> Path:
    return Path(os.environ.get(RUNS_DIR_ENV) or Path("~/runs").expanduser()) / run_id


def checkpoint_dir(run_dir: Path, iteration: int) -> Path:
    return run_dir / CHECKPOINTS_DIR / f"iteration_{iteration:06d}"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first: holding RLlib's metadata file and renamed from their temporary ``.tmp``
    name (_save_checkpoint renames one only once RLlib has written all of it; a job killed while saving leaves the
    ``.tmp``, metadata file and all, and a resume must not restore it)."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    done = [p for p in root.glob("iteration_*") if p.name.removeprefix("iteration_").isdigit()
            and (p / "rllib_checkpoint.json").is_file()] if root.is_dir() else []  # fmt: skip
    return sorted(done)


def initial_env_runners(task: TaskSpec, kl: bool) -> int:
    """Env runners to start with: as many as the cluster's free resources hold now (after the learners and the
    Serve replicas), within the spec's maximum. The runner group's construction waits for every runner it asks
    for; elastic scaling adds the rest as nodes come."""
    import ray

    from vpt_ray.rl.elastic import free_env_runner_slots

    scale = task.rl.scale
    free = dict(ray.available_resources())
    free["CPU"] = free.get("CPU", 0.0) - scale.num_learners * scale.cpus_per_learner
    if kl:
        free["CPU"] -= scale.serve.replicas * scale.serve.cpus_per_replica
    # The same count elastic growth uses later, so the first runners and the added ones land alike.
    demand = {"CPU": scale.cpus_per_env_runner, **scale.env_runner_resources}
    return max(1, min(scale.env_runners, free_env_runner_slots(demand, free, ray.cluster_resources())))


def _check_init(init: Path, spec: TaskSpec, flag: str) -> None:
    """The initial checkpoint must be a policy for this task's env (action space, frame size) whose weights
    load: checked before Ray starts or anything is written."""
    from vpt_ray.models.checkpoint import WeightsError, check_checkpoint
    from vpt_ray.rl.config import ACTION_SPACE_OF_ENV

    try:
        check_checkpoint(init, kind="policy", action_space=ACTION_SPACE_OF_ENV[spec.env.kind],
                         frame_size=spec.env.frame_size)  # fmt: skip
    except (ConfigError, WeightsError) as e:
        raise RLJobError(f"{flag} {init}: cannot start task {spec.name!r} from it: {e}") from None


def _prepare_new_run(task: str | Path | TaskSpec, out: Path | None, init: str | Path | None, kl: bool,
                     run_id: str | None) -> tuple[Path, TaskSpec, dict[str, Any]]:  # fmt: skip
    """Validate everything a new run starts from, then (only then) write its run directory."""
    spec = load_task(task)
    if spec.rl is None:
        raise ConfigError(f"task {spec.name!r} has no 'rl:' section: `vpt-ray rl` needs its PPG hyperparameters")
    if init is not None:
        init = Path(init).resolve()
        _check_init(init, spec, "--init")
    run_id = run_id or os.environ.get(RUN_ID_ENV) or f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    run_dir = Path(out) if out is not None else default_run_dir(run_id)
    if run_dir.exists() and not run_dir.is_dir():
        raise RLJobError(f"--out {run_dir}: exists and is not a directory")
    if (run_dir / RUN_FILE).is_file():
        # A start that failed before its first iteration (Ray unreachable, interrupted) trained nothing: the
        # corrected command starts over in place. One that trained is continued with --resume, never overwritten.
        if list_checkpoints(run_dir) or (run_dir / PROGRESS_FILE).is_file():
            raise RLJobError(f"{run_dir} already holds a run: continue it with `vpt-ray rl --resume {run_dir}`, or "
                             "choose another --out")  # fmt: skip
        logger.warning("%s holds a start that never trained: starting over there", run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    meta = {"run_id": run_id, "init": None if init is None else str(init), "kl": bool(kl and init is not None)}
    (run_dir / TASK_FILE).write_text(yaml.safe_dump(task_to_dict(spec), sort_keys=False))
    (run_dir / RUN_FILE).write_text(json.dumps(meta, indent=2))
    return run_dir, spec, meta


def _load_run(run_dir: Path) -> tuple[TaskSpec, dict[str, Any]]:
    """The task and run.json of a run directory `vpt-ray rl` wrote (and nothing else: see RUN_FIELDS), with its
    initial checkpoint checked again; refused before Ray starts."""
    path = run_dir / RUN_FILE
    if not path.is_file():
        raise RLJobError(f"--resume {run_dir}: no {RUN_FILE} there (not an RL run directory)")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RLJobError(f"--resume {path}: not valid JSON ({e})") from None
    valid = isinstance(meta, dict) and set(meta) == set(RUN_FIELDS) and (
        isinstance(meta["run_id"], str) and meta["run_id"] and isinstance(meta["kl"], bool)
        and (meta["init"] is None or isinstance(meta["init"], str)))  # fmt: skip
    if not valid:
        fields = ", ".join(f"{k} ({v})" for k, v in RUN_FIELDS.items())
        raise RLJobError(f"--resume {run_dir}: {RUN_FILE} was not written by `vpt-ray rl` (it holds exactly {fields}), "
                         "so the directory is not resumed: resuming restores RLlib checkpoints, which unpickle "
                         "their state, so a run directory is trusted like code (README: Security)")  # fmt: skip
    spec = load_task(run_dir / TASK_FILE)
    if spec.rl is None:
        raise ConfigError(f"--resume {run_dir / TASK_FILE}: task {spec.name!r} has no 'rl:' section")
    if meta["init"] is not None:
        _check_init(Path(meta["init"]), spec, f"--resume {run_dir}: its initial checkpoint")
    return spec, meta


def _open_ledger(location: str | None):
    from vpt_ray.ledger import LedgerError, open_ledger

    try:
        return open_ledger(location)
    except LedgerError as e:
        logger.warning("ledger unavailable, the run is not recorded there: %s", e)
        return None


class _LedgerRun:
    """Ledger writes of one run that never raise: training goes on whatever the ledger does."""

    def __init__(self, ledger, run_id: str):
        self.ledger, self.run_id = ledger, run_id

    def __call__(self, method: str, *args, **kwargs):
        if self.ledger is None:
            return None
        try:
            return getattr(self.ledger, method)(*args, **kwargs)
        except Exception as e:  # the ledger queues outages itself; anything else must not stop the run either
            logger.warning("ledger %s(%s) failed: %s", method, self.run_id, e)
            return None


def _policy_of(algo):
    """The learner's current policy as a CPU ``VPTPolicy`` (for ``RUN_DIR/final``)."""
    from ray.rllib.core import DEFAULT_MODULE_ID

    from vpt_ray.models import build_model
    from vpt_ray.models.checkpoint import cpu_state_dict

    def fetch(learner):
        policy = learner.module[DEFAULT_MODULE_ID].unwrapped().policy
        return policy.config, cpu_state_dict(policy)

    config, state = algo.learner_group.foreach_learner(fetch).result_or_errors[0].get()
    policy = build_model(config)
    policy.add_aux_value_head()
    policy.load_state_dict(state)
    return policy.eval()


def _format_line(it: int, target: int, s: Mapping[str, float], dt: float) -> str:
    def get(tag: str, fmt: str) -> str:
        value = s.get(tag)
        return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)

    items = " ".join(f"{k.split('/', 1)[1]}={v:.2f}" for k, v in s.items() if k.startswith("items/"))
    return (f"iter {it}/{target}  {dt:5.1f}s  return {get('episode/return_mean', '.3f')}  "
            f"episodes {get('episode/count', '.0f')}  rho {get('ppg/rho', '.5f')}  kl {get('kl/pretrained', '.4f')}  "
            f"ev {get('value/explained_variance', '.2f')}  fps {get('perf/frames_sampled_per_s', '.0f')}"
            + (f"  items {items}" if items else ""))  # fmt: skip


def run_rl(task: str | Path | TaskSpec | None = None, *, out: str | Path | None = None,
           init: str | Path | None = None, kl: bool = True, resume: str | Path | None = None,
           iterations: int | None = None, address: str | None = None, ledger: str | None = None,
           run_id: str | None = None, progress: bool = True) -> dict[str, Any]:  # fmt: skip
    """Train (or resume) a run up to ``iterations`` (default ``rl.iterations``); returns a summary dict.

    ``resume`` is a run directory: ``task``, ``init``, ``kl`` and the run id come from it.
    """
    from vpt_ray.training.job import ensure_ray

    if (task is None) == (resume is None):
        raise RLJobError("give a task to start a run, or --resume RUN_DIR to continue one")
    if resume is not None:
        run_dir = Path(resume)
        spec, meta = _load_run(run_dir)
    else:
        run_dir, spec, meta = _prepare_new_run(task, Path(out) if out else None, init, kl, run_id)
    target = iterations if iterations is not None else spec.rl.iterations
    if target < 1:
        raise RLJobError(f"--iterations must be >= 1, got {target}")
    checkpoints = list_checkpoints(run_dir)

    started_ray = False
    import ray

    if not ray.is_initialized():
        ensure_ray(address)
        started_ray = True
    from vpt_ray.rl.algorithm import PPGConfig, iteration_scalars
    from vpt_ray.rl.metrics import RLMetricsWriter

    if spec.rl.scale.num_learners == 0:  # the learner trains in this process: as many threads as it has CPUs
        import torch

        torch.set_num_threads(max(1, int(spec.rl.scale.cpus_per_learner)))
    run = _LedgerRun(_open_ledger(ledger), meta["run_id"])
    config = PPGConfig.from_spec(spec, init=meta["init"], kl=meta["kl"], run_id=meta["run_id"],
                                 num_env_runners=initial_env_runners(spec, meta["kl"]))  # fmt: skip
    items = list(spec.rewards.item_names)
    algo = writer = None
    status = "failed"
    summary: dict[str, Any] = {"run_dir": str(run_dir), "run_id": meta["run_id"]}
    try:
        run("register_run", meta["run_id"], "rl", {**task_to_dict(spec), "init": meta["init"], "kl": meta["kl"]},
            str(run_dir.resolve()))  # fmt: skip
        run("update_run", meta["run_id"], status="running")
        algo = config.build_algo()
        if checkpoints:
            algo.restore_from_path(str(checkpoints[-1].resolve()))
            print(f"resumed {run_dir} from {checkpoints[-1].name}: iteration {algo.iteration}, rho {algo.rho:.6g}",
                  flush=True)  # fmt: skip
        start = algo.iteration
        writer = RLMetricsWriter(run_dir / TENSORBOARD_DIR, items, purge_step=start + 1 if start else None)
        if start >= target:
            print(f"{run_dir}: already at iteration {start} of {target}", flush=True)
        while algo.iteration < target:
            t0 = time.perf_counter()
            algo.desired_env_runners = run("get_desired_env_runners", meta["run_id"])
            result = algo.train()
            it = algo.iteration
            scalars = iteration_scalars(result)
            fractions = {i: scalars.pop(f"items/{i}") for i in items if f"items/{i}" in scalars}
            lifetime = {i: scalars.pop(f"items_lifetime/{i}", 0.0) for i in items}
            writer.write(it, scalars)
            if fractions:
                writer.write_items(it, fractions)
            writer.write_items(it, lifetime, prefix="items_lifetime")
            with open(run_dir / PROGRESS_FILE, "a") as f:
                f.write(json.dumps({"iteration": it, **scalars, **{f"items/{k}": v for k, v in fractions.items()},
                                    **{f"items_lifetime/{k}": v for k, v in lifetime.items()}}) + "\n")  # fmt: skip
            saved = None
            if it % spec.rl.checkpoint_every == 0 or it == target:
                saved = _save_checkpoint(algo, run_dir, it, spec.rl.keep_checkpoints)
            update = {"iteration": it, "items": fractions or lifetime,
                      "metrics": {k: scalars[k] for k in LEDGER_METRICS if k in scalars}}  # fmt: skip
            if saved is not None:
                update["checkpoint"] = str(saved.resolve())
            run("update_run", meta["run_id"], **update)
            if progress:
                print(_format_line(it, target, {**scalars, **{f"items/{k}": v for k, v in fractions.items()}},
                                   time.perf_counter() - t0), flush=True)  # fmt: skip
            summary.update(iteration=it, scalars=scalars, items=fractions, items_lifetime=lifetime)
        from vpt_ray.models import save_checkpoint

        summary["final"] = str(save_checkpoint(_policy_of(algo), run_dir / FINAL_DIR))
        summary["iteration"] = algo.iteration
        status = "succeeded"
        return summary
    except KeyboardInterrupt:
        status = "stopped"
        raise
    finally:
        run("update_run", meta["run_id"], status=status)
        if run.ledger is not None:
            run.ledger.close()
        if writer is not None:
            writer.close()
        if algo is not None:
            algo.stop()  # also deletes this run's Serve app (the frozen policy)
        elif config.use_kl:
            _delete_serve_app(config.pretrained_app_name)  # interrupted while the algorithm was being built
        if started_ray:
            ray.shutdown()


def _delete_serve_app(name: str) -> None:
    from ray import serve

    from vpt_ray.rl.serving import PretrainedApp

    try:
        if name in serve.status().applications:
            PretrainedApp(name).stop()
    except Exception as e:  # tearing down after a failure must not hide the failure
        logger.warning("could not delete Serve app %s: %s", name, e)


def _save_checkpoint(algo, run_dir: Path, iteration: int, keep: int) -> Path:
    """An algorithm checkpoint, written under a temporary name and renamed (a crash never leaves half of one)."""
    path = checkpoint_dir(run_dir, iteration)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    algo.save_to_path(str(tmp.resolve()))
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return path


def install_sigterm_handler() -> None:
    """``ray job stop`` sends SIGTERM: stop like Ctrl-C does (ledger status, Serve app torn down, Ray stopped)."""
    import signal

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    if sys.platform != "win32":
        signal.signal(signal.SIGTERM, handler)


__all__ = ["RLJobError", "default_run_dir", "list_checkpoints", "run_rl"]
