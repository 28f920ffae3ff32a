"""cluster/*.yaml: valid for `ray up` (Ray's own schema and defaults), and the topology/security choices hold."""

from __future__ import annotations

import copy
import re
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "cluster").glob("*.yaml"))
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def test_both_providers_are_covered():
    assert [p.name for p in CONFIGS] == ["vpt-gcp.yaml", "vpt.yaml"]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_validates_like_ray_up(path):
    # `ray up` -> commands._bootstrap_config -> prepare_config (fills the provider's defaults) -> validate_config
    # (jsonschema against ray/autoscaler/ray-schema.json plus Ray's own cross-field checks).
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(load(path)))
    validate_config(prepared)
    assert prepared["head_node_type"] == "head"


def test_schema_check_really_refuses_mistakes():
    from ray.autoscaler._private.util import prepare_config, validate_config

    bad = load(REPO / "cluster" / "vpt.yaml")
    bad["available_node_types"]["cpu_rollout"]["resources"]["rollout"] = "64"  # must be an integer
    with pytest.raises(Exception, match="is not of type 'integer'"):
        validate_config(prepare_config(bad))
    bad = load(REPO / "cluster" / "vpt.yaml")
    bad["available_node_types"]["cpu_rollout"]["min_worker"] = 1  # typo
    with pytest.raises(Exception, match="Additional properties are not allowed"):
        validate_config(prepare_config(bad))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_topology(path):
    cfg = load(path)
    types = cfg["available_node_types"]
    assert types["head"]["resources"] == {"CPU": 0}  # nothing heavy lands on the head
    rollout = {name: t for name, t in types.items() if "rollout" in t["resources"]}
    assert rollout, "no node type provides the `rollout` resource"
    for name, t in rollout.items():
        assert t["min_workers"] == 0 and t["max_workers"] >= 10, name  # autoscale from 0 to many
        assert "GPU" not in t["resources"], name
        node = t["node_config"]
        spot = node.get("InstanceMarketOptions", {}).get("MarketType") == "spot" or {"preemptible": True} in node.get(
            "scheduling", []
        )
        assert spot, f"{name} should run on spot/preemptible capacity"
        # MineRL needs an X display: rollout nodes start Xvfb (their own list replaces the global setup).
        setup = t["worker_setup_commands"]
        assert setup[: len(cfg["setup_commands"])] == cfg["setup_commands"] and "Xvfb :99" in setup[-1], name
    learner = types["gpu_learner"]
    assert learner["resources"]["learner"] == 1 and learner["max_workers"] == 1
    assert learner["docker"]["worker_image"].endswith(f"/vpt-ray-learner:{VERSION}")
    assert cfg["docker"]["image"].endswith(f"/vpt-ray-rollout:{VERSION}")  # head + rollout image
    assert cfg["max_workers"] >= learner["max_workers"] + max(t["max_workers"] for t in rollout.values())


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_nothing_is_exposed_and_the_ledger_needs_a_password(path):
    cfg = load(path)
    text = path.read_text()
    assert "0.0.0.0" not in text
    assert "security_group" not in cfg["provider"]  # Ray's default group: intra-cluster + SSH only
    head = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head
    redis_cmd = next(c for c in cfg["head_start_ray_commands"] if "redis-server" in c)
    assert '--requirepass "$VPT_LEDGER_PASSWORD"' in redis_cmd and "--protected-mode yes" in redis_cmd
    assert "--appendonly yes" in redis_cmd
    bind = re.search(r"--bind (.*?) --port", redis_cmd).group(1)
    assert "hostname -I" in bind and "127.0.0.1" in bind
    # Every Ray process learns the ledger from the environment, never from a job's arguments.
    for cmds in (cfg["head_start_ray_commands"], cfg["worker_start_ray_commands"]):
        start = next(c for c in cmds if "ray start" in c)
        assert 'export VPT_LEDGER="redis://:${VPT_LEDGER_PASSWORD}@' in start
    assert cfg["file_mounts"]["/home/ray/.vpt_ray/ledger.env"] == "~/.vpt_ray/ledger.env"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_node_starts_ray_with_token_auth(path):
    cfg = load(path)
    assert "RAY_AUTH_MODE=disabled" not in path.read_text()
    # The token you created (cluster/README.md) lands where every Ray process on the node looks for it...
    assert cfg["file_mounts"]["/home/ray/.ray/auth_token"] == "~/.vpt_ray/ray_auth_token"
    assert "chmod 600" in cfg["setup_commands"][0] and "~/.ray/auth_token" in cfg["setup_commands"][0]
    # ...and Ray starts in token mode on the head and on every worker (without the file it refuses to start).
    for cmds in (cfg["head_start_ray_commands"], cfg["worker_start_ray_commands"]):
        start = next(c for c in cmds if "ray start" in c)
        assert "export RAY_AUTH_MODE=token &&" in start
        assert start.index("RAY_AUTH_MODE=token") < start.index("ray start")
    readme = (REPO / "cluster" / "README.md").read_text()
    assert "(umask 077 && openssl rand -hex 32 > ~/.vpt_ray/ray_auth_token)" in readme
    assert "RAY_AUTH_TOKEN_PATH=~/.vpt_ray/ray_auth_token" in readme


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_commands_parse_and_mounts_exist(path):
    cfg = load(path)
    keys = ["initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
            "head_start_ray_commands", "worker_start_ray_commands"]
    lists = [(key, cfg[key]) for key in keys] + [
        (f"{name}.worker_setup_commands", t["worker_setup_commands"])
        for name, t in cfg["available_node_types"].items()
        if "worker_setup_commands" in t
    ]
    for key, cmds in lists:
        for cmd in cmds:
            check = subprocess.run(["bash", "-n", "-c", cmd], capture_output=True, text=True)
            assert check.returncode == 0, f"{path.name}: {key}: {cmd!r}: {check.stderr}"
    assert (REPO / cfg["file_mounts"]["/home/ray/vpt_ray"]).resolve() == REPO
    # The repository lands where the images installed the project in editable mode.
    dockerfiles = sorted((REPO / "docker").glob("*.Dockerfile"))
    assert len(dockerfiles) == 2
    for dockerfile in dockerfiles:
        assert re.search(r'pip install .* -e "?/home/ray/vpt_ray\b', dockerfile.read_text()), dockerfile
