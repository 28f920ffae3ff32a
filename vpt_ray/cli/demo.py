"""``vpt-ray demo [--quick|--full] [--run-dir DIR]``: the whole VPT pipeline in miniature on Crafter, with a report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = (
    "The whole VPT pipeline in miniature on Crafter, each stage a Ray workload: record demonstrations and web-like "
    "videos, clean filter, IDM, pseudo-labels, BC foundation model, PPG RL three ways (from BC with KL, without "
    "KL, from scratch) at an equal env-step budget, evaluation of every agent, and a Markdown report with plots. "
    "About 30 minutes on 2 cores (--quick: a few minutes; --full: longer); reruns resume finished stages."
)
DEFAULT_RUNS = Path("runs")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", dest="preset", action="store_const", const="quick",
                      help="smoke-test sizes: every stage runs, tiny models, a few minutes (what CI runs)")  # fmt: skip
    size.add_argument("--full", dest="preset", action="store_const", const="full",
                      help="bigger data, models and RL budgets (hours on 2 cores)")  # fmt: skip
    size.add_argument("--preset", dest="preset", metavar="NAME|YAML",
                      help="a preset in vpt_ray/demo/presets/ or a YAML file (default: default)")  # fmt: skip
    parser.add_argument("--run-dir", type=Path, help="run directory (default: runs/demo-<preset>); rerunning "
                        "into it resumes the finished stages")  # fmt: skip
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a preset field, e.g. --set eval.episodes=96 (repeatable; YAML values)")  # fmt: skip
    parser.add_argument("--stop-after", metavar="STAGE", help="stop after this stage (rerun to continue)")
    parser.add_argument("--ledger", metavar="URL", help="run ledger (default: $VPT_LEDGER, else "
                        "~/.vpt_ray/ledger.sqlite)")  # fmt: skip
    parser.add_argument("--plan", action="store_true", help="show which stages are done and which would run, "
                        "then exit")  # fmt: skip
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    import time

    from vpt_ray.config import ConfigError
    from vpt_ray.demo import DemoError, load_demo_config, plan, resolve, run_demo
    from vpt_ray.ledger import LedgerError, check_location, default_location
    from vpt_ray.training.config import parse_overrides

    preset = args.preset or "default"
    run_dir = args.run_dir or DEFAULT_RUNS / f"demo-{Path(preset).stem}"
    try:
        config = load_demo_config(preset, parse_overrides(args.overrides, "--set"))
        resolved = resolve(config)
        check_location(args.ledger or default_location())  # malformed: refused; only unreachable: not recorded
    except (ConfigError, ValueError, LedgerError) as e:
        print(f"vpt-ray demo: {e}", file=sys.stderr)
        return 1
    if args.plan:
        for stage, state in plan(resolved, run_dir).items():
            print(f"{stage:12s} {state}")
        return 0
    print(f"vpt-ray demo: preset {preset!r} into {run_dir.resolve()}", flush=True)
    t0 = time.perf_counter()
    try:
        summary = run_demo(config, run_dir, preset=preset, ledger=args.ledger, progress=args.progress,
                           stop_after=args.stop_after)  # fmt: skip
    except (ConfigError, DemoError) as e:
        print(f"vpt-ray demo: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"vpt-ray demo: stopped; rerun the same command to resume in {run_dir}", file=sys.stderr)
        return 130
    print("\n" + "=" * 72)
    print(f"demo {summary['run_id']}: {summary['status']} in {(time.perf_counter() - t0) / 60:.1f} min")
    for stage, seconds in summary["seconds"].items():
        print(f"  {stage:12s} {summary['stages'][stage]:10s} {seconds / 60:6.1f} min")
    if summary["report"]:
        print(f"report: {summary['report']}")
    print(f"TensorBoard: tensorboard --logdir {summary['run_dir']}")
    return 0 if summary["status"] == "succeeded" or args.stop_after else 1
