"""``vpt-ray jobs``: jobs submitted to the Ray cluster, newest last."""

from __future__ import annotations

import argparse
import json
import time

from vpt_ray.cli.submit import add_address_argument

HELP = "List the jobs submitted to the Ray cluster (id, status, start, duration, entrypoint)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_address_argument(parser)


def _duration(start_ms: int | None, end_ms: int | None) -> str:
    if not start_ms:
        return "-"
    s = int(((end_ms or time.time() * 1000) - start_ms) / 1000)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def run(args: argparse.Namespace) -> int:
    from vpt_ray.cli.submit import job_client

    client = job_client(args.address)
    jobs = sorted((j for j in client.list_jobs() if j.submission_id), key=lambda j: j.start_time or 0)
    rows = [
        {
            "id": j.submission_id,
            "status": str(getattr(j.status, "value", j.status)),
            "start": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(j.start_time / 1000)) if j.start_time else "-",
            "duration": _duration(j.start_time, j.end_time),
            "entrypoint": j.entrypoint,
            "message": j.message or "",
        }
        for j in jobs
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no jobs at {client.get_address()}")
        return 0
    cols = ("id", "status", "start", "duration")
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in cols}
    print("  ".join(c.upper().ljust(widths[c]) for c in cols) + "  ENTRYPOINT")
    for r in rows:
        print("  ".join(r[c].ljust(widths[c]) for c in cols) + "  " + r["entrypoint"])
    return 0
