"""The demo's stages: each one a real Ray workload through the package's own modules.

A stage is a function ``(ctx) -> outputs`` that writes only under ``ctx.dir`` (its own directory in the run dir)
and returns a JSON-ready dict of what it made (paths, metrics); later stages read the outputs of the stages they
depend on from ``ctx.outputs``. :mod:`vpt_ray.demo.pipeline` runs them in order, skips the finished ones and
redoes a stage whose config (or an upstream stage's) changed.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from vpt_ray.demo.config import RL_ARMS, Resolved

SEEDS = {"labeled": 0, "heldout": 1, "unlabeled": 2, "filter_train": 3}  # recording runs; evaluation uses others


@dataclasses.dataclass
class StageContext:
    resolved: Resolved
    run_dir: Path
    dir: Path  # this stage's own directory
    outputs: dict[str, dict[str, Any]]  # finished stages' outputs, by stage name
    ledger: str | None
    run_id: str
    progress: bool = True

    @property
    def task_path(self) -> Path:
        return self.run_dir / "task.yaml"


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    title: str
    deps: tuple[str, ...]
    config: Callable[[Resolved], Any]  # the part of the config this stage's result depends on (hashed)
    run: Callable[[StageContext], dict[str, Any]]
    needs_ray: bool = True  # the pipeline starts its Ray cluster before the first such stage it runs


# --------------------------------------------------------------------------------------------------- devices


def _gpus(ctx: StageContext) -> float:
    """GPUs of the demo's Ray cluster its training and labeling stages may use (0: CPUs only)."""
    import ray

    return float(ray.cluster_resources().get("GPU", 0)) if ctx.resolved.config.use_gpus else 0.0


def _on_gpu_if_present(ctx: StageContext, cfg):
    """A training config on one GPU worker when the cluster has a GPU (set when the stage runs, so a stage's hash
    and its resume do not depend on the machine)."""
    if not _gpus(ctx):
        return cfg
    return dataclasses.replace(cfg, scaling=dataclasses.replace(cfg.scaling, use_gpu=True))


def _train_devices(metrics: dict[str, Any]) -> str:
    return f"{metrics.get('device', 'cpu')}, {metrics.get('precision', 'fp32')}"


def _rl_devices(ctx: StageContext) -> str:
    """Where an RL stage runs, as its task's ``rl.scale`` places it. Issue 15 part B: place the learner and the
    frozen-policy replica on the cluster's GPU here when ``_gpus(ctx)`` has one (gpus_per_learner,
    serve.gpus_per_replica), with their precision."""
    scale = ctx.resolved.task["rl"]["scale"]
    learner = f"{scale.get('gpus_per_learner', 0)} GPU" if scale.get("gpus_per_learner", 0) else "CPU"
    replica = f"{scale['serve'].get('gpus_per_replica', 0)} GPU" if scale["serve"].get("gpus_per_replica", 0) else "CPU"
    return f"learner {learner}, frozen BC policy (Serve) {replica}, env runners CPU"


# ---------------------------------------------------------------------------------------------------- record


def _record(ctx: StageContext) -> dict[str, Any]:
    from vpt_ray.data.recordings import record_episodes

    r = ctx.resolved.config.record
    sets = {
        "labeled": dict(episodes=r.labeled_episodes, labeled=True),
        "heldout": dict(episodes=r.heldout_episodes, labeled=True),
        "unlabeled": dict(episodes=r.unlabeled_videos, labeled=False, overlays=r.overlays),
        "filter_train": dict(episodes=r.filter_train_videos, labeled=False, overlays=True),
    }
    out: dict[str, Any] = {}
    for name, kwargs in sets.items():
        directory = ctx.dir / name
        result = record_episodes(ctx.task_path, directory, seed=SEEDS[name], max_steps=r.episode_steps,
                                 workers=r.workers, progress=ctx.progress, **kwargs)  # fmt: skip
        if result["failed"]:
            print(f"record {name}: {len(result['failed'])} episode(s) failed and are left out: {result['failed'][:3]}")
        out[name] = {"dir": str(directory), "episodes": len(result["recorded"]) + len(result["existing"]),
                     "failed": len(result["failed"])}  # fmt: skip
    out["demonstrator_items"] = _recorded_item_rates(ctx.dir / "labeled", ctx.resolved)
    return out


