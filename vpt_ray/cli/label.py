"""``vpt-ray label``: pseudo-label videos with an IDM on Ray (resumable; one shard per video)."""

from __future__ import annotations

import argparse
import json
import sys

HELP = "pseudo-label videos with an IDM checkpoint (Ray Data actor pool; resumable through the run ledger)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="*", metavar="INPUT",
                        help="video files or directories searched recursively for .mp4/.mkv/.webm/.avi/.mov")  # fmt: skip
    parser.add_argument("--idm", required=True, help="IDM checkpoint directory (model.yaml + weights.pt)")
    parser.add_argument("--out", required=True, help="output directory: <video>.vshard per video, summary, ledger")
    parser.add_argument("--segments", metavar="FILE",
                        help='clean segments from `vpt-ray filter`: JSONL, one {"video": path, "segments": '
                             '[[start, end), ...]} per line; only these videos and frames are labeled')  # fmt: skip
    parser.add_argument("--ledger", metavar="URL",
                        help="run ledger: redis://[:PASSWORD@]HOST:PORT/DB for a cluster (default: SQLite in --out)")  # fmt: skip
    parser.add_argument("--job-id", help="ledger job id (default: derived from --out, the IDM and the windows)")
    parser.add_argument("--window", type=int, help="frames per IDM window (default: the IDM's clip length)")
    parser.add_argument("--stride", type=int, help="frames between windows (default: half a window)")
    parser.add_argument("--keep", type=int, nargs=2, metavar=("START", "END"),
                        help="frames [START, END) of each window whose labels are kept (default: the centre stride)")  # fmt: skip
    parser.add_argument("--batch-windows", type=int, default=8, help="windows per IDM forward pass (default 8)")
    parser.add_argument("--num-actors", type=int, help="IDM actors (default: as many as the cluster's GPUs/CPUs allow)")
    parser.add_argument("--cpus-per-actor", type=float, default=1.0, help="CPUs (and torch threads) per actor")
    parser.add_argument("--num-gpus-per-actor", type=float,
                        help="GPUs per actor (default: 1 when the cluster has GPUs, else 0)")  # fmt: skip
    parser.add_argument("--precision", default="auto", metavar="auto|fp32|bf16",
                        help="the IDM's arithmetic: bf16 autocast or fp32 (default auto: bf16 on GPUs, fp32 on CPUs)")  # fmt: skip
    parser.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a new local cluster)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def run(args: argparse.Namespace) -> int:
    import dataclasses

    import ray

    from vpt_ray.labeling import InputError, LabelJobError, collect_videos, prepare_job, run_labeling
    from vpt_ray.ledger import LedgerError, check_location

    try:
        if args.ledger is not None:
            check_location(args.ledger)  # the actors open it on the cluster: refuse a malformed one here
        tasks = collect_videos(args.inputs, args.segments)
    except (InputError, LedgerError) as e:
        print(f"vpt-ray label: {e}", file=sys.stderr)
        return 2
    if args.num_actors is not None and args.num_actors <= 0:
        print(f"vpt-ray label: --num-actors must be positive, got {args.num_actors}", file=sys.stderr)
        return 2
    try:
        job = prepare_job(args.idm, args.out, window=args.window, stride=args.stride,
                          keep=tuple(args.keep) if args.keep else None, ledger=args.ledger, job_id=args.job_id,
                          batch_windows=args.batch_windows, threads=max(1, int(args.cpus_per_actor)),
                          precision=args.precision)  # fmt: skip
    except LabelJobError as e:
        print(f"vpt-ray label: {e}", file=sys.stderr)
        return 2
    from vpt_ray.ray_session import init_ray

    started_ray = init_ray(args.address, configure_logging=False)
    try:
        gpus = args.num_gpus_per_actor
        if gpus is None:
            gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
        summary = run_labeling(dataclasses.replace(job, use_gpu=gpus > 0), tasks, num_actors=args.num_actors,
                               cpus_per_actor=args.cpus_per_actor, gpus_per_actor=gpus,
                               progress=not args.no_progress)  # fmt: skip
    finally:
        if started_ray:
            ray.shutdown()
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"labeled {summary['labeled']} video(s), {summary['frames']} frames in {summary['seconds']:.1f} s "
              f"({summary['frames_per_s']:.1f} frames/s); already done {summary['already_done']}, skipped "
              f"{summary['skipped']}; {summary['done_total']}/{summary['videos']} done -> {summary['out']}"
              + (f" on {', '.join(summary['devices'])}" if summary["devices"] else ""))  # fmt: skip
        for key, error in summary["skipped_videos"].items():
            print(f"  skipped {key}: {error}")
    return 0
