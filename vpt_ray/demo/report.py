"""The demo's report: ``RUN_DIR/report.md`` and its plots in ``RUN_DIR/report/``.

Everything in it is read back from the stages' outputs (markers, evaluation JSON, TensorBoard logs), and the
section on the paper's claims states from these numbers whether each ordering holds, whatever the result.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from vpt_ray.demo.config import RL_ARMS
from vpt_ray.demo.stages import AGENT_TITLES, STAGES, StageContext

SECTIONS = (
    "## Headline: item progression per agent",
    "## Do the paper's orderings hold here?",
    "## RL fine-tuning over training",
    "## Inverse dynamics model vs behavioral cloning at equal labeled data",
    "## Data: demonstrations, clean filter, pseudo-labels",
    "## Crafter score",
    "## Wall time per stage",
    "## Reproduce and inspect",
)
PLOTS = ("items.png", "rl_items.png", "rl_training.png", "idm_vs_bc.png", "stage_times.png")


def _fmt(x: float | None, spec: str = ".3f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def tech_tree_counts(summary: dict[str, Any]) -> np.ndarray:
    """Per episode: how many of the task's items (its tech tree) the agent obtained."""
    return np.array([sum(bool(v) for v in ep["items"].values()) for ep in summary["per_episode"]], np.float64)


def _mean_se(x: np.ndarray) -> tuple[float, float]:
    if len(x) == 0:
        return float("nan"), float("nan")
    return float(x.mean()), float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else 0.0


def compare(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """Mean of ``a`` minus mean of ``b`` with the standard error of the difference, and a verdict."""
    (ma, sa), (mb, sb) = _mean_se(a), _mean_se(b)
    diff, se = ma - mb, math.sqrt(sa**2 + sb**2)
    if diff > 0:
        verdict = "holds" if diff > 2 * se else "holds, but within noise (difference < 2 standard errors)"
    elif diff == 0:
        verdict = "does not hold (a tie)"
    else:
        verdict = "does not hold" if -diff > 2 * se else "does not hold, within noise (difference < 2 standard errors)"
    return {"a_mean": ma, "a_se": sa, "b_mean": mb, "b_se": sb, "diff": diff, "diff_se": se, "holds": diff > 0,
            "clear": abs(diff) > 2 * se, "verdict": verdict}  # fmt: skip


def idm_vs_bc(idm: dict[str, Any], bc_labeled: dict[str, Any]) -> dict[str, Any]:
    """Held-out action accuracy of the IDM and of BC trained on the same labeled episodes."""
    acc_idm = idm["eval"].get("eval/exact_accuracy")
    acc_bc = bc_labeled["eval"].get("eval/accuracy")
    n_idm = int(idm["eval"].get("eval/frames", 0))
    n_bc = int(bc_labeled["eval"].get("eval/frames", 0))
    if acc_idm is None or acc_bc is None:
        return {"idm": acc_idm, "bc": acc_bc, "holds": None, "verdict": "not measured (no held-out metrics)"}
    se = math.sqrt(acc_idm * (1 - acc_idm) / max(n_idm, 1) + acc_bc * (1 - acc_bc) / max(n_bc, 1))
    diff = acc_idm - acc_bc
    if diff > 0:
        verdict = "holds" if diff > 2 * se else "holds, but within noise (difference < 2 standard errors)"
    else:
        verdict = "does not hold" if -diff > 2 * se else "does not hold, within noise (difference < 2 standard errors)"
    return {"idm": acc_idm, "bc": acc_bc, "idm_frames": n_idm, "bc_frames": n_bc, "diff": diff, "diff_se": se,
            "holds": diff > 0, "verdict": verdict}  # fmt: skip


# ----------------------------------------------------------------------------------------------------- plots


def _plot_rl_items(outputs: dict[str, Any], out: Path) -> Path:
    from vpt_ray.rl.metrics import ENV_STEPS_TAG, plot_item_curves, read_scalars

    runs = {AGENT_TITLES[arm]: read_scalars(outputs[arm]["tensorboard"]) for arm in RL_ARMS}
    x = "env_steps" if all(ENV_STEPS_TAG in s for s in runs.values()) else "iteration"
    prefix = "items_lifetime"  # few episodes end per iteration here: the running rate is the readable curve
    return plot_item_curves(runs, out, prefix=prefix, x=x,
                            title="RL fine-tuning: fraction of all episodes so far that obtained each item")  # fmt: skip


def _plot_rl_training(outputs: dict[str, Any], out: Path) -> Path:
    from matplotlib.figure import Figure

    from vpt_ray.rl.metrics import ENV_STEPS_TAG, read_scalars

    tags = [("episode/return_mean", "mean episode return"), ("kl/pretrained", "KL(BC || policy)"),
            ("ppg/rho", "KL coefficient rho")]  # fmt: skip
    fig = Figure(figsize=(13, 3.4), layout="constrained")
    axes = fig.subplots(1, len(tags))
    for j, arm in enumerate(RL_ARMS):
        scalars = read_scalars(outputs[arm]["tensorboard"])
        steps = dict(scalars.get(ENV_STEPS_TAG, []))
        for ax, (tag, _) in zip(axes, tags):
            if tag != "episode/return_mean" and arm != "rl_bc_kl":
                continue  # only the KL arm has a KL term (the others log rho without using it)
            points = [(steps.get(s, s), v) for s, v in scalars.get(tag, []) if not math.isnan(v)]
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, marker=".", color=f"C{j}", label=AGENT_TITLES[arm])
    for ax, (_, title) in zip(axes, tags):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("env steps")
        ax.grid(alpha=0.3)
    labelled = {line.get_label(): line for ax in axes for line in ax.lines}
    if labelled:
        fig.legend(list(labelled.values()), list(labelled), loc="outside lower center", ncols=len(labelled))
    fig.savefig(out, dpi=100)
    return out


