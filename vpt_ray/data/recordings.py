"""Contractor-format recordings: write them while an agent plays, read and validate them back.

One episode is three files sharing a stem (VPT's contractor layout, method doc §1):

* ``<stem>.mp4`` — the frames at 20 fps (H.264 through PyAV; frame ``t`` is what the player saw before action ``t``);
* ``<stem>.jsonl`` — labeled recordings only: one JSON object per frame, the action taken on that frame. Crafter
  steps carry ``action`` (index), ``action_name``, ``keyboard.keys`` (the keys pressed, per the Crafter GUI
  keymap of :mod:`vpt_ray.actions.crafter`), the ``inventory`` shown in the frame, the ``new_items`` and
  ``reward`` the action earned, and the flags ``sleeping``, ``env_failure``, ``terminated``, ``truncated``.
  Minecraft steps are real contractor steps (``keyboard``, ``mouse``, ``hotbar``, ...; converted with
  :mod:`vpt_ray.actions.contractor`);
* ``<stem>.json`` — metadata: ``format_version``, ``task``, ``env``, ``seed``, ``frame_size`` [H, W],
  ``n_frames``, ``fps``, ``labeled``, ``action_space``, ``video_sha256`` (the hash of ``<stem>.mp4``: another
  episode's video swapped in is refused, even one of the same length), ``agent``, the web-style ``title`` / ``description`` the
  metadata filters read, ``video`` (codec settings), ``episode`` (length, return, items) and ``ground_truth``:
  per-frame classes as run-length ``segments`` (``clean`` gameplay, gameplay with ``artifacts`` such as a
  face-cam, ``none`` of the above such as an intro card), the ``clean_segments`` ([start, end) frame ranges),
  the ``title_kind`` (early_game / neutral / blacklisted) and, for unlabeled videos, the gameplay frame each
  frame shows (``source_frames``) and the hidden true ``actions`` per frame (None on non-game frames) to score
  pseudo-labels with.

The metadata file is written last and every file goes through a temporary name, so a stem with a ``.json`` is
complete. Real contractor data without a ``.json`` can be read too (``labeled`` if a ``.jsonl`` is present,
Minecraft actions). Anything wrong raises :class:`RecordingError` naming the file (and line or frame).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

FORMAT_VERSION = 1
FPS = 20
VIDEO_SUFFIX, ACTIONS_SUFFIX, META_SUFFIX = ".mp4", ".jsonl", ".json"
# The clean filter's three classes (paper App. A); only "clean" frames are kept.
FRAME_CLASSES: tuple[str, ...] = ("clean", "artifacts", "none")
ACTION_SPACES = ("crafter", "minecraft")


class RecordingError(ValueError):
    """A recording that is missing a file or holds a bad value; the message names the file (and line)."""


@dataclass(frozen=True)
class VideoSettings:
    """H.264 settings. ``yuv444p`` keeps Crafter's saturated pixel art intact (4:2:0 smears its colours)."""

    codec: str = "libx264"
    pix_fmt: str = "yuv444p"
    crf: int = 0  # 0: lossless in YUV; RGB round trip within 2 levels (benchmarks/bench_demonstrator.py)
    preset: str = "medium"

    def __post_init__(self):
        if not 0 <= self.crf <= 51:
            raise ValueError(f"crf must lie in [0, 51], got {self.crf}")


# "lossless" for contractor data, "web" for videos that should look like uploads; measured in the benchmark.
VIDEO_PRESETS: dict[str, VideoSettings] = {
    "lossless": VideoSettings(crf=0),
    "high": VideoSettings(crf=10),
    "web": VideoSettings(pix_fmt="yuv420p", crf=23),
}


@dataclass
class Recording:
    stem: Path
    meta: dict[str, Any]
    frames_thwc: np.ndarray  # uint8 (T, H, W, 3)
    actions: dict[str, np.ndarray] | None  # env arrays of meta["action_space"] (vpt_ray.actions); None unlabeled
    null: np.ndarray | None  # bool (T,): null actions (crafter noop; Minecraft: the data loader's null steps)
    steps: list[dict[str, Any]] | None  # the raw jsonl objects


