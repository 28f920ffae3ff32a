"""The run ledger: one suite, run on both backends (SQLite file and a real redis-server)."""

from __future__ import annotations

import contextlib
import logging
import re
import sqlite3
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from vpt_ray.ledger import LedgerError, LedgerUnavailable, open_ledger, redact_url

SPEC = {"name": "crafter_diamond", "rl": {"env_runners": 2, "kl_coef": 0.2}, "items": ["wood", "table"]}


@pytest.fixture(params=["sqlite", "redis"])
def backend(request, tmp_path):
    """(location, outage) for one backend; ``outage()`` makes the store refuse writes for its duration."""
    if request.param == "sqlite":
        path = tmp_path / "ledger.sqlite"

        @contextlib.contextmanager
        def outage():
            # Another process holding the write lock past our timeout is SQLite's outage.
            blocker = sqlite3.connect(path, isolation_level=None)
            blocker.execute("BEGIN EXCLUSIVE")
            try:
                yield
            finally:
                blocker.execute("ROLLBACK")
                blocker.close()

        return str(path), outage

    server = request.getfixturevalue("redis_server")

    @contextlib.contextmanager
    def outage():
        server.stop(save=True)
        try:
            yield
        finally:
            server.restart()

    return server.url, outage


def _open(location, **kw):
    kw.setdefault("timeout_s", 0.3)
    kw.setdefault("retry_interval_s", 0.05)
    return open_ledger(location, **kw)


def test_run_lifecycle(backend):
    location, _ = backend
    with _open(location) as ledger:
        assert ledger.get_run("r1") is None
        ledger.register_run("r1", "rl", SPEC, "/runs/r1")
        run = ledger.get_run("r1")
        assert (run.kind, run.spec, run.run_dir, run.status, run.iteration) == ("rl", SPEC, "/runs/r1", "pending", None)
        assert run.created_at == run.updated_at and not run.stale

        items = {"wood": 0.98, "table": 0.5, "wooden_pickaxe": 0.25, "stone": 0.0}
        ledger.update_run("r1", status="running", iteration=3, checkpoint="/runs/r1/ckpt_3",
                          items=items, metrics={"kl": np.float32(0.5), "fps": np.int64(1200)})
        run = ledger.get_run("r1")
        assert (run.status, run.iteration, run.checkpoint) == ("running", 3, "/runs/r1/ckpt_3")
        assert list(run.items) == list(items) and run.items == items  # the task's item order survives
        assert run.metrics == {"kl": 0.5, "fps": 1200} and type(run.metrics["fps"]) is int
        assert run.updated_at >= run.created_at

        # A second process opening the same location sees the same record.
        with _open(location) as other:
            assert other.get_run("r1") == run

        # Re-registering (a resumed job) refreshes the spec but keeps progress.
        ledger.register_run("r1", "rl", {**SPEC, "name": "v2"}, "/runs/r1")
        again = ledger.get_run("r1")
        assert again.spec["name"] == "v2" and again.iteration == 3 and again.status == "running"
        assert again.created_at == run.created_at


def test_list_runs_filters_by_kind_oldest_first(backend):
    location, _ = backend
    with _open(location) as ledger:
        assert ledger.list_runs() == []
        ledger.register_run("idm-1", "idm", {}, "/r/idm-1")
        ledger.register_run("rl-1", "rl", SPEC, "/r/rl-1")
        ledger.register_run("rl-2", "rl", SPEC, "/r/rl-2")
        assert [r.run_id for r in ledger.list_runs()] == ["idm-1", "rl-1", "rl-2"]
        assert [r.run_id for r in ledger.list_runs(kind="rl")] == ["rl-1", "rl-2"]
        assert ledger.list_runs(kind="bc") == []


def test_desired_env_runners_are_not_overwritten_by_job_updates(backend):
    location, _ = backend
    with _open(location) as job, _open(location) as cli:
        job.register_run("r1", "rl", SPEC, "/r")
        assert job.get_desired_env_runners("r1") is None
        cli.set_desired_env_runners("r1", 8)
        job.update_run("r1", iteration=1, status="running")
        assert job.get_desired_env_runners("r1") == 8
        cli.set_desired_env_runners("r1", 2)
        assert job.get_desired_env_runners("r1") == 2
        for bad in (0, -1, 2.5, True):
            with pytest.raises(LedgerError, match="integer >= 1"):
                cli.set_desired_env_runners("r1", bad)
        with pytest.raises(LedgerError, match="'nope' is not registered"):
            cli.set_desired_env_runners("nope", 4)