def _recorded_item_rates(directory: Path, resolved: Resolved) -> dict[str, float]:
    from vpt_ray.data.recordings import iter_recordings, read_meta
    from vpt_ray.envs import item_fractions

    episodes = [read_meta(stem)["episode_info"] for stem in iter_recordings(directory)]
    return item_fractions(episodes, [i["item"] for i in resolved.task["rewards"]["items"]])


# ---------------------------------------------------------------------------------------------------- filter


def _filter(ctx: StageContext) -> dict[str, Any]:
    from vpt_ray.data import recordings as rec
    from vpt_ray.filter import filter_videos, read_segments_jsonl, summarize, train_filter
    from vpt_ray.filter.pipeline import write_jsonl_line
    from vpt_ray.filter.report import evaluate, labeled_videos, plot_confusion
    from vpt_ray.filter.train import LabeledVideo

    record = ctx.outputs["record"]
    ctx.dir.mkdir(parents=True, exist_ok=True)
    train_videos, errors = labeled_videos(record["filter_train"]["dir"])
    if not train_videos:
        raise RuntimeError(f"no web videos with ground truth to train the filter on ({errors[:3]})")
    trained = train_filter(train_videos, ctx.resolved.filter_train, progress=ctx.progress)
    classifier_path = ctx.dir / "classifier.npz"
    trained.classifier.save(classifier_path)
    holdout = trained.report.get("holdout") or {}
    if holdout:
        plot_confusion(holdout["confusion"], ctx.dir / "confusion.png", title="filter: held-out training videos")

    todo = [(str(stem.with_name(stem.name + rec.VIDEO_SUFFIX)), rec.read_meta(stem))
            for stem in rec.iter_recordings(record["unlabeled"]["dir"])]  # fmt: skip
    segments = ctx.dir / "segments.jsonl"
    cfg = ctx.resolved.filter_apply
    with open(segments, "w") as f:
        results = filter_videos(todo, trained.classifier, cfg, on_result=lambda r: write_jsonl_line(f, r),
                                progress=ctx.progress)  # fmt: skip
    summary = summarize(read_segments_jsonl(segments))
    truths = {v: LabeledVideo(v, rec.frame_classes(m), rec.clean_segments(m)) for v, m in todo}
    scored = evaluate(results, truths, cfg)
    return {
        "classifier": str(classifier_path),
        "segments": str(segments),
        "train": {"holdout_accuracy": holdout.get("accuracy"), "clean_vs_rest_accuracy":
                  holdout.get("clean_vs_rest_accuracy"), "train_videos": trained.report.get("train_videos")},  # fmt: skip
        "videos_in": summary["videos_in"],
        "videos_kept": summary["videos_kept"],
        "hours_in": summary["hours_in"],
        "hours_kept": summary["hours_kept"],
        "dropped": summary["dropped"],
        "against_truth": {"sampled_frame_accuracy": (scored.get("sampled_frames") or {}).get("accuracy"),
                          "frame_precision": scored["segments"].get("frame_precision"),
                          "frame_recall": scored["segments"].get("frame_recall")},  # fmt: skip
    }


# ------------------------------------------------------------------------------------------------------- idm


def _to_shards(recordings: str, out: Path, workers: int, progress: bool) -> dict[str, Any]:
    from vpt_ray.data.shards import recordings_to_shards

    summary = recordings_to_shards(recordings, out, workers=workers, progress=progress)
    if summary.bad:
        print(f"shards: {len(summary.bad)} bad recording(s) skipped: {list(summary.bad.items())[:3]}")
    if not summary.written and not summary.existing:
        raise RuntimeError(f"no labeled recordings could be converted from {recordings}")
    return {"dir": str(out), "shards": len(summary.written) + len(summary.existing), "bad": len(summary.bad)}


def _metrics(metrics: dict[str, Any], prefix: str = "eval/") -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if k.startswith(prefix) and isinstance(v, (int, float))}


