"""RL metrics in TensorBoard: scalars per iteration, item-progression curves, reading them back and plotting.

``algo.train()`` outside Tune writes no TensorBoard (docs/rl-design.md §5), so the job driver writes its own with
:class:`RLMetricsWriter`, one event stream per run directory, ``step`` = training iteration. Conventions the
custom-scalars layout relies on (tags are regexes there, so charts pick up whatever tags the learner logs):

* ``items/<item>``: fraction of the iteration's finished episodes that obtained the item (``write_items``);
  ``items_lifetime/<item>``: the same over every episode so far. One "item progression" chart each, one curve
  per item in the task's order.
* ``loss/<name>``: every loss (wake and sleep phase) on one "losses" chart.
* ``kl/<name>`` and ``ppg/rho``: the KL terms and the KL coefficient on one "KL and rho" chart.
* :data:`ENV_STEPS_TAG`: env steps sampled so far; :func:`plot_item_curves` uses it to plot against env steps.

Resuming from a checkpoint of iteration ``k``: open the writer with ``purge_step=k + 1``. TensorBoard (and
:func:`read_scalars`) then hide what a crashed run wrote after that checkpoint, so every curve continues exactly.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

ITEM_PREFIXES = ("items", "items_lifetime")
ENV_STEPS_TAG = "env/steps_lifetime"
LOSS_TAGS = (r"^loss/",)
KL_TAGS = (r"^kl/", r"^ppg/rho$")
_TAG_PART = re.compile(r"^[\w.\-]+$")  # what TensorBoard keeps of a tag component unchanged

Scalars = dict[str, list[tuple[int, float]]]


def item_tag(item: str, prefix: str = "items") -> str:
    return f"{prefix}/{item}"


def custom_scalars_layout(items: Sequence[str]) -> dict[str, dict[str, list]]:
    """The custom-scalars layout (``SummaryWriter.add_custom_scalars`` form) for a task's ``items``, in order."""
    titles = {"items": "item progression", "items_lifetime": "item progression (lifetime)"}
    return {
        "items": {
            titles[prefix]: ["Multiline", [f"^{re.escape(item_tag(item, prefix))}$" for item in items]]
            for prefix in ITEM_PREFIXES
        },
        "ppg": {
            "losses": ["Multiline", list(LOSS_TAGS)],
            "KL and rho": ["Multiline", list(KL_TAGS)],
        },
    }


