"""The rl: section of task specs (VPT Table 6, validated with file+field errors), PPGConfig built from it, the CLI's
refusals, and BC weights loaded into an RL policy with fresh value heads."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import yaml

from vpt_ray.config import ConfigError
from vpt_ray.rl.config import RLSpec
from vpt_ray.spec import load_task, task_to_dict

TABLE_6 = {
    "lr": 2e-5, "weight_decay": 0.04, "batch_size": 40, "batches_per_iteration": 48, "context_len": 128,
    "gamma": 0.999, "gae_lambda": 0.95, "ppo_clip": 0.2, "max_grad_norm": 5.0, "max_staleness": 2,
    "sleep_cycles": 2, "sleep_value_coef": 0.5, "sleep_aux_value_coef": 0.5, "sleep_kl_coef": 1.0,
    "sleep_max_sample_reuse": 6, "rho": 0.2, "rho_decay": 0.9995,
}  # fmt: skip


def test_minerl_preset_is_table_6_exactly_and_the_defaults_too():
    rl = load_task("minerl-diamond-pickaxe").rl
    assert {k: getattr(rl, k) for k in TABLE_6} == TABLE_6
    assert {k: getattr(RLSpec(), k) for k in TABLE_6} == TABLE_6
    assert rl.entropy_coef == 0.01 and rl.lr_without_kl == 3e-6 and rl.policy == "vpt-2x"
    assert rl.sleep_buffer_iterations == 3  # reuse 6 / 2 cycles
    assert rl.rows_per_iteration == 40 * 48 and rl.steps_per_iteration == 40 * 48 * 128
    assert rl.batch_size % rl.scale.num_learners == 0  # equal minibatch shares for the DDP learners


@pytest.mark.parametrize("task", ["crafter-wood", "crafter-tech-tree"])
def test_crafter_presets_are_cpu_sized(task):
    rl = load_task(task).rl
    assert rl.steps_per_iteration <= 4096  # a few thousand env steps per iteration at most
    assert rl.scale.num_learners == 0 and rl.scale.gpus_per_learner == 0 and rl.scale.serve.gpus_per_replica == 0


def test_ppg_config_is_built_from_the_spec():
    from vpt_ray.rl.algorithm import PPGConfig

    spec = load_task("minerl-diamond-pickaxe")
    rl = dataclasses.replace(spec.rl, lr_without_kl=None)
    config = PPGConfig.from_spec(dataclasses.replace(spec, rl=rl), run_id="r1")
    mapped = {
        "lr": config.lr, "weight_decay": config.weight_decay, "batch_size": config.rows_per_minibatch,
        "batches_per_iteration": config.minibatches_per_iteration, "context_len": config.rollout_fragment_length,
        "gamma": config.gamma, "gae_lambda": config.lambda_, "ppo_clip": config.clip_param,
        "max_grad_norm": config.grad_clip, "max_staleness": config.max_staleness, "sleep_cycles": config.sleep_cycles,
        "sleep_value_coef": config.sleep_vf_coeff, "sleep_aux_value_coef": config.sleep_aux_vf_coeff,
        "sleep_kl_coef": config.sleep_kl_coeff, "sleep_max_sample_reuse": config.sleep_max_sample_reuse,
        "rho": config.rho, "rho_decay": config.rho_decay,
    }  # fmt: skip
    assert mapped == TABLE_6
    assert config.grad_clip_by == "global_norm" and config.entropy_coeff == 0.01 and config.wake_value_coeff == 0.5
    assert config.num_learners == 8 and config.num_gpus_per_learner == 0.75
    assert config.custom_resources_per_env_runner == {"rollout": 1}
    assert config.rows_per_learner_minibatch == 5 and config.sleep_buffer_iterations == 3
    assert config.rl_module_spec.model_config["max_seq_len"] == 128
    assert config.rl_module_spec.model_config["model"]["net"]["hidsize"] == 2048  # vpt-2x
    # A run from scratch has no KL term (and no Serve app); its lr is lr_without_kl when the spec sets one.
    assert not config.use_kl and config.pretrained_checkpoint is None
    assert PPGConfig.from_spec(spec).lr == 3e-6


def _write(tmp_path, rl_changes: dict, name="bad.yaml"):
    task = task_to_dict(load_task("crafter-wood"))
    task["rl"].update(rl_changes)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(task))
    return path


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"batch_size": 0}, "rl", "batch_size must be >= 1"),
        ({"gamma": 1.5}, "rl", "gamma"),
        ({"sleep_max_sample_reuse": 5}, "rl", "multiple of sleep_cycles"),
        ({"staleness_mode": "ignore"}, "rl.staleness_mode", "not one of"),
        ({"kl_coef": 0.1}, "rl.kl_coef", "unknown field"),
        ({"scale": {"env_runners": 0}}, "rl.scale", "env_runners"),
        ({"scale": {"num_learners": 3}}, "rl", "divisible by scale.num_learners"),
        ({"scale": {"env_runner_resources": {"CPU": 1}}}, "rl.scale", "custom resources"),
        ({"policy": "vpt-1x"}, "rl.policy", "'minecraft' action space"),
        ({"policy": "no-such-preset"}, "rl.policy", "no such preset"),
    ],
)
def test_bad_rl_fields_are_refused_naming_the_file_and_field(tmp_path, changes, field, words):
    path = _write(tmp_path, changes)
    with pytest.raises(ConfigError) as info:
        load_task(path)
    message = str(info.value)
    assert str(path) in message and f"field '{field}" in message and words in message


def test_cli_refuses_bad_combinations_before_any_work(tmp_path, capsys):
    from vpt_ray.cli import main

    no_rl = task_to_dict(load_task("crafter-wood"))
    no_rl.pop("rl")
    (tmp_path / "no-rl.yaml").write_text(yaml.safe_dump(no_rl))
    assert main(["rl", "--task", str(tmp_path / "no-rl.yaml"), "--out", str(tmp_path / "r1")]) == 1
    assert "no 'rl:' section" in capsys.readouterr().err
    assert main(["rl", "--task", "crafter-wood", "--no-kl", "--out", str(tmp_path / "r2")]) == 2
    assert main(["rl", "--resume", str(tmp_path / "r1"), "--init", str(tmp_path)]) == 2
    assert main(["rl", "--resume", str(tmp_path / "nothing-here")]) == 1
    assert "not an RL run directory" in capsys.readouterr().err
    assert main(["rl", "--task", "crafter-wood", "--init", str(tmp_path), "--out", str(tmp_path / "r3")]) == 1
    assert "not a policy checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "r2").exists()


def test_bc_weights_load_into_the_rl_policy_with_fresh_value_heads():
    from vpt_ray.models import build_model, load_preset
    from vpt_ray.models.checkpoint import WeightsError
    from vpt_ray.rl.module import load_pretrained_weights

    config = load_preset("crafter-policy-small")
    torch.manual_seed(0)
    bc = build_model(config)
    bc.value_normalizer.update(torch.tensor([5.0, 7.0]))  # a BC checkpoint's value head is never RL-ready
    torch.manual_seed(1)
    rl = build_model(config)
    rl.reset_value_heads_for_rl(generator=torch.Generator().manual_seed(0))
    aux = {k: v.clone() for k, v in rl.aux_value_head.state_dict().items()}
    load_pretrained_weights(rl, bc.state_dict(), "bc/weights.pt")
    for key, value in bc.state_dict().items():
        if key.startswith("value_head."):
            continue
        assert torch.equal(rl.state_dict()[key], value), key
    assert torch.count_nonzero(rl.value_head.linear.weight) == 0 and torch.count_nonzero(rl.value_head.linear.bias) == 0
    assert float(rl.value_normalizer.debiasing_term) == 0.0
    assert all(torch.equal(rl.aux_value_head.state_dict()[k], v) for k, v in aux.items())
    assert aux["weight"].abs().sum() > 0  # random, not zero

    broken = {k: v for k, v in bc.state_dict().items() if not k.startswith("pi_head.")}
    with pytest.raises(WeightsError, match="bc/weights.pt.*missing.*pi_head"):
        load_pretrained_weights(rl, broken, "bc/weights.pt")