def _plot_idm_vs_bc(outputs: dict[str, Any], cmp: dict[str, Any], out: Path) -> Path:
    from matplotlib.figure import Figure

    from vpt_ray.rl.metrics import read_scalars

    fig = Figure(figsize=(12, 3.8), layout="constrained")
    ax_bar, ax_curve = fig.subplots(1, 2)
    bars = [("IDM", cmp["idm"]), ("BC\n(labeled only)", cmp["bc"]),
            ("BC foundation\n(pseudo-labels)", outputs["bc"]["eval"].get("eval/accuracy")),
            ("pseudo-labels vs\ntrue actions", outputs["label"].get("accuracy_vs_hidden_truth"))]  # fmt: skip
    names = [b[0] for b in bars]
    values = [np.nan if b[1] is None else b[1] for b in bars]
    ax_bar.bar(names, values, color=["C0", "C1", "C2", "C7"])
    for i, v in enumerate(values):
        if not np.isnan(v):
            ax_bar.text(i, v + 0.01, f"{v:.3f}", ha="center", fontsize=9)
    ax_bar.set_ylim(0, 1)
    ax_bar.set_ylabel("action accuracy (held-out labeled episodes)")
    ax_bar.set_title(f"equal labeled data: {outputs['idm']['labeled_frames']} frames")
    ax_bar.grid(alpha=0.3, axis="y")
    for j, (key, tag, label) in enumerate((("idm", "eval/exact_accuracy", "IDM"),
                                           ("bc_labeled", "eval/accuracy", "BC (labeled only)"),
                                           ("bc", "eval/accuracy", "BC foundation (pseudo-labels)"))):  # fmt: skip
        points = read_scalars(Path(outputs[key]["run_dir"]) / "tensorboard").get(tag, [])
        if points:
            ax_curve.plot(*zip(*points), "o-", color=f"C{j}", label=label)
    ax_curve.set_xlabel("optimizer step")
    ax_curve.set_ylabel("held-out action accuracy")
    ax_curve.set_ylim(0, 1)
    ax_curve.grid(alpha=0.3)
    ax_curve.legend(fontsize=8)
    ax_curve.set_title("held-out accuracy during training")
    fig.savefig(out, dpi=100)
    return out


def _plot_stage_times(seconds: dict[str, float], out: Path) -> Path:
    from matplotlib.figure import Figure

    names = list(seconds)
    fig = Figure(figsize=(8, 0.35 * len(names) + 1.2), layout="constrained")
    ax = fig.subplots()
    ax.barh(names[::-1], [seconds[n] / 60 for n in names[::-1]], color="C0")
    ax.set_xlabel("minutes")
    ax.set_title(f"wall time per stage (total {sum(seconds.values()) / 60:.1f} min)")
    ax.grid(alpha=0.3, axis="x")
    fig.savefig(out, dpi=100)
    return out


# ---------------------------------------------------------------------------------------------------- report