class RLMetricsWriter:
    """TensorBoard scalars of one RL run; ``items`` (the task's reward-table order) fixes the item charts.

    Writes are flushed at once: one write per iteration is cheap, and a crash then loses nothing written.
    """

    def __init__(self, log_dir: str | Path, items: Sequence[str], *, purge_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter

        items = list(items)
        if not items:
            raise ValueError("RLMetricsWriter needs the task's item list, got none")
        bad = [item for item in items if not isinstance(item, str) or not _TAG_PART.match(item)]
        if bad:
            raise ValueError(f"item names must be tag-safe (letters, digits, _ . -), got {bad}")
        if len(set(items)) != len(items):
            raise ValueError(f"items listed twice: {sorted({i for i in items if items.count(i) > 1})}")
        if purge_step is not None and (isinstance(purge_step, bool) or not isinstance(purge_step, int)
                                       or purge_step < 0):  # fmt: skip
            raise ValueError(f"purge_step must be an int >= 0 (the first step to rewrite), got {purge_step!r}")
        self.log_dir = Path(log_dir)
        self.items = tuple(items)
        self._writer = SummaryWriter(str(self.log_dir), purge_step=purge_step)
        # Written again on resume: identical content, so whichever copy TensorBoard reads is the same.
        self._writer.add_custom_scalars(custom_scalars_layout(self.items))
        self._writer.flush()

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        """One value per tag at ``step`` (tags as given, e.g. ``"loss/wake_policy"``); non-finite values are
        written too (a NaN loss is worth seeing)."""
        for tag, value in scalars.items():
            self._writer.add_scalar(tag, _number(tag, value), int(step))
        self._writer.flush()

    def write_items(self, step: int, fractions: Mapping[str, float], prefix: str = "items") -> None:
        """``<prefix>/<item>`` for each task item in ``fractions`` (in [0, 1]); an item left out gets no point at
        this step, an item that is not the task's is an error (its curve would be on no chart)."""
        if prefix not in ITEM_PREFIXES:
            raise ValueError(f"item prefix {prefix!r} has no chart; use one of {list(ITEM_PREFIXES)}")
        unknown = sorted(set(fractions) - set(self.items))
        if unknown:
            raise ValueError(f"items {unknown} are not the task's items {list(self.items)}")
        for item in self.items:
            if item not in fractions:
                continue
            value = _number(item_tag(item, prefix), fractions[item])
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{item_tag(item, prefix)}: a fraction of episodes must be in [0, 1], got {value}")
            self._writer.add_scalar(item_tag(item, prefix), value, int(step))
        self._writer.flush()

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> RLMetricsWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _number(tag: str, value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{tag}: scalar values must be numbers, got {value!r}") from None


def read_scalars(log_dir: str | Path) -> Scalars:
    """tag -> [(step, value), ...] in write order, as TensorBoard shows them (purged steps hidden)."""
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    log_dir = Path(log_dir)
    if not log_dir.is_dir() or not any(p.name.startswith("events.out.tfevents") for p in log_dir.iterdir()):
        raise FileNotFoundError(f"{log_dir}: no TensorBoard event files")
    acc = EventAccumulator(str(log_dir), size_guidance={SCALARS: 0})  # 0 = keep every point
    acc.Reload()
    return {tag: [(e.step, float(e.value)) for e in acc.Scalars(tag)] for tag in acc.Tags()[SCALARS]}


def read_task_items(log_dir: str | Path) -> list[str]:
    """The task's items, in order, as an :class:`RLMetricsWriter` recorded them in its custom-scalars layout."""
    from tensorboard.backend.event_processing.event_accumulator import TENSORS, EventAccumulator
    from tensorboard.plugins.custom_scalar import layout_pb2, metadata
    from tensorboard.util import tensor_util

    acc = EventAccumulator(str(log_dir), size_guidance={TENSORS: 1})
    acc.Reload()
    if metadata.CONFIG_SUMMARY_TAG not in acc.Tags()[TENSORS]:
        raise ValueError(f"{log_dir}: no custom-scalars layout (not written by RLMetricsWriter)")
    layout = layout_pb2.Layout()
    layout.ParseFromString(tensor_util.make_ndarray(acc.Tensors(metadata.CONFIG_SUMMARY_TAG)[0].tensor_proto).item())
    head = "^items/"
    for category in layout.category:
        for chart in category.chart:
            if chart.title == "item progression":  # regexes "^items/<escaped item>$"; item names are [\w.-]+
                return [rx[len(head):-1].replace("\\", "") for rx in chart.multiline.tag]
    raise ValueError(f"{log_dir}: the custom-scalars layout has no 'item progression' chart")


def _as_runs(runs) -> tuple[dict[str, Scalars], list[str]]:
    """Normalise one run (log dir or scalars) or a mapping run name -> (log dir or scalars); also the task's
    items in order from the first run given as a log dir (empty if none is)."""
    if isinstance(runs, (str, Path)):
        runs = {Path(runs).name: runs}
    elif not isinstance(runs, Mapping) or not runs:
        raise ValueError("expected a log dir, read_scalars() output, or a non-empty mapping run name -> either")
    elif all(isinstance(v, list) for v in runs.values()):  # read_scalars() output of a single run
        runs = {"run": runs}
    out, order = {}, []
    for name, run in runs.items():
        if isinstance(run, (str, Path)):
            out[str(name)] = read_scalars(run)
            order = order or read_task_items(run)
        elif isinstance(run, Mapping):
            out[str(name)] = dict(run)
        else:
            raise ValueError(f"run {name!r}: expected a log dir or read_scalars() output, got {type(run).__name__}")
    return out, order


def _run_items(scalars: Scalars, prefix: str) -> list[str]:
    head = prefix + "/"
    return [tag[len(head):] for tag in scalars if tag.startswith(head)]


def item_curves_figure(runs, *, items: Sequence[str] | None = None, prefix: str = "items", x: str = "iteration",
                       title: str | None = None):  # fmt: skip
    """The paper's Fig. 7 layout: one panel per item (task order), fraction of episodes that obtained it against
    training iterations (``x="iteration"``) or env steps (``x="env_steps"``, from :data:`ENV_STEPS_TAG`), one
    line per run in every panel. ``runs``: a log dir, ``read_scalars`` output, or a mapping run name -> either.

    ``items`` defaults to every item the runs have curves for, in the task's order (read from the layout of the
    first run given as a log dir). A run without a curve for an item simply has no line in that panel. Returns
    a matplotlib ``Figure``.
    """
    from matplotlib.figure import Figure

    if x not in ("iteration", "env_steps"):
        raise ValueError(f"x must be 'iteration' or 'env_steps', got {x!r}")
    runs, task_items = _as_runs(runs)
    if items is None:  # the items with curves, in the task's order (else in the order first written)
        found = list(dict.fromkeys(item for s in runs.values() for item in _run_items(s, prefix)))
        items = [i for i in task_items if i in found] + [i for i in found if i not in task_items]
    items = list(items)
    if not items:
        raise ValueError(f"no '{prefix}/<item>' curves in runs {list(runs)}")
    env_steps: dict[str, dict[int, float]] = {}
    if x == "env_steps":
        for name, scalars in runs.items():
            if ENV_STEPS_TAG not in scalars:
                raise ValueError(f"run {name!r} has no {ENV_STEPS_TAG!r} scalar to plot against env steps")
            env_steps[name] = dict(scalars[ENV_STEPS_TAG])

    cols = min(len(items), 4)
    rows = math.ceil(len(items) / cols)
    fig = Figure(figsize=(3.2 * cols, 2.6 * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False, sharex=True, sharey=True)
    for ax in axes.flat[len(items):]:
        ax.set_visible(False)
    colors = {name: f"C{i % 10}" for i, name in enumerate(runs)}
    for ax, item in zip(axes.flat, items):
        for name, scalars in runs.items():
            points = scalars.get(item_tag(item, prefix))
            if not points:
                continue
            if x == "env_steps":
                points = [(env_steps[name][s], v) for s, v in points if s in env_steps[name]]
            xs, ys = zip(*points) if points else ((), ())
            ax.plot(xs, ys, color=colors[name], label=name, linewidth=1.5)
        ax.set_title(item, fontsize=10)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    for i, ax in enumerate(axes.flat[: len(items)]):
        if i + cols >= len(items):  # lowest panel of its column (the grid's last row may be partly empty)
            ax.xaxis.set_tick_params(labelbottom=True)
            ax.set_xlabel("training iteration" if x == "iteration" else "env steps")
    for ax in axes[:, 0]:
        ax.set_ylabel("fraction of episodes")
    labelled = {line.get_label(): line for ax in fig.axes for line in ax.lines}  # one legend entry per run
    if labelled:
        fig.legend(list(labelled.values()), list(labelled), loc="outside lower center", ncols=min(len(labelled), 4))
    fig.suptitle(title or "item progression")
    return fig


def plot_item_curves(runs, out_png: str | Path, **kwargs) -> Path:
    """Write :func:`item_curves_figure` (same arguments) as a PNG; returns its path."""
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    item_curves_figure(runs, **kwargs).savefig(out_png, dpi=100)
    return out_png
