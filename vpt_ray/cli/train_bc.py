"""``vpt-ray train-bc DATA... --out RUN_DIR``: behavioral cloning (foundation or fine-tuning) as a Ray Train job."""

from __future__ import annotations

import argparse
import sys

from vpt_ray.training.cli import add_common_arguments, load_recipe_for, overrides_from_args, print_result

HELP = (
    "Behavioral cloning on labeled shards (Ray Train): Transformer-XL memory across consecutive chunks, null-run "
    "filtering, masked camera loss; --init CHECKPOINT fine-tunes. RUN_DIR/final is the policy the RL stage loads."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, default_recipe="bc-crafter-small", kind="bc")
    parser.add_argument("--init", metavar="CHECKPOINT",
                        help="fine-tune this policy: a checkpoint directory or a released .model file "
                             "(its .weights next to it); replaces the recipe's model")  # fmt: skip
    parser.add_argument("--chunk-len", type=int, metavar="T", help="frames per chunk (default: the model's timesteps)")
    parser.add_argument("--null-min-run", type=int, metavar="N",
                        help="drop null actions in runs of >= N frames (default 3 from the recipe)")  # fmt: skip
    parser.add_argument("--keep-nulls", action="store_true", help="switch null-action filtering off")
    parser.add_argument("--export-official", metavar="DIR",
                        help="also write the final policy as released-format DIR/policy.model + DIR/policy.weights "
                             "(Minecraft action space only)")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vpt_ray.bc.train import train_bc
    from vpt_ray.config import ConfigError
    from vpt_ray.training.config import merge
    from vpt_ray.training.data import DataError
    from vpt_ray.training.job import TrainJobError

    try:
        overrides = overrides_from_args(args)
        if args.init is not None:
            overrides = merge(overrides, {"init": args.init, "model": None})
        if args.chunk_len is not None:
            overrides = merge(overrides, {"chunk_len": args.chunk_len})
        if args.null_min_run is not None:
            overrides = merge(overrides, {"null_filter": {"min_run": args.null_min_run}})
        if args.keep_nulls:
            overrides = merge(overrides, {"null_filter": {"enabled": False}})
        cfg = load_recipe_for("train-bc", args.recipe, overrides)
        if args.export_official is not None and _action_space(cfg) != "minecraft":
            raise ConfigError("--export-official: the released format has only the minecraft action space")
        metrics, final = train_bc(cfg, args.data, args.out, val_data=args.val_data, address=args.address)
    except (ConfigError, DataError, TrainJobError) as e:
        print(f"vpt-ray train-bc: {e}", file=sys.stderr)
        return 1
    extra = {}
    if args.export_official is not None:
        from vpt_ray.models import export_official, load_checkpoint

        out = Path(args.export_official)
        out.mkdir(parents=True, exist_ok=True)
        export_official(load_checkpoint(final), out / "policy.model", out / "policy.weights")
        extra["official"] = f"{out / 'policy.model'} + {out / 'policy.weights'}"
    print_result(metrics, final, args.json, extra)
    return 0


def _action_space(cfg) -> str:
    from vpt_ray.bc.train import resolve_model

    return resolve_model(cfg).action_space