def test_bad_updates_are_refused_naming_the_field(backend):
    location, _ = backend
    with _open(location) as ledger:
        with pytest.raises(LedgerError, match="'ghost' is not registered"):
            ledger.update_run("ghost", iteration=1)
        ledger.register_run("r1", "rl", SPEC, "/r")
        with pytest.raises(LedgerError, match="unknown field 'desired_env_runners'"):
            ledger.update_run("r1", desired_env_runners=3)
        with pytest.raises(LedgerError, match="status 'done' is not one of"):
            ledger.update_run("r1", status="done")
        with pytest.raises(LedgerError, match="iteration must be an integer"):
            ledger.update_run("r1", iteration="3")
        with pytest.raises(LedgerError, match="field 'metrics': cannot store a object"):
            ledger.update_run("r1", metrics={"x": object()})
        assert ledger.get_run("r1").iteration is None and ledger.list_runs()[0].run_id == "r1"


def test_mark_done_is_atomic_and_idempotent(backend):
    location, _ = backend
    with _open(location) as ledger:
        assert ledger.done_keys("label-1") == set()
        assert ledger.mark_done("label-1", "video_000", {"shard": "s0", "frames": 1200}) is True
        assert ledger.mark_done("label-1", "video_000", {"shard": "s9", "frames": 1}) is False
        assert ledger.done_info("label-1", "video_000") == {"shard": "s0", "frames": 1200}  # first writer wins
        assert ledger.is_done("label-1", "video_000") and not ledger.is_done("label-1", "video_001")
        assert not ledger.is_done("label-2", "video_000")  # jobs are separate
        ledger.mark_done("label-1", "video_001")
        keys = ledger.done_keys("label-1")
        assert keys == {"video_000", "video_001"} and not keys.stale
        with pytest.raises(LedgerError, match="info must be a mapping"):
            ledger.mark_done("label-1", "video_002", ["x"])


WORKER = textwrap.dedent(
    """
    import sys
    from vpt_ray.ledger import open_ledger
    location, worker = sys.argv[1], int(sys.argv[2])
    with open_ledger(location, timeout_s=30) as ledger:
        ledger.register_run(f"w{worker}", "label", {}, "/r")
        won = 0
        for i in range(60):
            won += ledger.mark_done("race", f"video_{i:03d}", {"worker": worker})
            ledger.update_run(f"w{worker}", iteration=i)
    print(won)
    """
)


