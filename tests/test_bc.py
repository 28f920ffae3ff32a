"""BC training: null-run filtering (exactly runs >= 3, across chunk/record/episode boundaries, first flags kept),
the masked camera loss, Transformer-XL memory carried across chunks and reset at episode starts, the loss
falling on real data, and `vpt-ray train-bc` end to end on a real local Ray cluster: Crafter foundation +
fine-tuning from it (corrupt shard counted), Minecraft on two workers exported to the released format."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from vpt_ray.actions import get_action_space
from vpt_ray.actions.minecraft import CAMERA_META_ON
from vpt_ray.bc.data import FilteredStreams, null_runs_to_drop
from vpt_ray.bc.loss import BCMetrics, bc_loss
from vpt_ray.bc.train import forward_chunk, train_step
from vpt_ray.config import from_dict
from vpt_ray.data.shards import SegmentStreams, ShardWriter, episodes_of, read_index
from vpt_ray.idm.data import read_episode
from vpt_ray.models import ModelConfig, VPTPolicy, build_model, load_checkpoint, load_official

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_policy(action_space: str = "crafter", frame: int = 64) -> dict:
    return {
        "kind": "policy", "action_space": action_space,
        "net": {"img_shape": [frame, frame, 3], "timesteps": 8, "hidsize": 32, "impala_chans": [8, 8, 8],
                "impala_kwargs": {"post_pool_groups": 1}, "init_norm_kwargs": {"group_norm_groups": 1},
                "attention_mask_style": "clipped_causal", "attention_heads": 2, "attention_memory_size": 20,
                "n_recurrence_layers": 1, "use_pre_lstm_ln": False},
    }  # fmt: skip


def build(cfg: dict, seed: int = 0) -> VPTPolicy:
    torch.manual_seed(seed)
    return build_model(from_dict(ModelConfig, cfg))


# --------------------------------------------------------------------------------------------- null filtering


def test_null_runs_to_drop_exactly_runs_of_three_or_more():
    null = np.array([1, 0, 1, 1, 0, 1, 1, 1, 0, 1, 1, 1, 1, 1, 0, 1, 1], bool)
    first = np.zeros_like(null)
    want = np.array([0, 0, 0, 0, 0, 1, 1, 1, 0, 1, 1, 1, 1, 1, 0, 0, 0], bool)
    np.testing.assert_array_equal(null_runs_to_drop(null, first, 3), want)
    # An episode start cuts a run: 2 + 2 nulls are two short runs, not one of four.
    null = np.array([1, 1, 1, 1, 0, 1], bool)
    np.testing.assert_array_equal(null_runs_to_drop(null, np.array([0, 0, 1, 0, 0, 0], bool), 3), np.zeros(6, bool))
    np.testing.assert_array_equal(null_runs_to_drop(null, np.zeros(6, bool), 3), [1, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(null_runs_to_drop(null, np.zeros(6, bool), 1), null)
    np.testing.assert_array_equal(null_runs_to_drop(null, np.zeros(6, bool), 5), np.zeros(6, bool))


NULL_RUNS = {  # episode -> null frames; runs of >= 3 are dropped (chunks of 16, records of 7 frames)
    "A": [*range(0, 4), 10, 11, 20, *range(30, 35), *range(46, 50), 62, 63, 64, *range(147, 150)],
    "B": [0, 1, 100, 101],
    "C": [0, 1, 2, 5, 6, *range(40, 43)],
}


@pytest.fixture(scope="module")
def designed_shards(crafter_shards, tmp_path_factory):
    """Three real Crafter episodes with their actions rewritten: nulls exactly at NULL_RUNS, else "do"."""
    out = tmp_path_factory.mktemp("designed")
    indexes = [read_index(p) for p in sorted(crafter_shards.glob("*.vshard"))]
    with ShardWriter(out / "designed.vshard", "crafter", indexes[0].frame_shape, max_record_frames=7) as w:
        for name, index in zip(NULL_RUNS, indexes):
            frames, _ = read_episode(episodes_of(index)[0])
            actions = np.full(len(frames), 5, np.int64)  # "do"
            actions[NULL_RUNS[name]] = 0
            w.write(frames, episode_id=name, source=name, actions={"action": actions})
    return out


def _stream_by_episode(streams: SegmentStreams, batches) -> dict[str, list[tuple[int, bool]]]:
    got: dict[str, list[tuple[int, bool]]] = {}
    for batch in batches:
        for b, t in zip(*np.nonzero(batch.valid_bt)):
            name = streams.episodes[batch.episode_bt[b, t]].episode_id
            got.setdefault(name, []).append((int(batch.frame_index_bt[b, t]), bool(batch.first_bt[b, t])))
    return got


def test_filtered_streams_drop_exactly_the_long_null_runs_and_keep_first_flags(designed_shards):
    streams = SegmentStreams([designed_shards / "designed.vshard"], 2, 16, shuffle=False)
    filtered = FilteredStreams(streams, 3, epochs=1)
    batches = list(filtered)
    # Dense rows: each row's frames are valid up to where it runs out at the end of the pass, no holes.
    for b in range(2):
        valid = np.concatenate([batch.valid_bt[b] for batch in batches])
        assert valid[: valid.sum()].all() and valid.sum() > 100
    got = _stream_by_episode(streams, batches)
    dropped = 0
    for name, nulls in NULL_RUNS.items():
        null = np.zeros(150, bool)
        null[nulls] = True
        drop = null_runs_to_drop(null, np.zeros(150, bool), 3)
        dropped += int(drop.sum())
        assert [f for f, _ in got[name]] == np.nonzero(~drop)[0].tolist(), name
        # One "first" per episode, on its first kept frame (A's and C's first frames were dropped).
        assert [first for _, first in got[name]] == [True] + [False] * (len(got[name]) - 1), name
    assert filtered.dropped == dropped == (4 + 5 + 4 + 3 + 3) + (3 + 3) and filtered.seen == 450
    # Row 0 plays A then C: C's start is flagged right after A's last kept frame (146).
    row0 = [(streams.episodes[e].episode_id, f, first) for batch in batches
            for e, f, first, v in zip(batch.episode_bt[0], batch.frame_index_bt[0], batch.first_bt[0], batch.valid_bt[0]) if v]
    i = [k for k, (name, _, _) in enumerate(row0) if name == "C"][0]
    assert row0[i - 1] == ("A", 146, False) and row0[i] == ("C", 3, True)


def test_without_filtering_every_valid_frame_is_kept(designed_shards):
    streams = SegmentStreams([designed_shards / "designed.vshard"], 2, 16, shuffle=False)
    got = _stream_by_episode(streams, FilteredStreams(streams, None, epochs=1))
    assert {name: [f for f, _ in v] for name, v in got.items()} == {name: list(range(150)) for name in NULL_RUNS}


def test_infinite_streams_refuse_rows_that_never_get_data(designed_shards):
    streams = SegmentStreams([designed_shards / "designed.vshard"], 4, 16, shuffle=False)  # 3 episodes, 4 rows
    with pytest.raises(ValueError, match=r"streams \[3\] of 4 got no frames"):
        for _ in FilteredStreams(streams, 3):
            pass



def test_null_runs_longer_than_a_chunk_are_refused_before_any_work(designed_shards, tmp_path, capsys):
    # Runs are measured with one chunk of context on each side: longer ones could not be seen whole.
    streams = SegmentStreams([designed_shards / "designed.vshard"], 2, 16, shuffle=False)
    with pytest.raises(ValueError, match=r"min_run 18 may be at most chunk_len \+ 1 \(17\)"):
        FilteredStreams(streams, 18)
    FilteredStreams(streams, 17)

    from vpt_ray.cli import main

    preset = tmp_path / "tiny-policy.yaml"
    preset.write_text(yaml.safe_dump(tiny_policy()))
    assert main(["train-bc", str(designed_shards), "--out", str(tmp_path / "bc"), "--model", str(preset),
                 "--chunk-len", "8", "--set", "null_filter.min_run=10"]) == 1  # fmt: skip
    assert "null_filter.min_run 10 may be at most chunk_len + 1 (9)" in capsys.readouterr().err
    assert not (tmp_path / "bc").exists()

# --------------------------------------------------------------------------------------------- loss


def test_camera_loss_is_masked_where_the_camera_meta_button_is_off():
    space = get_action_space("minecraft")
    g = torch.Generator().manual_seed(0)
    logprobs = {"buttons": torch.log_softmax(torch.randn(1, 4, 8641, generator=g), -1),
                "camera": torch.log_softmax(torch.randn(1, 4, 121, generator=g), -1)}  # fmt: skip
    off, on = np.nonzero(~CAMERA_META_ON)[0][1], np.nonzero(CAMERA_META_ON)[0][1]
    labels = {"buttons": torch.tensor([[off, on, off, on]]), "camera": torch.tensor([[60, 61, 7, 100]])}
    valid = torch.ones(1, 4, dtype=torch.bool)
    loss, parts = bc_loss(space, logprobs, labels, valid)
    lp_b = logprobs["buttons"][0, torch.arange(4), labels["buttons"][0]]
    lp_c = logprobs["camera"][0, torch.arange(4), labels["camera"][0]]
    assert torch.allclose(parts["buttons"], -lp_b.mean())
    assert torch.allclose(parts["camera"], -(lp_c[1] + lp_c[3]) / 4)  # only the meta-on frames
    assert torch.allclose(loss, parts["buttons"] + parts["camera"])
    # Changing the camera distribution where the meta button is off changes nothing; where it is on, it does.
    for t, changes in ((0, False), (2, False), (1, True)):
        moved = {k: v.clone() for k, v in logprobs.items()}
        moved["camera"][0, t] = torch.log_softmax(torch.randn(121, generator=g), -1)
        assert (not torch.allclose(bc_loss(space, moved, labels, valid)[0], loss)) == changes, t
    # The released BC code's unmasked loss counts every frame's camera label.
    _, unmasked = bc_loss(space, logprobs, labels, valid, camera_mask=False)
    assert torch.allclose(unmasked["camera"], -lp_c.mean())


def test_bc_metrics_count_the_masked_heads_and_the_predicted_null_rate():
    space = get_action_space("crafter")
    logprobs = {"action": torch.log_softmax(torch.tensor([[[5.0] + [0.0] * 16, [0.0, 5.0] + [0.0] * 15,
                                                           [5.0] + [0.0] * 16]]), -1)}  # fmt: skip
    m = BCMetrics(space)
    m.update(logprobs, {"action": torch.tensor([[0, 2, 3]])}, torch.tensor([[True, True, False]]))
    out = m.compute()
    assert out["frames"] == 2 and out["accuracy"] == 0.5 and out["pred_null_rate"] == 0.5
    assert out["label_null_rate"] == 0.5
    assert out["nll"] == pytest.approx(-(logprobs["action"][0, 0, 0] + logprobs["action"][0, 1, 2]).item() / 2)


# --------------------------------------------------------------------------------------------- memory


def test_memory_is_carried_across_chunks_and_reset_at_new_episodes(designed_shards):
    """The training loop's chunk step (forward_chunk with the carried memory) gives, for every frame, what the
    policy computes on the whole filtered episode in one call from a fresh start."""
    model = build(tiny_policy()).eval()
    streams = SegmentStreams([designed_shards / "designed.vshard"], 2, 8, shuffle=False)
    chunked: dict[tuple[str, int], torch.Tensor] = {}
    unreset: dict[tuple[str, int], torch.Tensor] = {}
    memory = memory_nf = None
    with torch.no_grad():
        for batch in FilteredStreams(streams, 3, epochs=1):
            out, _, valid, memory = forward_chunk(model, model.action_space, batch, memory, torch.device("cpu"))
            no_first = batch.__class__(**{**batch.__dict__, "first_bt": np.zeros_like(batch.first_bt)})
            out_nf, _, _, memory_nf = forward_chunk(model, model.action_space, no_first, memory_nf, torch.device("cpu"))
            for b, t in zip(*np.nonzero(batch.valid_bt)):
                key = (streams.episodes[batch.episode_bt[b, t]].episode_id, int(batch.frame_index_bt[b, t]))
                chunked[key] = out.logprobs["action"][b, t]
                unreset[key] = out_nf.logprobs["action"][b, t]
        for name, nulls in NULL_RUNS.items():
            episode = next(e for e in streams.episodes if e.episode_id == name)
            frames, _ = read_episode(episode)
            null = np.zeros(len(frames), bool)
            null[nulls] = True
            kept = np.nonzero(~null_runs_to_drop(null, np.zeros(len(frames), bool), 3))[0]
            first = torch.zeros(1, len(kept), dtype=torch.bool)
            first[0, 0] = True
            whole = model(torch.from_numpy(frames[kept][None]), first).logprobs["action"][0]
            ours = torch.stack([chunked[(name, int(f))] for f in kept])
            torch.testing.assert_close(ours, whole, atol=2e-5, rtol=1e-4)
    # Control: without the episode starts, C (played after A in row 0) would see A's frames.
    c_kept = [k for k in chunked if k[0] == "C"]
    assert max((chunked[k] - unreset[k]).abs().max().item() for k in c_kept) > 1e-3


def test_bc_loss_falls_on_real_streams(designed_shards):
    model = build(tiny_policy())
    streams = SegmentStreams([designed_shards / "designed.vshard"], 2, 8, shuffle=False)
    batch = next(iter(FilteredStreams(streams, 3, epochs=1)))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):
        out, labels, valid, _ = forward_chunk(model, model.action_space, batch, None, torch.device("cpu"))
        loss, _ = bc_loss(model.action_space, out.logprobs, labels, valid)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_bc_train_steps_reduce_the_loss_in_both_precisions(designed_shards, precision):
    """The training loop's own step (bc.train.train_step: forward under the precision, fp32 loss, AdamW) on one
    real chunk: the loss falls as in fp32, and the bf16 step's first loss is the fp32 one up to bf16 rounding."""
    from vpt_ray.bc.config import BCTrainConfig
    from vpt_ray.training.config import OptimConfig
    from vpt_ray.training.optim import build_optimizer

    streams = SegmentStreams([designed_shards / "designed.vshard"], 2, 8, shuffle=False)
    batch = next(iter(FilteredStreams(streams, 3, epochs=1)))
    cfg = BCTrainConfig(optim=OptimConfig(lr=3e-3, weight_decay=0.0), model="unused", precision=precision)
    model = build(tiny_policy())
    with torch.no_grad():
        out, labels, valid, _ = forward_chunk(model, model.action_space, batch, None, torch.device("cpu"))
        fp32_first = bc_loss(model.action_space, out.logprobs, labels, valid)[0].item()
    optimizer, scheduler = build_optimizer(model, cfg.optim, total_steps=1000)
    losses = []
    for _ in range(20):
        loss, parts, grad_norm, memory = train_step(model, model, batch, None, optimizer, scheduler, cfg,
                                                    torch.device("cpu"), precision)  # fmt: skip
        assert loss.dtype == torch.float32 and grad_norm.dtype == torch.float32 and memory["k"].dtype == torch.float32
        losses.append(loss.item())
    assert losses[0] == pytest.approx(fp32_first, rel=2e-2 if precision == "bf16" else 1e-6)
    assert (losses[0] != fp32_first) == (precision == "bf16")  # bf16 really computed the bf16 step
    assert losses[-1] < 0.5 * losses[0], losses


