"""`vpt-ray submit / jobs / logs` against a real local Ray head serving the Jobs API (dashboard on)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from vpt_ray.ledger import open_ledger

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SPEC = REPO / "rollouts" / "crafter-wood.yaml"


def vpt_ray(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    script = BIN / "vpt-ray"
    cmd = [str(script)] if script.exists() else [sys.executable, "-c", "import sys; from vpt_ray.cli import main; sys.exit(main())"]
    return subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=REPO)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------ requests (no cluster)


def test_submit_builds_the_rl_request_and_ships_the_spec():
    out = vpt_ray("submit", str(SPEC), "--init", "/ckpt/bc model", "--job-id", "rl-7", "--dry-run",
                  "--entrypoint-resources", '{"learner": 1}', "--env", "SEED=3", "--address", "http://h:1")
    assert out.returncode == 0, out.stderr
    req = json.loads(out.stdout)
    assert req["entrypoint"] == "vpt-ray rl --task task.yaml --init '/ckpt/bc model'"
    assert req["submission_id"] == "rl-7" and req["address"] == "http://h:1"
    assert req["runtime_env"]["env_vars"] == {"SEED": "3", "VPT_RUN_ID": "rl-7"}
    assert req["entrypoint_resources"] == {"learner": 1}
    assert req["metadata"]["spec"] == str(SPEC)

    default_id = json.loads(vpt_ray("submit", str(SPEC), "--dry-run").stdout)["submission_id"]
    assert default_id.startswith("crafter-wood-")

    with_dir = json.loads(vpt_ray("submit", str(SPEC), "--working-dir", str(REPO), "--dry-run").stdout)
    assert with_dir["entrypoint"] == "vpt-ray rl --task rollouts/crafter-wood.yaml"
    assert with_dir["runtime_env"]["working_dir"] == str(REPO) and ".venv" in with_dir["runtime_env"]["excludes"]


def test_submit_refuses_bad_input_before_contacting_anything(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(SPEC.read_text().replace("max_steps: 200", "max_steps: lots"))
    cases = [
        ((str(bad),), "bad.yaml"),
        ((str(tmp_path / "missing.yaml"),), "missing.yaml"),
        ((), "give a task SPEC, or a --command"),
        (("--command", "cat {task}"), "uses {task} but no SPEC"),
        ((str(SPEC), "--env", "NOEQUALS"), "expected KEY=VALUE"),
        ((str(SPEC), "--job-id", "a b"), "use letters, digits"),
        ((str(SPEC), "--working-dir", str(tmp_path)), "is not inside --working-dir"),
        (("--command", "true", "--init", "/c"), "--init goes with the default RL entrypoint"),
    ]
    for args, message in cases:
        # An unroutable address: any attempt to submit would fail differently.
        out = vpt_ray("submit", *args, "--address", "http://127.0.0.1:9")
        assert out.returncode != 0 and message in out.stderr, (args, out.stderr)


def test_submit_keeps_secrets_out_of_the_job_and_its_output(tmp_path):
    # runtime_env and the entrypoint are readable by every Jobs API client: a secret there is refused, and never
    # printed (not even by --dry-run).
    cases = [
        (("--env", "VPT_LEDGER=redis://:hunter2@10.0.0.5:6380/0"), "--env VPT_LEDGER: its value is a URL with a password"),
        (("--env", "WANDB_API_KEY=hunter2"), "--env WANDB_API_KEY: its value is a secret (by its name)"),
        (("--env", "HF_TOKEN=hunter2"), "--env HF_TOKEN: its value is a secret"),
        (("--command", "vpt-ray status --ledger redis://:hunter2@h:1/0"), "holds a URL with a password"),
    ]
    for args, message in cases:
        for dry in ((), ("--dry-run",)):
            out = vpt_ray("submit", str(SPEC), *args, *dry, "--address", "http://127.0.0.1:9")
            assert out.returncode != 0 and message in out.stderr, (args, out.stderr)
            assert "VPT_LEDGER_FILE=PATH" in out.stderr and "hunter2" not in out.stdout + out.stderr
    # The way that works: the job reads the URL from a file on the cluster.
    ok = vpt_ray("submit", str(SPEC), "--env", "VPT_LEDGER_FILE=/home/ray/.vpt_ray/other_ledger", "--dry-run",
                 "--address", "https://me:hunter2@jobs.example:8443")  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    request = json.loads(ok.stdout)
    assert request["runtime_env"]["env_vars"]["VPT_LEDGER_FILE"] == "/home/ray/.vpt_ray/other_ledger"
    assert request["address"] == "https://me:***@jobs.example:8443" and "hunter2" not in ok.stdout


# --------------------------------------------------------------------------------- a real Jobs API server


@pytest.fixture(scope="module")
def jobs_api():
    """A one-CPU Ray head with the dashboard on loopback, on ports of its own; stopped by pid."""
    tmp = tempfile.mkdtemp(prefix="vptjob", dir="/tmp")
    port, dash = _free_port(), _free_port()
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    ports = {"--port": port, "--dashboard-port": dash, "--ray-client-server-port": _free_port(),
             "--dashboard-agent-listen-port": _free_port(), "--dashboard-agent-grpc-port": _free_port(),
             "--metrics-export-port": _free_port(), "--runtime-env-agent-port": _free_port()}
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", f"--temp-dir={tmp}", "--include-dashboard=true",
         "--dashboard-host=127.0.0.1", "--num-cpus=1", "--object-store-memory=100000000",
         "--disable-usage-stats", *(f"{k}={v}" for k, v in ports.items())],
        env=env, stdout=open(Path(tmp) / "head.log", "w"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    address = f"http://127.0.0.1:{dash}"
    # The head checks Ray's token (conftest: RAY_AUTH_MODE=token, the session's token file) on HTTP too.
    token = os.environ.get("RAY_AUTH_TOKEN") or Path(os.environ["RAY_AUTH_TOKEN_PATH"]).read_text().strip()
    version = urllib.request.Request(f"{address}/api/version", headers={"Authorization": f"Bearer {token}"})
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(version, timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if head.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Ray head did not serve the Jobs API: {(Path(tmp) / 'head.log').read_text()[-3000:]}")
            time.sleep(1)
        yield address
    finally:
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        leftovers = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if tmp.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                        leftovers.append(int(entry))
                except OSError:
                    pass
        for pid in leftovers:
            os.kill(pid, signal.SIGKILL)
        subprocess.run(["rm", "-rf", tmp], check=False)
        assert not leftovers, f"processes of the test head still running: {leftovers}"


@pytest.mark.slow
def test_submit_follow_jobs_and_logs(jobs_api, tmp_path):
    ledger_path = tmp_path / "ledger.sqlite"
    # The job reads the spec that travelled with it and records its run in the ledger under $VPT_RUN_ID.
    program = (
        "import os, sys, yaml; from vpt_ray.ledger import open_ledger; "
        "spec = yaml.safe_load(open(sys.argv[1])); "
        "open_ledger().register_run(os.environ['VPT_RUN_ID'], 'rl', spec, os.getcwd()); "
        "print('ran task', spec['name'], 'as', os.environ['VPT_RUN_ID'])"
    )
    out = vpt_ray("submit", str(SPEC), "--command", f'python -c "{program}" {{task}}', "--job-id", "job-ok",
                  "--env", f"VPT_LEDGER={ledger_path}", "--follow", "--address", jobs_api)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "submitted job-ok" in out.stdout and "ran task crafter-wood as job-ok" in out.stdout
    assert "job job-ok: SUCCEEDED" in out.stderr
    with open_ledger(ledger_path) as ledger:
        run = ledger.get_run("job-ok")
        assert run.kind == "rl" and run.spec["name"] == "crafter-wood"

    failed = vpt_ray("submit", "--command", "python -c 'import sys; print(\"boom\"); sys.exit(3)'",
                     "--job-id", "job-bad", "--follow", "--address", jobs_api)
    assert failed.returncode == 1 and "boom" in failed.stdout and "job job-bad: FAILED" in failed.stderr

    listing = vpt_ray("jobs", "--address", jobs_api)
    assert listing.returncode == 0, listing.stderr
    rows = {line.split()[0]: line.split()[1] for line in listing.stdout.splitlines()[1:]}
    assert rows == {"job-ok": "SUCCEEDED", "job-bad": "FAILED"}
    as_json = json.loads(vpt_ray("jobs", "--json", "--address", jobs_api).stdout)
    assert [j["id"] for j in as_json] == ["job-ok", "job-bad"]
    assert as_json[0]["entrypoint"].endswith(" task.yaml")

    logs = vpt_ray("logs", "job-ok", "--address", jobs_api)
    assert logs.returncode == 0 and "ran task crafter-wood as job-ok" in logs.stdout
    assert vpt_ray("logs", "job-bad", "--follow", "--address", jobs_api).returncode == 1
    missing = vpt_ray("logs", "nope", "--address", jobs_api)
    assert missing.returncode == 1 and "no job 'nope'" in missing.stderr

    duplicate = vpt_ray("submit", "--command", "true", "--job-id", "job-ok", "--address", jobs_api)
    assert duplicate.returncode == 1 and "refused the job" in duplicate.stderr


@pytest.mark.slow
def test_the_jobs_api_refuses_clients_without_the_token(jobs_api, tmp_path):
    # Ray's token guards the Jobs API (HTTP) as it guards the GCS: no header, no jobs.
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{jobs_api}/api/jobs/", timeout=10)
    assert refused.value.code == 401
    wrong = tmp_path / "wrong_token"
    wrong.write_text("0" * 64)
    for env in ({"RAY_AUTH_TOKEN_PATH": str(wrong)}, {"RAY_AUTH_MODE": "disabled"}):
        out = vpt_ray("jobs", "--address", jobs_api, env=env)
        assert out.returncode != 0 and "SUCCEEDED" not in out.stdout, out.stdout + out.stderr
        assert "refused this client: it needs the cluster's token" in out.stderr, out.stderr
        assert "Traceback" not in out.stderr, out.stderr
    token = os.environ.get("RAY_AUTH_TOKEN") or Path(os.environ["RAY_AUTH_TOKEN_PATH"]).read_text().strip()
    assert token not in out.stdout + out.stderr


def test_unreachable_jobs_api_says_how_to_reach_it():
    out = vpt_ray("jobs", "--address", f"http://127.0.0.1:{_free_port()}")
    assert out.returncode != 0 and "ray dashboard cluster/vpt.yaml" in out.stderr
