"""`vpt-ray rl` end to end on real Crafter, RLlib and Serve: from a BC checkpoint (KL to the frozen policy on
Serve, rho decaying, item curves, ledger, teardown), from scratch, and checkpoint -> resume in a new process."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from vpt_ray.rl.job import PROGRESS_FILE, list_checkpoints

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _progress(run_dir: Path) -> list[dict]:
    path = run_dir / PROGRESS_FILE
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _train_tiny_bc(task_path: Path, out: Path, *, steps: int = 60, seed: int = 0) -> Path:
    """A BC policy of the task's (tiny) architecture cloned from the scripted Crafter player: the KL target."""
    from vpt_ray.actions import get_action_space
    from vpt_ray.bc.loss import bc_loss
    from vpt_ray.envs import make_env
    from vpt_ray.envs.crafter_scripted import CrafterDemonstrator
    from vpt_ray.models import build_model, load_preset, save_checkpoint
    from vpt_ray.spec import load_task

    spec = load_task(task_path)
    frames, actions = [], []
    env = make_env(spec, robust=False)
    agent = CrafterDemonstrator(seed=seed)
    for episode in range(2):
        obs, _ = env.reset(seed=seed + episode)
        agent.reset(env)
        for _ in range(96):
            action = agent.act(env)
            frames.append(obs)
            actions.append(action)
            obs, _, terminated, truncated, _ = env.step(action)
            if terminated or truncated:
                break
    env.close()
    frames_t, actions_t = np.stack(frames), np.array(actions)
    torch.manual_seed(seed)
    model = build_model(load_preset(spec.rl.policy))
    space = get_action_space("crafter")
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    rng = np.random.default_rng(seed)
    t_len = 16
    for _ in range(steps):
        starts = rng.integers(0, len(frames_t) - t_len, 4)
        x = torch.as_tensor(np.stack([frames_t[s:s + t_len] for s in starts]))
        labels = {"action": torch.as_tensor(np.stack([actions_t[s:s + t_len] for s in starts]))}
        first = torch.zeros(x.shape[:2], dtype=torch.bool)
        first[:, 0] = True
        loss, _ = bc_loss(space, model(x, first).logprobs, labels, torch.ones(x.shape[:2], dtype=torch.bool))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return save_checkpoint(model, out)


