"""How vpt_ray starts or joins Ray: with Ray's token authentication on.

A local Ray cluster is not private to this machine: its GCS, raylet and agent ports listen on every interface,
so anyone who can reach the machine could submit code to it and run it as you. Ray 2.60 therefore checks a
shared token on every gRPC and HTTP entry point (``RAY_AUTH_MODE=token``); vpt_ray keeps that on:

- :func:`use_token_auth` sets ``RAY_AUTH_MODE=token`` unless the user chose a mode. The CLI calls it before
  anything imports Ray (Ray reads the mode once per process, when it is imported): the same mode Ray would
  pick for a new local cluster, without Ray's notice about it on every command, and for ``--address`` /
  ``RAY_ADDRESS`` connections too (Ray itself only sends the token to ``auto`` when the mode is unset).
- :func:`init_ray` starts a local cluster of our own (``address="local"``; the first time, a fresh token in
  ``~/.ray/auth_token``, readable by you alone) or joins ``address`` with the token from ``RAY_AUTH_TOKEN``,
  ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``. Every process Ray starts inherits the mode and finds the
  same token, so Ray Train workers, Ray Data and Serve replicas, RLlib env runners and Ray Jobs entrypoints
  all authenticate. The token is never printed.

A ``RAY_AUTH_MODE`` other than ``token`` that the user set is respected, with a warning: that cluster is open to the
network.
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

AUTH_MODE_ENV = "RAY_AUTH_MODE"
DEFAULT_TOKEN_FILE = Path("~/.ray/auth_token")  # where Ray looks when neither variable below is set
TOKEN_SOURCES = "RAY_AUTH_TOKEN, the file RAY_AUTH_TOKEN_PATH names, or ~/.ray/auth_token"


class RayConnectError(RuntimeError):
    """Ray could not be started or joined (no token for an authenticated cluster, unreachable address)."""


def use_token_auth() -> None:
    """``RAY_AUTH_MODE=token`` unless already set; call it before Ray is imported."""
    os.environ.setdefault(AUTH_MODE_ENV, "token")


def init_ray(address: str | None = None, *, num_cpus: int | None = None, log_to_driver: bool = False,
             **kwargs: Any) -> bool:  # fmt: skip
    """Join ``address`` (or ``$RAY_ADDRESS``; ``auto``: the cluster running on this machine), else (or with
    ``address="local"``) start a new local cluster of our own without the dashboard (never silently join another
    job's local cluster).

    Returns True when this call started or joined Ray (the caller then shuts it down), False when this
    process was already connected. ``kwargs`` go to ``ray.init`` (``object_store_memory``, ...).
    """
    import ray

    if ray.is_initialized():
        return False
    if address != "local":
        address = address or os.environ.get("RAY_ADDRESS")
    mode = os.environ.get(AUTH_MODE_ENV)
    if mode is not None and mode.lower() != "token":
        logger.warning("%s=%s: the Ray cluster runs without token authentication, so anyone who can reach this "
                       "machine's Ray ports can run code on it; unset %s to keep Ray's token auth",
                       AUTH_MODE_ENV, mode, AUTH_MODE_ENV)  # fmt: skip
    from ray.exceptions import AuthenticationError

    if not address or address == "local":
        if mode is None or mode.lower() == "token":
            _private_default_token()
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=log_to_driver, **kwargs)
        return True
    try:
        ray.init(address=address, log_to_driver=log_to_driver, **kwargs)
    except AuthenticationError as e:
        raise RayConnectError(f"Ray cluster {address}: {e}; give its token in {TOKEN_SOURCES} "
                              "(`ray get-auth-token` on its head node prints it)") from None  # fmt: skip
    except ConnectionError as e:
        raise RayConnectError(f"cannot connect to the Ray cluster at {address}: {e} (is it running? an "
                              f"authenticated cluster also needs its token in {TOKEN_SOURCES})") from None  # fmt: skip
    return True


def _private_default_token() -> None:
    """Make sure the token a new local cluster uses is readable by you alone.

    Without RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH, Ray uses ``~/.ray/auth_token`` and, the first time, writes it
    with the umask's permissions (usually 0644: any user of the machine could read it and join the cluster).
    Write it first ourselves (0600; 256 random bits in hex, as Ray's own generator makes), or take group and
    other access away from an existing one.
    """
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return
    path = DEFAULT_TOKEN_FILE.expanduser()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)
        return
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))


__all__ = ["RayConnectError", "init_ray", "use_token_auth"]