def stem_of(path: str | os.PathLike) -> Path:
    """``dir/ep.mp4``, ``dir/ep.json``, ``dir/ep.jsonl`` or ``dir/ep`` -> ``dir/ep``."""
    path = Path(path)
    if path.suffix in (VIDEO_SUFFIX, ACTIONS_SUFFIX, META_SUFFIX):
        return path.with_suffix("")
    return path


def _file(stem: Path, suffix: str) -> Path:
    return stem.with_name(stem.name + suffix)


# -- writing --------------------------------------------------------------------------------------------------
class RecordingWriter:
    """Stream one episode to ``<stem>.mp4`` (+ ``<stem>.jsonl`` when labeled); ``close(meta)`` finishes it.

    Use as a context manager: an exception inside the block removes the partial files.
    """

    def __init__(
        self,
        stem: str | os.PathLike,
        frame_size: tuple[int, int],
        *,
        labeled: bool,
        fps: int = FPS,
        video: VideoSettings = VIDEO_PRESETS["lossless"],
    ):
        import av

        self.stem = stem_of(stem)
        self.stem.parent.mkdir(parents=True, exist_ok=True)
        self.frame_size = (int(frame_size[0]), int(frame_size[1]))
        self.labeled, self.fps, self.video = labeled, int(fps), video
        if video.pix_fmt == "yuv420p" and (self.frame_size[0] % 2 or self.frame_size[1] % 2):
            raise ValueError(f"{self.stem}: yuv420p needs even frame sizes, got {list(self.frame_size)}")
        self._tmp = {s: _file(self.stem, s + ".partial") for s in (VIDEO_SUFFIX, ACTIONS_SUFFIX, META_SUFFIX)}
        self._jsonl = None
        self._container = av.open(str(self._tmp[VIDEO_SUFFIX]), mode="w", format="mp4",
                                  options={"movflags": "+faststart"})  # fmt: skip
        try:
            stream = self._container.add_stream(video.codec, rate=self.fps)
            stream.height, stream.width = self.frame_size
            stream.pix_fmt = video.pix_fmt
            stream.options = {"crf": str(video.crf), "preset": video.preset}
        except (av.FFmpegError, ValueError) as e:
            self.abort()
            raise ValueError(f"{self.stem}: cannot encode with {video}: {e}") from None
        self._stream = stream
        self._jsonl = open(self._tmp[ACTIONS_SUFFIX], "w") if labeled else None
        self.n_frames = 0

    def add(self, frame_hwc: np.ndarray, step: Mapping[str, Any] | None = None) -> None:
        """Append a frame (uint8 (H, W, 3) RGB) and, when labeled, the JSON object of its action."""
        import av

        if frame_hwc.shape != (*self.frame_size, 3) or frame_hwc.dtype != np.uint8:
            raise ValueError(f"{self.stem}: frame must be uint8 {(*self.frame_size, 3)}, got "
                             f"{frame_hwc.dtype} {frame_hwc.shape}")  # fmt: skip
        if (step is None) == self.labeled:
            raise ValueError(f"{self.stem}: a labeled recording needs a step per frame, an unlabeled one none")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame_hwc), format="rgb24")
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        if self._jsonl is not None:
            self._jsonl.write(json.dumps(step, separators=(",", ":")) + "\n")
        self.n_frames += 1

    def close(self, meta: Mapping[str, Any]) -> dict[str, Any]:
        """Finish the files and write the metadata (completed with n_frames, fps, frame size, video settings)."""
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()
        if self._jsonl is not None:
            self._jsonl.close()
        full = {
            "format_version": FORMAT_VERSION,
            **meta,
            "frame_size": list(self.frame_size),
            "n_frames": self.n_frames,
            "fps": self.fps,
            "labeled": self.labeled,
            "video": asdict(self.video),
            "video_sha256": _sha256(self._tmp[VIDEO_SUFFIX]),
        }
        validate_meta(full, _file(self.stem, META_SUFFIX))
        self._tmp[META_SUFFIX].write_text(json.dumps(full, indent=1))
        os.replace(self._tmp[VIDEO_SUFFIX], _file(self.stem, VIDEO_SUFFIX))
        if self.labeled:
            os.replace(self._tmp[ACTIONS_SUFFIX], _file(self.stem, ACTIONS_SUFFIX))
        os.replace(self._tmp[META_SUFFIX], _file(self.stem, META_SUFFIX))
        return full

    def abort(self) -> None:
        try:
            self._container.close()
        except Exception:  # noqa: BLE001 - the container may be half written; we delete it anyway
            pass
        if self._jsonl is not None:
            self._jsonl.close()
        for path in self._tmp.values():
            path.unlink(missing_ok=True)

    def __enter__(self) -> RecordingWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