def test_rl_from_a_bc_checkpoint_kl_to_the_served_policy_rho_decay_item_curves(ray_local, rl_task, tmp_path,
                                                                              monkeypatch, capsys):  # fmt: skip
    from ray import serve

    from vpt_ray.cli import main
    from vpt_ray.ledger import open_ledger
    from vpt_ray.models import load_checkpoint
    from vpt_ray.rl.metrics import plot_item_curves, read_scalars

    monkeypatch.setenv("VPT_LEDGER", str(tmp_path / "ledger.sqlite"))
    bc = _train_tiny_bc(rl_task("bc-data", env={"max_steps": 96}), tmp_path / "bc")
    # 16-step episodes: several end in every iteration of 8 rows x 8 steps.
    task = rl_task(env={"max_steps": 16}, context_len=8, checkpoint_every=2, rho=0.2, rho_decay=0.9)
    run_dir = tmp_path / "run"
    assert main(["rl", "--task", str(task), "--init", str(bc), "--out", str(run_dir), "--iterations", "3",
                 "--run-id", "kl-run"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "iter 3/3" in out and "final policy" in out

    progress = _progress(run_dir)
    assert [p["iteration"] for p in progress] == [1, 2, 3]
    for p in progress:
        k = p["iteration"]
        assert p["ppg/rho_trained"] == pytest.approx(0.2 * 0.9 ** (k - 1), rel=1e-12)
        assert p["ppg/rho"] == pytest.approx(0.2 * 0.9**k, rel=1e-12)
        # KL(pi_pretrained || pi_theta): the policy starts as the served BC policy and stays near it
        assert 0.0 <= p["kl/pretrained"] < 0.2
    assert progress[0]["kl/pretrained"] < 0.02
    assert sum(p["episode/count"] for p in progress) >= 4

    scalars = read_scalars(run_dir / "tensorboard")
    for item in ("wood", "table"):
        assert [step for step, _ in scalars[f"items_lifetime/{item}"]] == [1, 2, 3]
        assert all(0.0 <= v <= 1.0 for _, v in scalars[f"items_lifetime/{item}"])
        assert scalars[f"items/{item}"], "no per-iteration item fractions written"
    assert scalars["ppg/rho"] == [(k, pytest.approx(0.2 * 0.9**k, rel=1e-6)) for k in (1, 2, 3)]  # float32 in TB
    assert plot_item_curves(run_dir / "tensorboard", tmp_path / "items.png").stat().st_size > 1000

    assert "vpt-pretrained-kl-run" not in serve.status().applications  # torn down at the end of the job
    record = open_ledger(tmp_path / "ledger.sqlite").get_run("kl-run")
    assert record.status == "succeeded" and record.iteration == 3 and record.kind == "rl"
    assert set(record.items) == {"wood", "table"} and Path(record.checkpoint) == list_checkpoints(run_dir)[-1].resolve()
    assert [c.name for c in list_checkpoints(run_dir)] == ["iteration_000002", "iteration_000003"]
    assert load_checkpoint(run_dir / "final").config == load_checkpoint(bc).config


def _latest(progress: list[dict]) -> dict[int, dict]:
    """Iteration -> its last record (a killed run may have written an iteration its resume then redid)."""
    return {p["iteration"]: p for p in progress}


@pytest.mark.slow
def test_scratch_run_killed_then_resumed_in_a_new_process_continues_everything(rl_task, tmp_path):
    from vpt_ray.ledger import open_ledger
    from vpt_ray.rl.metrics import read_scalars

    beta = 0.9
    task = rl_task(env={"max_steps": 16}, context_len=8, checkpoint_every=1, keep_checkpoints=10, rho=0.2,
                   rho_decay=0.9, value_norm_beta=beta)  # fmt: skip
    run_dir = tmp_path / "run"
    env = {**os.environ, "VPT_LEDGER": str(tmp_path / "ledger.sqlite"),
           "OMP_NUM_THREADS": "1"}  # fmt: skip
    env.pop("RAY_ADDRESS", None)
    cli = [str(Path(sys.executable).with_name("vpt-ray")), "rl"]
    log = open(tmp_path / "first.log", "w")
    # Its own session: killing the group kills the job's local Ray cluster with it, like a lost machine.
    first = subprocess.Popen([*cli, "--task", str(task), "--out", str(run_dir), "--iterations", "8", "--run-id",
                              "resumed-run"], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while len(list_checkpoints(run_dir)) < 2 and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert len(list_checkpoints(run_dir)) >= 2, (tmp_path / "first.log").read_text()[-3000:]
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        log.close()
    k = int(list_checkpoints(run_dir)[-1].name.split("_")[1])
    assert k < 8, "the first run finished before it was killed"

    second = subprocess.run([*cli, "--resume", str(run_dir), "--iterations", str(k + 2)], env=env,
                            capture_output=True, text=True, timeout=400)  # fmt: skip
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert f"iteration {k}, rho" in second.stdout
    progress = _progress(run_dir)
    resumed = [p["iteration"] for p in progress[-2:]]
    assert resumed == [k + 1, k + 2]
    p = _latest(progress)
    assert sorted(p) == list(range(1, k + 3))
    for j in (k + 1, k + 2):
        # rho continues: iteration j trains with rho0 * decay^(j - 1)
        assert p[j]["ppg/rho_trained"] == pytest.approx(0.2 * 0.9 ** (j - 1), rel=1e-12)
        # Adam's step count continues (wake steps of j on top of everything up to j - 1's sleep)
        assert p[j]["ppg/optimizer_steps"] == p[j - 1]["ppg/optimizer_steps"] + p[j - 1]["ppg/sleep_minibatches"] \
            + p[j]["ppg/wake_minibatches"]
        # the value normaliser continues its debiased EWMA: mean_j = (beta d_{j-1} mean_{j-1} + (1-beta) m_j) / d_j
        d_prev, d = 1 - beta ** (j - 1), 1 - beta**j
        expected = (beta * d_prev * p[j - 1]["value/normalizer_mean"] + (1 - beta) * p[j]["value/target_mean"]) / d
        assert p[j]["value/normalizer_mean"] == pytest.approx(expected, rel=1e-4, abs=1e-6)
        # counters continue
        assert p[j]["env/steps_lifetime"] == p[j - 1]["env/steps_lifetime"] + p[j]["env/steps"]
        assert p[j]["episode/count_lifetime"] == p[j - 1]["episode/count_lifetime"] + p[j]["episode/count"]
    # The scratch baseline: entropy bonus, no KL term.
    assert all("kl/pretrained" not in r and r["policy/entropy"] > 0 for r in progress)

    # TensorBoard: every iteration once, the killed run's steps after the checkpoint purged.
    rho = read_scalars(run_dir / "tensorboard")["ppg/rho"]
    assert [step for step, _ in rho] == list(range(1, k + 3))
    assert [v for _, v in rho] == [pytest.approx(0.2 * 0.9**j, rel=1e-6) for j in range(1, k + 3)]
    record = open_ledger(tmp_path / "ledger.sqlite").get_run("resumed-run")
    assert record.status == "succeeded" and record.iteration == k + 2


def test_no_kl_run_starts_from_the_bc_weights_without_serve_and_trains_through_a_dead_ledger(ray_local, rl_task,
                                                                                              tmp_path):  # fmt: skip
    import socket

    from ray import serve

    from vpt_ray.models import build_model, load_checkpoint, load_preset
    from vpt_ray.rl.job import run_rl

    task = rl_task(env={"max_steps": 16}, context_len=8)
    bc = _train_tiny_bc(rl_task("bc-data", env={"max_steps": 96}), tmp_path / "bc", steps=10)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]  # nothing listens here: every ledger write fails (and is queued)
    summary = run_rl(task, out=tmp_path / "run", init=bc, kl=False, iterations=2, run_id="no-kl",
                     ledger=f"redis://127.0.0.1:{closed_port}/0")  # fmt: skip
    assert summary["iteration"] == 2
    assert json.loads((tmp_path / "run" / "run.json").read_text()) == {"run_id": "no-kl", "init": str(bc), "kl": False}
    progress = _progress(tmp_path / "run")
    assert len(progress) == 2 and all("kl/pretrained" not in p and p["policy/entropy"] > 0 for p in progress)
    assert not any(name.startswith("vpt-pretrained") for name in serve.status().applications)
    # Trained from the BC weights (two iterations move them a little), not from a fresh random init.
    key = "pi_head.action.linear_layer.weight"
    final, start = load_checkpoint(summary["final"]).state_dict()[key], load_checkpoint(bc).state_dict()[key]
    fresh = build_model(load_preset(str(tmp_path / "tiny-rl-policy.yaml"))).state_dict()[key]
    assert (final - start).norm() < 0.2 * (final - fresh).norm()
