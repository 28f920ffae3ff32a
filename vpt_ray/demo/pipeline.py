"""Running the demo's stages in order on one local Ray cluster, resuming what a previous run finished.

Run directory::

    RUN_DIR/demo.json          run id, preset, the config as resolved (what `vpt-ray status` links to)
    RUN_DIR/task.yaml          the task every stage plays (its rl: section included)
    RUN_DIR/stages/<stage>.json   marker of a finished stage: config hash, seconds, outputs
    RUN_DIR/<stage>/           everything the stage wrote (recordings, runs with TensorBoard logs, ...)
    RUN_DIR/report.md          the report; its plots in RUN_DIR/report/

Resume: a stage's hash covers its own part of the config and the hashes of the stages it depends on. A stage
whose marker holds the current hash is skipped; a stage without one runs, after its directory is wiped if a
run with another config started it (``stages/<stage>.started``), so a changed config redoes that stage and
every stage downstream of it, and an interrupted stage with the same config continues where its own modules
resume (recordings kept, training from its last checkpoint, labeling through its ledger, RL from its last
checkpoint).

The run is registered in the run ledger (kind "demo"); its ``metrics.stages`` holds each stage's status.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from vpt_ray.demo.config import DemoConfig, Resolved, config_dict, resolve
from vpt_ray.demo.stages import STAGES, Stage, StageContext

DEMO_FILE = "demo.json"
STAGES_DIR = "stages"
# Fields that change how fast a stage runs, never what it produces: not part of its hash.
_SPEED_ONLY = ("workers", "envs_per_worker")


class DemoError(RuntimeError):
    """A demo run that cannot go on (the message names the stage and where to look)."""


def stage_hashes(resolved: Resolved) -> dict[str, str]:
    """Stage name -> hash of its config part and its upstream stages' hashes."""
    hashes: dict[str, str] = {}
    for stage in STAGES:
        part = _strip(stage.config(resolved))
        payload = json.dumps({"stage": stage.name, "config": part, "deps": [hashes[d] for d in stage.deps]},
                             sort_keys=True, default=str)  # fmt: skip
        hashes[stage.name] = hashlib.sha256(payload.encode()).hexdigest()[:16]
    return hashes


def _strip(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in _SPEED_ONLY}
    if isinstance(obj, (list, tuple)):
        return [_strip(v) for v in obj]
    return obj


def marker_path(run_dir: Path, stage: str) -> Path:
    return run_dir / STAGES_DIR / f"{stage}.json"


def read_marker(run_dir: Path, stage: str) -> dict[str, Any] | None:
    path = marker_path(run_dir, stage)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, OSError):
        return None  # a marker cut short by a crash: the stage counts as not finished


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    tmp.replace(path)


def plan(resolved: Resolved, run_dir: Path) -> dict[str, str]:
    """Stage name -> "done" (its marker holds the current hash) or "todo"."""
    hashes = stage_hashes(resolved)
    out = {}
    for stage in STAGES:
        marker = read_marker(run_dir, stage.name)
        out[stage.name] = "done" if marker is not None and marker.get("hash") == hashes[stage.name] else "todo"
    return out


