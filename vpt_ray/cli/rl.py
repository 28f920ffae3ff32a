"""``vpt-ray rl --task TASK [--init CHECKPOINT]``: PPG fine-tuning with a KL to the frozen BC policy (RLlib + Serve)."""

from __future__ import annotations

import argparse
import sys

HELP = (
    "RL fine-tuning with Phasic Policy Gradient on RLlib: env runners on CPUs, wake/sleep learners, KL to the frozen "
    "BC policy served by Ray Serve (decaying rho); --resume RUN_DIR continues a run."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    start = parser.add_mutually_exclusive_group(required=True)
    start.add_argument("--task", metavar="TASK", help="task spec with an rl: section (rollouts/*.yaml or a bare name "
                       "such as crafter-tech-tree)")  # fmt: skip
    start.add_argument("--resume", metavar="RUN_DIR", help="continue this run from its latest checkpoint "
                       "(iteration count, rho, optimizer, value normaliser, TensorBoard steps)")  # fmt: skip
    parser.add_argument("--init", metavar="CHECKPOINT", help="start from this BC policy checkpoint (model.yaml + "
                        "weights.pt); it is also the frozen KL target. Without it: random init, entropy bonus, no "
                        "KL (the scratch baseline)")  # fmt: skip
    parser.add_argument("--no-kl", action="store_true", help="with --init: train without the KL term (entropy "
                        "bonus instead, rl.lr_without_kl if set)")  # fmt: skip
    parser.add_argument("--out", metavar="RUN_DIR", help="run directory (default: $VPT_RUNS_DIR or ~/runs, / run id)")
    parser.add_argument("--iterations", type=int, metavar="N", help="train until iteration N (default: rl.iterations; "
                        "with --resume: extends the run)")  # fmt: skip
    parser.add_argument("--run-id", help="id in the ledger (default: $VPT_RUN_ID, else <task>-<UTC time>)")
    parser.add_argument("--ledger", metavar="URL", help="run ledger (default: $VPT_LEDGER, else ~/.vpt_ray/ledger.sqlite)")
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a new local cluster)")
    parser.add_argument("--json", action="store_true", help="print the final summary as JSON")


def run(args: argparse.Namespace) -> int:
    import json

    from vpt_ray.config import ConfigError
    from vpt_ray.ledger import LedgerError, check_location, default_location
    from vpt_ray.models.checkpoint import WeightsError
    from vpt_ray.rl.job import RLJobError, install_sigterm_handler, run_rl

    if args.resume and (args.init or args.no_kl or args.out or args.run_id):
        print("vpt-ray rl: --resume takes the run's own --init/--no-kl/--out/--run-id; give only --iterations, "
              "--address, --ledger", file=sys.stderr)  # fmt: skip
        return 2
    if args.no_kl and not args.init:
        print("vpt-ray rl: --no-kl goes with --init (a run from scratch has no KL term anyway)", file=sys.stderr)
        return 2
    if args.iterations is not None and args.iterations < 1:
        print(f"vpt-ray rl: --iterations must be >= 1, got {args.iterations}", file=sys.stderr)
        return 2
    try:
        # A malformed ledger location is refused here; one that is only unreachable never stops training.
        check_location(args.ledger or default_location())
    except LedgerError as e:
        print(f"vpt-ray rl: --ledger / $VPT_LEDGER: {e}", file=sys.stderr)
        return 2
    install_sigterm_handler()
    try:
        summary = run_rl(args.task, out=args.out, init=args.init, kl=not args.no_kl, resume=args.resume,
                         iterations=args.iterations, address=args.address, ledger=args.ledger, run_id=args.run_id)  # fmt: skip
    except (ConfigError, RLJobError, WeightsError) as e:
        print(f"vpt-ray rl: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("vpt-ray rl: stopped", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(summary, indent=2, sort_keys=True))
    else:
        print(f"run {summary['run_id']}: iteration {summary['iteration']}, final policy {summary['final']}")
        print(f"run dir: {summary['run_dir']}  (tensorboard --logdir {summary['run_dir']}/tensorboard)")
    return 0
