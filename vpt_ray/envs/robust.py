"""A simulator wrapper that survives failures: exceptions, hangs and crashes end the episode, not the run.

:class:`RobustSim` runs a simulator built by a picklable ``factory`` either in a child process (``isolation:
process``: the parent enforces start/step/reset timeouts and kills a hung or crashed child, with the whole process
group, so MineRL's Java dies too) or in this process (``inprocess``: no IPC cost, catches exceptions only).

On a failure it drops the broken simulator, returns the last good frame as a *truncated* step with
``info["env_failure"] = True``, and builds a fresh simulator at the next reset (a failed reset is retried on a
fresh one). ``failures_total`` counts failures. After ``max_consecutive_failures`` failures without a
successful step in between it raises :class:`EnvFailureError`, so RLlib's fault tolerance (re-creating the env
or restarting the env runner) takes over.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import gymnasium as gym

from vpt_ray.spec import RobustOptions

logger = logging.getLogger(__name__)


class EnvFailureError(RuntimeError):
    """The simulator kept failing: ``max_consecutive_failures`` failures without a successful step."""


class SimFailure(Exception):
    """One simulator failure (exception, timeout or crash), caught by :class:`RobustSim`."""


class _InProcess:
    def __init__(self, factory: Callable[[], gym.Env]):
        try:
            self.env = factory()
        except Exception as e:
            raise SimFailure(f"creating the env raised {e!r}") from e
        self.spaces = (self.env.observation_space, self.env.action_space, self.env.action_space_name)

    def call(self, method: str, *args, **kwargs):
        try:
            return getattr(self.env, method)(*args, **kwargs)
        except Exception as e:
            raise SimFailure(f"{method} raised {e!r}") from e

    def close(self):
        self.env.close()

    def discard(self):
        try:
            self.env.close()
        except Exception:
            logger.debug("closing a failed env raised", exc_info=True)


def _child_main(fd: int) -> None:
    """Body of the env process: build the env from the pickled factory it is sent, then serve calls."""
    conn = Connection(fd)
    try:
        env = conn.recv()()
        conn.send(("ok", (env.observation_space, env.action_space, env.action_space_name)))
    except Exception:
        conn.send(("error", traceback.format_exc()))
        return
    while True:
        try:
            method, args, kwargs = conn.recv()
        except EOFError:  # the parent is gone
            break
        try:
            conn.send(("ok", getattr(env, method)(*args, **kwargs)))
        except Exception:
            conn.send(("error", traceback.format_exc()))
        if method == "close":
            break


class _ChildProcess:
    """The simulator in a fresh interpreter (not multiprocessing: that re-runs the user's ``__main__``).

    The child leads its own session, so killing its process group also kills what it started (MineRL's Java),
    and Ctrl-C in a terminal reaches only the parent.
    """

    def __init__(self, factory: Callable[[], gym.Env], options: RobustOptions):
        self._timeouts = {"create": options.start_timeout_s, "reset": options.reset_timeout_s,
                          "step": options.step_timeout_s, "close": 5.0}
        parent_sock, child_sock = socket.socketpair()
        code = f"from vpt_ray.envs.robust import _child_main; _child_main({child_sock.fileno()})"
        # The child imports what the parent can (the factory may live in any module on the parent's path).
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code], pass_fds=(child_sock.fileno(),), start_new_session=True, env=env
        )
        child_sock.close()
        self.conn = Connection(parent_sock.detach())
        self.conn.send(factory)
        self.spaces = self._receive("create")

    def _receive(self, what: str):
        timeout_s = self._timeouts[what]
        try:
            ready = self.conn.poll(timeout_s)
            status, value = self.conn.recv() if ready else (None, None)
        except (EOFError, OSError):
            self.kill()
            raise SimFailure(f"{what}: the env process died (exit code {self.proc.returncode})") from None
        if not ready:
            self.kill()
            raise SimFailure(f"{what}: no answer within {timeout_s:g} s; killed the env process")
        if status == "error":
            self.kill()
            raise SimFailure(f"{what} raised in the env process:\n{value}")
        return value

    def call(self, method: str, *args, **kwargs):
        try:
            self.conn.send((method, args, kwargs))
        except OSError:
            self.kill()
            raise SimFailure(f"{method}: the env process is gone (exit code {self.proc.returncode})") from None
        return self._receive(method)

    def discard(self):
        self.kill()

    def kill(self):
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()
        self.conn.close()

    def close(self):
        try:
            self.call("close")
        except SimFailure:
            return  # already killed
        try:
            self.proc.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            pass
        self.kill()


class RobustSim(gym.Env):
    """Failure-surviving proxy of the simulator that ``factory()`` builds (see the module docstring)."""

    def __init__(self, factory: Callable[[], gym.Env], options: RobustOptions):
        self.options = options
        if options.isolation == "process":
            self._new_backend = lambda: _ChildProcess(factory, options)
        else:
            self._new_backend = lambda: _InProcess(factory)
        self.failures_total = 0
        self._consecutive_failures = 0
        self._last_obs = None
        self._last_inventory: dict[str, int] = {}
        self._backend = None
        while self._backend is None:
            try:
                self._backend = self._new_backend()
            except SimFailure as e:
                self._record_failure(e)
        self.observation_space, self.action_space, self.action_space_name = self._backend.spaces

    def _record_failure(self, error: SimFailure) -> None:
        self.failures_total += 1
        self._consecutive_failures += 1
        if self._backend is not None:
            self._backend.discard()
            self._backend = None
        if self._consecutive_failures >= self.options.max_consecutive_failures:
            raise EnvFailureError(
                f"the env failed {self._consecutive_failures} times in a row; last failure: {error}"
            ) from error
        logger.warning("env failure %d (recreating the env): %s", self.failures_total, error)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        while True:
            try:
                if self._backend is None:
                    self._backend = self._new_backend()
                obs, info = self._backend.call("reset", seed=seed, options=options)
            except SimFailure as e:
                self._record_failure(e)
                continue
            self._last_obs, self._last_inventory = obs, info["inventory"]
            return obs, info

    def step(self, action):
        if self._backend is None:
            raise RuntimeError("step() after an env failure: call reset() first")
        try:
            obs, reward, terminated, truncated, info = self._backend.call("step", action)
        except SimFailure as e:
            self._record_failure(e)
            info = {"inventory": self._last_inventory, "new_items": {}, "env_failure": True}
            return self._last_obs, 0.0, False, True, info
        self._consecutive_failures = 0
        self._last_obs, self._last_inventory = obs, info["inventory"]
        return obs, reward, terminated, truncated, info

    def close(self):
        if self._backend is not None:
            self._backend.close()
            self._backend = None
