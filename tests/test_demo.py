"""`vpt-ray demo`: presets validated before any work, stage hashes, resume/redo logic of the runner, the CLI, and
(slow) the quick preset end to end with a report that has every section and plot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vpt_ray.config import ConfigError
from vpt_ray.demo import STAGES, load_demo_config, plan, resolve, run_demo, stage_hashes
from vpt_ray.demo import pipeline as demo_pipeline
from vpt_ray.demo.stages import Stage, StageContext

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------ presets


@pytest.mark.parametrize("preset", ["quick", "default", "full"])
def test_presets_resolve(preset):
    r = resolve(load_demo_config(preset))
    rl = r.task["rl"]
    assert r.env_steps_per_iteration == rl["batch_size"] * rl["batches_per_iteration"] * rl["context_len"]
    assert r.rl_iterations * r.env_steps_per_iteration >= r.config.rl_budget.env_steps
    assert (r.rl_iterations - 1) * r.env_steps_per_iteration < r.config.rl_budget.env_steps
    assert rl["iterations"] == r.rl_iterations and Path(rl["policy"]) == r.policy_preset
    assert r.task["env"]["max_steps"] == r.config.task.max_steps
    assert r.idm_train.schedule.max_steps >= 1 and r.bc_train.schedule.max_steps >= 1


def test_bad_presets_are_refused_with_file_and_field(tmp_path):
    with pytest.raises(ConfigError, match=r"record.*labeled_episodes must be >= 1"):
        load_demo_config("quick", {"record": {"labeled_episodes": 0}})
    with pytest.raises(ConfigError, match=r"quick.yaml.*'eval.episods'.*unknown field"):
        load_demo_config("quick", {"eval": {"episods": 3}})
    with pytest.raises(ConfigError, match="rl.iterations is set by the demo"):
        load_demo_config("quick", {"task": {"rl": {"iterations": 5}}})
    with pytest.raises(ConfigError, match="no such demo preset"):
        load_demo_config("nope")
    with pytest.raises(ConfigError, match="models.policy.*no model preset 'missing'"):
        resolve(load_demo_config("quick", {"models": {"policy": "missing"}}))
    with pytest.raises(ConfigError, match="models.idm.*'policy' model"):  # an IDM slot given a policy
        resolve(load_demo_config("quick", {"models": {"idm": "demo-policy-tiny"}}))
    with pytest.raises(ConfigError, match=r"rl\.?.*batch_size"):  # the task's rl: section is validated too
        resolve(load_demo_config("quick", {"task": {"rl": {"batch_size": 0}}}))
    with pytest.raises(ConfigError, match="optim.lr"):  # and the training recipes with their overrides
        resolve(load_demo_config("quick", {"idm": {"overrides": {"optim": {"lr": -1.0}}}}))
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nrecord: {episode_steps: ten}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.*record.episode_steps.*integer"):
        load_demo_config(bad)


def _changed(a: dict, b: dict) -> set[str]:
    return {k for k in a if a[k] != b[k]}


def test_stage_hashes_follow_the_dependency_graph():
    base = stage_hashes(resolve(load_demo_config("quick")))
    assert list(base) == [s.name for s in STAGES]
    same = stage_hashes(resolve(load_demo_config("quick", {"record": {"workers": 1}, "eval": {"workers": 1}})))
    assert same == base  # how fast a stage runs is not what it produces
    ev = stage_hashes(resolve(load_demo_config("quick", {"eval": {"episodes": 5}})))
    assert _changed(base, ev) == {"evaluate", "report"}
    idm = stage_hashes(resolve(load_demo_config("quick", {"idm": {"overrides": {"schedule": {"max_steps": 7}}}})))
    assert _changed(base, idm) == {"idm", "label", "bc", "bc_labeled", "rl_bc_kl", "rl_bc_no_kl", "evaluate", "report"}
    rl = stage_hashes(resolve(load_demo_config("quick", {"rl_budget": {"env_steps": 64}})))
    assert _changed(base, rl) == {"rl_bc_kl", "rl_bc_no_kl", "rl_scratch", "evaluate", "report"}
    rec = stage_hashes(resolve(load_demo_config("quick", {"record": {"episode_steps": 90}})))
    assert _changed(base, rec) == set(base) - {"rl_scratch"}  # scratch RL never sees a recording


def test_training_and_labeling_stages_take_a_gpu_when_the_cluster_has_one(monkeypatch, tmp_path):
    from vpt_ray.demo import stages

    resolved = resolve(load_demo_config("quick"))
    ctx = StageContext(resolved, tmp_path, tmp_path / "idm", {}, None, "run")
    monkeypatch.setattr(stages, "_gpus", lambda ctx: 1.0)
    on_gpu = stages._on_gpu_if_present(ctx, resolved.idm_train)
    assert on_gpu.scaling.use_gpu and on_gpu.precision == "auto"  # auto: bf16 on the GPU
    monkeypatch.setattr(stages, "_gpus", lambda ctx: 0.0)
    assert stages._on_gpu_if_present(ctx, resolved.bc_train) == resolved.bc_train
    # Decided when the stage runs: the hashes (what a stage makes) do not depend on it.
    no_gpu = stage_hashes(resolve(load_demo_config("quick", {"use_gpus": False})))
    assert no_gpu == stage_hashes(resolved)


# ------------------------------------------------------------------------------------------- resume logic


class Light:
    """Stand-ins for the heavy stage bodies (the runner's logic is under test): each writes a file into its
    own directory, records its call, and can fail once."""

    def __init__(self):
        self.calls: list[str] = []
        self.fail_once: set[str] = set()

    def stage(self, name: str, deps: tuple[str, ...], part) -> Stage:
        def run(ctx):
            self.calls.append(name)
            ctx.dir.mkdir(parents=True, exist_ok=True)
            partial = ctx.dir / "partial.txt"
            seen_partial = partial.is_file()
            partial.write_text("work from an earlier attempt")
            if name in self.fail_once:
                self.fail_once.discard(name)
                raise RuntimeError(f"{name} crashed")
            (ctx.dir / "out.txt").write_text(name)
            upstream = {d: ctx.outputs[d]["value"] for d in deps}
            return {"value": f"{name}<{','.join(f'{k}={v}' for k, v in upstream.items())}>",
                    "resumed_partial": seen_partial}  # fmt: skip

        return Stage(name, f"light {name}", deps, part, run, needs_ray=False)


@pytest.fixture
def light(monkeypatch):
    light = Light()
    stages = (
        light.stage("record", (), lambda r: r.config.record.episode_steps),
        light.stage("idm", ("record",), lambda r: r.idm_train.schedule.max_steps),
        light.stage("evaluate", ("idm",), lambda r: r.config.eval.episodes),
        light.stage("scratch", (), lambda r: r.config.rl_budget.env_steps),
    )
    monkeypatch.setattr(demo_pipeline, "STAGES", stages)
    return light


def test_rerun_skips_finished_stages_and_a_config_change_redoes_downstream(light, tmp_path):
    from vpt_ray.ledger import open_ledger

    ledger = str(tmp_path / "ledger.sqlite")
    run_dir = tmp_path / "demo"
    cfg = load_demo_config("quick")
    first = run_demo(cfg, run_dir, preset="quick", ledger=ledger, progress=False)
    assert first["status"] == "succeeded" and light.calls == ["record", "idm", "evaluate", "scratch"]
    assert json.loads((run_dir / "stages" / "evaluate.json").read_text())["outputs"]["value"] == \
        "evaluate<idm=idm<record=record<>>>"  # fmt: skip
    assert (run_dir / "task.yaml").is_file()
    with open_ledger(ledger) as book:
        rec = book.get_run(first["run_id"])
    assert rec.kind == "demo" and rec.status == "succeeded" and rec.run_dir == str(run_dir.resolve())
    assert rec.metrics["stages"] == {"record": "succeeded", "idm": "succeeded", "evaluate": "succeeded",
                                     "scratch": "succeeded"}  # fmt: skip

    light.calls.clear()
    again = run_demo(cfg, run_dir, preset="quick", ledger=ledger, progress=False)
    assert light.calls == [] and again["status"] == "succeeded" and again["run_id"] == first["run_id"]
    assert plan(resolve(cfg), run_dir) == {"record": "done", "idm": "done", "evaluate": "done", "scratch": "done"}

    # A changed IDM schedule: the IDM and what depends on it are redone (their old outputs wiped), the rest kept.
    changed = load_demo_config("quick", {"idm": {"overrides": {"schedule": {"max_steps": 9}}}})
    assert plan(resolve(changed), run_dir) == {"record": "done", "idm": "todo", "evaluate": "todo", "scratch": "done"}
    (run_dir / "idm" / "stale.txt").write_text("from the old config")
    run_demo(changed, run_dir, preset="quick", ledger=ledger, progress=False)
    assert light.calls == ["idm", "evaluate"]
    assert not (run_dir / "idm" / "stale.txt").exists() and (run_dir / "idm" / "out.txt").is_file()
    assert (run_dir / "record" / "out.txt").is_file()
    # Going back to the first config redoes them again (a marker holds one hash: the latest run's).
    light.calls.clear()
    run_demo(cfg, run_dir, preset="quick", ledger=ledger, progress=False)
    assert light.calls == ["idm", "evaluate"]


def test_interrupted_stage_resumes_with_its_partial_work(light, tmp_path):
    from vpt_ray.ledger import open_ledger

    ledger = str(tmp_path / "ledger.sqlite")
    run_dir = tmp_path / "demo"
    cfg = load_demo_config("quick")
    light.fail_once = {"idm"}
    with pytest.raises(RuntimeError, match="idm crashed"):
        run_demo(cfg, run_dir, preset="quick", ledger=ledger, progress=False)
    assert light.calls == ["record", "idm"]
    assert not (run_dir / "stages" / "idm.json").exists() and (run_dir / "idm" / "partial.txt").is_file()
    with open_ledger(ledger) as book:
        rec = book.list_runs(kind="demo")[-1]
    assert rec.status == "failed" and rec.metrics["stages"]["idm"] == "failed"
    assert rec.metrics["stages"]["record"] == "succeeded" and rec.metrics["stages"]["evaluate"] == "pending"

    light.calls.clear()
    summary = run_demo(cfg, run_dir, preset="quick", ledger=ledger, progress=False)
    assert summary["status"] == "succeeded" and light.calls == ["idm", "evaluate", "scratch"]
    # Same config: the stage found what its crashed attempt wrote (its own modules resume from such files).
    assert json.loads((run_dir / "stages" / "idm.json").read_text())["outputs"]["resumed_partial"] is True

    # A crashed attempt under another config is wiped before the stage runs again.
    light.fail_once = {"evaluate"}
    light.calls.clear()
    other = load_demo_config("quick", {"eval": {"episodes": 7}})
    with pytest.raises(RuntimeError, match="evaluate crashed"):
        run_demo(other, run_dir, preset="quick", ledger=ledger, progress=False)
    light.calls.clear()
    run_demo(load_demo_config("quick", {"eval": {"episodes": 8}}), run_dir, preset="quick", ledger=ledger,
             progress=False)  # fmt: skip
    assert light.calls == ["evaluate"]
    assert json.loads((run_dir / "stages" / "evaluate.json").read_text())["outputs"]["resumed_partial"] is False


def test_stop_after(light, tmp_path):
    summary = run_demo(load_demo_config("quick"), tmp_path / "demo", ledger=str(tmp_path / "l.sqlite"),
                       progress=False, stop_after="idm")  # fmt: skip
    assert light.calls == ["record", "idm"] and summary["status"] == "stopped"
    with pytest.raises(demo_pipeline.DemoError, match="not a stage"):
        run_demo(load_demo_config("quick"), tmp_path / "demo", progress=False, stop_after="nope")


def test_cli_refuses_bad_input_before_work(tmp_path, capsys):
    from vpt_ray.cli import main

    assert main(["demo", "--preset", "nope", "--run-dir", str(tmp_path / "x")]) == 1
    assert "no such demo preset" in capsys.readouterr().err
    assert main(["demo", "--quick", "--set", "eval.episodes=0", "--run-dir", str(tmp_path / "x")]) == 1
    assert "episodes must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    assert main(["demo", "--quick", "--plan", "--run-dir", str(tmp_path / "x")]) == 0
    out = capsys.readouterr().out
    assert all(f"{s.name}" in out for s in STAGES) and "todo" in out


# ------------------------------------------------------------------------------------------ end to end


@pytest.mark.slow
def test_quick_demo_end_to_end(tmp_path):
    """`vpt-ray demo --quick` as a user runs it: every stage for real, the report with every section and plot,
    the ledger record; a rerun with more evaluation episodes redoes only evaluation and report."""
    from vpt_ray.demo.report import PLOTS, SECTIONS
    from vpt_ray.ledger import open_ledger

    run_dir, ledger = tmp_path / "demo", tmp_path / "ledger.sqlite"
    env = {**os.environ, "VPT_RUNS_DIR": str(tmp_path / "runs")}
    cmd = [str(Path(sys.executable).parent / "vpt-ray"), "demo", "--quick", "--run-dir", str(run_dir), "--ledger", str(ledger),
           "--no-progress"]  # fmt: skip
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"tensorboard --logdir {run_dir.resolve()}" in done.stdout
    for i, stage in enumerate(STAGES, 1):
        assert f"[{i}/{len(STAGES)}] {stage.name}:" in done.stdout

    report = (run_dir / "report.md").read_text()
    for section in SECTIONS:
        assert section in report, section
    for png in PLOTS:
        path = run_dir / "report" / png
        assert path.is_file() and path.stat().st_size > 10_000, png
        assert f"report/{png}" in report
    assert "Plots that could not be drawn" not in report
    verdicts = json.loads((run_dir / "report" / "verdicts.json").read_text())
    assert set(verdicts) == {"idm_beats_bc_at_equal_labeled_data", "rl_kl_beats_no_kl", "rl_kl_beats_scratch",
                             "bc_pseudo_labels_beat_bc_labeled_only"}
    for v in verdicts.values():
        assert v["verdict"].split(",")[0] in ("holds", "does not hold", "does not hold (a tie)", "not measured (no "
                                              "held-out metrics)")  # fmt: skip
        assert f"**{v['verdict']}**" in report
    results = json.loads((run_dir / "evaluate" / "results.json").read_text())
    assert set(results) == {"demonstrator", "bc", "bc_labeled", "rl_bc_kl", "rl_bc_no_kl", "rl_scratch", "random"}
    assert all(r["episodes"] == 4 for r in results.values())
    assert results["demonstrator"]["items"]["wood"]["rate"] == 1.0  # the scripted player always gets wood
    for stage in ("idm/run", "bc/run", "bc_labeled/run", "rl_bc_kl/run", "rl_bc_no_kl/run", "rl_scratch/run"):
        assert any((run_dir / stage / "tensorboard").glob("**/events.out.tfevents.*")), stage
    rl = [json.loads((run_dir / "stages" / f"{a}.json").read_text())["outputs"] for a in
          ("rl_bc_kl", "rl_bc_no_kl", "rl_scratch")]  # fmt: skip
    assert len({o["env_steps"] for o in rl}) == 1 and rl[0]["env_steps"] >= 32  # the same env-step budget
    assert [o["kl"] for o in rl] == [True, False, False] and rl[2]["init"] is None
    # Where each stage computed (no GPU here): the report's wall-time table says so.
    outputs = {s: json.loads((run_dir / "stages" / f"{s}.json").read_text())["outputs"] for s in ("idm", "bc", "label")}
    assert outputs["idm"]["devices"] == outputs["bc"]["devices"] == "cpu, fp32" and outputs["label"]["devices"] == "cpu fp32"
    assert rl[0]["devices"] == "learner CPU, frozen BC policy (Serve) CPU, env runners CPU"
    assert "| idm | " in report and "| cpu, fp32 |" in report and "| devices |" in report
    with open_ledger(str(ledger)) as book:
        demo = book.list_runs(kind="demo")
        rl_runs = book.list_runs(kind="rl")
    assert len(demo) == 1 and demo[0].status == "succeeded"
    assert set(demo[0].metrics["stages"].values()) == {"succeeded"}
    assert len(rl_runs) == 3 and all(r.run_id.startswith(demo[0].run_id) for r in rl_runs)

    before = {s.name: json.loads((run_dir / "stages" / f"{s.name}.json").read_text()) for s in STAGES}
    done = subprocess.run(cmd + ["--set", "eval.episodes=3"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    after = {s.name: json.loads((run_dir / "stages" / f"{s.name}.json").read_text()) for s in STAGES}
    redone = {name for name in after if after[name]["finished_at"] != before[name]["finished_at"]}
    assert redone == {"evaluate", "report"}
    assert "done in an earlier run" in done.stdout
    assert all(r["episodes"] == 3 for r in json.loads((run_dir / "evaluate" / "results.json").read_text()).values())