def write_report(ctx: StageContext) -> dict[str, Any]:
    from vpt_ray.demo.pipeline import read_marker
    from vpt_ray.evaluation import format_table, plot_item_rates

    outputs, run_dir, resolved = ctx.outputs, ctx.run_dir, ctx.resolved
    plots_dir = ctx.dir
    plots_dir.mkdir(parents=True, exist_ok=True)
    results = json.loads(Path(outputs["evaluate"]["results"]).read_text())
    titled = {AGENT_TITLES[name]: s for name, s in results.items()}
    seconds, loads = {}, {}
    for stage in STAGES:
        marker = read_marker(run_dir, stage.name)
        if marker is not None:
            seconds[stage.name] = float(marker["seconds"])
            loads[stage.name] = marker.get("load_average")
    problems: list[str] = []

    def plot(name: str, fn, *args) -> str | None:
        try:
            return str(fn(*args, plots_dir / name))
        except Exception as e:  # noqa: BLE001 - a missing curve must not cost the rest of the report
            problems.append(f"{name}: {type(e).__name__}: {e}")
            return None

    plots = {
        "items": plot("items.png", lambda p: plot_item_rates(
            titled, p, title=f"{resolved.task['name']}: fraction of {outputs['evaluate']['episodes']} evaluation "
            "episodes that obtained each item (95 % Wilson intervals)")),  # fmt: skip
        "rl_items": plot("rl_items.png", lambda p: _plot_rl_items(outputs, p)),
        "rl_training": plot("rl_training.png", lambda p: _plot_rl_training(outputs, p)),
    }
    cmp_idm = idm_vs_bc(outputs["idm"], outputs["bc_labeled"])
    plots["idm_vs_bc"] = plot("idm_vs_bc.png", lambda p: _plot_idm_vs_bc(outputs, cmp_idm, p))
    plots["stage_times"] = plot("stage_times.png", lambda p: _plot_stage_times(seconds, p))

    counts = {name: tech_tree_counts(s) for name, s in results.items()}
    cmp_no_kl = compare(counts["rl_bc_kl"], counts["rl_bc_no_kl"])
    cmp_scratch = compare(counts["rl_bc_kl"], counts["rl_scratch"])
    verdicts = {"idm_beats_bc_at_equal_labeled_data": cmp_idm, "rl_kl_beats_no_kl": cmp_no_kl,
                "rl_kl_beats_scratch": cmp_scratch}  # fmt: skip
    if "bc_labeled" in counts:  # VPT's premise: pseudo-labeled video beats the small labeled set alone
        verdicts["bc_pseudo_labels_beat_bc_labeled_only"] = compare(counts["bc"], counts["bc_labeled"])

    md = _markdown(ctx, results, titled, counts, verdicts, seconds, loads, plots, problems, format_table)
    path = run_dir / "report.md"
    path.write_text(md)
    (plots_dir / "verdicts.json").write_text(json.dumps(verdicts, indent=1))
    return {"markdown": str(path), "plots": {k: v for k, v in plots.items() if v}, "verdicts": {
        k: v["verdict"] for k, v in verdicts.items()}, "problems": problems}  # fmt: skip


def _rel(path: str | None, run_dir: Path) -> str:
    return Path(path).relative_to(run_dir).as_posix() if path else ""


