"""`vpt-ray status` and `vpt-ray scale`, run end to end as a user would, on both ledger backends."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vpt_ray.ledger import open_ledger

ITEMS = {"wood": 0.98, "table": 0.5, "wooden_pickaxe": 0.0, "stone": 0.0}


def vpt_ray(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    script = Path(sys.executable).parent / "vpt-ray"
    cmd = [str(script)] if script.exists() else [sys.executable, "-c", "import sys; from vpt_ray.cli import main; sys.exit(main())"]
    full_env = {k: v for k, v in os.environ.items() if k != "VPT_LEDGER"}
    full_env.update(env or {})
    return subprocess.run(cmd + list(args), capture_output=True, text=True, env=full_env, timeout=60)


@pytest.fixture(params=["sqlite", "redis"])
def location(request, tmp_path):
    if request.param == "sqlite":
        return str(tmp_path / "ledger.sqlite")
    return request.getfixturevalue("redis_server").url


@pytest.fixture
def populated(location):
    with open_ledger(location) as ledger:
        ledger.register_run("idm-1", "idm", {"preset": "idm_small"}, "/runs/idm-1")
        ledger.update_run("idm-1", status="succeeded", iteration=40, checkpoint="/runs/idm-1/final")
        ledger.register_run("rl-1", "rl", {"name": "crafter_diamond", "rl": {"env_runners": 2}}, "/runs/rl-1")
        ledger.update_run("rl-1", status="running", iteration=12, checkpoint="/runs/rl-1/ckpt_12",
                          items=ITEMS, metrics={"kl_coef": 0.19, "env_steps": 48000})
    return location


def test_status_table_and_detail(populated):
    out = vpt_ray("status", "--ledger", populated)
    assert out.returncode == 0, out.stderr
    header, idm, rl = out.stdout.splitlines()
    assert header.split()[:5] == ["RUN", "KIND", "STATUS", "ITER", "ENV"]
    assert idm.split()[:5] == ["idm-1", "idm", "succeeded", "40", "-"] and "/runs/idm-1/final" in idm
    assert rl.split()[:4] == ["rl-1", "rl", "running", "12"] and "/runs/rl-1/ckpt_12" in rl
    assert rl.endswith("2/4: wood 98% · table 50%")

    only_rl = vpt_ray("status", "--kind", "rl", "--ledger", populated).stdout
    assert "rl-1" in only_rl and "idm-1" not in only_rl

    detail = vpt_ray("status", "rl-1", "--ledger", populated)
    assert detail.returncode == 0, detail.stderr
    lines = detail.stdout.splitlines()
    assert "iteration    12" in lines and "checkpoint   /runs/rl-1/ckpt_12" in lines
    wood = next(line for line in lines if line.strip().startswith("wood "))
    table = next(line for line in lines if line.strip().startswith("table "))
    assert wood.endswith(" 98.0%") and table.endswith(" 50.0%")
    assert wood.count("█") == 29 and table.count("█") == 15  # bars of 30 cells
    assert "  kl_coef    0.19" in lines and "    env_runners: 2" in lines

    as_json = json.loads(vpt_ray("status", "rl-1", "--json", "--ledger", populated).stdout)
    assert as_json["items"] == ITEMS and as_json["iteration"] == 12 and as_json["stale"] is False

    missing = vpt_ray("status", "nope", "--ledger", populated)
    assert missing.returncode == 1 and "no run 'nope'" in missing.stderr and "idm-1, rl-1" in missing.stderr


def test_scale_sets_the_desired_env_runners(populated):
    out = vpt_ray("scale", "rl-1", "--env-runners", "6", "--ledger", populated)
    assert out.returncode == 0, out.stderr
    assert "rl-1: env runners the spec's count -> 6" in out.stdout
    with open_ledger(populated) as ledger:
        assert ledger.get_desired_env_runners("rl-1") == 6
    out = vpt_ray("scale", "rl-1", "--env-runners", "3", "--ledger", populated)
    assert "env runners 6 -> 3" in out.stdout
    rl_row = vpt_ray("status", "--ledger", populated).stdout.splitlines()[2]
    assert rl_row.split()[:5] == ["rl-1", "rl", "running", "12", "3"]

    for args, message in [
        (("rl-1", "--env-runners", "0"), "must be an integer >= 1"),
        (("ghost", "--env-runners", "2"), "no run 'ghost'"),
        (("idm-1", "--env-runners", "2"), "'idm-1' has succeeded; there is nothing to scale"),
    ]:
        bad = vpt_ray("scale", *args, "--ledger", populated)
        assert bad.returncode == 1 and message in bad.stderr, bad.stderr
    with open_ledger(populated) as ledger:
        assert ledger.get_desired_env_runners("rl-1") == 3


def test_default_ledger_location(tmp_path):
    home = tmp_path / "home"
    out = vpt_ray("status", env={"HOME": str(home)})
    assert out.returncode == 0 and "no runs yet" in out.stdout
    assert not (home / ".vpt_ray").exists()  # a read does not create the ledger
    with open_ledger(home / ".vpt_ray" / "ledger.sqlite") as ledger:
        ledger.register_run("bc-1", "bc", {}, "/r")
    assert "bc-1" in vpt_ray("status", env={"HOME": str(home)}).stdout
    env_path = tmp_path / "elsewhere.sqlite"
    with open_ledger(env_path) as ledger:
        ledger.register_run("label-1", "label", {}, "/r")
    via_env = vpt_ray("status", env={"HOME": str(home), "VPT_LEDGER": str(env_path)}).stdout
    assert "label-1" in via_env and "bc-1" not in via_env


def test_unreachable_redis_is_reported_without_the_password(redis_server):
    with open_ledger(redis_server.url) as ledger:
        ledger.register_run("rl-1", "rl", {}, "/r")
    redis_server.stop()
    env = {"VPT_LEDGER": redis_server.url}
    for args in (("status",), ("status", "rl-1"), ("scale", "rl-1", "--env-runners", "2")):
        out = vpt_ray(*args, env=env)
        assert out.returncode == 1 and "unreachable" in out.stderr, out.stderr
        assert redis_server.password not in out.stdout + out.stderr
