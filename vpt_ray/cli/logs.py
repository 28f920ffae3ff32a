"""``vpt-ray logs JOB [--follow]``: a job's driver log from the Ray Jobs API."""

from __future__ import annotations

import argparse
import sys

from vpt_ray.cli.submit import add_address_argument

HELP = "Print a submitted job's log; --follow streams it until the job ends."

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job", metavar="JOB", help="submission id (see `vpt-ray jobs`)")
    parser.add_argument("--follow", "-f", action="store_true", help="keep streaming until the job ends; exit "
                        "status 0 only if it succeeded")
    add_address_argument(parser)


def follow(client, job_id: str) -> int:
    """Stream ``job_id``'s log to stdout until it ends; 0 if it succeeded, 1 otherwise."""
    import asyncio

    async def stream() -> None:
        async for chunk in client.tail_job_logs(job_id):
            sys.stdout.write(chunk)
            sys.stdout.flush()

    try:
        asyncio.run(stream())
    except KeyboardInterrupt:
        print(f"\n(stopped following; the job goes on: vpt-ray logs {job_id} --follow)", file=sys.stderr)
        return 130
    info = client.get_job_info(job_id)
    status = str(getattr(info.status, "value", info.status))
    print(f"job {job_id}: {status}" + (f" ({info.message})" if info.message else ""), file=sys.stderr)
    return 0 if status == "SUCCEEDED" else 1


def run(args: argparse.Namespace) -> int:
    from vpt_ray.cli.submit import job_client

    client = job_client(args.address)
    try:
        info = client.get_job_info(args.job)
    except RuntimeError as e:
        print(f"vpt-ray logs: no job {args.job!r} at {client.get_address()}: {e}", file=sys.stderr)
        return 1
    if args.follow:
        return follow(client, args.job)
    sys.stdout.write(client.get_job_logs(args.job))
    status = str(getattr(info.status, "value", info.status))
    if status not in TERMINAL:
        print(f"(job {args.job} is {status}; --follow streams the rest)", file=sys.stderr)
    return 0
