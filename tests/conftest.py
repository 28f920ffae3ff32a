"""Shared test fixtures: paths to the shared reference vectors and one local Ray cluster per session."""

from __future__ import annotations

import os
import secrets
import tempfile
from pathlib import Path

import pytest

# Every test cluster checks Ray's token, as every cluster vpt-ray starts does (vpt_ray.ray_session). The mode is
# set before anything imports Ray (Ray reads it once per process). One token for the session, in a file of its
# own: `ray start` heads (which need a token before they start), ray.cluster_utils nodes, Ray Jobs entrypoints and
# `vpt-ray` subprocesses inherit RAY_AUTH_TOKEN_PATH and share it, and nothing depends on a token in ~/.ray.
os.environ["RAY_AUTH_MODE"] = "token"
_token_file = None
if not (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")):
    _token_file = Path(tempfile.mkdtemp(prefix="vpt-ray-token-")) / "auth_token"
    _token_file.touch(mode=0o600)
    _token_file.write_text(secrets.token_hex(32))
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(_token_file)
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("VPT_SHARED_DIR", REPO_ROOT.parent / "shared"))
REFERENCE_DIR = SHARED_DIR / "fixtures" / "vpt-reference"


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not REFERENCE_DIR.is_dir():
        pytest.fail(f"reference vectors not found at {REFERENCE_DIR} (set VPT_SHARED_DIR)")
    return REFERENCE_DIR


@pytest.fixture
def one_torch_thread():
    """Small models run fastest on one torch thread, and the machine's cores are shared."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def ray_local():
    """A local Ray cluster without the dashboard (it costs ~1 GiB), shared by the tests that use it.

    Tests that need a different topology (ray.cluster_utils.Cluster) call ``ray.shutdown()`` first; the next
    test that asks for this fixture then starts a fresh local cluster.
    """
    import ray

    if not ray.is_initialized():
        ray.init(
            address="local",  # a cluster of our own, never one another process on this machine started
            num_cpus=4,
            include_dashboard=False,
            object_store_memory=512 * 1024**2,
            log_to_driver=False,
            configure_logging=False,
        )
    yield ray


class RedisServer:
    """A real redis-server on a free loopback port, no persistence, its files in a tmp dir; stopped by pid.

    It requires a password (as the cluster's ledger Redis does), so ``url`` carries one.
    """

    def __init__(self, workdir: Path):
        import secrets

        self.workdir = workdir
        self.password = secrets.token_hex(8)
        self.port = 0
        self.proc = None

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def start(self) -> None:
        import shutil
        import socket
        import subprocess
        import time

        exe = shutil.which("redis-server")
        if exe is None:
            pytest.fail("redis-server not found: `make redis` installs it (the ledger tests need a real server)")
        for _ in range(5):
            if not self.port:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", 0))
                    self.port = s.getsockname()[1]
            cmd = [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                   "--dir", str(self.workdir), "--requirepass", self.password, "--logfile", "redis.log"]
            self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as c:
                        c.sendall(f"AUTH {self.password}\r\nPING\r\n".encode())
                        if b"PONG" in c.recv(64) or b"PONG" in c.recv(64):
                            return
                except OSError:
                    time.sleep(0.05)
            self.stop()
            self.port = 0  # most likely the port was taken meanwhile: try another
        pytest.fail(f"redis-server did not start (log: {self.workdir / 'redis.log'})")

    def stop(self, save: bool = False) -> None:
        """Stop the server by pid; ``save=True`` snapshots first (like a server with persistence would)."""
        import subprocess

        if self.proc is None:
            return
        if save and self.proc.poll() is None:
            import redis

            redis.Redis.from_url(self.url).save()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        """Start again on the same port (loading the snapshot of ``stop(save=True)``, if any)."""
        self.start()


@pytest.fixture
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def crafter_shards(tmp_path_factory) -> Path:
    """Real labeled Crafter data: 4 scripted-player episodes of 150 steps, recorded (mp4 + jsonl) and converted
    to shards (one per episode). Read-only: copy it to add or damage files."""
    from vpt_ray.data.recordings import record_episodes
    from vpt_ray.data.shards import recordings_to_shards

    root = tmp_path_factory.mktemp("crafter_data")
    result = record_episodes("crafter-tech-tree", root / "recordings", 4, seed=0, max_steps=150, progress=False)
    assert not result["failed"], result["failed"]
    summary = recordings_to_shards(root / "recordings", root / "shards")
    assert len(summary.written) == 4 and not summary.bad, summary
    return root / "shards"


# A policy small enough for RL tests on two shared cores (~30 k parameters, 16 frames of memory).
TINY_RL_POLICY = {
    "kind": "policy", "action_space": "crafter",
    "net": {"img_shape": [64, 64, 3], "timesteps": 8, "hidsize": 32, "impala_chans": [8, 8, 8],
            "impala_kwargs": {"post_pool_groups": 1}, "init_norm_kwargs": {"group_norm_groups": 1},
            "attention_heads": 2, "attention_memory_size": 24, "n_recurrence_layers": 1, "use_pre_lstm_ln": False},
}  # fmt: skip


@pytest.fixture
def rl_task(tmp_path):
    """``rl_task(name="rl-test", env=None, rewards=None, **rl)`` writes crafter-wood with the tiny RL policy, ``env``
    fields and ``rl`` fields replaced (``scale`` as a mapping merged into the preset's), ``rewards`` (a list of
    ``{item, quantity, reward}``) instead of the preset's, and returns the YAML's path."""
    import yaml

    from vpt_ray.spec import load_task, task_to_dict

    def make(name: str = "rl-test", *, env: dict | None = None, rewards: list | None = None, **rl) -> Path:
        task = task_to_dict(load_task("crafter-wood"))
        if rewards is not None:
            task["rewards"] = {"items": rewards}
        preset = tmp_path / "tiny-rl-policy.yaml"
        preset.write_text(yaml.safe_dump(TINY_RL_POLICY))
        task["name"] = name
        task["env"].update(env or {})
        scale = {**task["rl"]["scale"], **rl.pop("scale", {})}
        task["rl"].update({"policy": str(preset), **rl, "scale": scale})
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(task, sort_keys=False))
        return path

    return make


def pytest_sessionfinish(session, exitstatus):
    try:
        import ray
    except ImportError:
        ray = None
    if ray is not None and ray.is_initialized():
        ray.shutdown()
    if _token_file is not None:
        import shutil

        shutil.rmtree(_token_file.parent, ignore_errors=True)
