"""Ray clusters vpt_ray starts check Ray's token: a client without it is refused, even from this machine's own
network address (a local cluster's ports listen on every interface, not on loopback only)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# What `vpt-ray` does for every command that runs on Ray: vpt_ray.cli.main calls use_token_auth() before Ray is
# imported, then the command starts a local cluster with init_ray().
SERVER = """
import sys
from vpt_ray.ray_session import init_ray, use_token_auth
use_token_auth()
init_ray(num_cpus=1, configure_logging=False)
import ray
print(ray.get_runtime_context().gcs_address, flush=True)
sys.stdin.read()
"""
# A client of that cluster: connect, run a task there.
CLIENT = """
import sys, ray
try:
    ray.init(address=sys.argv[1], log_to_driver=False, configure_logging=False)
except Exception as e:
    print("REFUSED", type(e).__name__, repr(e.__cause__ or e), flush=True)
    sys.exit(3)
print("RAN", ray.get(ray.remote(lambda: 6 * 7).remote()), flush=True)
"""


def _clean_env(home: Path) -> dict[str, str]:
    """This environment without any Ray setting or token, HOME pointed at ``home``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    return {**env, "HOME": str(home), "PYTHONPATH": str(REPO)}


def _non_loopback_ipv4() -> str | None:
    try:
        out = subprocess.run(["hostname", "-I"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        out = ""
    if not out.strip():
        try:
            out = subprocess.run(["ip", "-4", "-o", "addr", "show", "scope", "global"], capture_output=True,
                                 text=True, timeout=10).stdout  # fmt: skip
            out = " ".join(field.split("/")[0] for line in out.splitlines() for field in line.split()[3:4])
        except (OSError, subprocess.TimeoutExpired):
            out = ""
    return next((a for a in out.split() if "." in a and not a.startswith("127.")), None)


def _client(address: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    # A refused connection is retried for ~20 s by default; a few seconds show the same answer.
    env = {**env, "RAY_gcs_server_port_wait_time_s": "3"}
    return subprocess.run([sys.executable, "-c", CLIENT, address], env=env, capture_output=True, text=True,
                          timeout=180)  # fmt: skip


def test_a_cluster_started_like_the_cli_refuses_a_client_without_the_token(tmp_path):
    ip = _non_loopback_ipv4()
    if ip is None:
        pytest.skip("this machine has no non-loopback IPv4 address to connect from")
    home, stranger = tmp_path / "home", tmp_path / "stranger"
    home.mkdir()
    stranger.mkdir()
    # A fresh HOME (as on CI): no token anywhere yet.
    server = subprocess.Popen([sys.executable, "-c", SERVER], env=_clean_env(home), stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    try:
        gcs = server.stdout.readline().strip()
        assert gcs, server.stderr.read()[-3000:] if server.poll() is not None else "no GCS address"
        port = gcs.rsplit(":", 1)[1]
        token = home / ".ray" / "auth_token"
        assert token.is_file() and len(token.read_text().strip()) == 64
        assert stat.S_IMODE(token.stat().st_mode) == 0o600  # no other user of the machine can read it

        # Someone on the network: this machine's address, no token (another HOME, no RAY_AUTH_* variables).
        refused = _client(f"{ip}:{port}", _clean_env(stranger))
        assert refused.returncode == 3, refused.stdout + refused.stderr[-3000:]
        assert "REFUSED" in refused.stdout and "RAN" not in refused.stdout
        assert "Unauthenticated" in refused.stderr or "InvalidAuthToken" in refused.stderr, refused.stderr[-3000:]
        # A wrong token is refused too.
        wrong = tmp_path / "wrong_token"
        wrong.write_text("0" * 64)
        guessed = _client(f"{ip}:{port}", {**_clean_env(stranger), "RAY_AUTH_MODE": "token",
                                           "RAY_AUTH_TOKEN_PATH": str(wrong)})  # fmt: skip
        assert guessed.returncode == 3 and "RAN" not in guessed.stdout, guessed.stdout + guessed.stderr[-3000:]

        # The same address with the cluster's token works: the refusals above were the token check, nothing else.
        allowed = _client(f"{ip}:{port}", {**_clean_env(stranger), "RAY_AUTH_MODE": "token",
                                           "RAY_AUTH_TOKEN_PATH": str(token)})  # fmt: skip
        assert allowed.returncode == 0 and "RAN 42" in allowed.stdout, allowed.stdout + allowed.stderr[-3000:]
    finally:
        server.stdin.close()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, 9)
            server.wait()
    assert server.returncode == 0, server.stderr.read()[-3000:]


def test_turning_auth_off_yourself_is_warned_about(tmp_path):
    env = {**_clean_env(tmp_path), "RAY_AUTH_MODE": "disabled"}
    out = subprocess.run([str(Path(sys.executable).with_name("vpt-ray")), "evaluate", "--task", "crafter-wood",
                          "--agent", "random", "--episodes", "1", "--max-steps", "5", "--workers", "1",
                          "--no-progress"], env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert "RAY_AUTH_MODE=disabled: the Ray cluster runs without token authentication" in out.stderr
    assert not (tmp_path / ".ray").exists()  # no token was made for it
