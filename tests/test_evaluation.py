"""vpt_ray.evaluation and `vpt-ray evaluate`: statistics against hand computations, real Crafter episodes played by
random, scripted and policy agents (in process and on Ray actors), memory handling, CLI and bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from vpt_ray import evaluation as ev

TINY_POLICY = {
    "kind": "policy", "action_space": "crafter",
    "net": {"img_shape": [64, 64, 3], "timesteps": 8, "hidsize": 32, "impala_chans": [8, 8, 8],
            "impala_kwargs": {"post_pool_groups": 1}, "init_norm_kwargs": {"group_norm_groups": 1},
            "attention_heads": 2, "attention_memory_size": 24, "n_recurrence_layers": 1, "use_pre_lstm_ln": False},
}  # fmt: skip


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    import torch

    from vpt_ray.config import from_dict
    from vpt_ray.models import ModelConfig, build_model, save_checkpoint

    torch.manual_seed(0)
    model = build_model(from_dict(ModelConfig, TINY_POLICY))
    return save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "final")


# ------------------------------------------------------------------------------------------------ statistics


def test_binomial_stderr_and_wilson_match_hand_computation():
    # 3 of 10: p = 0.3, se = sqrt(0.3 * 0.7 / 10) = 0.144914; Wilson (z = 1.96): centre 0.355506, half 0.247715.
    assert ev.binomial_stderr(3, 10) == pytest.approx(0.144914, abs=1e-6)
    lo, hi = ev.wilson_interval(3, 10)
    assert lo == pytest.approx(0.107789, abs=1e-5) and hi == pytest.approx(0.603222, abs=1e-5)
    # 0 of 8: se 0 but the interval is not degenerate: [0, z^2 / (n + z^2)] = [0, 3.841459 / 11.841459].
    assert ev.binomial_stderr(0, 8) == 0.0
    lo, hi = ev.wilson_interval(0, 8)
    assert lo == 0.0 and hi == pytest.approx(0.324408, abs=1e-5)
    lo, hi = ev.wilson_interval(8, 8)
    assert hi == 1.0 and lo == pytest.approx(1 - 0.324408, abs=1e-5)
    with pytest.raises(ValueError, match="successes"):
        ev.wilson_interval(11, 10)


def test_crafter_score_is_hafners_geometric_mean():
    # One achievement always, 21 never: exp(ln(101) / 22) - 1.
    assert ev.crafter_score([100.0] + [0.0] * 21) == pytest.approx(101 ** (1 / 22) - 1, rel=1e-12)
    assert ev.crafter_score([100.0] + [0.0] * 21) == pytest.approx(0.233404, abs=1e-6)
    # All 22 at 50 %: the score is 50; all zero: 0.
    assert ev.crafter_score([50.0] * 22) == pytest.approx(50.0)
    assert ev.crafter_score([0.0] * 22) == 0.0
    # Rates are percentages, not fractions.
    with pytest.raises(ValueError, match="percentages"):
        ev.crafter_score([150.0, 0.0])
    assert len(ev.crafter_achievements()) == 22


def _record(i, items, ret, achievements=None):
    return {"episode": i, "return": ret, "length": 100 + i, "died": i % 2 == 0, "env_failures": 0,
            "items": items, "item_steps": {k: (10 * (i + 1) if v else None) for k, v in items.items()},
            "achievements": achievements}  # fmt: skip


def test_summarize_by_hand():
    names = ev.crafter_achievements()
    ach = lambda *got: {a: int(a in got) for a in names}  # noqa: E731
    records = [
        _record(0, {"wood": True, "table": True}, 1.2, ach("collect_wood", "place_table")),
        _record(1, {"wood": True, "table": False}, 0.2, ach("collect_wood")),
        _record(2, {"wood": True, "table": False}, 0.4, ach("collect_wood", "wake_up")),
        _record(3, {"wood": False, "table": False}, 0.0, ach()),
    ]
    s = ev.summarize(records, ["wood", "table"])
    assert list(s["items"]) == ["wood", "table"]
    assert s["items"]["wood"]["rate"] == 0.75 and s["items"]["wood"]["count"] == 3
    assert s["items"]["wood"]["stderr"] == pytest.approx(math.sqrt(0.75 * 0.25 / 4))
    assert s["items"]["table"]["rate"] == 0.25
    assert s["items"]["wood"]["median_step"] == 20.0  # first steps 10, 20, 30
    assert s["return"]["mean"] == pytest.approx(0.45)
    assert s["return"]["stderr"] == pytest.approx(np.std([1.2, 0.2, 0.4, 0.0], ddof=1) / 2)
    assert s["died_fraction"] == 0.5 and s["length_mean"] == 101.5
    rates = s["crafter"]["success_rates_percent"]
    assert rates["collect_wood"] == 75.0 and rates["place_table"] == 25.0 and rates["wake_up"] == 25.0
    assert sum(v > 0 for v in rates.values()) == 3
    want = math.exp((math.log(76) + 2 * math.log(26)) / 22) - 1
    assert s["crafter"]["score"] == pytest.approx(want)
    assert "not to published" in s["crafter"]["computed_over"]
    # Episodes whose counters were lost (env failure) do not count toward the Crafter score.
    s2 = ev.summarize(records + [_record(4, {"wood": True, "table": True}, 1.2, None)], ["wood", "table"])
    assert s2["crafter"]["episodes"] == 4 and s2["crafter"]["score"] == pytest.approx(want)
    assert s2["items"]["wood"]["rate"] == 0.8
    table = ev.format_table({"a": s, "b": s2})
    assert "| wood | 75 % ± 22 | 80 % ± 18 |" in table
    assert f"| Crafter score | {want:.2f} | {want:.2f} |" in table


def test_parse_agent(tiny_checkpoint, tmp_path):
    assert ev.parse_agent("random") == ev.AgentSpec("random", "random")
    assert ev.parse_agent("expert=demonstrator") == ev.AgentSpec("expert", "demonstrator")
    a = ev.parse_agent(str(tiny_checkpoint), deterministic=True)
    assert a.kind == "policy" and a.deterministic and a.checkpoint == str(tiny_checkpoint.resolve())
    assert a.name == tiny_checkpoint.parent.name  # RUN_DIR/final is named after the run
    with pytest.raises(ev.EvaluationError, match="not a policy checkpoint directory"):
        ev.parse_agent(f"x={tmp_path}")
    (tmp_path / "model.yaml").write_text("kind: idm\naction_space: crafter\nnet: {}\n")
    with pytest.raises(ev.EvaluationError, match=str(tmp_path)):
        ev.parse_agent(str(tmp_path))


# ------------------------------------------------------------------------------------------------- playing


def test_scripted_player_beats_random_and_records_are_consistent():
    task = "crafter-tech-tree"
    demo = ev.evaluate(ev.AgentSpec("demonstrator", "demonstrator"), task, episodes=4, workers=0, envs_per_worker=2,
                       max_steps=120, progress=False)  # fmt: skip
    rand = ev.evaluate(ev.AgentSpec("random", "random"), task, episodes=4, workers=0, envs_per_worker=4,
                       max_steps=120, progress=False)  # fmt: skip
    for s in (demo, rand):
        eps = s["per_episode"]
        assert [r["episode"] for r in eps] == [0, 1, 2, 3]
        assert len({r["world_seed"] for r in eps}) == 4  # four different worlds
        assert all(r["length"] <= 120 for r in eps)
        assert list(s["items"])[:3] == ["wood", "table", "wood_pickaxe"]  # task order
        for item, v in s["items"].items():
            assert v["rate"] == np.mean([r["items"][item] for r in eps])
        assert s["return"]["mean"] == pytest.approx(np.mean([r["return"] for r in eps]))
        # Crafter's own counters agree with the task's items.
        for r in eps:
            assert (r["achievements"]["collect_wood"] > 0) == r["items"]["wood"]
            assert (r["achievements"]["place_table"] > 0) == r["items"]["table"]
    # The scripted player gets wood within a few dozen steps every time, and a table in most episodes.
    assert demo["items"]["wood"]["rate"] == 1.0 and demo["items"]["table"]["rate"] >= 0.75
    assert demo["crafter"]["score"] > rand["crafter"]["score"]
    assert demo["return"]["mean"] > rand["return"]["mean"]
    # Worlds depend on the seed and the episode index only.
    again = ev.evaluate(ev.AgentSpec("random", "random"), task, episodes=2, workers=0, envs_per_worker=1,
                        max_steps=120, progress=False)  # fmt: skip
    assert [r["world_seed"] for r in again["per_episode"]] == [r["world_seed"] for r in rand["per_episode"][:2]]


def test_policy_memory_is_carried_and_cut_at_episode_starts(tiny_checkpoint):
    """Three episodes on two env slots: every forward gets the previous forward's state, and `first` is set
    exactly on each episode's first step (a slot's second episode included)."""
    from vpt_ray.spec import task_to_dict

    agent = ev.parse_agent(str(tiny_checkpoint))
    player = ev._Player(agent, task_to_dict(ev.resolve_task("crafter-wood", 30)), num_envs=2)
    calls = []
    forward = player.policy.forward

    def spy(frames, first, state):
        out = forward(frames, first, state)
        calls.append((first[:, 0].numpy().copy(), state, out.state))
        return out

    player.policy.forward = spy
    records = player.play([0, 1, 2], seed=5)
    player.close()
    assert sorted(r["episode"] for r in records) == [0, 1, 2]
    assert all(r["length"] == 30 for r in records)  # nothing dies in 30 steps of crafter-wood
    firsts = np.stack([c[0] for c in calls])
    assert len(calls) == 60  # two rounds of 30 steps; the second round has one active slot
    assert firsts[0].tolist() == [True, True]
    assert firsts[30, 0] and firsts[1:30].sum() == 0 and firsts[31:].sum() == 0
    for prev, cur in zip(calls, calls[1:]):
        assert cur[1] is prev[2]  # the state returned by one step is the state the next step starts from


def test_policy_agent_on_ray_actors(ray_local, tiny_checkpoint):
    agent = ev.parse_agent(f"tiny={tiny_checkpoint}")
    s = ev.evaluate(agent, "crafter-wood", episodes=5, workers=2, envs_per_worker=2, max_steps=40, progress=False)
    assert s["episodes"] == 5 and [r["episode"] for r in s["per_episode"]] == list(range(5))
    assert s["agent"]["name"] == "tiny" and s["agent"]["kind"] == "policy"
    assert all(r["length"] == 40 for r in s["per_episode"])
    assert 0.0 <= s["crafter"]["score"] <= 100.0
    # Same worlds as in process.
    local = ev.evaluate(agent, "crafter-wood", episodes=5, workers=0, envs_per_worker=5, max_steps=40, progress=False)
    assert [r["world_seed"] for r in local["per_episode"]] == [r["world_seed"] for r in s["per_episode"]]


def test_several_agents_share_one_actor_pool(ray_local, tiny_checkpoint):
    agents = [ev.parse_agent(f"tiny={tiny_checkpoint}"), ev.AgentSpec("random", "random"),
              ev.AgentSpec("scripted", "demonstrator")]  # fmt: skip
    seen = []
    out = ev.evaluate_agents(agents, "crafter-wood", episodes=3, workers=2, envs_per_worker=2, max_steps=30,
                             progress=False, on_result=lambda name, s: seen.append((name, s["episodes"])))  # fmt: skip
    assert list(out) == ["tiny", "random", "scripted"] and sorted(seen) == [("random", 3), ("scripted", 3), ("tiny", 3)]
    # Every agent plays the same worlds.
    worlds = {name: [r["world_seed"] for r in s["per_episode"]] for name, s in out.items()}
    assert worlds["tiny"] == worlds["random"] == worlds["scripted"]
    assert out["scripted"]["agent"]["kind"] == "demonstrator" and out["tiny"]["agent"]["kind"] == "policy"
    with pytest.raises(ev.EvaluationError, match="names must differ"):
        ev.evaluate_agents([agents[1], agents[1]], "crafter-wood", episodes=1, workers=0, progress=False)


def test_bad_agent_for_task(tiny_checkpoint, tmp_path):
    import yaml

    agent = ev.parse_agent(str(tiny_checkpoint))
    other = tmp_path / "big-frames.yaml"
    from vpt_ray.spec import load_task, task_to_dict

    task = task_to_dict(load_task("crafter-wood"))
    task.pop("rl", None)  # its policy preset would not fit 96x96 either
    task["env"]["frame_size"] = [96, 96]
    other.write_text(yaml.safe_dump(task))
    with pytest.raises(ev.EvaluationError, match=r"model.yaml: field 'net.img_shape': the model sees \[64, 64\] frames"):
        ev.evaluate(agent, other, episodes=1, workers=0, progress=False)
    with pytest.raises(ev.EvaluationError, match="episodes must be >= 1"):
        ev.evaluate(agent, "crafter-wood", episodes=0, workers=0, progress=False)


# ---------------------------------------------------------------------------------------------------- CLI


def test_cli_evaluate(tiny_checkpoint, tmp_path, capsys):
    from vpt_ray.cli import main

    out = tmp_path / "eval" / "results.json"
    rc = main(["evaluate", "--task", "crafter-wood", "--agent", "random", "--agent", f"tiny={tiny_checkpoint}",
               "--episodes", "3", "--max-steps", "25", "--workers", "0", "--envs-per-worker", "3", "--seed", "11",
               "--out", str(out), "--no-progress"])  # fmt: skip
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| | random | tiny |" in printed and "| wood |" in printed and "Crafter score" in printed
    data = json.loads(out.read_text())
    assert data["seed"] == 11 and set(data["agents"]) == {"random", "tiny"}
    assert data["agents"]["tiny"]["episodes"] == 3
    assert out.with_suffix(".png").stat().st_size > 5000

    rc = main(["evaluate", "--task", "crafter-wood", "--agent", f"{tmp_path}", "--workers", "0"])
    assert rc == 1 and "not a policy checkpoint directory" in capsys.readouterr().err
    rc = main(["evaluate", "--task", "crafter-wood", "--agent", "random", "--agent", "random", "--workers", "0"])
    assert rc == 1 and "names must differ" in capsys.readouterr().err
    rc = main(["evaluate", "--task", "no-such-task", "--agent", "random", "--workers", "0"])
    assert rc == 1 and "no-such-task" in capsys.readouterr().err
