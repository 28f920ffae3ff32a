"""``vpt-ray scale RUN --env-runners N``: change how many env runners a running RL job uses."""

from __future__ import annotations

import argparse
import sys

from vpt_ray.cli.status import add_ledger_argument

HELP = (
    "Set the number of env runners a running RL job should use; the job applies it at its next iteration "
    "(the cluster autoscaler adds or removes CPU rollout nodes to match)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="run id (see `vpt-ray status`)")
    parser.add_argument("--env-runners", type=int, required=True, metavar="N", help="desired env runners (>= 1)")
    add_ledger_argument(parser)


def run(args: argparse.Namespace) -> int:
    from vpt_ray.ledger import TERMINAL_STATUSES, LedgerError, open_ledger

    try:
        with open_ledger(args.ledger, create=False, retry_interval_s=0.0) as ledger:
            record = ledger.get_run(args.run)
            if record is None:
                raise LedgerError(f"no run {args.run!r} in ledger {ledger.location}")
            if record.status in TERMINAL_STATUSES:
                raise LedgerError(f"run {args.run!r} has {record.status}; there is nothing to scale")
            if record.kind != "rl":
                raise LedgerError(f"run {args.run!r} is a {record.kind!r} run: only RL runs (`vpt-ray rl`) read the "
                                  "env-runner count, so nothing would apply the change")  # fmt: skip
            most = ((record.spec.get("rl") or {}).get("scale") or {}).get("env_runners")
            if isinstance(most, int) and args.env_runners > most:
                raise LedgerError(f"--env-runners {args.env_runners}: above the run's maximum, rl.scale.env_runners = "
                                  f"{most} in its spec (the job would use {most}); give 1 to {most}, or start a run "
                                  "from a spec with a larger maximum")  # fmt: skip
            ledger.set_desired_env_runners(args.run, args.env_runners)
            # A short-lived command cannot keep an outage queue alive: succeed only if the write is stored.
            if ledger.flush():
                raise LedgerError(f"ledger {ledger.location} did not answer; nothing was changed")
    except LedgerError as e:
        print(f"vpt-ray scale: {e}", file=sys.stderr)
        return 1
    before = "the spec's count" if record.desired_env_runners is None else str(record.desired_env_runners)
    print(
        f"{args.run}: env runners {before} -> {args.env_runners} "
        f"(status {record.status}; applied at the job's next iteration)"
    )
    return 0
