"""The node types of cluster/vpt.yaml on a local autoscaling cluster (Ray's fake multi-node provider).

Rollout nodes must appear when a job asks for actors that need the `rollout` resource and disappear once those
actors are gone; nothing else (the GPU learner) may be started for them. Every node is a set of real Ray
processes on this machine; all of them are stopped by pid at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
FAKE_PROVIDER = "ray.autoscaler._private.fake_multi_node.node_provider.FakeMultiNodeProvider"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pids_mentioning(text: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if text.encode() in cmdline:
                pids.append(int(entry))
    return pids


def fake_cluster_config(cluster_yaml: Path, gcs_address: str, max_per_type: int = 2) -> dict:
    """vpt.yaml's node types, each shrunk to one CPU (custom resources kept, counts set to 1), on the fake
    provider; min/max workers as in the file but at most ``max_per_type`` per type so the test stays light."""
    cfg = yaml.safe_load(cluster_yaml.read_text())
    types = {}
    for name, t in cfg["available_node_types"].items():
        if name == cfg["head_node_type"]:
            continue
        custom = {k: 1 for k in t["resources"] if k not in ("CPU", "GPU", "memory")}
        types[name] = {
            "resources": {"CPU": 1, **custom, "object_store_memory": 80 * 1024**2},
            "node_config": {},
            "min_workers": t.get("min_workers", 0),
            "max_workers": min(t.get("max_workers", 0), max_per_type),
        }
    types["ray.head.default"] = {"resources": {}, "node_config": {}, "max_workers": 0}
    return {
        "cluster_name": "vpt-fake",
        "max_workers": 4,
        "upscaling_speed": cfg["upscaling_speed"],
        "idle_timeout_minutes": 0.1,  # 6 s instead of minutes
        "provider": {
            # "external" + module: the same provider as type fake_multinode, without needing its defaults file.
            "type": "external",
            "module": FAKE_PROVIDER,
            "gcs_address": gcs_address,
            "use_node_id_as_ip": True,  # every fake node shares this machine's IP
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
        },
        "auth": {"ssh_user": "ray"},
        "available_node_types": types,
        "head_node_type": "ray.head.default",
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


@contextlib.contextmanager
def fake_autoscaling_cluster(head_cpus: int = 1, max_per_type: int = 2):
    """Start the fake autoscaling cluster (own ports, own temp dir), connect this process to it and yield
    ``(ray, gcs_address)``; on exit every process of the cluster is stopped by pid (and checked gone)."""
    import ray
    import ray._private.services as services

    if ray.is_initialized():
        ray.shutdown()
    # A short temp dir: Ray's unix socket paths must stay under ~107 characters.
    tmp = tempfile.mkdtemp(prefix="vptas", dir="/tmp")
    port = _free_port()
    address = f"{services.get_node_ip_address()}:{port}"
    config_path = Path(tmp) / "autoscaling.json"
    config_path.write_text(json.dumps(fake_cluster_config(REPO / "cluster" / "vpt.yaml", address, max_per_type)))
    ray_exe = Path(sys.executable).parent / "ray"
    env = {**os.environ, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}
    # Our own ports for every fixed-port service, so other Ray clusters on this machine are left alone;
    # --block keeps `ray start` in the foreground so this one pid owns the head's processes.
    head = subprocess.Popen(
        [str(ray_exe), "start", "--head", "--block", f"--port={port}", f"--temp-dir={tmp}",
         "--include-dashboard=false", f"--ray-client-server-port={_free_port()}",
         f"--dashboard-agent-listen-port={_free_port()}", f"--num-cpus={head_cpus}", "--object-store-memory=100000000",
         f"--autoscaling-config={config_path}", "--disable-usage-stats"],
        env=env, stdout=open(Path(tmp) / "head.log", "w"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                # A connect attempt before the GCS listens costs ray.init 10 s: wait for the port first.
                socket.create_connection((address.rsplit(":", 1)[0], port), timeout=1).close()
                ray.init(address=address, log_to_driver=False, configure_logging=False)
                break
            except Exception:
                if head.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"head did not start: {(Path(tmp) / 'head.log').read_text()[-3000:]}") from None
                time.sleep(1)
        yield ray, address
    finally:
        if ray.is_initialized():
            ray.shutdown()
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait()
        # Fake worker nodes are started by the autoscaler, not as children of `ray start`: find what is left
        # of this cluster by its temp dir and stop it by pid.
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = _pids_mentioning(tmp)
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            if pids:
                time.sleep(2)
        leftovers = _pids_mentioning(tmp)
        subprocess.run(["rm", "-rf", tmp], check=False)
        assert not leftovers, f"processes of the test cluster still running: {leftovers}"


@pytest.fixture
def autoscaling_cluster():
    with fake_autoscaling_cluster() as (ray, _):
        yield ray


def _node_types(ray) -> list[str]:
    """Alive worker nodes, named by the custom resource that marks their type."""
    out = []
    for node in ray.nodes():
        if node["Alive"] and "node:__internal_head__" not in node["Resources"]:
            res = node["Resources"]
            out.append("rollout" if "rollout" in res else "learner" if "learner" in res else "other")
    return sorted(out)


def _wait(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


@pytest.mark.slow
def test_rollout_nodes_scale_up_for_actors_and_down_when_idle(autoscaling_cluster):
    ray = autoscaling_cluster
    assert _node_types(ray) == []  # rollout types start at 0 workers

    @ray.remote(num_cpus=1, resources={"rollout": 1})
    class EnvRunner:
        def node(self) -> str:
            return ray.get_runtime_context().get_node_id()

    runners = [EnvRunner.remote() for _ in range(2)]
    nodes = ray.get([r.node.remote() for r in runners], timeout=180)
    assert len(set(nodes)) == 2  # each fake rollout node has 1 CPU: two nodes were added
    assert _node_types(ray) == ["rollout", "rollout"]  # and no learner for CPU actors

    for r in runners:
        ray.kill(r)
    del runners
    _wait(lambda: _node_types(ray) == [], 90, "idle rollout nodes to be removed")
