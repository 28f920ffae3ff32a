"""Every benchmark in ``benchmarks/`` in one go, with small default sizes; prints ONE JSON document.

Each ``bench_*.py`` script runs in its own process (its own local Ray where it uses one) and prints a JSON
document; this collects them, and puts each headline figure next to the limit or baseline that the same run
measured (``figures``: ``{"figure", "value", "reference", "reference_value", "ratio", "ok"}``). A bench that fails,
times out or prints no JSON is reported as such with the tail of its output; the others still run. Benchmarks
added later (the RL engine's rollout/learner/memory benches) are picked up by their file name and run with their
own defaults; their figures are the fields whose names mark a comparison (limit, baseline, pass, speedup, ...).

    python benchmarks/run_all.py                       # small sizes (make bench), all of them, ~20-30 min
    python benchmarks/run_all.py --only envs models    # some of them (name with or without bench_)
    python benchmarks/run_all.py --full                # each bench at its own default sizes
    python benchmarks/run_all.py --out runs/bench/all.json --timeout 1800

Progress goes to stderr; stdout carries only the JSON document (also written to ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent

# Small sizes: every comparison still runs in the same process against its baseline, on fewer samples.
SMALL_ARGS: dict[str, list[str]] = {
    "bench_envs": ["--steps", "600", "--rounds", "3", "--episode-steps", "200"],
    "bench_models": ["--presets", "crafter-policy-small", "crafter-idm-small", "--budget", "1.5"],
    "bench_demonstrator": ["--episodes", "6", "--random-episodes", "6", "--max-steps", "300",
                           "--plot", "runs/bench/demonstrator_items.png"],  # fmt: skip
    "bench_labeling": ["--videos", "2", "--frames", "160", "--actors", "2"],
    "bench_filter": ["--train-videos", "6", "--test-videos", "3", "--steps", "200"],
    "bench_serving": ["--presets", "crafter-policy-small", "--callers", "1", "4", "--rounds", "3"],
    "bench_rl": ["--runners", "1", "--iterations", "3", "--rounds", "2", "--sample-s", "8"],
    "bench_gpu": ["--cpu-smoke"],  # on a GPU machine: benchmarks/gpu_check.sh (the device check)
    "bench_idm_bc_evidence": ["--out", "runs/bench/idm_bc_evidence", "--labeled", "4", "--heldout", "2",
                              "--unlabeled", "8", "--episode-steps", "150", "--idm-sizes", "2", "4", "--idm-steps",
                              "30", "--bc-steps", "30", "--eval-episodes", "4"],  # fmt: skip
}
# Cheap ones first, so an interrupted run still has them.
ORDER = ["bench_envs", "bench_models", "bench_gpu", "bench_demonstrator", "bench_labeling", "bench_filter",
         "bench_serving", "bench_rl", "bench_idm_bc_evidence"]  # fmt: skip


def find_benches(directory: Path = BENCH_DIR) -> list[str]:
    names = sorted(p.stem for p in directory.glob("bench_*.py"))
    return sorted(names, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))


def last_json_document(text: str) -> Any:
    """The last JSON object a bench printed: its whole stdout, else the last block that starts with a ``{`` line
    (benches may print progress lines or per-row JSON before their report)."""
    text = text.strip()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    lines = text.splitlines()
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith("{"):
            try:
                return json.loads("\n".join(lines[i:]))
            except json.JSONDecodeError:
                continue
    raise ValueError("no JSON document in the output")


# ------------------------------------------------------------------------------------------------- figures


def figure(name: str, value: Any, reference: str, reference_value: Any = None, ok: bool | None = None,
           higher_is_better: bool = True) -> dict[str, Any]:  # fmt: skip
    """One headline number and what the same run compared it with; ``ratio`` = value / reference_value."""
    ratio = None
    if isinstance(value, (int, float)) and isinstance(reference_value, (int, float)) and reference_value:
        ratio = round(value / reference_value, 4)
    if ok is None and ratio is not None and reference.startswith("limit"):
        ok = value >= reference_value if higher_is_better else value <= reference_value
    return {"figure": name, "value": value, "reference": reference, "reference_value": reference_value,
            "ratio": ratio, "ok": ok}  # fmt: skip


def _envs(doc: dict) -> list[dict]:
    res = doc["results"]
    raw = res["raw_crafter"]["steps_per_cpu_s"]
    out = [figure(f"{name} steps per CPU-second", r["steps_per_cpu_s"], "baseline: raw crafter.Env, same run", raw)
           for name, r in res.items() if name != "raw_crafter"]  # fmt: skip
    out.append(figure("in-process robust env per-core throughput / raw", res["ours_robust_inprocess"]["per_core_vs_raw"],
                      "limit (minimum)", doc["limit_per_core_vs_raw"], ok=doc["pass"]))  # fmt: skip
    return out


def _models(doc: dict) -> list[dict]:
    return [figure(f"{r['preset']} {r['mode']}:{r['batch']}x{r['T']} frames per CPU-second", r["ours_fps_per_cpu_s"],
                   "baseline: the bare modules, same run", r["bare_fps_per_cpu_s"]) for r in doc["results"]]  # fmt: skip


def _demonstrator(doc: dict) -> list[dict]:
    rand = doc["random_baseline"]["item_fraction"]
    out = [figure(f"scripted player: fraction of episodes with {item}", v, "baseline: random actions, same run",
                  rand[item], ok=v >= rand[item]) for item, v in doc["item_fraction"].items()]  # fmt: skip
    out += [figure(f"check: {name}", ok, "check", None, ok=bool(ok)) for name, ok in doc["checks"].items()]
    return out


def _labeling(doc: dict) -> list[dict]:
    best = max(doc["baseline_single_process"], key=lambda b: b["frames_per_s"])
    return [
        figure("labeling pipeline frames/s (end to end)", doc["pipeline"]["frames_per_s"],
               f"baseline: single-process window loop ({best['torch_threads']} threads), same run", best["frames_per_s"]),
        figure("labeling pipeline frames/s (actors up)", doc["pipeline"]["label_frames_per_s"],
               "baseline: single-process window loop, same run", best["frames_per_s"]),
        figure("label agreement with the baseline", doc["label_agreement"], "limit (minimum)", 0.999),
    ]  # fmt: skip


def _filter(doc: dict) -> list[dict]:
    c = doc["classifiers"]
    out = [
        figure("filter test-video frame accuracy", c["handcrafted"]["test_accuracy"],
               "baseline: 16x16 thumbnail embedding, same run", c["thumbnail16"]["test_accuracy"]),
        figure("filter test-video frame accuracy", c["handcrafted"]["test_accuracy"],
               "baseline: without mirrored training frames, same run", c["handcrafted_no_mirror"]["test_accuracy"]),
        figure("filter frames/s", doc["speed"]["filter_fps"], "baseline: decoding alone, same run",
               doc["speed"]["decode_only_fps"]),
    ]  # fmt: skip
    seg = c["handcrafted"].get("segments") or {}
    out += [figure(f"clean segments {k}", v, "ground truth of the test videos") for k, v in seg.items()]
    return out


def _serving(doc: dict) -> list[dict]:
    out = []
    for r in doc["results"]:
        tag = f"{r['preset']} N={r['callers']} T={r['T']}"
        out.append(figure(f"{tag}: Serve ms per sampled frame (caller wait)", r["serve_ms_per_frame"],
                          "baseline: the same forward in the caller, same run", r["local_ms_per_frame"]))  # fmt: skip
        out.append(figure(f"{tag}: max |log-prob| difference Serve vs local", r["max_abs_logprob_diff"],
                          "limit (maximum)", 1e-4, higher_is_better=False))  # fmt: skip
    return out


def _idm_bc_evidence(doc: dict) -> list[dict]:
    curve = doc["idm_accuracy_vs_labeled_data"]
    bc = doc["bc"]
    return [
        figure("IDM held-out action accuracy (all labeled data)", curve[-1]["heldout_action_accuracy"],
               "baseline: BC on the same labeled data, same run", bc["labeled_only"]["heldout"]["accuracy"]),
        figure("BC on IDM pseudo-labels: held-out action accuracy", bc["idm_labels"]["heldout"]["accuracy"],
               "baseline: BC on the labeled data alone, same run", bc["labeled_only"]["heldout"]["accuracy"]),
        figure("pseudo-label accuracy vs hidden true actions", doc["pseudo_labels"]["accuracy_vs_hidden_truth"],
               "the unlabeled videos' ground truth"),
    ]  # fmt: skip



def _rl(doc: dict) -> list[dict]:
    s, learner, mem, kl = doc["sampling"], doc["learner"], doc["memory"], doc["kl"]
    floor = mem["baseline_floor_process_mib"]
    return [
        figure("PPG sampled frames/s (env runners, policy inference, rows)", s["frames_per_s"],
               "upper bound: the same runners' raw env rate x batched inference rate, same run", s["limit_frames_per_s"]),
        figure("PPG wake-phase frames/s", learner["wake_frames_per_s"],
               "baseline: bare PyTorch forward+backward of the same model and batch, same run",
               learner["baseline_bare_torch_frames_per_s"]),
        figure("PPG sleep-phase frames/s", learner["sleep_frames_per_s"],
               "baseline: bare PyTorch forward+backward of the same model and batch, same run",
               learner["baseline_bare_torch_frames_per_s"]),
        figure("sampled frames/s with Serve KL targets", kl["frames_per_s_with_kl"],
               "baseline: sampling without KL targets, same run", kl["baseline_frames_per_s_without_kl"]),
        figure("env runner peak RSS (MiB)", mem["env_runner_peak_rss_mib"],
               "baseline: a bare process with the same imports and model, same run", floor),
        figure("learner peak RSS (MiB)", mem["learner_peak_rss_mib"],
               "baseline: a bare process with the same imports and model, same run", floor),
        figure("local run peak RSS, all processes, with KL (MiB)", mem["total_peak_rss_mib_with_kl"],
               "the run's own total (driver, runners, learner, Serve replica)"),
    ]  # fmt: skip


def _gpu(doc: dict) -> list[dict]:
    return [figure(c["check"], c["value"], c["reference"], c["reference_value"], ok=c["ok"]) for c in doc["checks"]]


EXTRACTORS: dict[str, Callable[[dict], list[dict]]] = {
    "bench_envs": _envs, "bench_models": _models, "bench_gpu": _gpu, "bench_demonstrator": _demonstrator, "bench_labeling": _labeling,
    "bench_filter": _filter, "bench_serving": _serving, "bench_rl": _rl, "bench_idm_bc_evidence": _idm_bc_evidence,
}  # fmt: skip
_COMPARISON = re.compile(r"(limit|baseline|pass|check|speedup|_vs_|_over_|agreement|ratio)", re.IGNORECASE)


def generic_figures(doc: Any, prefix: str = "") -> list[dict]:
    """Leaves of a bench's JSON whose names mark a comparison (for benches this script has no extractor for)."""
    out: list[dict] = []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += generic_figures(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc[:50]):
            out += generic_figures(v, f"{prefix}[{i}]")
    elif isinstance(doc, (int, float, bool)) and _COMPARISON.search(prefix.rsplit(".", 1)[-1]):
        out.append(figure(prefix, doc, "as the bench reports it", ok=doc if isinstance(doc, bool) else None))
    return out


# ----------------------------------------------------------------------------------------------------- run


def run_bench(name: str, args: list[str], timeout_s: float, directory: Path = BENCH_DIR) -> dict[str, Any]:
    cmd = [sys.executable, str(directory / f"{name}.py"), *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    t0 = time.perf_counter()
    entry: dict[str, Any] = {"args": args}
    # Its own session: on a timeout the whole process group goes (a bench's local Ray processes included).
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    try:
        stdout, stderr = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        entry.update(status="timeout", seconds=round(time.perf_counter() - t0, 1),
                     error=f"no result after {timeout_s:.0f} s", output_tail=_tail(stderr))  # fmt: skip
        return entry
    entry["seconds"] = round(time.perf_counter() - t0, 1)
    if proc.returncode != 0:
        entry.update(status="failed", error=f"exit status {proc.returncode}", output_tail=_tail(stderr or stdout))
        return entry
    try:
        doc = last_json_document(stdout)
    except ValueError as e:
        entry.update(status="no_json", error=str(e), output_tail=_tail(stdout))
        return entry
    try:
        figures = EXTRACTORS[name](doc) if name in EXTRACTORS else generic_figures(doc)
    except (KeyError, TypeError, IndexError) as e:  # the bench's report changed shape: keep it, say so
        figures = generic_figures(doc)
        entry["figures_note"] = f"headline extractor failed ({type(e).__name__}: {e}); generic figures instead"
    entry.update(status="ok", figures=figures, result=doc)
    return entry


def _tail(text: str | bytes | None, n: int = 2000) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return (text or "")[-n:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these benches (bench_ prefix optional)")
    parser.add_argument("--skip", nargs="+", default=[], metavar="NAME", help="leave these out")
    parser.add_argument("--full", action="store_true", help="each bench at its own default sizes (slower)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per bench before it counts as failed")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench" / "all.json")
    parser.add_argument("--dir", type=Path, default=BENCH_DIR, help="where the bench_*.py scripts are")
    args = parser.parse_args()

    def norm(n: str) -> str:
        return n if n.startswith("bench_") else f"bench_{n}"

    benches = find_benches(args.dir)
    unknown = [n for n in map(norm, (args.only or []) + args.skip) if n not in benches]
    if unknown:
        parser.error(f"no such bench(es) {unknown}; known: {benches}")
    if args.only:
        benches = [b for b in benches if b in set(map(norm, args.only))]
    benches = [b for b in benches if b not in set(map(norm, args.skip))]

    started = time.time()
    results: dict[str, Any] = {}
    for i, name in enumerate(benches, 1):
        bench_args = [] if args.full else SMALL_ARGS.get(name, [])
        print(f"[{i}/{len(benches)}] {name} {' '.join(bench_args)}", file=sys.stderr, flush=True)
        results[name] = run_bench(name, bench_args, args.timeout, args.dir)
        r = results[name]
        print(f"    {r['status']} in {r['seconds']:.0f} s" + (f": {r['error']}" if r.get("error") else ""),
              file=sys.stderr, flush=True)  # fmt: skip
    failed_checks = [f"{name}: {f['figure']}" for name, r in results.items() for f in r.get("figures", [])
                     if f["ok"] is False]  # fmt: skip
    document = {
        "benchmark": "vpt_ray: every benchmark in benchmarks/ (" + ("default" if args.full else "small") + " sizes)",
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform(),
                    "load_average_at_start": list(os.getloadavg())},  # fmt: skip
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "seconds_total": round(time.time() - started, 1),
        "summary": {"ran": len(results), "ok": [n for n, r in results.items() if r["status"] == "ok"],
                    "failed": {n: r["error"] for n, r in results.items() if r["status"] != "ok"},
                    "figures_not_ok": failed_checks},  # fmt: skip
        "benchmarks": results,
    }
    text = json.dumps(document, indent=1, default=str)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    print(f"written to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