# -- ground truth ---------------------------------------------------------------------------------------------
def runs_to_segments(classes: Sequence[str]) -> list[dict[str, Any]]:
    """Per-frame class names -> run-length ``[{"start", "end", "class"}]`` (half-open frame ranges)."""
    segments: list[dict[str, Any]] = []
    for t, cls in enumerate(classes):
        if segments and segments[-1]["class"] == cls and segments[-1]["end"] == t:
            segments[-1]["end"] = t + 1
        else:
            segments.append({"start": t, "end": t + 1, "class": cls})
    return segments


def frame_classes(meta: Mapping[str, Any]) -> np.ndarray:
    """The ground-truth class index (into :data:`FRAME_CLASSES`) of every frame, int64 (n_frames,)."""
    out = np.full(int(meta["n_frames"]), -1, np.int64)
    for seg in meta["ground_truth"]["segments"]:
        out[seg["start"] : seg["end"]] = FRAME_CLASSES.index(seg["class"])
    return out


def clean_segments(meta: Mapping[str, Any]) -> list[list[int]]:
    """The ground-truth clean ``[start, end)`` frame ranges."""
    return [list(s) for s in meta["ground_truth"]["clean_segments"]]


# -- reading --------------------------------------------------------------------------------------------------
def validate_meta(meta: Any, where: Path) -> dict[str, Any]:
    """Check the fields readers rely on; returns ``meta``."""

    def fail(field: str, msg: str) -> RecordingError:
        return RecordingError(f"{where}: field '{field}': {msg}")

    if not isinstance(meta, dict):
        raise RecordingError(f"{where}: expected a JSON object, got {type(meta).__name__}")
    for name in ("n_frames", "fps", "frame_size", "labeled", "action_space"):
        if name not in meta:
            raise fail(name, "required field is missing")
    if isinstance(meta["n_frames"], bool) or not isinstance(meta["n_frames"], int) or meta["n_frames"] < 0:
        raise fail("n_frames", f"expected a non-negative integer, got {meta['n_frames']!r}")
    if not isinstance(meta["fps"], (int, float)) or isinstance(meta["fps"], bool) or meta["fps"] <= 0:
        raise fail("fps", f"expected a positive number, got {meta['fps']!r}")
    size = meta["frame_size"]
    if not (isinstance(size, list) and len(size) == 2 and all(type(v) is int and v > 0 for v in size)):
        raise fail("frame_size", f"expected [height, width], got {size!r}")
    if not isinstance(meta["labeled"], bool):
        raise fail("labeled", f"expected true/false, got {meta['labeled']!r}")
    if meta["action_space"] not in ACTION_SPACES:
        raise fail("action_space", f"expected one of {list(ACTION_SPACES)}, got {meta['action_space']!r}")
    digest = meta.get("video_sha256")
    if digest is not None and not (isinstance(digest, str) and len(digest) == 64 and set(digest) <= set("0123456789abcdef")):
        raise fail("video_sha256", f"expected 64 lowercase hex digits, got {digest!r}")
    truth = meta.get("ground_truth")
    if truth is not None:
        expected = 0
        for i, seg in enumerate(truth.get("segments", [])):
            if seg.get("class") not in FRAME_CLASSES or seg.get("start") != expected or seg.get("end", -1) <= expected:
                raise fail(f"ground_truth.segments[{i}]", f"expected a run from frame {expected} of one of "
                           f"{list(FRAME_CLASSES)}, got {seg!r}")  # fmt: skip
            expected = seg["end"]
        if expected != meta["n_frames"]:
            raise fail("ground_truth.segments", f"cover {expected} frames, the video has {meta['n_frames']}")
    return meta


