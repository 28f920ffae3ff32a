"""Bad starting points refused before any work: a checkpoint that does not fit the task (``check_checkpoint``),
``vpt-ray rl --init`` / ``--resume`` / ``--ledger`` / ``--iterations``, ``vpt-ray evaluate`` with broken weights.

Every refusal comes before Ray starts (the commands get an unreachable Ray address: reaching Ray would fail
differently) and before anything is written, so the corrected command runs as if the bad one never had.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
NO_RAY = "127.0.0.1:9"  # nothing listens here


def vpt_ray(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_gcs_server_port_wait_time_s": "1", **(env or {})}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([str(Path(sys.executable).with_name("vpt-ray")), *args], capture_output=True, text=True,
                          timeout=300, env=env, cwd=REPO)  # fmt: skip


def _policy(tmp_path: Path, name: str, **changes) -> Path:
    """A checkpoint of the tests' tiny RL policy (the preset ``rl_task`` writes) with ``changes`` to its config
    (``action_space``, ``img_shape``)."""
    from vpt_ray.config import from_dict
    from vpt_ray.models import ModelConfig, build_model, save_checkpoint

    config = yaml.safe_load((tmp_path / "tiny-rl-policy.yaml").read_text())
    if "img_shape" in changes:
        config["net"]["img_shape"] = changes.pop("img_shape")
    config.update(changes)
    return save_checkpoint(build_model(from_dict(ModelConfig, config)), tmp_path / name)


@pytest.fixture
def checkpoints(rl_task, tmp_path):
    """A good tiny policy for crafter-wood (``rl_task()``'s policy) and one broken copy of it per way a checkpoint
    can be wrong."""
    from vpt_ray.models import build_model, load_preset, save_checkpoint

    rl_task()
    good = _policy(tmp_path, "good")
    bad = {
        "idm": save_checkpoint(build_model(load_preset("crafter-idm-small")), tmp_path / "idm"),
        "minecraft": _policy(tmp_path, "minecraft", action_space="minecraft"),
        "frame_size": _policy(tmp_path, "small-frames", img_shape=[32, 32, 3]),
    }
    bad_yaml = shutil.copytree(good, tmp_path / "bad-yaml")
    (bad_yaml / "model.yaml").write_text((good / "model.yaml").read_text().replace("hidsize: 32", "hidsize: lots"))
    truncated = shutil.copytree(good, tmp_path / "truncated")
    weights = (good / "weights.pt").read_bytes()
    (truncated / "weights.pt").write_bytes(weights[: len(weights) // 2])
    other_weights = shutil.copytree(good, tmp_path / "other-weights")
    shutil.copy(bad["frame_size"] / "weights.pt", other_weights / "weights.pt")
    bad.update({"bad_yaml": bad_yaml, "truncated": truncated, "other_weights": other_weights})
    return good, bad


# What each broken checkpoint's refusal must name.
EXPECTED = {
    "idm": ("model.yaml: field 'kind'", "inverse dynamics model"),
    "minecraft": ("model.yaml: field 'action_space'", "'minecraft'"),
    "frame_size": ("model.yaml: field 'net.img_shape'", "[32, 32]"),
    "bad_yaml": ("model.yaml: field 'net.hidsize'", "lots"),
    "truncated": ("weights.pt: not a loadable weights file", "truncated"),
    "other_weights": ("weights.pt: weights do not fit the model", "shape mismatch"),
}


def test_check_checkpoint_names_the_file_field_and_value(checkpoints):
    from vpt_ray.config import ConfigError
    from vpt_ray.models.checkpoint import WeightsError, check_checkpoint

    good, bad = checkpoints
    fits = {"kind": "policy", "action_space": "crafter", "frame_size": (64, 64)}
    assert check_checkpoint(good, **fits).net.hidsize == 32
    for name, path in bad.items():
        with pytest.raises((ConfigError, WeightsError)) as e:
            check_checkpoint(path, **fits)
        for text in EXPECTED[name]:
            assert text in str(e.value), (name, str(e.value))
    with pytest.raises(ConfigError, match="no such directory"):
        check_checkpoint(good.parent / "nowhere", **fits)


@pytest.mark.slow
def test_rl_refuses_a_bad_init_before_ray_and_leaves_nothing_behind(rl_task, checkpoints, tmp_path):
    good, bad = checkpoints
    task = rl_task()
    out = tmp_path / "run"
    for name, path in bad.items():
        refused = vpt_ray("rl", "--task", str(task), "--init", str(path), "--out", str(out), "--address", NO_RAY)
        assert refused.returncode == 1, (name, refused.stderr)
        assert f"vpt-ray rl: --init {path}: cannot start task 'rl-test' from it" in refused.stderr, refused.stderr
        for text in EXPECTED[name]:
            assert text in refused.stderr, (name, refused.stderr)
        assert "Traceback" not in refused.stderr and not out.exists(), name
    # The corrected command gets past every check to Ray (here: unreachable), as if the bad ones never ran.
    corrected = vpt_ray("rl", "--task", str(task), "--init", str(good), "--out", str(out), "--address", NO_RAY)
    assert corrected.returncode == 1 and f"cannot connect to the Ray cluster at {NO_RAY}" in corrected.stderr, (
        corrected.stderr)
    meta = json.loads((out / "run.json").read_text())
    assert (meta["init"], meta["kl"]) == (str(good), True)
    # That start failed before training anything: the command once Ray is fixed starts over in place...
    again = vpt_ray("rl", "--task", str(task), "--no-kl", "--init", str(good), "--out", str(out), "--address", NO_RAY)
    assert f"cannot connect to the Ray cluster at {NO_RAY}" in again.stderr and "already holds" not in again.stderr
    assert json.loads((out / "run.json").read_text())["kl"] is False
    # ...while a run that trained is never overwritten: it is continued with --resume.
    (out / "progress.jsonl").write_text('{"iteration": 1}\n')
    trained = vpt_ray("rl", "--task", str(task), "--out", str(out), "--address", NO_RAY)
    assert trained.returncode == 1 and f"{out} already holds a run: continue it with `vpt-ray rl --resume" in (
        trained.stderr)


@pytest.mark.slow
def test_rl_resume_refuses_foreign_or_broken_run_dirs_before_ray(rl_task, checkpoints, tmp_path):
    good, bad = checkpoints
    task = rl_task()
    run = tmp_path / "run"
    # A real run directory, prepared by `vpt-ray rl` (which then stops at the unreachable Ray).
    first = vpt_ray("rl", "--task", str(task), "--init", str(good), "--out", str(run), "--address", NO_RAY)
    assert f"cannot connect to the Ray cluster at {NO_RAY}" in first.stderr, first.stderr
    meta = json.loads((run / "run.json").read_text())

    # Directories whose run.json `vpt-ray rl` did not write are not resumed (their checkpoints would unpickle).
    foreign = [{**meta, "checkpoint_format": "pickle"}, {"run_id": meta["run_id"], "kl": True},
               {**meta, "kl": "yes"}, [meta]]  # fmt: skip
    for i, content in enumerate(foreign):
        other = shutil.copytree(run, tmp_path / f"foreign-{i}")
        (other / "run.json").write_text(json.dumps(content))
        refused = vpt_ray("rl", "--resume", str(other), "--address", NO_RAY)
        assert refused.returncode == 1 and "run.json was not written by `vpt-ray rl`" in refused.stderr, refused.stderr
        assert "trusted like code" in refused.stderr and "Traceback" not in refused.stderr
    garbled = shutil.copytree(run, tmp_path / "garbled")
    (garbled / "run.json").write_text("{not json")
    refused = vpt_ray("rl", "--resume", str(garbled), "--address", NO_RAY)
    assert refused.returncode == 1 and "run.json: not valid JSON" in refused.stderr, refused.stderr

    # The run's initial checkpoint broke after it started: --resume says so before Ray, not from the learner.
    (good / "weights.pt").write_bytes((bad["truncated"] / "weights.pt").read_bytes())
    refused = vpt_ray("rl", "--resume", str(run), "--address", NO_RAY)
    assert refused.returncode == 1 and "its initial checkpoint" in refused.stderr, refused.stderr
    assert "weights.pt: not a loadable weights file" in refused.stderr and "Traceback" not in refused.stderr


@pytest.mark.parametrize("flags, message", [
    (("--ledger", "garbage://x"), "vpt-ray rl: --ledger / $VPT_LEDGER: ledger location 'garbage://x'"),
    (("--ledger", "redis:/127.0.0.1:6379/0"), "a malformed URL (did you mean redis://...?)"),
    (("--iterations", "0"), "--iterations must be >= 1, got 0"),
])  # fmt: skip
def test_rl_refuses_a_bad_ledger_or_iteration_count_before_anything(rl_task, tmp_path, flags, message):
    out = tmp_path / "run"
    refused = vpt_ray("rl", "--task", str(rl_task()), "--out", str(out), *flags, "--address", NO_RAY)
    assert refused.returncode == 2 and message in refused.stderr, refused.stderr
    assert not out.exists()


def test_rl_out_that_is_a_file_is_refused(rl_task, tmp_path):
    out = tmp_path / "run"
    out.write_text("not a directory")
    refused = vpt_ray("rl", "--task", str(rl_task()), "--out", str(out), "--address", NO_RAY)
    assert refused.returncode == 1 and f"--out {out}: exists and is not a directory" in refused.stderr, refused.stderr
    assert out.read_text() == "not a directory"


def test_evaluate_refuses_missing_or_truncated_weights_before_ray(checkpoints, tmp_path):
    good, bad = checkpoints
    missing = shutil.copytree(good, tmp_path / "missing-weights")
    (missing / "weights.pt").unlink()
    for path, text in ((bad["truncated"], "weights.pt: not a loadable weights file"),
                       (missing, "weights.pt: no such weights file")):  # fmt: skip
        out = vpt_ray("evaluate", "--task", "crafter-wood", "--agent", f"p={path}", "--episodes", "2",
                      "--workers", "1", "--address", NO_RAY)  # fmt: skip
        assert out.returncode == 1 and text in out.stderr, out.stderr
        assert "Traceback" not in out.stderr and "RayTaskError" not in out.stderr
    with_task = vpt_ray("evaluate", "--task", "crafter-wood", "--agent", f"p={bad['frame_size']}", "--episodes",
                        "2", "--workers", "1", "--address", NO_RAY)  # fmt: skip
    assert with_task.returncode == 1 and "[32, 32]" in with_task.stderr, with_task.stderr


def test_a_recipe_for_the_other_training_command_is_named_as_such(tmp_path):
    out = tmp_path / "run"
    cases = [("train-idm", "bc-crafter-small", "this is a BC recipe (for `vpt-ray train-bc`), not one for `vpt-ray train-idm`"),
             ("train-bc", "idm-crafter-small", "this is an IDM recipe (for `vpt-ray train-idm`), not one for `vpt-ray train-bc`")]  # fmt: skip
    for command, recipe, message in cases:
        refused = vpt_ray(command, str(tmp_path), "--out", str(out), "--recipe", recipe, "--address", NO_RAY)
        assert refused.returncode == 1 and f"{recipe}.yaml: {message}" in refused.stderr, refused.stderr
    # A recipe of the right kind with a wrong field still names that field.
    typo = vpt_ray("train-bc", str(tmp_path), "--out", str(out), "--set", "optim.lrr=1", "--address", NO_RAY)
    assert typo.returncode == 1 and "field 'optim.lrr': unknown field" in typo.stderr, typo.stderr
    assert not out.exists()


@pytest.mark.parametrize("command", [
    ("demo", "--quick", "--run-dir", "{out}"),
    ("label", "{out}/videos", "--idm", "{out}/idm", "--out", "{out}", "--address", NO_RAY),
])  # fmt: skip
def test_demo_and_label_refuse_a_malformed_ledger_before_anything(tmp_path, command):
    out = tmp_path / "out"
    args = [a.format(out=out) for a in command]
    refused = vpt_ray(*args, "--ledger", "redis//127.0.0.1")
    assert refused.returncode in (1, 2), refused.stderr
    assert "ledger location 'redis//127.0.0.1': a malformed URL" in refused.stderr and not out.exists()


def test_a_checkpoint_killed_while_saving_is_not_resumed_from(tmp_path):
    from vpt_ray.rl.job import list_checkpoints

    for name in ("iteration_000001", "iteration_000002", "iteration_000003.tmp"):
        (tmp_path / "checkpoints" / name).mkdir(parents=True)
        (tmp_path / "checkpoints" / name / "rllib_checkpoint.json").write_text("{}")
    (tmp_path / "checkpoints" / "iteration_000004").mkdir()  # RLlib had not written its metadata yet
    assert [p.name for p in list_checkpoints(tmp_path)] == ["iteration_000001", "iteration_000002"]
