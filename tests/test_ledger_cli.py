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


def test_scale_refuses_runs_that_never_read_it_and_counts_above_the_spec(tmp_path):
    db = str(tmp_path / "ledger.sqlite")
    with open_ledger(db) as ledger:
        ledger.register_run("idm-2", "idm", {"model": "crafter-idm-small"}, "/runs/idm-2")
        ledger.update_run("idm-2", status="running", iteration=3)
        ledger.register_run("rl-2", "rl", {"name": "crafter-wood", "rl": {"scale": {"env_runners": 8}}}, "/runs/rl-2")
        ledger.update_run("rl-2", status="running", iteration=1)
    idm = vpt_ray("scale", "idm-2", "--env-runners", "4", "--ledger", db)
    assert idm.returncode == 1 and "'idm-2' is a 'idm' run: only RL runs (`vpt-ray rl`) read" in idm.stderr, idm.stderr
    assert "applied" not in idm.stdout
    huge = vpt_ray("scale", "rl-2", "--env-runners", "100000", "--ledger", db)
    assert huge.returncode == 1, huge.stdout
    assert "--env-runners 100000: above the run's maximum, rl.scale.env_runners = 8" in huge.stderr, huge.stderr
    assert vpt_ray("scale", "rl-2", "--env-runners", "8", "--ledger", db).returncode == 0
    with open_ledger(db) as ledger:
        assert ledger.get_desired_env_runners("idm-2") is None and ledger.get_desired_env_runners("rl-2") == 8


@pytest.mark.parametrize("location, message", [
    ("not a url", "a SQLite file path must end in .sqlite/.sqlite3/.db"),
    ("redis:/127.0.0.1:6379/0", "a malformed URL (did you mean redis://...?)"),
    ("redis//127.0.0.1", "a malformed URL (no ':' after the scheme)"),
    ("redis://:s3cret@127.0.0.1:port/0", "the port is not a number"),
])  # fmt: skip
def test_malformed_ledger_locations_are_refused_and_nothing_is_created(tmp_path, location, message):
    for command in (("status",), ("scale", "rl-1", "--env-runners", "2")):
        out = subprocess.run([str(Path(sys.executable).parent / "vpt-ray"), *command], capture_output=True, text=True,
                             env={**os.environ, "VPT_LEDGER": location}, cwd=tmp_path, timeout=60)  # fmt: skip
        assert out.returncode == 1 and message in out.stderr, out.stderr
        assert "s3cret" not in out.stderr and "Traceback" not in out.stderr
    assert list(tmp_path.iterdir()) == []  # no relative SQLite file appeared


def test_read_only_commands_never_turn_a_file_into_a_ledger(tmp_path):
    empty, text = tmp_path / "empty.sqlite", tmp_path / "notes.db"
    empty.touch()
    text.write_text("not a database\n" * 100)
    for path, message in ((empty, "an empty file, not a SQLite database"), (text, "not a SQLite database")):
        before = path.read_bytes()
        for command in (("status",), ("status", "rl-1"), ("scale", "rl-1", "--env-runners", "2")):
            out = vpt_ray(*command, "--ledger", str(path))
            assert out.returncode == 1 and message in out.stderr, out.stderr
        assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["empty.sqlite", "notes.db"]


def test_status_into_a_closed_pipe_stops_quietly(tmp_path):
    db = tmp_path / "ledger.sqlite"
    with open_ledger(db) as ledger:
        for i in range(3000):  # more than a pipe buffer of table
            ledger.register_run(f"run-{i:04d}", "rl", {"name": "crafter-wood"}, f"/runs/run-{i:04d}")
    script = Path(sys.executable).parent / "vpt-ray"
    piped = subprocess.run(f"'{script}' status --ledger '{db}' | head -n 2", shell=True, capture_output=True,
                           text=True, timeout=120)  # fmt: skip
    assert piped.stdout.splitlines()[1].startswith("run-0000")
    assert "Traceback" not in piped.stderr and "BrokenPipeError" not in piped.stderr, piped.stderr
