"""Released VPT files: ``.model`` (a pickled dict of constructor kwargs) and ``.weights`` (a torch state dict).

A ``.model`` file is never unpickled with ``pickle.load``: a restricted unpickler admits plain containers and
scalars only, plus the gym3 space descriptions the released IDM file carries in ``extra_args`` (rebuilt as
inert records, never imported or called). Any other global is refused with an error naming it. The released
code reads ``model.args.net.args`` (network kwargs) and ``model.args.pi_head_opts`` (head temperature); so do we.
``.weights`` load with ``torch.load(weights_only=True)`` and strictly.
"""

from __future__ import annotations

import io
import pickle
from collections import OrderedDict
from pathlib import Path
from typing import Any, Literal

import torch

from vpt_ray.config import ConfigError
from vpt_ray.models.checkpoint import atomic_write, build_model, cpu_state_dict, load_state_strict, read_weights
from vpt_ray.models.config import config_from_official, official_net_kwargs
from vpt_ray.models.idm import InverseDynamicsModel
from vpt_ray.models.policy import VPTPolicy


class OfficialFileError(ValueError):
    """A released-format file that cannot be read: names the file and what is wrong."""


class ForbiddenPickleGlobal(pickle.UnpicklingError):
    """The pickle asked for a global outside the allowlist (the unpickler never imports or calls it)."""


class InertRecord:
    """State-only stand-in for a gym3 space object in a released ``.model`` file."""

    type_name = "gym3.types.?"

    def __new__(cls, *args, **kwargs):
        return super().__new__(cls)

    def __setstate__(self, state) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<inert {self.type_name} {getattr(self, 'state', None)!r}>"


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {("collections", "OrderedDict"): OrderedDict}
for _name in ("DictType", "TensorType", "Discrete", "Real"):
    _ALLOWED_GLOBALS[("gym3.types", _name)] = type(f"Inert{_name}", (InertRecord,), {"type_name": f"gym3.types.{_name}"})


class RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise ForbiddenPickleGlobal(
                f"forbidden global {module}.{name} (only plain containers and scalars are admitted)"
            ) from None

    def persistent_load(self, pid):
        raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")


def read_model_file(path: str | Path) -> dict:
    """Unpickle a released ``.model`` file with the restricted unpickler; returns its dict."""
    path = Path(path)
    if not path.is_file():
        raise OfficialFileError(f"{path}: no such .model file")
    try:
        data = RestrictedUnpickler(io.BytesIO(path.read_bytes())).load()
    except ForbiddenPickleGlobal as e:
        raise OfficialFileError(f"{path}: refused: {e}") from None
    except Exception as e:  # truncated or non-pickle bytes raise a variety of errors
        raise OfficialFileError(f"{path}: not a readable .model pickle: {e}") from None
    if not isinstance(data, dict):
        raise OfficialFileError(f"{path}: expected a dict at the top level, got {type(data).__name__}")
    return data


def _lookup(data: dict, keys: tuple[str, ...], path: Path):
    node = data
    for i, key in enumerate(keys):
        if not isinstance(node, dict) or key not in node:
            raise OfficialFileError(f"{path}: missing '{'.'.join(keys[: i + 1])}' (released layout: model.args.net.args)")
        node = node[key]
    return node


def _infer_kind(net: dict, net_kwargs: dict) -> Literal["policy", "idm"]:
    function = str(net.get("function", ""))
    if "inverse" in function.lower():
        return "idm"
    if net_kwargs.get("conv3d_params") is not None or net_kwargs.get("single_output") is True:
        return "idm"
    return "policy"


def load_official(model_path: str | Path, weights_path: str | Path,
                  kind: Literal["policy", "idm"] | None = None) -> VPTPolicy | InverseDynamicsModel:  # fmt: skip
    """Released ``.model`` + ``.weights`` -> a VPTPolicy or an InverseDynamicsModel (eval mode, CPU).

    ``kind`` defaults to what the kwargs say: an IDM has a conv3d front end (``conv3d_params``) or
    ``single_output``; anything else is a policy. Released files use the Minecraft action space.
    """
    model_path = Path(model_path)
    data = read_model_file(model_path)
    net = _lookup(data, ("model", "args", "net"), model_path)
    net_kwargs = _lookup(data, ("model", "args", "net", "args"), model_path)
    pi_head_opts = _lookup(data, ("model", "args", "pi_head_opts"), model_path)
    if not isinstance(pi_head_opts, dict) or set(pi_head_opts) - {"temperature"}:
        raise OfficialFileError(f"{model_path}: model.args.pi_head_opts must hold only 'temperature', got {pi_head_opts!r}")
    try:
        temperature = float(pi_head_opts.get("temperature", 1.0))
        config = config_from_official(
            net_kwargs, temperature, kind or _infer_kind(net, net_kwargs), where=f"{model_path}: model.args.net.args"
        )
    except (ConfigError, TypeError, ValueError) as e:
        raise OfficialFileError(str(e)) from None
    model = build_model(config)
    load_state_strict(model, read_weights(weights_path), str(weights_path))
    return model.eval()


def export_official(model: VPTPolicy | InverseDynamicsModel, model_path: str | Path, weights_path: str | Path) -> None:
    """Write ``.model`` / ``.weights`` files in the released layout (plain types; a torch state dict).

    Only the Minecraft action space exists in the released code, so only such models can be exported.
    """
    config = model.config
    if config.action_space != "minecraft":
        raise ValueError(
            f"export_official: the released code only has the minecraft action space, this model uses "
            f"{config.action_space!r}; use save_checkpoint instead"
        )
    data = {
        "model": {
            "args": {
                "net": {"args": official_net_kwargs(config)},
                "pi_head_opts": {"temperature": float(config.temperature)},
            }
        }
    }
    payload = pickle.dumps(data, protocol=4)
    atomic_write(Path(model_path), lambda f: f.write(payload))
    atomic_write(Path(weights_path), lambda f: torch.save(OrderedDict(cpu_state_dict(model)), f))