class _Ledger:
    """The demo's ledger record; writes never stop the demo (the ledger queues outages itself)."""

    def __init__(self, location: str | None, run_id: str):
        from vpt_ray.ledger import LedgerError, open_ledger

        self.run_id = run_id
        try:
            self.ledger = open_ledger(location)
        except LedgerError as e:
            print(f"ledger unavailable, the demo is not recorded there: {e}", file=sys.stderr)
            self.ledger = None

    def __call__(self, method: str, *args, **kwargs) -> None:
        if self.ledger is None:
            return
        try:
            getattr(self.ledger, method)(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - the demo goes on whatever the ledger does
            print(f"ledger {method} failed: {e}", file=sys.stderr)

    def close(self) -> None:
        if self.ledger is not None:
            self.ledger.close()


def _banner(i: int, n: int, stage: Stage, note: str = "") -> None:
    line = f"[{i}/{n}] {stage.name}: {stage.title}"
    print("\n" + "=" * min(110, max(60, len(line) + 4)), flush=True)
    print(f"  {line}{note}", flush=True)
    print("=" * min(110, max(60, len(line) + 4)), flush=True)


def run_demo(config: DemoConfig, run_dir: str | Path, *, preset: str = "", ledger: str | None = None,
             progress: bool = True, stop_after: str | None = None) -> dict[str, Any]:  # fmt: skip
    """Run (or resume) the demo in ``run_dir``; returns ``{"run_id", "run_dir", "report", "stages": {...}}``.

    ``stop_after`` ends the run after that stage (the later ones stay to do).
    """
    resolved = resolve(config)  # every stage's config is checked before any work starts
    if stop_after is not None and stop_after not in {s.name for s in STAGES}:
        raise DemoError(f"stop_after {stop_after!r}: not a stage (stages: {[s.name for s in STAGES]})")
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    meta_path = run_dir / DEMO_FILE
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    run_id = meta.get("run_id") or f"demo-{config.name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    _write_json(meta_path, {"run_id": run_id, "preset": preset, "config": config_dict(config)})
    (run_dir / "task.yaml").write_text(yaml.safe_dump(resolved.task, sort_keys=False))
    hashes = stage_hashes(resolved)

    book = _Ledger(ledger, run_id)
    statuses = {s.name: "pending" for s in STAGES}
    seconds: dict[str, float] = {}
    book("register_run", run_id, "demo", {"preset": preset, **config_dict(config)}, str(run_dir))
    book("update_run", run_id, status="running", metrics={"stages": statuses})

    import ray

    started_ray = False
    outputs: dict[str, dict[str, Any]] = {}
    status = "failed"
    t_start = time.perf_counter()
    try:
        n = len(STAGES)
        for i, stage in enumerate(STAGES, 1):
            marker = read_marker(run_dir, stage.name)
            if marker is not None and marker.get("hash") == hashes[stage.name]:
                outputs[stage.name] = marker["outputs"]
                seconds[stage.name] = marker["seconds"]
                statuses[stage.name] = "succeeded"
                _banner(i, n, stage, f"  -- done in an earlier run ({marker['seconds']:.0f} s), kept")
                continue
            _banner(i, n, stage)
            statuses[stage.name] = "running"
            book("update_run", run_id, iteration=i - 1, metrics={"stages": statuses, "seconds": seconds})
            if stage.needs_ray and not ray.is_initialized():
                from vpt_ray.ray_session import init_ray

                # Serve would print one access-log line per KL-target request of the RL stages; its logs still go
                # to the session's log files.
                os.environ.setdefault("RAY_SERVE_LOG_TO_STDERR", "0")
                # A local cluster of our own (never one another process on this machine started; token auth on),
                # no dashboard (it costs ~1 GiB); every stage's workload runs on it.
                started_ray = init_ray("local", num_cpus=config.num_cpus or os.cpu_count(),
                                       object_store_memory=768 * 1024**2, configure_logging=False)  # fmt: skip
            _prepare_stage_dir(run_dir, stage.name, hashes[stage.name])
            ctx = StageContext(resolved, run_dir, run_dir / stage.name, outputs, ledger, run_id, progress)
            t0 = time.perf_counter()
            load_before = os.getloadavg()[0]  # timings on a shared machine mean little without it
            sigint = signal.getsignal(signal.SIGINT) if _main_thread() else None
            try:
                outputs[stage.name] = stage.run(ctx)
            except BaseException:
                statuses[stage.name] = "failed" if not isinstance(sys.exc_info()[1], KeyboardInterrupt) else "stopped"
                raise
            finally:
                # Ray Train's fit() installs a SIGINT handler of its own and leaves it behind; without this, Ctrl-C
                # would no longer stop the demo once a training stage has run.
                if sigint is not None:
                    signal.signal(signal.SIGINT, sigint)
            seconds[stage.name] = round(time.perf_counter() - t0, 1)
            _close_stale_worker_bars()
            _write_json(marker_path(run_dir, stage.name), {
                "stage": stage.name, "hash": hashes[stage.name], "seconds": seconds[stage.name],
                "finished_at": time.time(), "load_average": [load_before, os.getloadavg()[0]],
                "outputs": outputs[stage.name]})  # fmt: skip
            statuses[stage.name] = "succeeded"
            print(f"  {stage.name}: done in {seconds[stage.name]:.0f} s", flush=True)
            if stage.name == stop_after:
                break
        status = "succeeded" if all(v == "succeeded" for v in statuses.values()) else "stopped"
    except KeyboardInterrupt:
        status = "stopped"
        raise
    finally:
        items = {}
        results_path = outputs.get("evaluate", {}).get("results")
        if results_path and Path(results_path).is_file():  # the ledger shows the KL agent's item progression
            from vpt_ray.evaluation import item_rates

            results = json.loads(Path(results_path).read_text())
            best = results.get("rl_bc_kl") or results.get("bc")
            items = item_rates(best) if best else {}
        book("update_run", run_id, status=status, iteration=sum(v == "succeeded" for v in statuses.values()),
             metrics={"stages": statuses, "seconds": seconds}, **({"items": items} if items else {}))  # fmt: skip
        book.close()
        if started_ray:
            ray.shutdown()
    return {"run_id": run_id, "run_dir": str(run_dir), "status": status, "stages": statuses, "seconds": seconds,
            "wall_s": round(time.perf_counter() - t_start, 1),
            "report": outputs.get("report", {}).get("markdown")}  # fmt: skip


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _close_stale_worker_bars() -> None:
    """Close the worker progress bars Ray still draws in this process once a stage is over.

    Ray draws a worker's ``tqdm_ray`` bar in the driver until the worker's close message arrives; Ray Train tears
    its workers down right after the loop, sometimes before that message is shipped, and the dead bar is then
    redrawn under every later line of the demo. Ray 2.60's bar manager has no public call for this.
    """
    try:
        from ray.experimental import tqdm_ray

        manager = tqdm_ray.instance()
        with manager.lock:
            for group in list(manager.bar_groups.values()):
                for bar in list(group.bars_by_uuid.values()):
                    group.close_bar(bar.state)
            manager.bar_groups.clear()
    except AttributeError:  # another Ray version: its bars are its own business
        pass


def _prepare_stage_dir(run_dir: Path, stage: str, stage_hash: str) -> None:
    """Wipe what a run with another config left in the stage's directory; note that this config started it."""
    started = run_dir / STAGES_DIR / f"{stage}.started"
    directory = run_dir / stage
    if started.is_file() and started.read_text().strip() != stage_hash:
        shutil.rmtree(directory, ignore_errors=True)
    elif not started.is_file() and directory.exists():
        shutil.rmtree(directory, ignore_errors=True)  # no record of which config wrote it: start clean
    marker_path(run_dir, stage).unlink(missing_ok=True)
    started.parent.mkdir(parents=True, exist_ok=True)
    started.write_text(stage_hash + "\n")
