"""The frozen BC policy on Ray Serve: the pretrained log-probs behind PPG's KL penalty (docs/rl-design.md §3).

Every env runner asks for the frozen policy's log-probs once per sampled row (T frames of one sub-env). The rows
of all runners meet on the replicas, where ``@serve.batch`` stacks them into one forward: frames (N, T, H, W, 3),
first (N, T), memory state (N, ...).

The frozen model's recurrent memory belongs to the *caller*: each request carries the state at the start of its
row and gets the state after the row back, to send with the episode's next row. Replicas therefore keep nothing
per episode, any replica can answer any row, and resending a request after a replica died gives the same answer.

* :class:`PretrainedApp` (job driver): ``start`` deploys a checkpoint as its own Serve application with no HTTP
  proxy (handles only, nothing listens on the network), ``stop`` deletes that application and nothing else.
* :class:`PretrainedClient` (env runner): ``logprobs(requests)`` sends one request per row at once and retries
  the unanswered ones with backoff while replicas are dead or restarting, up to ``timeout_s`` for the call. An
  error raised by the deployment's code (a bad request, a bug) is never retried: it surfaces at once.

The deployment reads the checkpoint directory by path (like the labeling actors read the IDM), so on a cluster it
must live on storage every node can read.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import ray.exceptions
from ray import serve
from ray.serve.exceptions import RayServeException

logger = logging.getLogger(__name__)

DEPLOYMENT_NAME = "FrozenPolicy"
STATE_KEYS = ("mask", "k", "v")
_STATS_WINDOW = 10_000  # batch sizes kept per replica for stats()
# A replica died, is restarting or unreachable, or Serve has none ready in time: the request may be resent.
RETRYABLE_ERRORS = (ray.exceptions.RayActorError, TimeoutError, RayServeException)


class PretrainedServeError(RuntimeError):
    """The frozen-policy deployment raised for a request (a bad request or a bug): retrying cannot help."""


# ------------------------------------------------------------------------------------------------- requests
def check_request(request: Any, index: int, frame_shape: Sequence[int] | None = None,
                  state_shapes: Mapping[str, tuple[tuple[int, ...], np.dtype]] | None = None) -> None:  # fmt: skip
    """Raise ValueError naming the request and field unless ``request`` is a well-formed row.

    Without ``frame_shape``/``state_shapes`` (the client, which does not know the model) only the structure is
    checked; the replica checks the shapes against its model too.
    """
    where = f"request {index}"
    if not isinstance(request, Mapping) or not {"frames", "first"} <= set(request):
        raise ValueError(f"{where}: expected a dict with 'frames', 'first' and 'state', got "
                         f"{sorted(request) if isinstance(request, Mapping) else type(request).__name__}")  # fmt: skip
    unknown = sorted(set(request) - {"frames", "first", "state"})
    if unknown:
        raise ValueError(f"{where}: unknown fields {unknown}")
    frames, first, state = request["frames"], request["first"], request.get("state")
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        got = f"{frames.dtype} {frames.shape}" if isinstance(frames, np.ndarray) else type(frames).__name__
        raise ValueError(f"{where}: 'frames' must be a uint8 array (T, H, W, 3), got {got}")
    if frame_shape is not None and tuple(frames.shape[1:]) != tuple(frame_shape):
        raise ValueError(f"{where}: 'frames' must be (T, {', '.join(map(str, frame_shape))}) for this model, "
                         f"got {frames.shape}")  # fmt: skip
    t = frames.shape[0]
    if t == 0:
        raise ValueError(f"{where}: 'frames' holds no frame")
    if not isinstance(first, np.ndarray) or first.dtype != np.bool_ or first.shape != (t,):
        got = f"{first.dtype} {first.shape}" if isinstance(first, np.ndarray) else type(first).__name__
        raise ValueError(f"{where}: 'first' must be a bool array ({t},), got {got}")
    if state is None:
        return
    if not isinstance(state, Mapping) or set(state) != set(STATE_KEYS):
        got = sorted(state) if isinstance(state, Mapping) else type(state).__name__
        raise ValueError(f"{where}: 'state' must be None or a dict with keys {list(STATE_KEYS)}, got {got}")
    for key in STATE_KEYS:
        value = state[key]
        if not isinstance(value, np.ndarray):
            raise ValueError(f"{where}: state[{key!r}] must be a numpy array, got {type(value).__name__}")
        if state_shapes is not None:
            shape, dtype = state_shapes[key]
            if value.shape != shape or value.dtype != dtype:
                raise ValueError(f"{where}: state[{key!r}] must be {dtype} {shape} for this model (no batch dim), "
                                 f"got {value.dtype} {value.shape}")  # fmt: skip


# ----------------------------------------------------------------------------------------------- deployment
@serve.deployment(name=DEPLOYMENT_NAME)
class FrozenPolicy:
    """One replica: the checkpoint in eval mode on ``device``; rows of concurrent requests in one forward."""

    def __init__(self, checkpoint_dir: str, device: str, torch_threads: int, max_batch_size: int,
                 batch_wait_timeout_s: float):  # fmt: skip
        import torch

        from vpt_ray.models import load_checkpoint

        # Ray sets no thread count for actors with fractional or zero CPUs; torch would take every core.
        torch.set_num_threads(torch_threads)
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(f"{DEPLOYMENT_NAME}: asked for {device} but this replica sees no CUDA device")
        self.policy = load_checkpoint(checkpoint_dir, device=device)
        self.policy.requires_grad_(False)
        self.device = device
        self.torch_threads = torch_threads
        self.frame_shape = tuple(self.policy.config.net.img_shape)
        initial = {k: v[0].cpu().numpy() for k, v in self.policy.initial_state(1, device="cpu").items()}
        self.initial_state = initial
        self.state_shapes = {k: (v.shape, v.dtype) for k, v in initial.items()}
        self._batched.set_max_batch_size(max_batch_size)
        self._batched.set_batch_wait_timeout_s(batch_wait_timeout_s)
        self.batch_sizes: collections.deque[int] = collections.deque(maxlen=_STATS_WINDOW)
        self.rows = 0
        self.frames = 0
        self.forward_s = 0.0

    async def logprobs(self, request: dict) -> dict:
        """One row -> ``{"logprobs": {head: float32 (T, n)}, "state": {key: array}}`` (state after the row)."""
        result = await self._batched(request)
        if isinstance(result, Exception):  # this request's own error; the rest of its batch was answered
            raise result
        return result

    # The defaults are replaced in __init__ by the values PretrainedApp.start was given.
    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.02)
    async def _batched(self, requests: list[dict]) -> list[dict | Exception]:
        # A worker thread runs the forward, so the replica keeps queueing the next batch meanwhile.
        return await asyncio.to_thread(self._run_batch, requests)

    def _run_batch(self, requests: list[dict]) -> list[dict | Exception]:
        out: list[dict | Exception | None] = [None] * len(requests)
        by_length: dict[int, list[int]] = {}
        for i, request in enumerate(requests):
            try:
                check_request(request, i, self.frame_shape, self.state_shapes)
            except ValueError as e:
                out[i] = e
                continue
            by_length.setdefault(len(request["first"]), []).append(i)
        for idx in by_length.values():  # rows are stacked, so one forward per row length
            for i, row in zip(idx, self._forward([requests[i] for i in idx])):
                out[i] = row
        self.batch_sizes.append(len(requests))
        return out

    def _forward(self, requests: list[dict]) -> list[dict]:
        import torch

        t0 = time.perf_counter()
        frames_nthwc = np.stack([r["frames"] for r in requests])
        first_nt = np.stack([r["first"] for r in requests])
        states = [self.initial_state if r.get("state") is None else r["state"] for r in requests]
        with torch.inference_mode():
            state_in = {k: torch.from_numpy(np.stack([s[k] for s in states])).to(self.device) for k in STATE_KEYS}
            out = self.policy(torch.from_numpy(frames_nthwc), torch.from_numpy(first_nt), state_in)
            logprobs = {k: v.float().cpu().numpy() for k, v in out.logprobs.items()}
            state_out = {k: v.cpu().numpy() for k, v in out.state.items()}
        self.rows += len(requests)
        self.frames += int(frames_nthwc.shape[0] * frames_nthwc.shape[1])
        self.forward_s += time.perf_counter() - t0
        return [
            {"logprobs": {k: v[i] for k, v in logprobs.items()}, "state": {k: v[i] for k, v in state_out.items()}}
            for i in range(len(requests))
        ]

    def stats(self) -> dict:
        """This replica's counters: ``batch_sizes`` (requests per batch, last 10,000 batches), ``rows``,
        ``frames``, ``forward_s`` (seconds in forwards), ``device``, ``torch_threads``, ``pid``."""
        return {"batch_sizes": list(self.batch_sizes), "rows": self.rows, "frames": self.frames,
                "forward_s": self.forward_s, "device": self.device, "torch_threads": self.torch_threads,
                "pid": os.getpid()}  # fmt: skip


def _check_checkpoint(checkpoint_dir: Path) -> None:
    """Refuse a directory that is not a policy checkpoint before any replica is started."""
    from vpt_ray.config import load_config
    from vpt_ray.models import ModelConfig
    from vpt_ray.models.checkpoint import MODEL_FILE, WEIGHTS_FILE

    config = load_config(ModelConfig, checkpoint_dir / MODEL_FILE)  # ConfigError names the file and field
    if config.kind != "policy":
        raise ValueError(f"{checkpoint_dir}: holds a {config.kind!r} model; the frozen policy must be a policy")
    if not (checkpoint_dir / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"{checkpoint_dir / WEIGHTS_FILE}: no such weights file")


def _deployment_handle(app_name: str):
    return serve.get_deployment_handle(DEPLOYMENT_NAME, app_name=app_name)


class PretrainedApp:
    """A frozen policy deployed as the Serve application ``name``; :meth:`start` creates one."""

    def __init__(self, name: str):
        self.name = name

    @classmethod
    def start(cls, checkpoint_dir: str | Path, *, name: str, num_replicas: int = 1, num_cpus: float = 1,
              num_gpus: float = 0, max_batch_size: int = 16,
              batch_wait_timeout_s: float = 0.02) -> PretrainedApp:  # fmt: skip
        """Deploy ``checkpoint_dir`` (``save_checkpoint`` layout) and wait until every replica is up.

        Serve is started without any proxy if it is not running yet (a Serve instance someone else started keeps
        its settings; the app has no route prefix either way, so no proxy ever exposes it). ``num_cpus`` and
        ``num_gpus`` are per replica; a replica with a GPU runs the model there. Torch uses
        ``max(1, floor(num_cpus))`` threads per replica. An application of the same name must not exist: two jobs
        would otherwise silently share (and redeploy) one.
        """
        checkpoint_dir = Path(checkpoint_dir).resolve()
        for what, value, ok in (
            ("name", name, isinstance(name, str) and name.strip() != ""),
            ("num_replicas", num_replicas, isinstance(num_replicas, int) and num_replicas >= 1),
            ("num_cpus", num_cpus, isinstance(num_cpus, (int, float)) and num_cpus >= 0),
            ("num_gpus", num_gpus, isinstance(num_gpus, (int, float)) and num_gpus >= 0),
            ("max_batch_size", max_batch_size, isinstance(max_batch_size, int) and max_batch_size >= 1),
            ("batch_wait_timeout_s", batch_wait_timeout_s,
             isinstance(batch_wait_timeout_s, (int, float)) and batch_wait_timeout_s >= 0),
        ):  # fmt: skip
            if not ok:
                raise ValueError(f"PretrainedApp.start: invalid {what}={value!r}")
        _check_checkpoint(checkpoint_dir)

        serve.start(proxy_location="Disabled")
        if name in serve.status().applications:
            raise ValueError(f"a Serve application named {name!r} is already running; stop it or pick another name")
        deployment = FrozenPolicy.options(
            num_replicas=num_replicas,
            # one batch computing while the next one fills
            max_ongoing_requests=2 * max_batch_size,
            ray_actor_options={"num_cpus": num_cpus, "num_gpus": num_gpus},
        )
        app = deployment.bind(str(checkpoint_dir), "cuda" if num_gpus > 0 else "cpu",
                              max(1, math.floor(num_cpus)), max_batch_size, float(batch_wait_timeout_s))  # fmt: skip
        serve.run(app, name=name, route_prefix=None)
        return cls(name)

    def client(self, *, timeout_s: float = 120.0) -> PretrainedClient:
        return PretrainedClient(self.name, timeout_s=timeout_s)

    def stats(self, *, timeout_s: float = 60.0) -> list[dict]:
        """Every live replica's ``stats()`` (batch sizes, rows, frames, forward seconds, device, pid)."""
        return _deployment_handle(self.name).broadcast("stats").results(timeout_s=timeout_s)

    def stop(self) -> None:
        """Delete this application (its replicas); other applications and Serve itself keep running."""
        serve.delete(self.name)

    def __enter__(self) -> PretrainedApp:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


