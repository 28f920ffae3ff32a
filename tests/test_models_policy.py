"""Behaviour of VPTPolicy / InverseDynamicsModel beyond the reference vectors: other shapes, episode starts at any
step, chunked vs step-by-step, distribution helpers, the PPG auxiliary value head."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from vpt_ray.config import from_dict
from vpt_ray.models import InverseDynamicsModel, ModelConfig, VPTPolicy, load_preset

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY_NET = {
    "img_shape": [24, 20, 3],  # non-square
    "timesteps": 4,
    "hidsize": 32,
    "impala_chans": [4, 8, 8],
    "impala_kwargs": {"post_pool_groups": 1},
    "init_norm_kwargs": {"batch_norm": False, "group_norm_groups": 1},
    "attention_heads": 4,
    "attention_memory_size": 10,  # maxlen 6
    "n_recurrence_layers": 2,
    "use_pre_lstm_ln": False,
}


def tiny_config(action_space="crafter", temperature=1.0, **net) -> ModelConfig:
    data = {"kind": "policy", "action_space": action_space, "temperature": temperature, "net": {**TINY_NET, **net}}
    return from_dict(ModelConfig, data)


def tiny_policy(seed=0, **kwargs) -> VPTPolicy:
    torch.manual_seed(seed)
    model = VPTPolicy(tiny_config(**kwargs)).eval()
    # Random heads and normaliser so that nothing is trivially zero or uniform.
    with torch.no_grad():
        for head in model.pi_head.values():
            head.linear_layer.weight.normal_(0.0, 0.2)
        model.value_normalizer.running_mean.fill_(0.2)
        model.value_normalizer.running_mean_sq.fill_(1.5)
        model.value_normalizer.debiasing_term.fill_(0.7)
    return model


def frames(model, b, t, seed=0):
    h, w, _ = model.config.net.img_shape
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, t, h, w, 3), generator=g, dtype=torch.uint8)


def run_steps(model, x, first, state, sizes):
    """Run the frames in consecutive calls of the given lengths; concatenate outputs."""
    outs, t0 = [], 0
    for n in sizes:
        out = model(x[:, t0 : t0 + n], first[:, t0 : t0 + n], state)
        state = out.state
        outs.append(out)
        t0 += n
    cat = {k: torch.cat([o.logprobs[k] for o in outs], 1) for k in outs[0].logprobs}
    return cat, torch.cat([o.vpred for o in outs], 1), state


def assert_states_close(a, b, atol=1e-5):
    assert torch.equal(a["mask"], b["mask"])
    for key in ("k", "v"):
        assert (a[key] - b[key]).abs().max() <= atol, key


SHAPES = [
    {},
    {"img_shape": [16, 36, 3], "attention_heads": 2, "n_recurrence_layers": 1, "attention_memory_size": 7},
    {"hidsize": 48, "attention_heads": 8, "n_recurrence_layers": 3, "timesteps": 2, "attention_memory_size": 3},
    {"impala_kwargs": {"post_pool_groups": None}, "init_norm_kwargs": {"batch_norm": False, "group_norm_groups": None},
     "use_pre_lstm_ln": True, "pointwise_use_activation": True, "impala_width": 2},
    {"use_pointwise_layer": False, "recurrence_is_residual": False, "impala_chans": [4, 8]},
]  # fmt: skip


@pytest.mark.parametrize("net", SHAPES)
@torch.no_grad()
def test_chunked_equals_step_by_step_for_other_shapes(net):
    model = tiny_policy(**net)
    b, t = 3, 13  # longer than the memory
    x = frames(model, b, t)
    first = torch.zeros(b, t, dtype=torch.bool)
    first[:, 0] = True
    state = model.initial_state(b)
    whole, vwhole, s_whole = run_steps(model, x, first, state, [t])
    steps, vsteps, s_steps = run_steps(model, x, first, state, [1] * t)
    pieces, vpieces, s_pieces = run_steps(model, x, first, state, [5, 2, 6])
    for other, vother, s_other in ((steps, vsteps, s_steps), (pieces, vpieces, s_pieces)):
        for k in whole:
            assert (whole[k] - other[k]).abs().max() <= 1e-5
        assert (vwhole - vother).abs().max() <= 1e-5
        assert_states_close(s_whole, s_other)
    m, L, H = model.memory_len, model.config.net.n_recurrence_layers, model.config.net.hidsize
    assert s_whole["mask"].shape == (b, L, m) and s_whole["mask"].dtype == torch.bool
    assert s_whole["k"].shape == s_whole["v"].shape == (b, L, m, H)
    assert s_whole["mask"].all()  # t >= memory: every slot holds a frame of the current episode
    assert whole["action"].shape == (b, t, 17)
    assert torch.allclose(whole["action"].exp().sum(-1), torch.ones(b, t))


@pytest.mark.parametrize("k", [1, 3, 7, 10])
@torch.no_grad()
def test_first_at_any_step_equals_fresh_start(k):
    model = tiny_policy()
    b, t = 2, 11
    x = frames(model, b, t, seed=1)
    warm = model(frames(model, b, 5, seed=2), torch.zeros(b, 5, dtype=torch.bool)).state
    first = torch.zeros(b, t, dtype=torch.bool)
    first[0, k] = True  # batch element 0 starts an episode at t=k; element 1 continues throughout
    one = model(x, first, warm)
    head = model(x[:, :k], first[:, :k], warm)
    tail = model(x[:, k:], first[:, k:], head.state)
    lp_split = torch.cat([head.logprobs["action"], tail.logprobs["action"]], 1)
    assert (one.logprobs["action"] - lp_split).abs().max() <= 1e-5
    assert (one.vpred - torch.cat([head.vpred, tail.vpred], 1)).abs().max() <= 1e-5
    assert_states_close(one.state, tail.state)
    # The new episode does not see the old one: same as starting element 0 from an empty memory.
    fresh = model(x[:1, k:], first[:1, k:], None)
    assert (one.logprobs["action"][0, k:] - fresh.logprobs["action"][0]).abs().max() <= 1e-5
    # ...while the memory was used before the start and by the continuing element.
    cold = model(x, torch.zeros(b, t, dtype=torch.bool), None)
    assert (one.logprobs["action"][1] - cold.logprobs["action"][1]).abs().max() > 1e-3


@torch.no_grad()
def test_state_mask_tracks_episode_of_last_frame():
    model = tiny_policy()
    m = model.memory_len  # 6
    first = torch.zeros(1, 4, dtype=torch.bool)
    first[0, 2] = True
    out = model(frames(model, 1, 4), first, model.initial_state(1))
    # Memory slots: [empty x2, frame0, frame1 (old episode), frame2, frame3 (new episode)]
    expected = torch.tensor([False, False, False, False, True, True])
    assert m == 6 and torch.equal(out.state["mask"][0, 0], expected) and torch.equal(out.state["mask"][0, 1], expected)


def test_gradients_flow_within_chunk_not_into_memory():
    model = tiny_policy().train()
    b, t = 2, 5
    state = model(frames(model, b, t), torch.zeros(b, t, dtype=torch.bool)).state
    assert not state["k"].requires_grad and not state["v"].requires_grad
    out = model(frames(model, b, t, seed=3), torch.zeros(b, t, dtype=torch.bool), state)
    (out.logprobs["action"][:, -1, 0].sum() + out.vpred.sum()).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_bad_inputs_are_named():
    model = tiny_policy()
    with pytest.raises(ValueError, match="frames must be uint8"):
        model(torch.zeros(1, 2, 24, 20, 3), torch.zeros(1, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"frames must be uint8 \(B, T, 24, 20, 3\)"):
        model(torch.zeros(1, 2, 20, 24, 3, dtype=torch.uint8), torch.zeros(1, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="first must be bool"):
        model(frames(model, 1, 2), torch.zeros(1, 3, dtype=torch.bool))
    state = model.initial_state(1)
    state["k"] = state["k"][:, :1]
    with pytest.raises(ValueError, match=r"state\['k'\] must have shape"):
        model(frames(model, 1, 2), torch.zeros(1, 2, dtype=torch.bool), state)


def test_temperature_divides_logits():
    hot, cold = tiny_policy(temperature=2.0), tiny_policy(temperature=1.0)
    x, first = frames(hot, 1, 3), torch.zeros(1, 3, dtype=torch.bool)
    with torch.no_grad():
        lp_hot, lp_cold = hot(x, first).logprobs["action"], cold(x, first).logprobs["action"]
    assert torch.allclose(lp_hot, torch.log_softmax(lp_cold / 2.0, -1), atol=1e-5)


# ------------------------------------------------------------------------------------------ distributions
def random_logprobs(model, b=4, t=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        k: torch.log_softmax(3 * torch.randn(b, t, n, generator=g), -1) for k, n in model.action_space.policy_heads.items()
    }


def test_sample_deterministic_and_reproducible():
    model = tiny_policy()
    lp = random_logprobs(model)
    assert torch.equal(model.sample(lp, deterministic=True)["action"], lp["action"].argmax(-1))
    a = model.sample(lp, generator=torch.Generator().manual_seed(5))
    b = model.sample(lp, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a["action"], b["action"]) and a["action"].dtype == torch.int64
    # Frequencies follow the probabilities.
    probs = torch.tensor([0.7, 0.2, 0.1])
    lp1 = {"action": probs.log().expand(20000, 1, 3)}
    counts = torch.bincount(model.sample(lp1, generator=torch.Generator().manual_seed(0))["action"].flatten(), minlength=3)
    assert torch.allclose(counts / 20000.0, probs, atol=0.015)


def test_crafter_log_prob_entropy_kl():
    model = tiny_policy()
    p, q = random_logprobs(model, seed=1), random_logprobs(model, seed=2)
    a = model.sample(p, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(model.log_prob(p, a), p["action"].gather(-1, a["action"][..., None])[..., 0])
    dist_p = torch.distributions.Categorical(logits=p["action"])
    dist_q = torch.distributions.Categorical(logits=q["action"])
    assert torch.allclose(model.entropy(p), dist_p.entropy(), atol=1e-5)
    assert torch.allclose(model.kl(p, q), torch.distributions.kl_divergence(dist_p, dist_q), atol=1e-5)
    assert model.kl(p, p).abs().max() < 1e-6


@pytest.fixture(scope="module")
def minecraft_policy():
    return tiny_policy(action_space="minecraft")


def test_minecraft_log_prob_masks_camera_when_meta_button_off(minecraft_policy):
    model = minecraft_policy
    p = random_logprobs(model, b=1, t=2)
    meta_on = model.action_space.policy_loss_masks({"buttons": np.arange(8641), "camera": np.zeros(8641, np.int64)})
    off, on = int(np.flatnonzero(meta_on["camera"] == 0)[3]), int(np.flatnonzero(meta_on["camera"] == 1)[3])
    acts = {"buttons": torch.tensor([[off, on]]), "camera": torch.tensor([[7, 7]])}
    lp = model.log_prob(p, acts)
    assert torch.allclose(lp[0, 0], p["buttons"][0, 0, off])
    assert torch.allclose(lp[0, 1], p["buttons"][0, 1, on] + p["camera"][0, 1, 7])


def effective_distribution(lp_buttons, lp_camera, gate):
    """Explicit distribution over effective actions: (button) when the camera is ignored, else (button, camera)."""
    pb, pc = lp_buttons.exp().double().numpy(), lp_camera.exp().double().numpy()
    return np.concatenate([pb[gate == 0], (pb[gate == 1][:, None] * pc[None, :]).ravel()])


def test_minecraft_entropy_and_kl_are_those_of_effective_actions(minecraft_policy):
    model = minecraft_policy
    gate = model.action_space.policy_loss_masks({"buttons": np.arange(8641), "camera": np.zeros(8641, np.int64)})["camera"]
    p, q = random_logprobs(model, b=1, t=2, seed=3), random_logprobs(model, b=1, t=2, seed=4)
    ent, kl = model.entropy(p), model.kl(p, q)
    for t in range(2):
        ep = effective_distribution(p["buttons"][0, t], p["camera"][0, t], gate)
        eq = effective_distribution(q["buttons"][0, t], q["camera"][0, t], gate)
        assert ep.sum() == pytest.approx(1.0)
        assert ent[0, t].item() == pytest.approx(-(ep * np.log(ep)).sum(), rel=1e-4)
        assert kl[0, t].item() == pytest.approx((ep * np.log(ep / eq)).sum(), rel=1e-4)


# ------------------------------------------------------------------------------------------------- PPG
def test_reset_value_heads_for_rl():
    model = tiny_policy()
    x, first = frames(model, 2, 3), torch.zeros(2, 3, dtype=torch.bool)
    assert model(x, first).aux_vpred is None
    model.reset_value_heads_for_rl(generator=torch.Generator().manual_seed(0))
    out = model(x, first)
    assert torch.equal(out.vpred, torch.zeros(2, 3)) and torch.equal(out.value, torch.zeros(2, 3))
    assert out.aux_vpred.shape == (2, 3) and out.aux_vpred.abs().min() > 0 and out.aux_vpred.requires_grad
    w = model.aux_value_head.weight
    assert torch.allclose(w.norm(), torch.tensor(0.1)) and torch.equal(model.aux_value_head.bias, torch.zeros(1))
    again = tiny_policy()
    again.reset_value_heads_for_rl(generator=torch.Generator().manual_seed(0))
    assert torch.equal(again.aux_value_head.weight, w)
    assert {"aux_value_head.weight", "aux_value_head.bias"} <= set(model.state_dict())
    assert model.value_normalizer.debiasing_term.item() == 0.0


def test_value_normalizer_update_tracks_targets():
    model = tiny_policy()
    norm = model.value_normalizer
    norm.reset()
    norm.beta = 0.9  # fast EWMA for the test
    targets = 5.0 + 2.0 * torch.randn(4000, generator=torch.Generator().manual_seed(0))
    for chunk in targets.split(100):
        norm.update(chunk)
    mean, var = norm.mean_var()
    assert mean.item() == pytest.approx(5.0, abs=0.3) and var.item() == pytest.approx(4.0, rel=0.25)
    assert torch.allclose(norm.denormalize(norm.normalize(targets)), targets, atol=1e-4)


# ------------------------------------------------------------------------------------------------- IDM
def test_idm_is_non_causal_and_predicts_factors():
    cfg = load_preset("crafter-idm-small")
    cfg = dataclasses.replace(cfg, net=dataclasses.replace(cfg.net, hidsize=32, impala_chans=(4, 8, 8), timesteps=8,
                                                           attention_memory_size=8))  # fmt: skip
    torch.manual_seed(0)
    model = InverseDynamicsModel(cfg).eval()
    with torch.no_grad():
        model.pi_head["action"].linear_layer.weight.normal_()
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (2, 8, 64, 64, 3), generator=g, dtype=torch.uint8)
    with torch.no_grad():
        lp = model(x)
        y = x.clone()
        y[:, -1] = 255 - y[:, -1]
        lp_changed = model(y)
    assert lp["action"].shape == (2, 8, 1, 17)
    assert (lp["action"][:, 0] - lp_changed["action"][:, 0]).abs().max() > 1e-4  # frame 0 sees the last frame
    pred = model.predict(x)
    assert pred["action"].shape == (2, 8, 1) and torch.equal(pred["action"], lp["action"].argmax(-1))
    env = model.action_space.from_idm({"action": pred["action"].numpy()})
    assert env["action"].shape == (2, 8)


def test_idm_with_memory_attends_to_zero_memory_like_released_code():
    """attention_memory_size > timesteps with mask "none": the released IDM attends to a zero memory too."""
    cfg = load_preset("crafter-idm-small")
    net = dataclasses.replace(cfg.net, hidsize=32, impala_chans=(4, 8, 8), timesteps=4, attention_memory_size=6)
    torch.manual_seed(0)
    model = InverseDynamicsModel(dataclasses.replace(cfg, net=net)).eval()
    x = torch.randint(0, 256, (1, 4, 64, 64, 3), dtype=torch.uint8)
    with torch.no_grad():
        latent = model.latent(x)
        b_nd = model.net.recurrent_layer.blocks[0].r.orc_block.b_nd
        b_nd.add_(1.0)  # the relative bias now matters: it applies to memory keys in range
        assert (model.latent(x) - latent).abs().max() > 1e-4
