"""``vpt-ray train-idm DATA... --out RUN_DIR``: train an inverse dynamics model as a Ray Train job."""

from __future__ import annotations

import argparse
import sys

from vpt_ray.training.cli import add_common_arguments, load_recipe_for, overrides_from_args, print_result

HELP = (
    "Train an inverse dynamics model on labeled shards (Ray Train): clip-consistent augmentation, per-head NLL, "
    "held-out key accuracy and camera R^2; RUN_DIR/final is the checkpoint `vpt-ray label` uses."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, default_recipe="idm-crafter-small", kind="idm")
    parser.add_argument("--clip-len", type=int, metavar="T", help="frames per clip (default: the model's timesteps)")
    parser.add_argument("--no-augment", action="store_true", help="switch the augmentation off")


def run(args: argparse.Namespace) -> int:
    from vpt_ray.config import ConfigError
    from vpt_ray.idm.train import train_idm
    from vpt_ray.training.config import merge
    from vpt_ray.training.data import DataError
    from vpt_ray.training.job import TrainJobError

    try:
        overrides = overrides_from_args(args)
        if args.clip_len is not None:
            overrides = merge(overrides, {"clip_len": args.clip_len})
        if args.no_augment:
            overrides = merge(overrides, {"augment": {"enabled": False}})
        cfg = load_recipe_for("train-idm", args.recipe, overrides)
        metrics, final = train_idm(cfg, args.data, args.out, val_data=args.val_data, address=args.address)
    except (ConfigError, DataError, TrainJobError) as e:
        print(f"vpt-ray train-idm: {e}", file=sys.stderr)
        return 1
    print_result(metrics, final, args.json)
    return 0
