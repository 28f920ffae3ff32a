"""``vpt-ray record``: the scripted player plays a Crafter task and its episodes are recorded in the contractor
layout (labeled: .mp4 + .jsonl + .json) or as web-style videos (``--unlabeled``, with ``--overlays``)."""

from __future__ import annotations

import argparse
import sys

HELP = "Record scripted-player episodes of a Crafter task as contractor data (mp4 + jsonl) or web-style videos."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", required=True, help="task spec: rollouts/<task>.yaml or a bare task name")
    parser.add_argument("--episodes", type=int, required=True, help="number of episodes to record")
    parser.add_argument("--out", required=True, help="output directory (episodes already there are kept)")
    parser.add_argument("--unlabeled", action="store_true", help="web-style videos: no actions file")
    parser.add_argument("--overlays", action="store_true",
                        help="with --unlabeled: logos, face-cams, intro cards and menus, with ground truth")
    parser.add_argument("--seed", type=int, default=0, help="run seed: episode i plays world (seed, i) (default 0)")
    parser.add_argument("--max-steps", type=int, default=None, help="cap episodes at this many steps")
    parser.add_argument("--workers", type=int, default=1, help="episodes recorded in parallel (Ray tasks)")
    parser.add_argument("--quality", choices=["lossless", "high", "web"], default=None,
                        help="video preset (default: lossless for labeled, high for unlabeled)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vpt_ray.config import ConfigError
    from vpt_ray.data.recordings import VIDEO_PRESETS, record_episodes
    from vpt_ray.spec import load_task

    for name in ("episodes", "workers", "max_steps"):
        value = getattr(args, name)
        if value is not None and value < 1:
            print(f"vpt-ray record: --{name.replace('_', '-')} must be >= 1, got {value}", file=sys.stderr)
            return 2
    if args.overlays and not args.unlabeled:
        print("vpt-ray record: --overlays needs --unlabeled (contractor recordings are clean)", file=sys.stderr)
        return 2
    if Path(args.out).exists() and not Path(args.out).is_dir():
        print(f"vpt-ray record: --out {args.out}: exists and is not a directory", file=sys.stderr)
        return 2
    try:
        spec = load_task(args.task)
    except ConfigError as e:
        print(f"vpt-ray record: {e}", file=sys.stderr)
        return 2
    if spec.env.kind != "crafter":
        print(f"vpt-ray record: task {spec.name!r} runs {spec.env.kind}; only Crafter has a scripted player",
              file=sys.stderr)  # fmt: skip
        return 2
    result = record_episodes(
        spec, args.out, args.episodes, seed=args.seed, labeled=not args.unlabeled, overlays=args.overlays,
        max_steps=args.max_steps, workers=args.workers, progress=not args.no_progress,
        video=VIDEO_PRESETS[args.quality] if args.quality else None,
    )  # fmt: skip
    metas = result["recorded"]
    print(f"recorded {len(metas)} episode(s) into {args.out}"
          + (f", kept {len(result['existing'])} already there" if result["existing"] else "")
          + (f", {len(result['failed'])} failed" if result["failed"] else ""))  # fmt: skip
    if metas:
        items = list(metas[0]["episode_info"]["items"])
        frames = sum(m["n_frames"] for m in metas)
        print(f"{frames} frames ({frames / metas[0]['fps'] / 60:.1f} min at {metas[0]['fps']} fps)")
        for item in items:
            share = sum(m["episode_info"]["items"][item] for m in metas) / len(metas)
            print(f"  {item:<14} {share:6.0%} {'#' * round(share * 30)}")
    for stem, error in result["failed"]:
        print(f"{stem}: {error}", file=sys.stderr)
    return 1 if result["failed"] else 0
