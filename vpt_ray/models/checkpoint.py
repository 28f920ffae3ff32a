"""Building models from configs and our own checkpoints: a directory with ``model.yaml`` + ``weights.pt``."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
import yaml

from vpt_ray.config import ConfigError, load_config, to_dict
from vpt_ray.models.config import ModelConfig
from vpt_ray.models.idm import InverseDynamicsModel
from vpt_ray.models.policy import AUX_VALUE_HEAD, VPTPolicy

MODEL_FILE = "model.yaml"
WEIGHTS_FILE = "weights.pt"


class WeightsError(ValueError):
    """A weights file that does not fit the model: names the file and the offending parameters."""


def build_model(config: ModelConfig) -> VPTPolicy | InverseDynamicsModel:
    return VPTPolicy(config) if config.kind == "policy" else InverseDynamicsModel(config)


def load_state_strict(model: VPTPolicy | InverseDynamicsModel, state_dict, where: str) -> None:
    """Load ``state_dict`` into ``model``; any missing, unexpected or mis-shaped entry is an error naming it.

    A policy whose weights carry an auxiliary value head (saved after ``reset_value_heads_for_rl``) gets one.
    """
    _check_fit(model, state_dict, where)
    model.load_state_dict(state_dict, strict=True)


def _check_fit(model: VPTPolicy | InverseDynamicsModel, state_dict, where: str) -> None:
    """A WeightsError naming every missing, unexpected or mis-shaped entry of ``state_dict`` for ``model`` (which
    gets an auxiliary value head when the weights carry one)."""
    if not isinstance(state_dict, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state_dict.items()
    ):
        raise WeightsError(f"{where}: expected a state dict (parameter name -> tensor)")
    if isinstance(model, VPTPolicy) and model.aux_value_head is None:
        if any(k.startswith(AUX_VALUE_HEAD + ".") for k in state_dict):
            model.add_aux_value_head()
    own = model.state_dict()
    problems = []
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    if missing:
        problems.append(f"missing {missing}")
    if unexpected:
        problems.append(f"unexpected {unexpected}")
    shapes = [
        f"{k}: file {list(v.shape)} vs model {list(own[k].shape)}"
        for k, v in state_dict.items()
        if k in own and v.shape != own[k].shape
    ]
    if shapes:
        problems.append(f"shape mismatch {shapes}")
    if problems:
        raise WeightsError(f"{where}: weights do not fit the model: " + "; ".join(problems))


def read_weights(path: str | Path, mmap: bool = False):
    """The state dict in ``path`` (``weights_only``: never unpickles code); ``mmap`` maps the tensors' data
    instead of reading it (for checks of names and shapes)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError or zipfile errors for bad files
        raise WeightsError(f"{path}: not a loadable weights file (truncated or not saved by torch.save; "
                           f"weights_only): {e}") from None  # fmt: skip


def check_checkpoint(directory: str | Path, *, kind: str, action_space: str | None = None,
                     frame_size: tuple[int, int] | None = None) -> ModelConfig:  # fmt: skip
    """Refuse, before anything is built or started, a checkpoint directory that cannot serve as a ``kind`` model
    for an env with ``action_space`` and ``frame_size`` (H, W); returns its config.

    ``model.yaml`` must load (ConfigError naming the file and field) and match; ``weights.pt`` must hold exactly
    the model's parameters with their shapes (WeightsError). The weights are memory-mapped and compared with a
    model built on the meta device, so checking even the largest preset allocates no parameters.
    """
    directory = Path(directory)
    names = {"policy": "a policy", "idm": "an inverse dynamics model"}
    if not (directory / MODEL_FILE).is_file():
        what = "no such directory" if not directory.exists() else f"no {MODEL_FILE} there"
        raise ConfigError(f"{directory}: not {names.get(kind, 'a model')} checkpoint directory ({MODEL_FILE} + "
                          f"{WEIGHTS_FILE}): {what}")  # fmt: skip
    where = directory / MODEL_FILE
    config = load_config(ModelConfig, where)
    if config.kind != kind:
        raise ConfigError(f"{where}: field 'kind': this checkpoint holds {names.get(config.kind, repr(config.kind))} "
                          f"({config.kind!r}), {names.get(kind, repr(kind))} is needed here")  # fmt: skip
    if action_space is not None and config.action_space != action_space:
        raise ConfigError(f"{where}: field 'action_space': the model acts in the {config.action_space!r} action "
                          f"space, this task's env needs {action_space!r}")  # fmt: skip
    if frame_size is not None and tuple(config.net.img_shape[:2]) != tuple(frame_size):
        raise ConfigError(f"{where}: field 'net.img_shape': the model sees {list(config.net.img_shape[:2])} "
                          f"frames, this task's env renders {list(frame_size)}")  # fmt: skip
    with torch.device("meta"):
        model = build_model(config)
    _check_fit(model, read_weights(directory / WEIGHTS_FILE, mmap=True), str(directory / WEIGHTS_FILE))
    return config


def atomic_write(path: Path, write) -> None:
    """Write through a temporary file and rename, so a crash never leaves a half-written file."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def cpu_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def save_checkpoint(model: VPTPolicy | InverseDynamicsModel, directory: str | Path) -> Path:
    """Write ``model.yaml`` (the config) and ``weights.pt`` (the state dict) into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(to_dict(model.config), sort_keys=False).encode()
    atomic_write(directory / WEIGHTS_FILE, lambda f: torch.save(cpu_state_dict(model), f))
    atomic_write(directory / MODEL_FILE, lambda f: f.write(text))
    return directory


def load_checkpoint(directory: str | Path, device: str | torch.device | None = None):
    """A model saved by :func:`save_checkpoint` (strict load), in eval mode, on ``device`` (default CPU)."""
    directory = Path(directory)
    config = load_config(ModelConfig, directory / MODEL_FILE)
    model = build_model(config)
    load_state_strict(model, read_weights(directory / WEIGHTS_FILE), str(directory / WEIGHTS_FILE))
    return model.to(device or "cpu").eval()
