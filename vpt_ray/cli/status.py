"""``vpt-ray status [RUN]``: the runs in the ledger, or one run in detail."""

from __future__ import annotations

import argparse
import json
import sys
import time

HELP = "Show runs from the run ledger (kind, status, iteration, checkpoint, item progression), or one run."

LEDGER_HELP = (
    "ledger to read: a Redis URL (redis://[:PASSWORD@]HOST:PORT/DB) or a SQLite file path. Default: "
    "$VPT_LEDGER if set, else ~/.vpt_ray/ledger.sqlite (the embedded ledger every local run writes to). Prefer "
    "$VPT_LEDGER for a Redis URL with a password: arguments are visible to other users in `ps`."
)


def add_ledger_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ledger", metavar="URL_OR_PATH", default=None, help=LEDGER_HELP)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", nargs="?", metavar="RUN", help="show this run in detail")
    parser.add_argument("--kind", help="only runs of this kind (rl, bc, idm, label, ...)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_ledger_argument(parser)


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from vpt_ray.ledger import LedgerError, open_ledger

    try:
        ledger = open_ledger(args.ledger, create=False, retry_interval_s=0.0)
    except LedgerError as e:
        if "no ledger at" in str(e):
            print(f"no runs yet ({e})")
            return 0 if args.run is None else 1
        print(f"vpt-ray status: {e}", file=sys.stderr)
        return 1
    with ledger:
        try:
            runs = ledger.list_runs(kind=args.kind) if args.run is None else [ledger.get_run(args.run)]
        except LedgerError as e:
            print(f"vpt-ray status: {e}", file=sys.stderr)
            return 1
        if not ledger.available:
            # A fresh command has no copy of its own to show: say so rather than print an empty table.
            print(f"vpt-ray status: ledger {ledger.location} is unreachable", file=sys.stderr)
            return 1
        if args.run is not None and runs[0] is None:
            known = ", ".join(r.run_id for r in ledger.list_runs()) or "none"
            print(f"vpt-ray status: no run {args.run!r} in ledger {ledger.location} (runs: {known})", file=sys.stderr)
            return 1
        if args.json:
            out = [dataclasses.asdict(r) for r in runs]
            print(json.dumps(out[0] if args.run else out, indent=2, default=str))
        elif args.run is not None:
            print(format_run(runs[0]))
        elif not runs:
            print(f"no runs{' of kind ' + args.kind if args.kind else ''} in ledger {ledger.location}")
        else:
            print(format_table(runs))
    return 0


def _ago(ts: float | None, now: float) -> str:
    if ts is None:
        return "-"
    s = max(0.0, now - ts)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{int(s // size)}{unit} ago"
    return f"{int(s)}s ago"


def _items_summary(items: dict[str, float]) -> str:
    """``3/10: wood 98% · table 71% · wooden_pickaxe 25%``: the items reached so far, in the task's order."""
    if not items:
        return "-"
    reached = [f"{name} {frac:.0%}" for name, frac in items.items() if frac > 0]
    return f"{len(reached)}/{len(items)}" + (": " + " · ".join(reached) if reached else "")


def format_table(runs) -> str:
    now = time.time()
    header = ("RUN", "KIND", "STATUS", "ITER", "ENV RUNNERS", "CHECKPOINT", "UPDATED", "ITEMS")
    rows = [
        (
            r.run_id + (" (stale)" if r.stale else ""),
            r.kind,
            r.status,
            "-" if r.iteration is None else str(r.iteration),
            "-" if r.desired_env_runners is None else str(r.desired_env_runners),
            r.checkpoint or "-",
            _ago(r.updated_at, now),
            _items_summary(r.items),
        )
        for r in runs
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    lines = []
    for row in [header, *rows]:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1])
    return "\n".join(lines)


def _bar(frac: float, width: int = 30) -> str:
    # Eighth-block resolution so small differences between items stay visible.
    eighths = round(max(0.0, min(1.0, frac)) * width * 8)
    full, part = divmod(eighths, 8)
    return ("█" * full + ("▏▎▍▌▋▊▉"[part - 1] if part else "")).ljust(width)


def format_run(r) -> str:
    import yaml

    now = time.time()
    lines = [
        f"run          {r.run_id}" + ("   (STALE: the ledger did not answer)" if r.stale else ""),
        f"kind         {r.kind}",
        f"status       {r.status}",
        f"iteration    {'-' if r.iteration is None else r.iteration}",
        f"checkpoint   {r.checkpoint or '-'}",
        f"run dir      {r.run_dir or '-'}",
        "env runners  "
        + ("- (the spec's count)" if r.desired_env_runners is None else f"{r.desired_env_runners} (desired)"),
        f"created      {_stamp(r.created_at)} ({_ago(r.created_at, now)})",
        f"updated      {_stamp(r.updated_at)} ({_ago(r.updated_at, now)})",
    ]
    if r.metrics:
        lines.append("metrics")
        width = max(len(k) for k in r.metrics)
        lines += [f"  {k.ljust(width)}  {_num(v)}" for k, v in r.metrics.items()]
    if r.items:
        lines.append("item progression (fraction of episodes that obtained the item)")
        width = max(len(k) for k in r.items)
        lines += [f"  {k.ljust(width)}  {_bar(v)}  {v:6.1%}" for k, v in r.items.items()]
    if r.spec:
        lines.append("spec")
        lines += ["  " + line for line in yaml.safe_dump(r.spec, sort_keys=False).rstrip().splitlines()]
    return "\n".join(lines)


def _stamp(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _num(v) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)