def _idm(ctx: StageContext) -> dict[str, Any]:
    from vpt_ray.idm import train_idm

    record = ctx.outputs["record"]
    workers = ctx.resolved.config.record.workers
    labeled = _to_shards(record["labeled"]["dir"], ctx.dir / "shards" / "labeled", workers, ctx.progress)
    heldout = _to_shards(record["heldout"]["dir"], ctx.dir / "shards" / "heldout", workers, ctx.progress)
    metrics, final = train_idm(_on_gpu_if_present(ctx, ctx.resolved.idm_train), [labeled["dir"]], ctx.dir / "run",
                               val_data=[heldout["dir"]])  # fmt: skip
    return {"final": str(final), "run_dir": str(ctx.dir / "run"), "labeled_shards": labeled["dir"],
            "heldout_shards": heldout["dir"], "labeled_frames": _shard_frames(labeled["dir"]),
            "steps": ctx.resolved.idm_train.schedule.max_steps, "eval": _metrics(metrics),
            "devices": _train_devices(metrics)}  # fmt: skip


def _shard_frames(directory: str) -> int:
    from vpt_ray.data.shards import find_shards, read_index

    return int(sum(read_index(shard).n_frames for shard in find_shards(directory)))


# ----------------------------------------------------------------------------------------------------- label


def _label(ctx: StageContext) -> dict[str, Any]:
    from vpt_ray.labeling import collect_videos, prepare_job, run_labeling

    job = prepare_job(ctx.outputs["idm"]["final"], ctx.dir / "shards")
    tasks = collect_videos([ctx.outputs["record"]["unlabeled"]["dir"]], ctx.outputs["filter"]["segments"])
    if not tasks:
        raise RuntimeError("the clean filter kept no segment of any unlabeled video: nothing to pseudo-label "
                           "(record more unlabeled videos, or loosen filter.apply)")  # fmt: skip
    # On a GPU: two actors per GPU, so that one decodes its video while the other's IDM runs.
    gpus_per_actor = 0.5 if _gpus(ctx) else 0.0
    summary = run_labeling(dataclasses.replace(job, use_gpu=gpus_per_actor > 0), tasks, gpus_per_actor=gpus_per_actor,
                           progress=ctx.progress)  # fmt: skip
    return {"shards": str(ctx.dir / "shards"), "videos": summary["videos"], "frames": summary["frames"],
            "skipped": summary["skipped"], "frames_per_s": summary["frames_per_s"],
            "accuracy_vs_hidden_truth": pseudo_label_accuracy(ctx.dir / "shards"),
            "devices": ", ".join(summary["devices"]) or "cpu"}  # fmt: skip


def pseudo_label_accuracy(labels: Path) -> float | None:
    """Agreement of the IDM's labels with the true actions the web videos hide (their metadata's ground truth)."""
    from vpt_ray.data.recordings import read_meta
    from vpt_ray.data.shards import find_shards, iter_segments

    hits = total = 0
    truth_cache: dict[str, list] = {}
    for shard in find_shards(labels):
        for seg in iter_segments(shard):
            if seg.source not in truth_cache:
                truth_cache[seg.source] = read_meta(seg.source)["ground_truth"]["actions"]
            want = truth_cache[seg.source][seg.frame_start:seg.frame_end]
            gameplay = np.array([a is not None for a in want], bool)  # cards and menus have no true action
            want = np.array([-1 if a is None else a for a in want])
            hits += int((seg.actions["action"] == want)[gameplay].sum())
            total += int(gameplay.sum())
    return hits / total if total else None


# -------------------------------------------------------------------------------------------------------- bc


def _bc(ctx: StageContext) -> dict[str, Any]:
    from vpt_ray.bc import train_bc

    idm = ctx.outputs["idm"]
    metrics, final = train_bc(_on_gpu_if_present(ctx, ctx.resolved.bc_train), [ctx.outputs["label"]["shards"]],
                              ctx.dir / "run", val_data=[idm["heldout_shards"]])  # fmt: skip
    return {"final": str(final), "run_dir": str(ctx.dir / "run"), "train_frames": ctx.outputs["label"]["frames"],
            "steps": ctx.resolved.bc_train.schedule.max_steps, "eval": _metrics(metrics),
            "devices": _train_devices(metrics)}  # fmt: skip