def test_concurrent_processes_mark_each_key_exactly_once(backend):
    location, _ = backend
    with _open(location):  # create the store first so the workers race only on the marks
        pass
    procs = [
        subprocess.Popen([sys.executable, "-c", WORKER, location, str(w)], stdout=subprocess.PIPE, text=True)
        for w in range(3)
    ]
    won = [int(p.communicate(timeout=120)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sum(won) == 60  # every key won by exactly one process
    with _open(location) as ledger:
        assert len(ledger.done_keys("race")) == 60
        winners = [ledger.done_info("race", f"video_{i:03d}")["worker"] for i in range(60)]
        assert sorted(winners.count(w) for w in range(3)) == sorted(won)
        assert [ledger.get_run(f"w{w}").iteration for w in range(3)] == [59, 59, 59]


def test_writes_survive_an_outage_and_replay(backend):
    location, outage = backend
    job = _open(location)
    job.register_run("r1", "rl", SPEC, "/r")
    job.update_run("r1", status="running", iteration=1)
    job.mark_done("label", "a", {"n": 1})
    with outage():
        # The writer keeps going: nothing raises, the writes are queued and coalesced per record.
        job.update_run("r1", iteration=2, items={"wood": 0.5})
        job.update_run("r1", iteration=3, checkpoint="/r/ckpt_3")
        assert job.mark_done("label", "b", {"n": 2}) is True
        assert job.mark_done("label", "b", {"n": 3}) is False  # already queued here
        assert job.mark_done("label", "a", {"n": 4}) is False  # known done here
        assert job.pending == 2
        # Reads answer from this process's copy plus its queued writes, and say they may be stale.
        run = job.get_run("r1")
        assert run.stale and (run.iteration, run.checkpoint, run.items) == (3, "/r/ckpt_3", {"wood": 0.5})
        keys = job.done_keys("label")
        assert keys == {"a", "b"} and keys.stale
        assert job.is_done("label", "b")
        runs = job.list_runs()
        assert [r.run_id for r in runs] == ["r1"] and runs.stale and runs[0].stale
    # Back up: the next operation replays the queue in order.
    assert job.flush() == 0 and job.available
    with _open(location) as other:
        run = other.get_run("r1")
        assert not run.stale
        assert (run.status, run.iteration, run.checkpoint, run.items) == ("running", 3, "/r/ckpt_3", {"wood": 0.5})
        assert other.done_keys("label") == {"a", "b"}
        assert other.done_info("label", "b") == {"n": 2}
    job.update_run("r1", iteration=4)
    assert job.get_run("r1").iteration == 4 and not job.get_run("r1").stale
    job.close()


def test_outage_queue_is_bounded(backend, caplog):
    location, outage = backend
    job = _open(location, max_pending=3)
    job.register_run("r1", "rl", SPEC, "/r")
    with outage():
        for i in range(5):
            job.mark_done("label", f"k{i}")
        for i in range(4):
            job.update_run("r1", iteration=i)  # coalesced into one entry, which pushes out one more mark
        assert job.pending == 3 and job.dropped == 3
        assert "outage queue full" in caplog.text
    assert job.flush() == 0
    assert job.done_keys("label") == {"k3", "k4"} and job.get_run("r1").iteration == 3
    job.close()


def test_replay_orders_after_reconnect_without_explicit_flush(backend):
    location, outage = backend
    job = _open(location)
    job.register_run("r1", "rl", SPEC, "/r")
    with outage():
        job.update_run("r1", iteration=5)
    # No flush: once the retry backoff (0.05 s here) has passed, the next ordinary write replays the queue
    # first, then writes.
    time.sleep(0.1)
    job.update_run("r1", status="succeeded")
    assert job.pending == 0
    run = job.get_run("r1")
    assert (run.iteration, run.status, run.stale) == (5, "succeeded", False)
    job.close()


# ------------------------------------------------------------------------------------------ Redis only


def test_redis_restarted_empty_gets_the_run_back_from_its_writer(redis_server):
    job = _open(redis_server.url)
    job.register_run("r1", "rl", SPEC, "/r")
    job.update_run("r1", status="running", iteration=7, items={"wood": 1.0})
    redis_server.stop(save=False)  # no snapshot: the server comes back empty
    job.update_run("r1", iteration=8)
    redis_server.restart()
    assert job.flush() == 0
    with _open(redis_server.url) as other:
        run = other.get_run("r1")
        assert (run.kind, run.spec, run.status, run.iteration, run.items) == ("rl", SPEC, "running", 8, {"wood": 1.0})
    job.close()


def test_redis_down_reader_without_a_copy_says_unavailable(redis_server):
    with _open(redis_server.url) as job:
        job.register_run("r1", "rl", SPEC, "/r")
    reader = _open(redis_server.url)
    redis_server.stop()
    with pytest.raises(LedgerUnavailable, match="unreachable and run 'r1' is not known here"):
        reader.get_run("r1")
    assert reader.get_desired_env_runners("r1") is None  # the job keeps its count
    assert not reader.available
    keys = reader.done_keys("label")
    assert keys == set() and keys.stale
    runs = reader.list_runs()
    assert runs == [] and runs.stale
    redis_server.restart()
    reader.close()


def test_redis_password_is_never_logged(redis_server, caplog):
    caplog.set_level(logging.DEBUG)
    password = redis_server.password
    ledger = _open(redis_server.url)
    assert password not in repr(ledger) and password not in ledger.location
    ledger.register_run("r1", "rl", SPEC, "/r")
    redis_server.stop()
    ledger.update_run("r1", iteration=1)
    with pytest.raises(LedgerUnavailable) as err:
        ledger.get_run("r2")
    assert password not in str(err.value)
    redis_server.restart()
    ledger.flush()
    ledger.close()
    assert "unreachable" in caplog.text and "reachable again" in caplog.text
    assert password not in caplog.text and ":***@127.0.0.1" in caplog.text

    wrong = redis_server.url.replace(password, "not-the-password")
    with pytest.raises(LedgerError, match="refused the password") as err:
        open_ledger(wrong).list_runs()
    assert "not-the-password" not in str(err.value)
    no_password = f"redis://127.0.0.1:{redis_server.port}/0"
    with pytest.raises(LedgerError, match="needs a password"):
        open_ledger(no_password).list_runs()


def test_locations(tmp_path, monkeypatch):
    assert redact_url("redis://:s3cret@10.0.0.5:6379/0") == "redis://:***@10.0.0.5:6379/0"
    assert redact_url("redis://ledger:s3cret@h:1/0") == "redis://ledger:***@h:1/0"
    assert redact_url("redis://h:6379/0") == "redis://h:6379/0"
    monkeypatch.setenv("VPT_LEDGER", str(tmp_path / "env.sqlite"))
    with open_ledger() as ledger:
        assert ledger.location == str(tmp_path / "env.sqlite")
    with open_ledger(f"sqlite:///{tmp_path}/u.sqlite") as ledger:
        assert ledger.location == f"{tmp_path}/u.sqlite"
    with pytest.raises(LedgerError, match="no ledger at .*missing.sqlite"):
        open_ledger(tmp_path / "missing.sqlite", create=False)
    with pytest.raises(LedgerError, match="expected redis://"):
        open_ledger("http://:pw@host/x")
    with pytest.raises(LedgerError, match="not both"):
        open_ledger("a", path="b")


def test_check_location_refuses_malformed_locations_without_opening_anything(tmp_path):
    from vpt_ray.ledger import check_location

    good = ["redis://:pw@127.0.0.1:6379/0", "rediss://h:6380/2", "redis://h", "redis://[::1]:6379/0",
            "unix:///run/redis.sock", "sqlite:///tmp/x.sqlite", "ledger.sqlite", "/abs/l.db", "~/l.sqlite3"]  # fmt: skip
    for location in good:
        assert check_location(location) == location
    bad = {
        "not a url": "must end in .sqlite/.sqlite3/.db",
        "redis:/127.0.0.1:6379/0": "did you mean redis://",
        "redis//127.0.0.1": "no ':' after the scheme",
        "garbage://x": "expected redis://",
        "redis://:pw@/0": "no host",
        "redis://h:99999/0": "the port is not a number in 0-65535",
        "redis://h:6379/zero": "database 'zero' is not a number",
        "unix://": "needs the socket's path",
        "sqlite:///tmp/x": "must end in",
    }
    for location, message in bad.items():
        with pytest.raises(LedgerError, match=re.escape(message)) as e:
            check_location(location)
        assert "pw" not in str(e.value)
        with pytest.raises(LedgerError, match=re.escape(message)):
            open_ledger(location)
    assert list(tmp_path.iterdir()) == []


def test_the_location_can_come_from_a_file(tmp_path, monkeypatch, redis_server):
    url_file = tmp_path / "ledger_url"
    url_file.write_text(redis_server.url + "\n")
    monkeypatch.setenv("VPT_LEDGER", str(tmp_path / "env.sqlite"))  # the file wins over the variable
    monkeypatch.setenv("VPT_LEDGER_FILE", str(url_file))
    with open_ledger() as ledger:
        ledger.register_run("from-file", "rl", {}, "/r")
        assert redis_server.password not in ledger.location
    with open_ledger(redis_server.url) as ledger:
        assert ledger.get_run("from-file") is not None
    assert not (tmp_path / "env.sqlite").exists()
    url_file.write_text("")
    with pytest.raises(LedgerError, match="VPT_LEDGER_FILE .*: expected one line holding the ledger location"):
        open_ledger()
    monkeypatch.setenv("VPT_LEDGER_FILE", str(tmp_path / "missing"))
    with pytest.raises(LedgerError, match="cannot read the ledger location"):
        open_ledger()


def test_opening_without_create_never_initialises_a_file(tmp_path):
    empty = tmp_path / "empty.sqlite"
    empty.touch()
    with pytest.raises(LedgerError, match="an empty file, not a SQLite database"):
        open_ledger(empty, create=False)
    assert empty.stat().st_size == 0
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE notes (x TEXT)")
    with pytest.raises(LedgerError, match=r"not a vpt_ray ledger \(tables: \['notes'\]\)"):
        open_ledger(other, create=False)
    with sqlite3.connect(other) as db:
        assert [r[0] for r in db.execute("SELECT name FROM sqlite_master")] == ["notes"]
    with open_ledger(empty) as ledger:  # create=True (a writer) makes it a ledger
        ledger.register_run("a", "rl", {}, "/r")
    with open_ledger(empty, create=False) as ledger:
        assert ledger.get_run("a") is not None