# --------------------------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_train_bc_cli_crafter_foundation_then_fine_tune(ray_local, crafter_shards, tmp_path, capsys):
    from vpt_ray.cli import main

    data = tmp_path / "data"
    shutil.copytree(crafter_shards, data)
    good = sorted(data.glob("*.vshard"))[0]
    (data / "truncated.vshard").write_bytes(good.read_bytes()[:1000])
    preset = tmp_path / "tiny-policy.yaml"
    preset.write_text(yaml.safe_dump(tiny_policy()))
    common = ["--set", "schedule.checkpoint_every=4", "--set", "val_fraction=0.25", "--json"]
    assert main(["train-bc", str(data), "--out", str(tmp_path / "bc"), "--model", str(preset), "--steps", "6",
                 "--batch-size", "2", "--chunk-len", "8", *common]) == 0  # fmt: skip
    summary = json.loads(capsys.readouterr().out)
    metrics = summary["metrics"]
    assert metrics["step"] == 6 and metrics["data/bad_shards"] == 1
    assert metrics["eval/frames"] > 0 and 0 <= metrics["eval/accuracy"] <= 1 and metrics["eval/nll"] > 0
    foundation = load_checkpoint(summary["final"])
    assert isinstance(foundation, VPTPolicy)

    # Fine-tune from the foundation checkpoint with the fine-tuning recipe (model comes from --init).
    assert main(["train-bc", str(data), "--out", str(tmp_path / "ft"), "--recipe", "bc-crafter-finetune",
                 "--init", summary["final"], "--steps", "3", "--batch-size", "2", "--chunk-len", "8", *common]) == 0  # fmt: skip
    tuned = load_checkpoint(json.loads(capsys.readouterr().out)["final"])
    assert tuned.config == foundation.config
    before, after = foundation.state_dict(), tuned.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    # The fine-tuning run starts from the foundation's weights, not from scratch.
    fresh = build(tiny_policy()).state_dict()
    k = "pi_head.action.linear_layer.weight"
    assert (after[k] - before[k]).norm() < (after[k] - fresh[k]).norm()


