"""Arguments and output shared by ``vpt-ray train-idm`` and ``vpt-ray train-bc`` (light imports only)."""

from __future__ import annotations

import argparse
import json
from typing import Any


def add_common_arguments(parser: argparse.ArgumentParser, default_recipe: str, kind: str) -> None:
    parser.add_argument("data", nargs="+", metavar="DATA",
                        help="labeled shard files or directories of them (*.vshard), or directories of labeled "
                             "recordings (converted into RUN_DIR/shards first)")  # fmt: skip
    parser.add_argument("--out", required=True, metavar="RUN_DIR",
                        help="run directory (checkpoints, TensorBoard, final model); rerun with the same one to resume")  # fmt: skip
    parser.add_argument("--recipe", default=default_recipe, metavar="NAME|YAML",
                        help=f"training recipe: a name in vpt_ray/training/recipes ({kind}-*) or a YAML file "
                             f"(default: {default_recipe})")  # fmt: skip
    parser.add_argument("--model", metavar="PRESET|YAML", help="model preset (overrides the recipe's)")
    parser.add_argument("--val-data", nargs="+", metavar="DATA",
                        help="held-out shards (default: hold out val_fraction of the episodes of DATA)")  # fmt: skip
    parser.add_argument("--steps", type=int, metavar="N", help="optimizer steps (overrides schedule.epochs)")
    parser.add_argument("--epochs", type=float, metavar="E", help="epochs (schedule.epochs)")
    parser.add_argument("--batch-size", type=int, metavar="B", help="global batch size")
    parser.add_argument("--lr", type=float, help="learning rate (optim.lr)")
    parser.add_argument("--workers", type=int, metavar="N", help="Ray Train workers (scaling.num_workers)")
    parser.add_argument("--gpu", action=argparse.BooleanOptionalAction, default=None,
                        help="one GPU per worker (scaling.use_gpu)")  # fmt: skip
    parser.add_argument("--cpus-per-worker", type=int, metavar="N", help="CPUs per worker (scaling.cpus_per_worker)")
    parser.add_argument("--precision", metavar="auto|fp32|bf16",
                        help="arithmetic (precision): bf16 autocast or fp32; the recipes' auto is bf16 on GPUs, "
                             "fp32 on CPUs")  # fmt: skip
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="torch.compile the model for training (compile; off in the recipes)")  # fmt: skip
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any recipe field, e.g. --set optim.weight_decay=0.02 --set schedule.checkpoint_every=100")  # fmt: skip
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a new local cluster)")
    parser.add_argument("--json", action="store_true", help="print the final metrics as JSON")


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The recipe overrides the flags ask for (``--set`` first, then the named flags on top)."""
    from vpt_ray.training.config import merge, parse_overrides

    out = parse_overrides(args.set)
    named: dict[str, Any] = {}
    if args.model is not None:
        named["model"] = args.model
    if args.batch_size is not None:
        named["batch_size"] = args.batch_size
    schedule = {}
    if args.steps is not None:
        schedule["max_steps"] = args.steps
    if args.epochs is not None:
        schedule["epochs"] = args.epochs
        schedule.setdefault("max_steps", None)
    if schedule:
        named["schedule"] = schedule
    if args.lr is not None:
        named["optim"] = {"lr": args.lr}
    if args.precision is not None:
        named["precision"] = args.precision
    if args.compile is not None:
        named["compile"] = args.compile
    scaling = {k: v for k, v in (("num_workers", args.workers), ("use_gpu", args.gpu),
                                 ("cpus_per_worker", args.cpus_per_worker)) if v is not None}  # fmt: skip
    if scaling:
        named["scaling"] = scaling
    return merge(out, named)


def load_recipe_for(command: str, recipe: str, overrides: dict[str, Any]):
    """The recipe as the config of ``command`` (``train-idm`` or ``train-bc``). A recipe of the other command
    is refused as such, not by its first field this command does not know."""
    from vpt_ray.bc.config import BCTrainConfig
    from vpt_ray.config import ConfigError
    from vpt_ray.idm.config import IDMTrainConfig
    from vpt_ray.training.config import load_recipe, recipe_path

    configs = {"train-idm": IDMTrainConfig, "train-bc": BCTrainConfig}
    try:
        return load_recipe(configs[command], recipe, overrides)
    except ConfigError as e:
        error = e
    other = next(c for c in configs if c != command)
    try:
        load_recipe(configs[other], recipe)
    except ConfigError:
        raise error from None
    kind = "an IDM" if other == "train-idm" else "a BC"
    raise ConfigError(f"{recipe_path(recipe)}: this is {kind} recipe (for `vpt-ray {other}`), not one for "
                      f"`vpt-ray {command}`")  # fmt: skip


def print_result(metrics: dict[str, Any], final_dir, as_json: bool, extra: dict[str, Any] | None = None) -> None:
    summary = {"final": str(final_dir), **(extra or {}), "metrics": metrics}
    if as_json:
        print(json.dumps(summary, indent=2, sort_keys=True))
        return
    print(f"final model: {final_dir}")
    for key, value in (extra or {}).items():
        print(f"{key}: {value}")
    shown = {k: v for k, v in metrics.items() if k.startswith("eval/") and k.count("/") <= 2}
    for key in sorted(shown):
        value = shown[key]
        print(f"  {key:<40} {value:.4f}" if isinstance(value, float) else f"  {key:<40} {value}")
