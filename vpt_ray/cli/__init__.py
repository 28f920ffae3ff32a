"""The ``vpt-ray`` command.

Each subcommand lives in its own module of this package so that ``--help`` stays fast
and a stage's heavy dependencies (Ray, torch) load only for that stage. A module provides
``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``, and keeps its top-level imports
light (argparse, pathlib): everything heavy is imported inside ``run``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# subcommand -> module under vpt_ray.cli; the order is the order of `vpt-ray --help`.
COMMANDS: dict[str, str] = {
    "record": "record",
    "train-idm": "train_idm",
    "train-bc": "train_bc",
    "rl": "rl",
    "status": "status",
    "scale": "scale",
    "submit": "submit",
    "jobs": "jobs",
    "logs": "logs",
    "filter": "filter",
    "label": "label",
    "shard": "shard",
    "evaluate": "evaluate",
    "demo": "demo",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vpt-ray",
        description="Video PreTraining (VPT) on Ray: record, train the IDM, filter, pseudo-label, "
        "behavioral cloning, PPG RL fine-tuning with a KL to the frozen BC policy.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(f"vpt_ray.cli.{module_name}")
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    from vpt_ray.ray_session import RayConnectError, use_token_auth

    use_token_auth()  # before any subcommand imports Ray: every cluster we start or join checks Ray's token
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except RayConnectError as e:
        print(f"vpt-ray {args.command}: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader went away (`vpt-ray status | head`): stop quietly, and keep Python's shutdown from
        # failing again on the closed stdout.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
