"""Mixed precision (vpt_ray.models.precision): the option's validation, and bf16 autocast against fp32 on the
fixture-sized models (fixtures/vpt-reference): heads, log-probs and memory stay fp32, and bf16 log-probs stay
within the tolerances below of the fp32 ones (which match the released code to 1e-4).

Tolerances, from bf16's 8-bit mantissa (relative rounding 2^-9 per op) through a 2-block trunk: the measured
figures on these models are max |d log p| ~0.07, distribution-weighted |d log p| ~0.01, KL ~2e-4 nats.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_models_parity import load_reference

from vpt_ray.models.device import describe_device, to_device
from vpt_ray.models.layers import GroupNorm, LayerNorm
from vpt_ray.models.precision import (
    PrecisionError,
    autocast,
    check_precision,
    logprob_error,
    resolve_precision,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BF16_MAX_ABS = 0.3  # nats, any class
BF16_MEAN_ABS = 0.05  # nats, weighted by the fp32 distribution
BF16_KL = 2e-3  # nats per frame and head


def test_precision_values_are_validated_and_resolved_per_device():
    assert check_precision("bf16") == "bf16"
    with pytest.raises(PrecisionError, match=r"'fp16' is not one of \['auto', 'fp32', 'bf16'\]"):
        check_precision("fp16", where="recipe.yaml: precision")
    assert resolve_precision("auto", "cpu") == "fp32"  # the CPU default
    assert resolve_precision("bf16", "cpu") == "bf16"
    if not torch.cuda.is_available():
        assert resolve_precision("auto", "cuda") == "fp32"
        with pytest.raises(PrecisionError, match="no bf16"):
            resolve_precision("bf16", "cuda")
    with autocast("fp32", "cpu"):
        assert not torch.is_autocast_enabled("cpu")
    with autocast("bf16", "cpu"):
        assert torch.is_autocast_enabled("cpu")


def test_norms_compute_in_fp32_under_bf16_autocast():
    x = torch.randn(4, 8, 6, 6)
    with autocast("bf16", "cpu"):
        y_bf16 = torch.nn.functional.conv2d(x, torch.randn(8, 8, 3, 3))
        assert y_bf16.dtype == torch.bfloat16
        assert GroupNorm(1, 8)(y_bf16).dtype == torch.float32
        assert LayerNorm(4)(y_bf16).dtype == torch.float32


@pytest.fixture(scope="module")
def reference(reference_dir):
    """The fixture policy and IDM, loaded as the parity tests load them."""
    return {which: load_reference(reference_dir / which, key, kind)
            for which, key, kind in (("foundation", "policy_kwargs", "policy"), ("idm", "idm_net_kwargs", "idm"))}  # fmt: skip


def assert_bf16_close(err: dict[str, float], what: str) -> None:
    assert err["max_abs"] <= BF16_MAX_ABS and err["mean_abs"] <= BF16_MEAN_ABS and err["kl_max"] <= BF16_KL, (
        f"{what}: bf16 vs fp32 {err}")


@torch.no_grad()
def test_policy_bf16_logprobs_within_tolerance_memory_carried(reference):
    model, inp = reference["foundation"]["model"], reference["foundation"]["inputs"]
    state32 = state16 = None
    for c in "acfh":  # the fixture's sequence of calls, memory carried from one to the next
        out32 = model(inp[f"img_{c}"], inp[f"first_{c}"], state32)
        with autocast("bf16", "cpu"):
            out16 = model(inp[f"img_{c}"], inp[f"first_{c}"], state16)
        assert all(lp.dtype == torch.float32 for lp in out16.logprobs.values())
        assert out16.vpred.dtype == out16.latent.dtype == torch.float32
        assert out16.state["k"].dtype == out16.state["v"].dtype == torch.float32  # memory stays fp32
        err = logprob_error(out32.logprobs, out16.logprobs)
        assert_bf16_close(err, f"chunk {c}")
        assert err["max_abs"] > 0  # bf16 really ran
        state32, state16 = out32.state, out16.state
    # The log-prob of a taken action (what PPO ratios and the BC loss use) is as close.
    actions = model.sample(out32.logprobs, deterministic=True)
    lp32, lp16 = model.log_prob(out32.logprobs, actions), model.log_prob(out16.logprobs, actions)
    assert (lp32 - lp16).abs().max() <= 2 * BF16_MAX_ABS
    assert (model.kl(out32.logprobs, out16.logprobs)).max() <= 2 * BF16_KL


@torch.no_grad()
def test_idm_bf16_logprobs_within_tolerance(reference):
    model, inp = reference["idm"]["model"], reference["idm"]["inputs"]
    out32 = model(inp["video"])
    with autocast("bf16", "cpu"):
        out16 = model(inp["video"])
    assert all(lp.dtype == torch.float32 for lp in out16.values())
    err = logprob_error({k: v for k, v in out32.items()}, out16)
    assert_bf16_close(err, "idm")
    assert err["argmax_agree"] >= 0.9


def test_logprob_error_measures_what_it_says():
    ref = {"a": torch.log_softmax(torch.tensor([[0.0, 1.0, 2.0]]), -1)}
    same = logprob_error(ref, ref)
    assert same == {"max_abs": 0.0, "mean_abs": 0.0, "kl_max": 0.0, "argmax_agree": 1.0}
    other = {"a": torch.log_softmax(torch.tensor([[2.0, 1.0, 0.0]]), -1)}
    err = logprob_error(ref, other)
    p = ref["a"].exp()
    assert err["max_abs"] == pytest.approx(2.0) and err["argmax_agree"] == 0.0
    assert err["kl_max"] == pytest.approx(float((p * (ref["a"] - other["a"])).sum()))


def test_to_device_on_cpu_shares_the_array():
    a = np.arange(6, dtype=np.int64)
    t = to_device(a, "cpu")
    a[0] = 42
    assert t[0].item() == 42 and describe_device("cpu") == "cpu"
