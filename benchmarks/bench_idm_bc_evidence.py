"""Evidence for the VPT recipe on Crafter: the IDM's held-out action accuracy as a function of labeled-data size,
and the paper's Fig. 3 question: does BC on IDM pseudo-labels of a larger unlabeled set beat BC on the small
labeled set alone? Prints JSON (also written to OUT/evidence.json) and plots OUT/evidence.png.

Everything runs through the product on one local Ray cluster: the scripted player records labeled (contractor
layout) and unlabeled (web-style, lossy) videos (`vpt-ray record`), labeled recordings become shards (`vpt-ray
shard convert`), IDMs train as Ray Train jobs on the first k labeled episodes (`vpt-ray train-idm`), the largest
one pseudo-labels the unlabeled videos (`vpt-ray label`, Ray Data), and two BC policies train with the same
number of steps (`vpt-ray train-bc`): one on the labeled episodes' true actions, one on the IDM's labels of the
unlabeled videos. Both are scored on held-out labeled episodes (action accuracy, NLL, predicted-null rate) and
in the environment (`vpt_ray.evaluation`: item progression of sampled episodes on fresh worlds), with a uniformly
random policy and the scripted player as references.

    python benchmarks/bench_idm_bc_evidence.py [--out runs/idm_bc_evidence] [--labeled 24] [--unlabeled 60]
        [--episode-steps 300] [--idm-sizes 3 8 24] [--idm-steps 1500] [--bc-steps 300] [--eval-episodes 16]

Defaults take ~40 minutes on an idle 2-core machine (both cores: two data-parallel Ray Train workers; each IDM
~10 minutes). The IDMs need that many steps: this small IDM predicts little beyond the majority class for its
first ~700 steps (on 24 labeled episodes, held-out accuracy 0.42 after 300 steps, 0.64 after 1000, 0.81 after
1500), so a few hundred steps measure the optimiser, not the data. Reruns reuse the recordings, shards and
finished runs in OUT (a larger --idm-steps extends them).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("RAY_AUTH_MODE", "token")  # Ray token auth (vpt_ray.ray_session), set before Ray is imported

TASK = "crafter-tech-tree"
WORKERS = 2  # data-parallel Ray Train workers (DDP over gloo), one CPU each
# The default demo's models (vpt_ray/demo/models/): the VPT architectures for 64x64 Crafter frames, sized for CPU
# minutes; the evidence then speaks for the models `make demo` trains.
IDM_PRESET = "demo-idm-small"
POLICY_PRESET = "demo-policy-small"


def _training_overrides(preset: Path, steps: int) -> dict:
    """What the IDM and BC runs share on top of their recipes: model, batch, optimiser, schedule, workers."""
    return {"model": str(preset), "batch_size": 8, "optim": {"lr": 1e-3, "warmup_steps": 10},
            "schedule": {"max_steps": steps, "checkpoint_every": steps, "log_every": 10},
            "scaling": {"num_workers": WORKERS, "cpus_per_worker": 1}}  # fmt: skip


def record(out: Path, name: str, episodes: int, seed: int, steps: int, labeled: bool) -> Path:
    from vpt_ray.data.recordings import record_episodes

    directory = out / "recordings" / name
    result = record_episodes(TASK, directory, episodes, seed=seed, max_steps=steps, labeled=labeled, progress=True)
    if result["failed"]:
        raise RuntimeError(f"recording {name} failed: {result['failed']}")
    return directory


def to_shards(recordings: Path, out: Path) -> list[Path]:
    from vpt_ray.data.shards import recordings_to_shards

    summary = recordings_to_shards(recordings, out)
    if summary.bad:
        raise RuntimeError(f"bad recordings: {summary.bad}")
    return sorted(out.glob("*.vshard"))


def train_idm_on(shards: list[Path], val: Path, run_dir: Path, preset: Path, steps: int, augment: bool) -> dict:
    from vpt_ray.idm import IDMTrainConfig, train_idm
    from vpt_ray.training.config import load_recipe

    cfg = load_recipe(IDMTrainConfig, "idm-crafter-small",
                      {**_training_overrides(preset, steps), "clip_len": 32, "augment": {"enabled": augment}})
    metrics, final = train_idm(cfg, shards, run_dir, val_data=[val])
    return {"metrics": metrics, "final": str(final)}


def train_bc_on(data: list[Path], val: Path, run_dir: Path, preset: Path, steps: int) -> dict:
    from vpt_ray.bc import BCTrainConfig, train_bc
    from vpt_ray.training.config import load_recipe

    cfg = load_recipe(BCTrainConfig, "bc-crafter-small", {**_training_overrides(preset, steps), "chunk_len": 32})
    metrics, final = train_bc(cfg, data, run_dir, val_data=[val])
    return {"metrics": metrics, "final": str(final)}


def pseudo_label(idm_dir: str, videos: Path, out: Path) -> dict:
    from vpt_ray.labeling import collect_videos, prepare_job, run_labeling

    job = prepare_job(idm_dir, out)
    return run_labeling(job, collect_videos([videos]), progress=True)


def pseudo_label_accuracy(videos: Path, labels: Path) -> float:
    """Agreement of the IDM's labels with the true (hidden) actions of the unlabeled videos."""
    from vpt_ray.data.recordings import iter_recordings, read_meta
    from vpt_ray.data.shards import find_shards, iter_segments

    truth = {stem.name: read_meta(stem)["ground_truth"]["actions"] for stem in iter_recordings(videos)}
    hits = total = 0
    for shard in find_shards(labels):
        for seg in iter_segments(shard):
            want = truth[Path(seg.source).stem][seg.frame_start:seg.frame_end]
            gameplay = np.array([a is not None for a in want])  # non-game frames have no true action
            want = np.array([-1 if a is None else a for a in want])
            hits += int((seg.actions["action"] == want)[gameplay].sum())
            total += int(gameplay.sum())
    return hits / max(total, 1)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    ax = axes[0]
    curve = result["idm_accuracy_vs_labeled_data"]
    x = [c["labeled_frames"] for c in curve]
    ax.plot(x, [c["heldout_action_accuracy"] for c in curve], "o-", label="IDM (held-out labeled episodes)")
    ax.axhline(result["bc"]["labeled_only"]["heldout"]["accuracy"], color="tab:orange", ls="--",
               label=f"BC on {result['data']['labeled_frames']} labeled frames")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("labeled frames (IDM training data)")
    ax.set_ylabel("action accuracy")
    ax.set_title("IDM accuracy vs labeled data")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)

    arms = [("labeled_only", "BC: labeled only"), ("idm_labels", "BC: IDM labels of unlabeled set")]
    ax = axes[1]
    keys = ["accuracy", "pred_null_rate"]
    width = 0.35
    for i, (arm, label) in enumerate(arms):
        ax.bar(np.arange(len(keys)) + i * width, [result["bc"][arm]["heldout"][k] for k in keys], width, label=label)
    ax.set_xticks(np.arange(len(keys)) + width / 2, ["held-out action accuracy", "predicted null rate"])
    ax.set_title("BC on held-out labeled episodes")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")

    ax = axes[2]
    env = result["env"]
    items = [k for k in env["random"]["items"]][:5]
    rows = arms + [("random", "random policy"), ("demonstrator", "scripted player")]
    width = 0.8 / len(rows)
    for i, (arm, label) in enumerate(rows):
        ax.bar(np.arange(len(items)) + i * width, [env[arm]["items"][k] for k in items], width, label=label)
    ax.set_xticks(np.arange(len(items)) + 0.4 - width / 2, items)
    ax.set_ylabel("fraction of episodes")
    ax.set_title(f"Item progression in Crafter ({env['episodes']} episodes x {env['steps']} steps)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/idm_bc_evidence")
    parser.add_argument("--labeled", type=int, default=24, help="labeled episodes (the IDM's and small BC's data)")
    parser.add_argument("--heldout", type=int, default=4, help="held-out labeled episodes (evaluation)")
    parser.add_argument("--unlabeled", type=int, default=60, help="unlabeled videos (pseudo-labeled by the IDM)")
    parser.add_argument("--episode-steps", type=int, default=300, help="steps per recorded/evaluated episode")
    parser.add_argument("--idm-sizes", type=int, nargs="+", default=[3, 8, 24], help="labeled episodes per IDM")
    parser.add_argument("--idm-steps", type=int, default=1500)
    parser.add_argument("--bc-steps", type=int, default=300)
    parser.add_argument("--idm-augment", action="store_true",
                        help="clip augmentation for the IDMs (off by default: at a thousand-odd CPU steps it slows "
                             "learning more than it regularises)")  # fmt: skip
    parser.add_argument("--eval-episodes", type=int, default=16)
    args = parser.parse_args()
    if max(args.idm_sizes) > args.labeled:
        parser.error(f"--idm-sizes {args.idm_sizes} exceed --labeled {args.labeled}")

    import ray
    import torch

    from vpt_ray.demo.config import model_preset_path

    torch.set_num_threads(1)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    started = time.perf_counter()

    def lap(name: str) -> None:
        timings[name] = round(time.perf_counter() - started - sum(timings.values()), 1)

    idm_preset = model_preset_path(IDM_PRESET, "idm")
    policy_preset = model_preset_path(POLICY_PRESET, "policy")

    steps = args.episode_steps
    labeled_rec = record(out, "labeled", args.labeled, seed=0, steps=steps, labeled=True)
    heldout_rec = record(out, "heldout", args.heldout, seed=1, steps=steps, labeled=True)
    unlabeled_rec = record(out, "unlabeled", args.unlabeled, seed=2, steps=steps, labeled=False)
    labeled = to_shards(labeled_rec, out / "shards" / "labeled")
    to_shards(heldout_rec, out / "shards" / "heldout")
    heldout = out / "shards" / "heldout"
    lap("record_and_shard")

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        curve = []
        for k in sorted(set(args.idm_sizes)):
            run = train_idm_on(labeled[:k], heldout, out / "runs" / f"idm-{k:03d}", idm_preset, args.idm_steps,
                               args.idm_augment)  # fmt: skip
            m = run["metrics"]
            curve.append({"labeled_episodes": k, "labeled_frames": k * steps,
                          "heldout_action_accuracy": m["eval/action/accuracy"], "final": run["final"],
                          "train_loss": m["train/loss"]})  # fmt: skip
            print(f"IDM on {k} labeled episodes: held-out action accuracy {m['eval/action/accuracy']:.3f}")
        lap("idm_runs")

        best_idm = curve[-1]["final"]
        label_summary = pseudo_label(best_idm, unlabeled_rec, out / "shards" / "pseudo")
        pseudo_acc = pseudo_label_accuracy(unlabeled_rec, out / "shards" / "pseudo")
        lap("pseudo_label")

        bc_small = train_bc_on(labeled, heldout, out / "runs" / "bc-labeled-only", policy_preset, args.bc_steps)
        bc_idm = train_bc_on([out / "shards" / "pseudo"], heldout, out / "runs" / "bc-idm-labels", policy_preset,
                             args.bc_steps)  # fmt: skip
        lap("bc_runs")

        from vpt_ray.evaluation import AgentSpec, evaluate_agents, item_rates

        agents = [AgentSpec("labeled_only", "policy", bc_small["final"]),
                  AgentSpec("idm_labels", "policy", bc_idm["final"]),
                  AgentSpec("random", "random"), AgentSpec("demonstrator", "demonstrator")]  # fmt: skip
        summaries = evaluate_agents(agents, TASK, episodes=args.eval_episodes, max_steps=steps, workers=WORKERS)
    finally:
        ray.shutdown()

    env = {"episodes": args.eval_episodes, "steps": steps}
    for name, summary in summaries.items():
        env[name] = {"items": item_rates(summary), "return": summary["return"],
                     "crafter_score": (summary["crafter"] or {}).get("score")}  # fmt: skip
    lap("env_eval")

    def heldout_metrics(run: dict) -> dict:
        m = run["metrics"]
        return {k: m[f"eval/{k}"] for k in ("accuracy", "nll", "pred_null_rate", "label_null_rate", "frames")}

    result = {
        "data": {"task": TASK, "episode_steps": steps, "labeled_episodes": args.labeled,
                 "labeled_frames": args.labeled * steps, "heldout_episodes": args.heldout,
                 "unlabeled_videos": args.unlabeled, "unlabeled_frames": label_summary["frames"]},  # fmt: skip
        "idm_accuracy_vs_labeled_data": curve,
        "pseudo_labels": {"idm": best_idm, "frames": label_summary["frames"], "accuracy_vs_hidden_truth": pseudo_acc,
                          "labeling_frames_per_s": label_summary["frames_per_s"]},  # fmt: skip
        "bc": {
            "steps": args.bc_steps,
            "labeled_only": {"train_frames": args.labeled * steps, "heldout": heldout_metrics(bc_small),
                             "final": bc_small["final"]},  # fmt: skip
            "idm_labels": {"train_frames": label_summary["frames"], "heldout": heldout_metrics(bc_idm),
                           "final": bc_idm["final"]},  # fmt: skip
        },
        "env": env,
        "models": {"idm": str(idm_preset), "policy": str(policy_preset)},
        "training": {"workers": WORKERS, "idm_steps": args.idm_steps, "idm_augment": args.idm_augment,
                     "bc_steps": args.bc_steps, "batch": "8 sequences x 32 frames", "lr": 1e-3},
        "seconds": timings,
        "seconds_total": round(time.perf_counter() - started, 1),
    }
    (out / "evidence.json").write_text(json.dumps(result, indent=2))
    plot(result, out / "evidence.png")
    result["plot"] = str(out / "evidence.png")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
