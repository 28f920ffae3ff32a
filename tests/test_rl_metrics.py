"""RL metrics: TensorBoard scalars read back, the custom-scalars layout, resume with purge_step, item plots."""

from __future__ import annotations

import re
import struct

import pytest

from vpt_ray.rl.metrics import (
    ENV_STEPS_TAG,
    RLMetricsWriter,
    item_curves_figure,
    plot_item_curves,
    read_scalars,
    read_task_items,
)
from vpt_ray.spec import load_task

ITEMS = [r.item for r in load_task("crafter-tech-tree").rewards.items]


def _layout(log_dir) -> dict[str, dict[str, list[str]]]:
    """category -> chart -> tag regexes, from the custom-scalars config event TensorBoard reads."""
    from tensorboard.backend.event_processing.event_accumulator import TENSORS, EventAccumulator
    from tensorboard.plugins.custom_scalar import layout_pb2, metadata
    from tensorboard.util import tensor_util

    acc = EventAccumulator(str(log_dir), size_guidance={TENSORS: 0})
    acc.Reload()
    events = acc.Tensors(metadata.CONFIG_SUMMARY_TAG)
    layout = layout_pb2.Layout()
    layout.ParseFromString(tensor_util.make_ndarray(events[0].tensor_proto).item())
    return {c.title: {ch.title: list(ch.multiline.tag) for ch in c.chart} for c in layout.category}


def test_scalars_and_item_fractions_read_back_with_steps(tmp_path):
    with RLMetricsWriter(tmp_path, ITEMS) as w:
        for step in (1, 2, 3):
            w.write(step, {"loss/wake_policy": 0.5 / step, "ppg/rho": 0.2 * 0.9995**step, "kl/pretrained": step})
            w.write_items(step, {item: (i + step) % 4 / 4 for i, item in enumerate(ITEMS)})
        w.write_items(3, dict.fromkeys(ITEMS, 0.25), prefix="items_lifetime")
        w.write_items(4, {"table": 1.0})  # a subset: the other curves get no point at this step
    got = read_scalars(tmp_path)
    assert got["loss/wake_policy"] == [(1, 0.5), (2, 0.25), (3, pytest.approx(0.5 / 3))]
    assert [s for s, _ in got["ppg/rho"]] == [1, 2, 3]
    assert got["ppg/rho"][2][1] == pytest.approx(0.2 * 0.9995**3)
    assert got["kl/pretrained"] == [(1, 1.0), (2, 2.0), (3, 3.0)]
    for i, item in enumerate(ITEMS):
        extra = [(4, 1.0)] if item == "table" else []
        assert got[f"items/{item}"] == [(s, (i + s) % 4 / 4) for s in (1, 2, 3)] + extra
        assert got[f"items_lifetime/{item}"] == [(3, 0.25)]


def test_custom_scalars_layout_has_every_item_in_task_order_and_groups_losses_and_kl(tmp_path):
    written = ["loss/wake_policy", "loss/wake_value", "loss/sleep_aux_value", "kl/pretrained", "kl/sleep",
               "ppg/rho", "episode/return_mean", ENV_STEPS_TAG]  # fmt: skip
    with RLMetricsWriter(tmp_path, ITEMS) as w:
        w.write(1, dict.fromkeys(written, 1.0))
        w.write_items(1, dict.fromkeys(ITEMS, 0.0))
    layout = _layout(tmp_path)
    tags = list(read_scalars(tmp_path))

    def matched(regexes):  # the tags a Multiline chart draws, per regex in layout order
        return [[t for t in tags if re.search(rx, t)] for rx in regexes]

    items_chart = layout["items"]["item progression"]
    assert matched(items_chart) == [[f"items/{item}"] for item in ITEMS]  # one curve per item, task order
    assert len(layout["items"]["item progression (lifetime)"]) == len(ITEMS)
    assert sorted(sum(matched(layout["ppg"]["losses"]), [])) == ["loss/sleep_aux_value", "loss/wake_policy",
                                                                  "loss/wake_value"]  # fmt: skip
    assert sorted(sum(matched(layout["ppg"]["KL and rho"]), [])) == ["kl/pretrained", "kl/sleep", "ppg/rho"]
    assert read_task_items(tmp_path) == ITEMS


def test_purge_step_on_resume_hides_what_a_crashed_run_wrote_after_the_checkpoint(tmp_path):
    w = RLMetricsWriter(tmp_path, ITEMS)
    for step in range(1, 6):  # checkpoint at iteration 3, then a crash after iterations 4 and 5 were logged
        w.write(step, {"loss/wake_policy": float(step)})
        w.write_items(step, dict.fromkeys(ITEMS, 0.1))
    w.close()  # (a crashed process leaves the flushed events exactly like this)

    w = RLMetricsWriter(tmp_path, ITEMS, purge_step=4)  # resumed from the iteration-3 checkpoint
    for step in range(4, 7):
        w.write(step, {"loss/wake_policy": 10.0 * step})
        w.write_items(step, dict.fromkeys(ITEMS, 0.5))
    w.close()

    got = read_scalars(tmp_path)
    assert got["loss/wake_policy"] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0), (5, 50.0), (6, 60.0)]
    assert [s for s, _ in got["items/wood"]] == [1, 2, 3, 4, 5, 6]
    assert [v for _, v in got["items/wood"]] == pytest.approx([0.1, 0.1, 0.1, 0.5, 0.5, 0.5])
    assert len(list(tmp_path.glob("events.out.tfevents*"))) == 2
    assert _layout(tmp_path)["items"]["item progression"][0] == "^items/wood$"

    # without purge_step the stale points stay: this is what the option is for
    other = tmp_path / "no_purge"
    for purge, steps in ((None, range(1, 6)), (None, range(4, 7))):
        with RLMetricsWriter(other, ITEMS, purge_step=purge) as w:
            for step in steps:
                w.write(step, {"loss/wake_policy": float(step)})
    assert len(read_scalars(other)["loss/wake_policy"]) == 8