def _bc_labeled_config(resolved: Resolved):
    """BC on the labeled set alone, for as many optimizer steps as the IDM trains (equal data, equal steps)."""
    schedule = dataclasses.replace(resolved.bc_train.schedule, max_steps=resolved.idm_train.schedule.max_steps)
    return dataclasses.replace(resolved.bc_train, schedule=schedule)


def _bc_labeled(ctx: StageContext) -> dict[str, Any]:
    from vpt_ray.bc import train_bc

    idm = ctx.outputs["idm"]
    cfg = _bc_labeled_config(ctx.resolved)
    metrics, final = train_bc(_on_gpu_if_present(ctx, cfg), [idm["labeled_shards"]], ctx.dir / "run",
                              val_data=[idm["heldout_shards"]])  # fmt: skip
    return {"final": str(final), "run_dir": str(ctx.dir / "run"), "train_frames": idm["labeled_frames"],
            "steps": cfg.schedule.max_steps, "eval": _metrics(metrics), "devices": _train_devices(metrics)}  # fmt: skip


# -------------------------------------------------------------------------------------------------------- rl


def _rl(arm: str) -> Callable[[StageContext], dict[str, Any]]:
    def run(ctx: StageContext) -> dict[str, Any]:
        from vpt_ray.rl.job import run_rl

        init = None if arm == "rl_scratch" else ctx.outputs["bc"]["final"]
        run_dir = ctx.dir / "run"
        iterations = ctx.resolved.rl_iterations
        common = dict(iterations=iterations, ledger=ctx.ledger, progress=ctx.progress)
        if (run_dir / "run.json").is_file():  # an interrupted run of this same config: continue it
            summary = run_rl(resume=run_dir, **common)
        else:
            summary = run_rl(ctx.task_path, out=run_dir, init=init, kl=arm == "rl_bc_kl",
                             run_id=f"{ctx.run_id}-{arm.replace('_', '-')}", **common)  # fmt: skip
        return {"final": summary["final"], "run_dir": str(run_dir), "tensorboard": str(run_dir / "tensorboard"),
                "iterations": summary["iteration"], "init": init, "kl": arm == "rl_bc_kl",
                "env_steps": _rl_env_steps(run_dir), "devices": _rl_devices(ctx)}  # fmt: skip

    return run


def _rl_env_steps(run_dir: Path) -> int | None:
    """Env steps sampled by the end of the run (the last ``env/steps_lifetime`` in ``progress.jsonl``)."""
    path = run_dir / "progress.jsonl"
    steps = None
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                steps = json.loads(line).get("env/steps_lifetime", steps)
    return None if steps is None else int(steps)


# -------------------------------------------------------------------------------------------------- evaluate

AGENT_TITLES = {
    "demonstrator": "scripted player (the demonstrator)",
    "bc": "BC foundation (zero-shot)",
    "bc_labeled": "BC on the labeled set only",
    "rl_bc_kl": "RL from BC, KL to BC",
    "rl_bc_no_kl": "RL from BC, no KL",
    "rl_scratch": "RL from scratch",
    "random": "random actions",
}


def agents_of(resolved: Resolved) -> list[str]:
    """The agents the evaluation stage plays, in the report's column order."""
    bc_labeled = ["bc_labeled"] if resolved.config.eval.bc_labeled_only else []
    return ["demonstrator", "bc", *bc_labeled, *RL_ARMS, "random"]


