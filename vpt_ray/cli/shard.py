"""``vpt-ray shard``: convert labeled recordings into training shards, or check shards."""

from __future__ import annotations

import argparse
import json
import sys

HELP = "convert labeled recordings into training shards (convert) or check shards for damage (verify)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="shard_command", metavar="{convert,verify}", required=True)
    convert = sub.add_parser("convert", help="labeled recordings (.mp4 + .jsonl + .json) -> <out>/<stem>.vshard")
    convert.add_argument("recordings", help="directory of recordings (searched recursively)")
    convert.add_argument("--out", required=True, help="output directory for the shards")
    convert.add_argument("--frame-size", type=int, nargs=2, metavar=("H", "W"),
                         help="resize frames (cv2 INTER_LINEAR; default: keep the recorded size)")  # fmt: skip
    convert.add_argument("--overwrite", action="store_true", help="rewrite shards that already exist")
    convert.add_argument("--workers", type=int, default=0,
                         help="convert in this many Ray tasks at once (default 0: in this process)")  # fmt: skip
    convert.add_argument("--address", help="Ray cluster address with --workers (default: $RAY_ADDRESS, else a "
                                           "new local cluster)")  # fmt: skip
    convert.add_argument("--json", action="store_true", help="print the summary as JSON")
    verify = sub.add_parser("verify", help="read every record of the shards; report (and count) the bad ones")
    verify.add_argument("paths", nargs="+", help="shard files or directories")
    verify.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace) -> int:
    return _convert(args) if args.shard_command == "convert" else _verify(args)


def _convert(args: argparse.Namespace) -> int:
    import dataclasses

    from vpt_ray.data.recordings import RecordingError
    from vpt_ray.data.shards import check_conversion, recordings_to_shards

    try:
        check_conversion(args.recordings, args.out, args.frame_size)  # before Ray starts
    except ValueError as e:
        print(f"vpt-ray shard convert: {e}", file=sys.stderr)
        return 2
    started_ray = False
    if args.workers > 0:
        import ray

        from vpt_ray.ray_session import init_ray

        started_ray = init_ray(args.address, configure_logging=False)
    try:
        summary = recordings_to_shards(args.recordings, args.out, frame_size=args.frame_size, overwrite=args.overwrite,
                                       workers=args.workers, progress=not args.json)  # fmt: skip
    except RecordingError as e:
        print(f"vpt-ray shard convert: {e}", file=sys.stderr)
        return 2
    finally:
        if started_ray:
            ray.shutdown()
    if args.json:
        print(json.dumps(dataclasses.asdict(summary), indent=2))
    else:
        print(f"wrote {len(summary.written)} shard(s) ({summary.frames} frames), kept {len(summary.existing)} "
              f"existing, skipped {len(summary.bad)} bad recording(s) -> {args.out}")  # fmt: skip
        for error in summary.bad.values():
            print(f"  skipped: {error}")
    if not (summary.written or summary.existing):
        what = f"all {len(summary.bad)} recording(s) are bad" if summary.bad else "no labeled recordings found"
        print(f"vpt-ray shard convert: {args.recordings}: {what}; no shards", file=sys.stderr)
        return 1
    return 0


def _verify(args: argparse.Namespace) -> int:
    from vpt_ray.data.shards import ShardError, find_shards, verify_shard

    try:
        paths = find_shards(*args.paths)
    except FileNotFoundError as e:
        print(f"vpt-ray shard verify: {e}", file=sys.stderr)
        return 2
    good, bad, frames = 0, {}, 0
    for path in paths:
        try:
            frames += verify_shard(path).n_frames
            good += 1
        except ShardError as e:
            bad[str(path)] = str(e)
    if args.json:
        print(json.dumps({"shards": len(paths), "good": good, "frames": frames, "bad": bad}, indent=2))
    else:
        print(f"{good}/{len(paths)} shard(s) sound ({frames} frames), {len(bad)} bad")
        for error in bad.values():
            print(f"  {error}")
    return 1 if bad else 0