def test_bad_input_is_refused_with_names(tmp_path):
    with pytest.raises(ValueError, match="tag-safe.*'iron pickaxe'"):
        RLMetricsWriter(tmp_path / "a", ["wood", "iron pickaxe"])
    with pytest.raises(ValueError, match="purge_step"):
        RLMetricsWriter(tmp_path / "b", ITEMS, purge_step=-1)
    with RLMetricsWriter(tmp_path / "c", ITEMS) as w:
        with pytest.raises(ValueError, match=r"items \['sapling'\] are not the task's items"):
            w.write_items(1, {**dict.fromkeys(ITEMS, 0.0), "sapling": 0.0})
        with pytest.raises(ValueError, match="items/wood.*in \\[0, 1\\]"):
            w.write_items(1, {**dict.fromkeys(ITEMS, 0.0), "wood": 3.0})
        with pytest.raises(ValueError, match="no chart"):
            w.write_items(1, dict.fromkeys(ITEMS, 0.0), prefix="things")
        with pytest.raises(ValueError, match="loss/x.*numbers"):
            w.write(1, {"loss/x": "high"})
    with pytest.raises(FileNotFoundError, match="no TensorBoard event files"):
        read_scalars(tmp_path / "empty")


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and data.rstrip().endswith(b"IEND\xaeB`\x82")
    return struct.unpack(">II", data[16:24])


def test_item_curves_compare_runs_per_item_against_iterations_and_env_steps(tmp_path):
    runs = {}
    for r, name in enumerate(["bc+kl", "bc-no-kl", "scratch"]):
        log_dir = tmp_path / name
        with RLMetricsWriter(log_dir, ITEMS) as w:
            for step in range(1, 5):
                w.write(step, {ENV_STEPS_TAG: 1000.0 * step})
                w.write_items(step, {item: min(1.0, step / (4 + i + r)) for i, item in enumerate(ITEMS)})
        runs[name] = log_dir

    fig = item_curves_figure(runs)
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == ITEMS  # Fig. 7: one panel per item, task order
    for i, ax in enumerate(panels):
        assert [line.get_label() for line in ax.lines] == list(runs)  # one line per run
        (xs, ys) = ax.lines[1].get_data()
        assert list(xs) == [1, 2, 3, 4] and list(ys) == pytest.approx([min(1.0, s / (5 + i)) for s in (1, 2, 3, 4)])
    assert sum(len(ax.lines) for ax in panels) == len(ITEMS) * 3
    assert [t.get_text() for t in fig.legends[0].get_texts()] == list(runs)

    by_steps = item_curves_figure(runs, x="env_steps", items=["wood", "iron_pickaxe"])
    assert [ax.get_title() for ax in by_steps.axes if ax.get_visible()] == ["wood", "iron_pickaxe"]
    assert list(by_steps.axes[0].lines[0].get_xdata()) == [1000.0, 2000.0, 3000.0, 4000.0]
    assert by_steps.axes[0].get_xlabel() == "env steps"

    out = plot_item_curves(runs, tmp_path / "plots" / "items.png", title="Crafter: BC+KL vs no KL vs scratch")
    width, height = _png_size(out)
    assert width >= 600 and height >= 400

    # one run, given as its log dir or its scalars, and a run that misses an item just has no line there
    single = read_scalars(runs["scratch"])
    assert sum(len(ax.lines) for ax in item_curves_figure(single).axes) == len(ITEMS)
    del single["items/diamond"]
    fig = item_curves_figure({"partial": single, "full": runs["bc+kl"]})
    assert [len(ax.lines) for ax in fig.axes if ax.get_visible()] == [2] * (len(ITEMS) - 1) + [1]

    # panels follow the task's order even when a run first wrote its items in another order
    late = tmp_path / "late"
    with RLMetricsWriter(late, ITEMS) as w:
        w.write_items(1, {"diamond": 0.0, "iron": 0.0})
        w.write_items(2, dict.fromkeys(ITEMS, 0.5))
    assert list(read_scalars(late))[:2] == ["items/iron", "items/diamond"]
    assert [ax.get_title() for ax in item_curves_figure(late).axes if ax.get_visible()] == ITEMS


def test_item_curves_refuse_what_they_cannot_plot(tmp_path):
    with RLMetricsWriter(tmp_path, ITEMS) as w:
        w.write_items(1, dict.fromkeys(ITEMS, 0.0))
    with pytest.raises(ValueError, match=f"run 'x' has no '{ENV_STEPS_TAG}'"):
        item_curves_figure({"x": tmp_path}, x="env_steps")
    with pytest.raises(ValueError, match="no 'items_lifetime/<item>' curves"):
        item_curves_figure(tmp_path, prefix="items_lifetime")
    with pytest.raises(ValueError, match="x must be"):
        item_curves_figure(tmp_path, x="time")
