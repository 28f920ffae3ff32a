"""Shared training pieces: clip-consistent augmentation, LR schedule, recipes and overrides, held-out split,
run-directory checks. No Ray here (the jobs are tested in test_idm.py / test_bc.py)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from vpt_ray.config import ConfigError
from vpt_ray.training.augment import AugmentParams, ClipAugmenter, apply_augment, sample_params
from vpt_ray.training.config import AugmentConfig, OptimConfig, known_recipes, load_recipe, parse_overrides
from vpt_ray.training.data import heldout_episodes
from vpt_ray.training.job import ddp_backend, prepare_run_dir
from vpt_ray.training.metrics import StepMeans
from vpt_ray.training.optim import build_optimizer, lr_factor, param_groups


def _frames(b: int, t: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, t, 24, 32, 3), generator=g, dtype=torch.uint8)


def _identity(n: int) -> AugmentParams:
    z = torch.zeros(n, dtype=torch.float64)
    return AugmentParams(hue=z, saturation=z + 1, brightness=z + 1, contrast=z + 1, rotation_deg=z, scale=z + 1,
                         shear_deg=z, translate_px=torch.zeros(n, 2, dtype=torch.float64))  # fmt: skip


# --------------------------------------------------------------------------------------------- augmentation


def test_identity_transform_leaves_frames_unchanged():
    frames = _frames(2, 3)
    assert torch.equal(apply_augment(frames, _identity(2)), frames)


def test_augmentation_is_the_same_for_every_frame_of_a_clip_and_differs_between_clips():
    # Clips 0 and 1 hold the same frame sequence; every frame of clip 2 is one repeated image.
    clip = _frames(1, 4)[0]
    still = clip[:1].expand(4, -1, -1, -1)
    frames = torch.stack([clip, clip, still])
    out = ClipAugmenter(AugmentConfig(), seed=3)(frames)
    # The repeated image stays one repeated image: the same transform at every t ...
    assert all(torch.equal(out[2, 0], out[2, t]) for t in range(4))
    # ... and identical clips get different transforms.
    assert (out[0].float() - out[1].float()).abs().mean() > 1.0
    assert not torch.equal(out[0], frames[0])
    # Per pixel (contrast aside, which blends with the clip's mean grey), frame t of a clip is exactly frame t
    # transformed on its own with the clip's parameters.
    cfg = AugmentConfig(contrast=(1.0, 1.0))
    out = ClipAugmenter(cfg, seed=5)(frames)
    params = sample_params(3, cfg, torch.Generator().manual_seed(5))
    for b in range(3):
        one = AugmentParams(**{f.name: getattr(params, f.name)[b:b + 1] for f in dataclasses.fields(params)})
        for t in range(4):
            assert torch.equal(apply_augment(frames[b:b + 1, t:t + 1], one)[0, 0], out[b, t])


def test_each_augmentation_part_changes_frames_and_can_be_switched_off():
    frames = _frames(1, 2, seed=1)
    assert torch.equal(ClipAugmenter(AugmentConfig(enabled=False), seed=0)(frames), frames)
    off = AugmentConfig(hue=0.0, saturation=(1, 1), brightness=(1, 1), contrast=(1, 1), rotation_deg=0, scale=(1, 1),
                        shear_deg=0, translate_px=0)  # fmt: skip
    assert torch.equal(ClipAugmenter(off, seed=0)(frames), frames)
    for part in ({"hue": 0.2}, {"saturation": (0.8, 1.2)}, {"brightness": (0.8, 1.2)}, {"contrast": (0.8, 1.2)},
                 {"rotation_deg": 2.0}, {"scale": (0.98, 1.02)}, {"shear_deg": 2.0}, {"translate_px": 2.0}):  # fmt: skip
        out = ClipAugmenter(dataclasses.replace(off, **part), seed=0)(frames)
        assert not torch.equal(out, frames), part


def test_translation_moves_pixels_by_whole_pixels():
    frames = _frames(1, 1, seed=2)
    params = _identity(1)
    params.translate_px = torch.tensor([[2.0, -1.0]], dtype=torch.float64)  # right 2, up 1
    out = apply_augment(frames, params)
    assert torch.equal(out[0, 0, 0:22, 2:32], frames[0, 0, 1:23, 0:30])


def test_colour_transform_keeps_grey_grey_and_brightness_scales():
    grey = torch.full((1, 2, 8, 8, 3), 100, dtype=torch.uint8)
    params = _identity(1)
    params.hue = torch.tensor([0.2], dtype=torch.float64)
    params.saturation = torch.tensor([1.2], dtype=torch.float64)
    assert torch.equal(apply_augment(grey, params), grey)
    params.brightness = torch.tensor([1.2], dtype=torch.float64)
    assert torch.equal(apply_augment(grey, params), torch.full_like(grey, 120))


def test_augment_config_is_validated():
    with pytest.raises(ValueError, match="augment.hue"):
        AugmentConfig(hue=0.7)
    with pytest.raises(ValueError, match="augment.contrast"):
        AugmentConfig(contrast=(1.2, 0.8))


# --------------------------------------------------------------------------------------------- optimiser


def test_linear_lr_decay_with_warmup():
    cfg = OptimConfig(lr=1.0, weight_decay=0.0, warmup_steps=2, final_lr_fraction=0.1)
    factors = [lr_factor(s, 12, cfg) for s in range(13)]
    assert factors[:2] == [0.5, 1.0]
    np.testing.assert_allclose(factors[2:], np.linspace(1.0, 0.1, 11))
    model = torch.nn.Linear(2, 2)
    opt, sched = build_optimizer(model, OptimConfig(lr=0.5, weight_decay=0.1), total_steps=4)
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    np.testing.assert_allclose(lrs, [0.5, 0.375, 0.25, 0.125])


def test_weight_decay_applies_to_weights_not_biases_or_norms():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    decay, no_decay = param_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 3])]
    assert len(no_decay["params"]) == 3


# --------------------------------------------------------------------------------------------- recipes


def test_every_recipe_loads_and_the_released_ones_carry_the_method_numbers():
    from vpt_ray.bc.config import BCTrainConfig
    from vpt_ray.idm.config import IDMTrainConfig

    assert known_recipes("idm-") == ["idm-4x", "idm-crafter-small"]
    for name in known_recipes("idm-"):
        load_recipe(IDMTrainConfig, name)
    for name in known_recipes("bc-"):
        overrides = {"init": "/some/checkpoint"} if "finetune" in name else None
        load_recipe(BCTrainConfig, name, overrides)
    idm = load_recipe(IDMTrainConfig, "idm-4x")
    assert (idm.optim.lr, idm.optim.weight_decay, idm.batch_size, idm.clip_len, idm.schedule.epochs) == (0.003, 0.01, 128, 128, 20)
    assert idm.augment == AugmentConfig()  # hue 0.2, 0.8-1.2, 2 deg, 0.98-1.02, 2 deg, 2 px
    expect = {"bc-foundation-3x": (0.002147, 0.0625, 880, 30), "bc-foundation-2x": (0.001831, 0.051376, 640, None),
              "bc-foundation-1x": (0.001586, 0.044506, 480, 15)}  # fmt: skip
    for name, (lr, wd, batch, epochs) in expect.items():
        bc = load_recipe(BCTrainConfig, name)
        assert (bc.optim.lr, bc.optim.weight_decay, bc.batch_size) == (lr, wd, batch)
        assert epochs is None or bc.schedule.epochs == epochs
        assert bc.null_filter.enabled and bc.null_filter.min_run == 3 and bc.camera_mask
    ft = load_recipe(BCTrainConfig, "bc-finetune-earlygame", {"init": "x"})
    assert (ft.optim.lr, ft.optim.weight_decay, ft.batch_size) == (0.000181, 0.039428, 16)


def test_overrides_are_parsed_as_yaml_and_validated_with_the_recipe():
    from vpt_ray.idm.config import IDMTrainConfig

    over = parse_overrides(["optim.lr=2e-4", "augment.enabled=false", "schedule.max_steps=7", "clip_len=16"])
    cfg = load_recipe(IDMTrainConfig, "idm-crafter-small", over)
    assert (cfg.optim.lr, cfg.augment.enabled, cfg.schedule.max_steps, cfg.clip_len) == (2e-4, False, 7, 16)
    assert cfg.optim.weight_decay == 0.01  # untouched fields keep the recipe's values
    with pytest.raises(ConfigError, match=r"optim\.lrr.*unknown field"):
        load_recipe(IDMTrainConfig, "idm-crafter-small", parse_overrides(["optim.lrr=1"]))
    with pytest.raises(ConfigError, match=r"batch_size 6 must be a multiple of scaling.num_workers 4"):
        load_recipe(IDMTrainConfig, "idm-crafter-small", parse_overrides(["batch_size=6", "scaling.num_workers=4"]))
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_overrides(["lr"])
    with pytest.raises(ConfigError, match="no such training recipe"):
        load_recipe(IDMTrainConfig, "idm-nonexistent")


def test_precision_and_compile_are_recipe_fields_validated_on_load():
    from vpt_ray.bc.config import BCTrainConfig
    from vpt_ray.cli import build_parser
    from vpt_ray.idm.config import IDMTrainConfig
    from vpt_ray.training.cli import overrides_from_args

    for cls, name in ((IDMTrainConfig, "idm-4x"), (BCTrainConfig, "bc-crafter-small")):
        cfg = load_recipe(cls, name)
        assert (cfg.precision, cfg.compile) == ("auto", False)  # bf16 on GPUs, fp32 on CPUs; compile off
        assert load_recipe(cls, name, parse_overrides(["precision=bf16"])).precision == "bf16"
        with pytest.raises(ConfigError, match=r"field 'precision': 'fp16' is not one of \['auto', 'fp32', 'bf16'\]"):
            load_recipe(cls, name, parse_overrides(["precision=fp16"]))
    args = build_parser().parse_args(["train-bc", "data", "--out", "run", "--precision", "fp32", "--compile"])
    assert overrides_from_args(args) == {"precision": "fp32", "compile": True}


def test_step_means_read_the_device_once_per_interval():
    means = StepMeans()
    assert means.pop() == {}
    for loss in (1.0, 2.0, 6.0):
        means.add({"loss": torch.tensor(loss), "grad_norm": torch.tensor(2 * loss, dtype=torch.float64)})
    assert means.pop() == {"loss": 3.0, "grad_norm": 6.0}
    means.add({"loss": torch.tensor(5.0)})
    assert means.pop() == {"loss": 5.0}  # a fresh interval after each pop


def test_ddp_uses_nccl_between_gpus_and_gloo_between_cpus():
    assert ddp_backend(use_gpu=True) == "nccl" and ddp_backend(use_gpu=False) == "gloo"


def test_bc_needs_exactly_one_of_model_and_init():
    from vpt_ray.bc.config import BCTrainConfig

    with pytest.raises(ConfigError, match="exactly one of model"):
        load_recipe(BCTrainConfig, "bc-crafter-finetune")
    with pytest.raises(ConfigError, match="exactly one of model"):
        load_recipe(BCTrainConfig, "bc-crafter-small", {"init": "/x"})


# --------------------------------------------------------------------------------------------- data split, run dir


def test_heldout_split_is_deterministic_and_never_empty():
    ids = [f"episode-{i}" for i in range(20)]
    held = heldout_episodes(ids, 0.1)
    assert len(held) == 2 and held == heldout_episodes(list(reversed(ids)), 0.1)
    assert len(heldout_episodes(ids[:3], 0.1)) == 1
    assert heldout_episodes(ids[:1], 0.5) == set() and heldout_episodes(ids, 0.0) == set()
    # Adding episodes never moves a held-out one into training unless it is displaced by a smaller hash.
    assert held <= heldout_episodes(ids, 0.1)


def test_run_dir_refuses_a_different_config_but_resumes_a_longer_schedule(tmp_path):
    cfg = {"model": "m", "optim": {"lr": 1.0}, "schedule": {"max_steps": 5}, "scaling": {"num_workers": 1}}
    assert prepare_run_dir(tmp_path, cfg) is False
    assert prepare_run_dir(tmp_path, {**cfg, "schedule": {"max_steps": 9}, "scaling": {"num_workers": 2}}) is True
    with pytest.raises(ConfigError, match=r"different config \(fields \['optim'\]\)"):
        prepare_run_dir(tmp_path, {**cfg, "optim": {"lr": 2.0}})
    # How it computes may change on resume (e.g. on another machine): precision and compile.
    assert prepare_run_dir(tmp_path, {**cfg, "precision": "bf16", "compile": True}) is True