def read_meta(stem: str | os.PathLike) -> dict[str, Any]:
    """The metadata of a recording; real contractor data without a ``.json`` gets it inferred from its files."""
    stem = stem_of(stem)
    path = _file(stem, META_SUFFIX)
    if path.is_file():
        try:
            meta = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise RecordingError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
        return validate_meta(meta, path)
    video = _file(stem, VIDEO_SUFFIX)
    if not video.is_file():
        raise RecordingError(f"{stem}: no recording here (neither {path.name} nor {video.name} exists)")
    height, width, fps = _probe(video)
    labeled = _file(stem, ACTIONS_SUFFIX).is_file()
    n_frames = len(_read_lines(_file(stem, ACTIONS_SUFFIX))) if labeled else _count_frames(video)
    return {"format_version": FORMAT_VERSION, "frame_size": [height, width], "n_frames": n_frames, "fps": fps,
            "labeled": labeled, "action_space": "minecraft", "inferred": True}  # fmt: skip


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_video(stem: str | os.PathLike, meta: Mapping[str, Any] | None = None) -> None:
    """The video must be the one the metadata was written with (``video_sha256``; recordings made before the
    field existed, and real contractor data without a ``.json``, have none to check)."""
    stem = stem_of(stem)
    meta = read_meta(stem) if meta is None else meta
    expected = meta.get("video_sha256")
    if expected is None:
        return
    video = _file(stem, VIDEO_SUFFIX)
    if not video.is_file():
        raise RecordingError(f"{video}: missing (every recording needs its video)")
    if _sha256(video) != expected:
        raise RecordingError(f"{video}: not the video {_file(stem, META_SUFFIX).name} was recorded with (its SHA-256 "
                             "differs from field 'video_sha256'): swapped, truncated or changed after recording")  # fmt: skip