def _evaluate(ctx: StageContext) -> dict[str, Any]:
    from vpt_ray.evaluation import EVAL_SEED, AgentSpec, evaluate_agents

    e = ctx.resolved.config.eval
    seed = EVAL_SEED if e.seed is None else e.seed
    ctx.dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    todo = []
    for name in agents_of(ctx.resolved):
        path = ctx.dir / f"{name}.json"
        if path.is_file():  # evaluated before this stage was interrupted (same config: the marker says so)
            results[name] = json.loads(path.read_text())
        elif name in ("demonstrator", "random"):
            todo.append(AgentSpec(name, name))
        else:
            todo.append(AgentSpec(name, "policy", ctx.outputs[name]["final"]))

    def save(name: str, summary: dict[str, Any]) -> None:
        summary["title"] = AGENT_TITLES[name]
        (ctx.dir / f"{name}.json").write_text(json.dumps(summary, indent=1))
        rates = " ".join(f"{i}={v['rate']:.2f}" for i, v in summary["items"].items() if v["rate"] > 0)
        print(f"  {name}: return {summary['return']['mean']:.2f}, Crafter score {summary['crafter']['score']:.2f}, "
              f"items {rates or '-'}", flush=True)  # fmt: skip

    if todo:
        results.update(evaluate_agents(todo, ctx.task_path, episodes=e.episodes, seed=seed, workers=e.workers,
                                       envs_per_worker=e.envs_per_worker, max_steps=e.max_steps,
                                       progress=ctx.progress, on_result=save))  # fmt: skip
    results = {name: results[name] for name in agents_of(ctx.resolved)}
    (ctx.dir / "results.json").write_text(json.dumps(results, indent=1))
    return {"results": str(ctx.dir / "results.json"), "seed": seed, "episodes": e.episodes,
            "agents": list(results)}  # fmt: skip


# ---------------------------------------------------------------------------------------------------- report


def _report(ctx: StageContext) -> dict[str, Any]:
    from vpt_ray.demo.report import write_report

    return write_report(ctx)


def _task_config(r: Resolved) -> dict[str, Any]:
    """The task as the recordings see it: everything but the RL section."""
    return {k: v for k, v in r.task.items() if k != "rl"}


def _rl_config(r: Resolved) -> dict[str, Any]:
    return {"task": r.task, "model": r.policy_preset.read_text()}


STAGES: tuple[Stage, ...] = (
    Stage("record", "record labeled demonstrations (contractor set) and unlabeled web-like videos",
          (), lambda r: {"task": _task_config(r), "record": dataclasses.asdict(r.config.record)}, _record),
    Stage("filter", "train the clean-video filter and filter the unlabeled videos",
          ("record",), lambda r: dataclasses.asdict(r.config.filter), _filter),
    Stage("idm", "train the inverse dynamics model on the labeled set (Ray Train)",
          ("record",), lambda r: {"model": r.idm_preset.read_text(), "train": _asdict(r.idm_train)}, _idm),
    Stage("label", "pseudo-label the clean segments with the IDM (Ray Data)",
          ("idm", "filter"), lambda r: {}, _label),
    Stage("bc", "train the BC foundation model on the pseudo-labels (Ray Train)",
          ("label",), lambda r: {"model": r.policy_preset.read_text(), "train": _asdict(r.bc_train)}, _bc),
    Stage("bc_labeled", "train BC on the labeled set alone (the IDM-vs-BC comparison at equal labeled data)",
          ("idm",), lambda r: {"model": r.policy_preset.read_text(), "train": _asdict(_bc_labeled_config(r))},
          _bc_labeled),
    Stage("rl_bc_kl", "RL fine-tuning from BC with the decaying KL to BC (PPG, frozen BC on Ray Serve)",
          ("bc",), _rl_config, _rl("rl_bc_kl")),
    Stage("rl_bc_no_kl", "RL fine-tuning from BC without the KL term (entropy bonus)",
          ("bc",), _rl_config, _rl("rl_bc_no_kl")),
    Stage("rl_scratch", "RL from a random init (entropy bonus), the same env-step budget",
          (), _rl_config, _rl("rl_scratch")),
    Stage("evaluate", "evaluate every agent on fresh worlds (Ray actors)",
          ("record", "bc", "bc_labeled", *RL_ARMS), lambda r: dataclasses.asdict(r.config.eval), _evaluate),
    Stage("report", "write the report (Markdown + plots)",
          ("record", "filter", "idm", "label", "bc", "bc_labeled", *RL_ARMS, "evaluate"), lambda r: {}, _report,
          needs_ray=False),
)


def _asdict(cfg) -> dict[str, Any]:
    from vpt_ray.config import to_dict

    return to_dict(cfg)