def _minecraft_shards(out: Path, episodes: int = 4, frames: int = 40) -> None:
    rng = np.random.default_rng(0)
    with ShardWriter(out / "mc.vshard", "minecraft", (32, 32, 3), max_record_frames=16) as w:
        for e in range(episodes):
            buttons = (rng.random((frames, 20)) < 0.15).astype(np.uint8)
            buttons[:, 10:] = 0  # no inventory / hotbar presses
            camera = (rng.normal(0, 3, (frames, 2)) * (rng.random((frames, 1)) < 0.5)).astype(np.float32)
            buttons[5:10], camera[5:10] = 0, 0.0  # a null run
            video = rng.integers(0, 256, (frames, 32, 32, 3), dtype=np.uint8)
            w.write(video, episode_id=f"mc{e}", source=f"mc{e}.mp4", actions={"buttons": buttons, "camera": camera})


@pytest.mark.slow
def test_train_bc_cli_minecraft_two_workers_exports_the_released_format(ray_local, tmp_path, capsys):
    from vpt_ray.cli import main

    data = tmp_path / "data"
    data.mkdir()
    _minecraft_shards(data)
    preset = tmp_path / "tiny-mc.yaml"
    preset.write_text(yaml.safe_dump(tiny_policy("minecraft", 32)))
    official = tmp_path / "official"
    assert main(["train-bc", str(data), "--out", str(tmp_path / "bc"), "--model", str(preset), "--steps", "3",
                 "--batch-size", "2", "--chunk-len", "8", "--workers", "2", "--set", "val_fraction=0.25",
                 "--export-official", str(official), "--json"]) == 0  # fmt: skip
    summary = json.loads(capsys.readouterr().out)
    assert {"eval/buttons/accuracy", "eval/camera/accuracy", "eval/accuracy"} <= set(summary["metrics"])
    final = load_checkpoint(summary["final"])
    loaded = load_official(official / "policy.model", official / "policy.weights")
    assert loaded.config == final.config
    ours, theirs = final.state_dict(), loaded.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    # Crafter policies have no released format: refused before training.
    assert main(["train-bc", str(data), "--out", str(tmp_path / "x"), "--export-official", str(official)]) == 1
    assert "only the minecraft action space" in capsys.readouterr().err