def _markdown(ctx, results, titled, counts, verdicts, seconds, loads, plots, problems, format_table) -> str:
    outputs, run_dir, resolved = ctx.outputs, ctx.run_dir, ctx.resolved
    cfg = resolved.config
    ev = outputs["evaluate"]
    rec = outputs["record"]
    lines: list[str] = []
    add = lines.append
    add(f"# VPT on Crafter, in miniature: demo report ({cfg.name})")
    add("")
    add(f"Run `{ctx.run_id}` in `{run_dir}`, written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. "
        f"Task `{resolved.task['name']}`: Crafter from a fresh world, {resolved.task['env']['max_steps']} steps per "
        f"episode, rewarded along the tech tree ({', '.join(i['item'] for i in resolved.task['rewards']['items'])}). "
        f"{cfg.description}".rstrip())  # fmt: skip
    add("")

    add(SECTIONS[0])
    add("")
    add(f"Fraction of {ev['episodes']} evaluation episodes per agent that obtained each item (± binomial standard "
        f"error), in the task's order; worlds from seed {ev['seed']}, none of which any training stage played. "
        "Policies sample their actions (as in training), memory carried within an episode.")  # fmt: skip
    add("")
    add(format_table(titled))
    add("| tech-tree items per episode | " + " | ".join(
        "{:.2f} ± {:.2f}".format(*_mean_se(counts[n])) for n in results) + " |")  # fmt: skip
    add("")
    if plots.get("items"):
        add(f"![item progression]({_rel(plots['items'], run_dir)})")
        add("")

    add(SECTIONS[1])
    add("")
    idm = verdicts["idm_beats_bc_at_equal_labeled_data"]
    add(f"1. **The IDM beats BC at equal labeled data** (the paper: inverse dynamics is about two orders of "
        f"magnitude more data-efficient than behavioral cloning): **{idm['verdict']}**. Held-out action accuracy: IDM {_fmt(idm['idm'])} vs BC trained "
        f"on the same {outputs['idm']['labeled_frames']} labeled frames {_fmt(idm['bc'])}"
        + (f" (difference {idm['diff']:+.3f} ± {idm['diff_se']:.3f})." if idm.get("diff") is not None else "."))  # fmt: skip
    for key, other, paper in (("rl_kl_beats_no_kl", "rl_bc_no_kl", "without the KL term it stalls early in the "
                               "tech tree (catastrophic forgetting)"),
                              ("rl_kl_beats_scratch", "rl_scratch", "from a random init RL gets almost nothing")):  # fmt: skip
        c = verdicts[key]
        add(f"{2 if other == 'rl_bc_no_kl' else 3}. **RL from BC with the KL obtains more of the tech tree than "
            f"{AGENT_TITLES[other]}** (paper §4.4, Fig. 7: {paper}): **{c['verdict']}**. Tech-tree items per "
            f"episode: {c['a_mean']:.2f} ± {c['a_se']:.2f} vs {c['b_mean']:.2f} ± {c['b_se']:.2f} "
            f"(difference {c['diff']:+.2f} ± {c['diff_se']:.2f}).")  # fmt: skip
    c = verdicts.get("bc_pseudo_labels_beat_bc_labeled_only")
    if c is not None:
        add(f"4. **BC on the IDM's pseudo-labels of the larger unlabeled set obtains more of the tech tree than BC on "
            f"the labeled set alone** (VPT's premise: cheap unlabeled video, labeled by an IDM, beats the small "
            f"labeled set): **{c['verdict']}**. Tech-tree items per episode: {c['a_mean']:.2f} ± {c['a_se']:.2f} vs "
            f"{c['b_mean']:.2f} ± {c['b_se']:.2f} ({outputs['label']['frames']} pseudo-labeled frames, "
            f"{_fmt(outputs['label'].get('accuracy_vs_hidden_truth'))} of them right, vs "
            f"{outputs['idm']['labeled_frames']} labeled frames).")  # fmt: skip
    add("")
    steps = {arm: outputs[arm].get("env_steps") for arm in RL_ARMS}
    add(f"Each RL agent trained for the same budget: {resolved.rl_iterations} PPG iterations of "
        f"{resolved.env_steps_per_iteration} env steps ({cfg.rl_budget.env_steps} asked for); env steps sampled: "
        + ", ".join(f"{AGENT_TITLES[a]} {_fmt(s, 'd') if s is not None else 'n/a'}" for a, s in steps.items())
        + ". The paper's RL ran ~16.8 B frames; this is a smoke-scale test of the same recipe, so small budgets "
        "leave the RL agents close to where they started.")  # fmt: skip
    add("")

    add(SECTIONS[2])
    add("")
    rl = resolved.task["rl"]
    cycles = f"{rl['sleep_cycles']} cycle" + ("s" if rl["sleep_cycles"] != 1 else "")
    add(f"PPG (wake: PPO clip {rl['ppo_clip']}, sleep: {cycles} per iteration), lr {rl['lr']}, KL coefficient "
        f"rho {rl['rho']} decaying x{rl['rho_decay']} per iteration for the KL arm; entropy bonus "
        f"{rl['entropy_coef']} for the others. Curves from each run's TensorBoard log.")  # fmt: skip
    add("")
    for key, caption in (("rl_items", "RL item curves"), ("rl_training", "RL training scalars")):
        if plots.get(key):
            add(f"![{caption}]({_rel(plots[key], run_dir)})")
            add("")

    add(SECTIONS[3])
    add("")
    bc = outputs["bc"]
    add("| model | trained on | steps | held-out action accuracy |")
    add("|---|---|---|---|")
    add(f"| IDM (non-causal) | {outputs['idm']['labeled_frames']} labeled frames | {outputs['idm']['steps']} | "
        f"{_fmt(idm['idm'])} |")  # fmt: skip
    add(f"| BC (causal) | the same {outputs['bc_labeled']['train_frames']} labeled frames | "
        f"{outputs['bc_labeled']['steps']} | {_fmt(idm['bc'])} |")  # fmt: skip
    add(f"| BC foundation (causal) | {bc['train_frames']} IDM-labeled frames of clean web video | {bc['steps']} | "
        f"{_fmt(bc['eval'].get('eval/accuracy'))} |")  # fmt: skip
    add("")
    add(f"The IDM's labels of the unlabeled videos agree with the actions the scripted player really took (hidden "
        f"in the videos' metadata) on {_fmt(outputs['label'].get('accuracy_vs_hidden_truth'))} of the gameplay "
        f"frames it labeled.")  # fmt: skip
    add("")
    if plots.get("idm_vs_bc"):
        add(f"![IDM vs BC]({_rel(plots['idm_vs_bc'], run_dir)})")
        add("")

    add(SECTIONS[4])
    add("")
    f = outputs["filter"]
    add(f"- Contractor set: {rec['labeled']['episodes']} labeled episodes (+ {rec['heldout']['episodes']} held out), "
        f"up to {cfg.record.episode_steps} steps each, recorded by the "
        "scripted player (mp4 + jsonl, VPT's contractor layout). Its item rates: "
        + ", ".join(f"{k} {v:.2f}" for k, v in rec["demonstrator_items"].items()) + ".")  # fmt: skip
    add(f"- Web-like set: {rec['unlabeled']['episodes']} unlabeled videos with overlays, face-cams, intros and menus.")
    add(f"- Clean filter (embedding + RBF SVM, trained on {rec['filter_train']['episodes']} other web videos' "
        f"ground-truth frames): held-out frame accuracy {_fmt(f['train']['holdout_accuracy'])} over its 3 classes, "
        f"{_fmt(f['train']['clean_vs_rest_accuracy'])} clean vs the rest; kept "
        f"{f['videos_kept']} of {f['videos_in']} videos ({f['hours_kept'] * 60:.1f} of {f['hours_in'] * 60:.1f} "
        f"minutes; dropped: {', '.join(f'{k} {v}' for k, v in f['dropped'].items() if v) or 'none'}); against the videos' ground truth: sampled-frame accuracy "
        f"{_fmt(f['against_truth']['sampled_frame_accuracy'])}, clean-frame precision "
        f"{_fmt(f['against_truth']['frame_precision'])}, recall {_fmt(f['against_truth']['frame_recall'])}.")  # fmt: skip
    add(f"- Pseudo-labels: {outputs['label']['frames']} frames of {outputs['label']['videos']} videos "
        f"({outputs['label']['frames_per_s']:.0f} frames/s), {outputs['label']['skipped']} skipped.")  # fmt: skip
    add("")

    add(SECTIONS[5])
    add("")
    add("| agent | Crafter score | achievements unlocked in >= 1 episode |")
    add("|---|---|---|")
    for title, s in titled.items():
        c = s.get("crafter")
        if c:
            unlocked = sum(v > 0 for v in c["success_rates_percent"].values())
            add(f"| {title} | {c['score']:.2f} | {unlocked} of {len(c['success_rates_percent'])} |")
    first = next((s["crafter"] for s in titled.values() if s.get("crafter")), None)
    if first:
        add("")
        add(f"Hafner's score exp(mean ln(1 + s_i)) - 1 over the success rates s_i (percent) of Crafter's 22 "
            f"achievements, computed over {first['computed_over']}.")  # fmt: skip
    add("")

    add(SECTIONS[6])
    add("")
    add(f"On {os.cpu_count()} CPU cores; the machine's 1-minute load average at the start and end of each stage says "
        "how much of them the demo had (a load above the core count means other work shared them). Devices: where "
        "each stage computed (training: the worker's device and precision; labeling: its actors'; RL: as the "
        "task's rl.scale places it).")  # fmt: skip
    add("")
    add("| stage | what | minutes | load average | devices |")
    add("|---|---|---|---|---|")
    titles = {s.name: s.title for s in STAGES}
    for name, sec in seconds.items():
        load = loads.get(name)
        load_text = f"{load[0]:.1f} → {load[1]:.1f}" if load else "n/a"
        devices = outputs.get(name, {}).get("devices", "CPU") if name != "report" else "CPU"
        add(f"| {name} | {titles[name]} | {sec / 60:.1f} | {load_text} | {devices} |")
    add(f"| total | (report stage excluded) | {sum(seconds.values()) / 60:.1f} | | |")
    add("")
    if plots.get("stage_times"):
        add(f"![stage times]({_rel(plots['stage_times'], run_dir)})")
        add("")

    add(SECTIONS[7])
    add("")
    add(f"- TensorBoard (IDM, BC and the three RL runs): `tensorboard --logdir {run_dir}`")
    add(f"- Evaluation JSON (per-episode records included): `{_rel(ev['results'], run_dir)}`")
    add(f"- The run in the ledger: `vpt-ray status {ctx.run_id}`")
    add("- Rerun the same command to resume; a changed preset or `--set` redoes the affected stages only.")
    if problems:
        add("")
        add("Plots that could not be drawn: " + "; ".join(problems))
    add("")
    return "\n".join(lines)