# --------------------------------------------------------------------------------------------------- client
class PretrainedClient:
    """Calls the frozen policy of Serve application ``app_name``; synchronous, safe inside any Ray actor.

    ``retries`` counts requests resent after a replica failure (for the runner's metrics).
    """

    def __init__(self, app_name: str, *, timeout_s: float = 120.0):
        if not isinstance(timeout_s, (int, float)) or timeout_s <= 0:
            raise ValueError(f"PretrainedClient: timeout_s must be > 0, got {timeout_s!r}")
        self.app_name = app_name
        self.timeout_s = float(timeout_s)
        self.retries = 0
        self._handle = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_handle": None}  # a handle belongs to the process that made it

    def _logprobs_handle(self):
        if self._handle is None:
            try:
                handle = _deployment_handle(self.app_name)
            except KeyError:  # Serve answered: no such app. A wrong name or a stopped app, not a transient fault
                raise LookupError(f"Serve app {self.app_name!r} has no {DEPLOYMENT_NAME} deployment "
                                  "(never started, or stopped)") from None  # fmt: skip
            self._handle = handle.options(method_name="logprobs")
        return self._handle

    def logprobs(self, requests: Sequence[Mapping[str, Any]]) -> list[dict]:
        """One response per request, in order: ``{"logprobs": {head: float32 (T, n)}, "state": {key: array}}``.

        A request is ``{"frames": uint8 (T, H, W, 3), "first": bool (T,), "state": dict | None}`` (``None``: a
        fresh memory; otherwise the ``state`` of the episode's previous response). Raises ``ValueError`` for a
        malformed request (nothing sent), ``LookupError`` when the app does not exist, :class:`PretrainedServeError`
        when the deployment raised, and ``TimeoutError`` when replicas stayed unavailable for ``timeout_s``.
        """
        requests = list(requests)
        for i, request in enumerate(requests):
            check_request(request, i)
        results: list[dict | None] = [None] * len(requests)
        pending = list(range(len(requests)))
        deadline = time.monotonic() + self.timeout_s
        delay, attempts, last_error = 0.25, 0, None
        while pending:
            attempts += 1
            failed = []
            try:
                handle = self._logprobs_handle()
                responses = [(i, handle.remote(requests[i])) for i in pending]
            except RETRYABLE_ERRORS as e:  # Serve (or the app) not reachable yet
                failed, responses, last_error = list(pending), [], e
            for n, (i, response) in enumerate(responses):
                try:
                    results[i] = response.result(timeout_s=max(deadline - time.monotonic(), 0.0))
                except ray.exceptions.RayTaskError as e:
                    if not isinstance(e.cause, ray.exceptions.RayActorError):  # the deployment's code raised:
                        for _, other in responses[n + 1:]:  # a bad request or a bug, never retried
                            other.cancel()
                        raise PretrainedServeError(f"Serve app {self.app_name!r}: the frozen policy failed on "
                                                   f"request {i}: {type(e.cause).__name__}: {e.cause}") from e
                    failed.append(i)  # an actor death that Ray reports wrapped: the replica's fault
                    last_error = e
                except RETRYABLE_ERRORS as e:
                    response.cancel()
                    failed.append(i)
                    last_error = e
            pending = failed
            if not pending:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"Serve app {self.app_name!r}: {len(pending)} of {len(requests)} frozen-policy requests "
                    f"unanswered after {self.timeout_s:g} s ({attempts} attempts); last error: "
                    f"{type(last_error).__name__}: {last_error}"
                )
            self.retries += len(pending)
            logger.warning("Serve app %r: resending %d frozen-policy request(s) in %.2f s after %s: %s", self.app_name,
                           len(pending), min(delay, remaining), type(last_error).__name__, last_error)  # fmt: skip
            time.sleep(min(delay, remaining))
            delay = min(2 * delay, 4.0)
        return results  # type: ignore[return-value]