def _probe(video: Path) -> tuple[int, int, float]:
    import av

    try:
        with av.open(str(video)) as container:
            if not container.streams.video:
                raise RecordingError(f"{video}: no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            return int(stream.height), int(stream.width), float(rate) if rate else float(FPS)
    except (av.FFmpegError, OSError) as e:
        raise RecordingError(f"{video}: cannot open video: {e}") from None


def _count_frames(video: Path) -> int:
    return sum(1 for _ in _decode(video))


def _read_lines(path: Path) -> list[str]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise RecordingError(f"{path}: missing (a labeled recording needs its actions file)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise RecordingError(f"{path}: cannot read: {e}") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def read_steps(stem: str | os.PathLike) -> list[dict[str, Any]]:
    """The jsonl objects of a labeled recording, one per frame; a bad line names file and line number."""
    path = _file(stem_of(stem), ACTIONS_SUFFIX)
    steps = []
    for lineno, line in enumerate(_read_lines(path), 1):
        try:
            step = json.loads(line)
        except json.JSONDecodeError as e:
            raise RecordingError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(step, dict):
            raise RecordingError(f"{path}:{lineno}: expected a JSON object, got {type(step).__name__}")
        steps.append(step)
    return steps


def steps_to_env_arrays(
    steps: Sequence[Mapping[str, Any]], action_space: str, where: Path
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Recorded steps -> (env arrays of ``action_space``, null flags bool (N,)); errors name file and line."""
    from vpt_ray.actions import get_action_space

    if action_space == "crafter":
        from vpt_ray.actions.crafter import CRAFTER_ACTIONS, crafter_keys_to_action

        actions = np.empty(len(steps), np.int64)
        for i, step in enumerate(steps):
            keys = step.get("keyboard", {}).get("keys") if isinstance(step.get("keyboard"), dict) else None
            if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
                raise RecordingError(f"{where}:{i + 1}: field 'keyboard.keys' must be a list of key names")
            actions[i] = crafter_keys_to_action(keys)
            recorded = step.get("action")
            if recorded is not None and recorded != actions[i]:
                raise RecordingError(f"{where}:{i + 1}: field 'action' is {recorded!r} but keys {keys} mean "
                                     f"{int(actions[i])} ({CRAFTER_ACTIONS[actions[i]]})")  # fmt: skip
        arrays = {"action": actions}
        return arrays, get_action_space("crafter").is_null(arrays)
    from vpt_ray.actions.contractor import ContractorActionError, episode_env_arrays

    try:
        return episode_env_arrays(steps)
    except ContractorActionError as e:
        msg = str(e)
        if msg.startswith("step ") and ":" in msg:  # "step i: ..." from the converter
            index, rest = msg[5:].split(":", 1)
            if index.isdigit():
                raise RecordingError(f"{where}:{int(index) + 1}:{rest}") from None
        raise RecordingError(f"{where}: {msg}") from None


def _decode(video: Path, start: int = 0) -> Iterator[np.ndarray]:
    import av

    if not video.is_file():
        raise RecordingError(f"{video}: missing (every recording needs its video)")
    t = -1
    try:
        with av.open(str(video)) as container:
            if not container.streams.video:
                raise RecordingError(f"{video}: no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for t, frame in enumerate(container.decode(stream)):
                if t >= start:
                    yield frame.to_ndarray(format="rgb24")
    except (av.FFmpegError, OSError) as e:
        raise RecordingError(f"{video}: cannot decode video after {t + 1} frames: {e}") from None


def iter_frames(stem: str | os.PathLike, start: int = 0, stop: int | None = None) -> Iterator[np.ndarray]:
    """Stream frames ``[start, stop)`` (uint8 (H, W, 3)); checks size and, when read to the end, the count."""
    stem = stem_of(stem)
    meta = read_meta(stem)
    video = _file(stem, VIDEO_SUFFIX)
    size = tuple(meta["frame_size"])
    t = start
    for frame in _decode(video, start):
        if stop is not None and t >= stop:
            return
        if frame.shape[:2] != size:
            raise RecordingError(f"{video}: frame {t} is {frame.shape[0]}x{frame.shape[1]}, metadata says "
                                 f"{size[0]}x{size[1]}")  # fmt: skip
        if t >= meta["n_frames"]:
            raise RecordingError(f"{video}: has more frames than the {meta['n_frames']} its metadata lists")
        yield frame
        t += 1
    if t < (meta["n_frames"] if stop is None else min(stop, meta["n_frames"])):
        raise RecordingError(f"{video}: only {t} frames decode, metadata lists {meta['n_frames']} "
                             "(truncated or corrupt video)")  # fmt: skip


def read_labels(
    stem: str | os.PathLike, meta: Mapping[str, Any] | None = None
) -> tuple[list[dict[str, Any]] | None, dict[str, np.ndarray] | None, np.ndarray | None]:
    """``(steps, actions env arrays, null flags)`` of a recording, checked against its frame count (Nones when
    unlabeled); the video itself is not read."""
    stem = stem_of(stem)
    meta = read_meta(stem) if meta is None else meta
    if not meta["labeled"]:
        return None, None, None
    steps = read_steps(stem)
    path = _file(stem, ACTIONS_SUFFIX)
    if len(steps) != meta["n_frames"]:
        raise RecordingError(f"{path}: {len(steps)} lines, but the video has {meta['n_frames']} frames "
                             "(one line per frame)")  # fmt: skip
    try:
        actions, null = steps_to_env_arrays(steps, meta["action_space"], path)
    except RecordingError as e:
        if meta.get("inferred"):  # no .json: read as real contractor data, which these steps are not
            raise RecordingError(f"{_file(stem, META_SUFFIX)}: missing, so {stem.name} was read as MineRL "
                                 f"contractor data (no metadata), and its actions do not parse as such: {e}") from None
        raise
    return steps, actions, null


def iter_chunks(
    stem: str | os.PathLike, length: int
) -> Iterator[tuple[int, np.ndarray, dict[str, np.ndarray] | None]]:
    """Stream ``(start, frames_thwc, actions env arrays | None)`` in chunks of ``length`` frames.

    Actions are validated before the first chunk; the frame count once the video is read to the end.
    """
    if length < 1:
        raise ValueError(f"chunk length must be >= 1, got {length}")
    stem = stem_of(stem)
    meta = read_meta(stem)
    _, actions, _ = read_labels(stem, meta)
    buf: list[np.ndarray] = []
    start = 0
    for frame in iter_frames(stem):
        buf.append(frame)
        if len(buf) == length:
            yield start, np.stack(buf), _slice(actions, start, start + length)
            start += length
            buf = []
    if buf:
        yield start, np.stack(buf), _slice(actions, start, start + len(buf))


def _slice(actions: dict[str, np.ndarray] | None, a: int, b: int) -> dict[str, np.ndarray] | None:
    return None if actions is None else {k: v[a:b] for k, v in actions.items()}


def read_recording(stem: str | os.PathLike) -> Recording:
    """A whole recording in memory, validated: the video's hash, frame count, frame size, one parseable jsonl line
    per frame."""
    stem = stem_of(stem)
    meta = read_meta(stem)
    steps, actions, null = read_labels(stem, meta)
    frames = list(iter_frames(stem))  # (decode errors first: they say more about a damaged file than the hash)
    check_video(stem, meta)
    h, w = meta["frame_size"]
    frames_thwc = np.stack(frames) if frames else np.zeros((0, h, w, 3), np.uint8)
    return Recording(stem=stem, meta=meta, frames_thwc=frames_thwc, actions=actions, null=null, steps=steps)


def iter_recordings(directory: str | os.PathLike, *, labeled: bool | None = None) -> Iterator[Path]:
    """Stems of the complete recordings under ``directory`` (recursively, sorted), optionally only (un)labeled.

    A stem counts when its ``.json`` exists (our recordings) or, for real contractor data, its ``.mp4`` does.
    Only the metadata is read here: read each with :func:`read_recording` / :func:`iter_chunks` and skip (and
    count) those that raise :class:`RecordingError`.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise RecordingError(f"{directory}: not a directory")
    stems = {stem_of(p) for p in directory.rglob(f"*{VIDEO_SUFFIX}")}
    # A metadata file whose video is missing is a broken recording (the reader says so); other JSON is not ours.
    stems |= {stem_of(p) for p in directory.rglob(f"*{META_SUFFIX}") if _file(stem_of(p), ACTIONS_SUFFIX).is_file()}
    for stem in sorted(stems):
        if labeled is not None:
            is_labeled = _file(stem, ACTIONS_SUFFIX).is_file()
            if _file(stem, META_SUFFIX).is_file():
                try:
                    is_labeled = read_meta(stem)["labeled"]
                except RecordingError:
                    is_labeled = labeled  # let the caller read it, fail, and count it
            if is_labeled != labeled:
                continue
        yield stem


# -- recording an agent ---------------------------------------------------------------------------------------
def record_episode(
    task: Any,
    stem: str | os.PathLike,
    *,
    seed: int,
    episode: int,
    labeled: bool = True,
    overlays: bool = False,
    max_steps: int | None = None,
    agent_config: Any = None,
    video: VideoSettings | None = None,
    web_profile: str | None = None,
) -> dict[str, Any]:
    """Play one episode of ``task`` (a Crafter task: spec, YAML path or name) with the scripted player and record it.

    Episode ``episode`` of run ``seed`` always plays the same world with the same player noise. Labeled
    recordings get a jsonl; unlabeled ones are web-style videos (with ``overlays``: logos, face-cams, intro
    cards, menus; see :mod:`vpt_ray.data.overlays`; ``web_profile`` picks one of its profiles instead of drawing
    it) whose hidden true actions go into the ground truth. Returns the metadata written to ``<stem>.json``.
    """
    import dataclasses

    from vpt_ray.actions.crafter import CRAFTER_ACTIONS, crafter_action_to_keys
    from vpt_ray.config import to_dict
    from vpt_ray.data.overlays import WebVideo, make_title, plan_web_video
    from vpt_ray.envs import episode_seed, make_env
    from vpt_ray.envs.crafter_scripted import CrafterDemonstrator, DemonstratorConfig, unwrap_crafter
    from vpt_ray.spec import TaskSpec, load_task

    spec = task if isinstance(task, TaskSpec) else load_task(task)
    if spec.env.kind != "crafter":
        raise ValueError(f"task {spec.name!r}: only Crafter has a scripted player; {spec.env.kind} recordings "
                         "come from people playing (contractor data), read them with read_recording")  # fmt: skip
    if max_steps is not None:
        spec = dataclasses.replace(spec, env=dataclasses.replace(spec.env, max_steps=min(max_steps, spec.env.max_steps)))
    agent_config = agent_config or DemonstratorConfig()
    env_seed = episode_seed(seed, episode)
    agent = CrafterDemonstrator(agent_config, seed=np.random.SeedSequence([seed, episode, 1]).generate_state(1)[0])
    rng = np.random.default_rng([seed, episode, 2])
    title, description, title_kind = make_title(rng)
    frame_size = tuple(spec.env.frame_size)
    plan = None
    if not labeled:
        plan = plan_web_video(rng, spec.env.max_steps, profile=web_profile if overlays else "clean")
    web = WebVideo(plan, frame_size) if plan is not None else None
    video = video or (VIDEO_PRESETS["lossless"] if labeled else VIDEO_PRESETS["high"])

    classes: list[str] = []
    sources: list[int | None] = []  # the gameplay frame each output frame shows
    env = make_env(spec, robust=False)  # the scripted player reads the game state, so the game runs here
    try:
        with RecordingWriter(stem, frame_size, labeled=labeled, video=video) as writer:

            def put(frames):
                for frame, cls, t in frames:
                    writer.add(frame)
                    classes.append(cls)
                    sources.append(t)

            actions: list[int] = []
            obs, info = env.reset(seed=env_seed)
            agent.reset(env)
            game = unwrap_crafter(env)
            if web is not None:
                put(web.opening())
            done = False
            while not done:
                action = agent.act(env)
                inventory, sleeping = info["inventory"], bool(game._player.sleeping)
                frame = obs
                obs, reward, terminated, truncated, info = env.step(action)
                done = terminated or truncated
                actions.append(int(action))
                if labeled:
                    writer.add(frame, {
                        "frame": len(actions) - 1, "action": int(action), "action_name": CRAFTER_ACTIONS[action],
                        "keyboard": {"keys": crafter_action_to_keys(action)},
                        "inventory": {k: int(v) for k, v in inventory.items()},
                        "new_items": info["new_items"], "reward": float(reward), "goal": agent.goal,
                        "sleeping": sleeping, "env_failure": bool(info["env_failure"]),
                        "terminated": bool(terminated), "truncated": bool(truncated),
                    })  # fmt: skip
                    classes.append("clean")
                else:
                    put(web.gameplay(len(actions) - 1, frame))
            if web is not None:
                put(web.ending())
            episode_info = dict(info["episode"])
            truth: dict[str, Any] = {
                "segments": runs_to_segments(classes),
                "clean_segments": [[s["start"], s["end"]] for s in runs_to_segments(classes) if s["class"] == "clean"],
                "title_kind": title_kind,
            }
            if not labeled:
                truth["source_frames"] = sources
                truth["actions"] = [None if t is None else actions[t] for t in sources]
                truth["web_plan"] = dataclasses.asdict(plan)
            meta = {
                "task": spec.name,
                "env": {"kind": spec.env.kind, **to_dict(spec.env.crafter), "max_steps": spec.env.max_steps},
                "seed": int(seed),
                "episode": int(episode),
                "env_seed": int(env_seed),
                "action_space": env.unwrapped.action_space_name,
                "agent": {"name": "crafter_scripted", "config": dataclasses.asdict(agent_config)},
                "title": title,
                "description": description,
                "episode_info": {**episode_info, "died": bool(terminated)},
                "ground_truth": truth,
            }
            return writer.close(meta)
    finally:
        env.close()


def episode_stem(out_dir: str | os.PathLike, task_name: str, *, labeled: bool, seed: int, episode: int) -> Path:
    kind = "contractor" if labeled else "web"
    return Path(out_dir) / f"{task_name}-{kind}-s{seed}-e{episode:04d}"


def record_episodes(
    task: Any,
    out_dir: str | os.PathLike,
    episodes: int,
    *,
    seed: int = 0,
    labeled: bool = True,
    overlays: bool = False,
    max_steps: int | None = None,
    workers: int = 1,
    video: VideoSettings | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Record episodes ``0 .. episodes-1`` of run ``seed`` into ``out_dir``, ``workers`` at a time (Ray tasks).

    Episodes already recorded there (their ``.json`` exists) are kept, so an interrupted run resumes. An episode
    that fails is reported and the others go on. Returns ``{"recorded": [meta...], "existing": [stem...],
    "failed": [(stem, error)...]}``.
    """
    from tqdm import tqdm

    from vpt_ray.spec import TaskSpec, load_task

    spec = task if isinstance(task, TaskSpec) else load_task(task)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise RecordingError(f"{out_dir}: exists and is not a directory (the recordings' output directory)")
    out_dir.mkdir(parents=True, exist_ok=True)
    todo, existing = [], []
    for i in range(episodes):
        stem = episode_stem(out_dir, spec.name, labeled=labeled, seed=seed, episode=i)
        (existing if _file(stem, META_SUFFIX).is_file() else todo).append((i, stem))
    kwargs = dict(seed=seed, labeled=labeled, overlays=overlays, max_steps=max_steps, video=video)
    result: dict[str, Any] = {"recorded": [], "existing": [str(s) for _, s in existing], "failed": []}
    bar = tqdm(total=len(todo), desc=f"record {spec.name}", unit="episode", disable=not progress)

    def done(stem: Path, meta: dict[str, Any] | None, error: BaseException | None) -> None:
        if error is not None:
            result["failed"].append((str(stem), f"{type(error).__name__}: {error}"))
            bar.write(f"{stem}: failed: {type(error).__name__}: {error}")
        else:
            result["recorded"].append(meta)
            ep = meta["episode_info"]
            bar.set_postfix(frames=meta["n_frames"], last=max((k for k, v in ep["items"].items() if v),
                                                              key=list(ep["items"]).index, default="-"))  # fmt: skip
        bar.update(1)

    try:
        if workers <= 1 or len(todo) <= 1:
            for i, stem in todo:
                try:
                    meta = record_episode(spec, stem, episode=i, **kwargs)
                except Exception as e:  # noqa: BLE001 - one bad episode must not lose the others
                    done(stem, None, e)
                else:
                    done(stem, meta, None)
        else:
            _record_with_ray(spec, todo, workers, kwargs, done)
    finally:
        bar.close()
    return result


def _record_with_ray(spec, todo, workers: int, kwargs: dict[str, Any], done) -> None:
    import ray

    from vpt_ray.ray_session import init_ray

    # A local cluster of our own (never a stray one another process left on this machine), token auth on.
    started = init_ray("local", num_cpus=workers, configure_logging=False, object_store_memory=256 * 1024**2)
    try:
        task = ray.remote(num_cpus=1, max_retries=0)(record_episode)
        queue = list(todo)
        pending: dict[Any, Path] = {}
        while queue or pending:
            while queue and len(pending) < workers:
                i, stem = queue.pop(0)
                pending[task.remote(spec, str(stem), episode=i, **kwargs)] = stem
            ready, _ = ray.wait(list(pending), num_returns=1)
            stem = pending.pop(ready[0])
            try:
                meta = ray.get(ready[0])
            except Exception as e:  # noqa: BLE001 - RayTaskError wraps the episode's own error
                done(stem, None, getattr(e, "cause", None) or e)
            else:
                done(stem, meta, None)
    finally:
        if started:
            ray.shutdown()
