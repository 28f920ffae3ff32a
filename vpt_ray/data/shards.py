"""Training-data shards: runs of consecutive frames with their actions and provenance, checksummed.

Pseudo-labeling writes one shard per video, the recordings converter one per recording; IDM and BC training
read them back as B parallel streams of T consecutive frames (:class:`SegmentStreams`).

File layout (``*.vshard``), every entry a msgpack array ``[tag, body, crc32(body)]`` whose ``body`` is itself a
msgpack map::

    header   {"magic", "version", "action_space", "frame_shape", "meta"}
    record*  {"episode_id", "source", "frame_start", "frame_end", "first", "labeler",
              "frames": {"shape", "lz4"}, "actions": {key: {"dtype", "shape", "data"}} | nil,
              "null": {"dtype", "shape", "data"} | nil, "meta"}
    footer   {"n_records", "n_frames", "header": [offset, length, crc], "records": [index entry, ...]}
    trailer  16 bytes: little-endian uint64 offset of the footer, then b"VSHARD01"

A record is a run of consecutive frames ``[frame_start, frame_end)`` of one episode (a video, or a clean segment
of one): ``first`` says the run starts the episode, ``labeler`` is ``"human"`` or the IDM checkpoint id, and the
actions are env arrays of the header's action space (``vpt_ray.actions``). ``null`` marks null actions. Frames
are uint8 (T, H, W, 3), lz4-compressed per record; the writer splits long runs into records of at most
``max_record_frames`` so a reader never holds more than that in memory.

The trailer makes the index (footer) readable with two small reads, and is how truncation shows: a file that
lost its end has no valid trailer. Each record is checked against its own crc and the footer's. Anything wrong
raises :class:`ShardError` naming the file (and the record). Writers go through a hidden temporary file in the
same directory that is renamed over the target when complete, so a crash never leaves a visible partial shard.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import struct
import uuid
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

# lz4 is imported where frames are (de)compressed: the model, training and labeling compute paths import this
# module, and GPU images (the device check's) may lack lz4.

logger = logging.getLogger(__name__)

MAGIC = "vpt_ray.shard"
FORMAT_VERSION = 1
SHARD_SUFFIX = ".vshard"
TRAILER = struct.Struct("<Q8s")
TRAILER_MAGIC = b"VSHARD01"
DEFAULT_RECORD_FRAMES = 256
# The largest frame side a conversion resizes to: a record of DEFAULT_RECORD_FRAMES frames is held in memory
# (2048 x 2048: 3 GiB), and VPT's models see 128 x 128.
MAX_FRAME_SIDE = 2048

# Canonical dtypes of the stored env arrays (interfaces.md, "Env arrays").
ENV_ARRAY_DTYPES: dict[str, dict[str, np.dtype]] = {
    "minecraft": {"buttons": np.dtype(np.uint8), "camera": np.dtype(np.float32)},
    "crafter": {"action": np.dtype(np.int64)},
}


class ShardError(ValueError):
    """A shard that cannot be read or written as asked: names the file and, where it applies, the record."""

    def __init__(self, path: str | os.PathLike, message: str, record: int | None = None):
        self.path = Path(path)
        self.record = record
        where = f"{self.path}" + (f" record {record}" if record is not None else "")
        super().__init__(f"{where}: {message}")


# ------------------------------------------------------------------------------------------------ index


@dataclasses.dataclass(frozen=True)
class RecordInfo:
    """Where one record lies in its file and what it holds (from the footer; no frames read)."""

    index: int
    offset: int
    length: int
    crc32: int
    episode_id: str
    source: str
    frame_start: int
    frame_end: int
    first: bool
    labeler: str

    @property
    def n_frames(self) -> int:
        return self.frame_end - self.frame_start


@dataclasses.dataclass(frozen=True)
class ShardIndex:
    """A shard's header and footer: everything about it except the frames and actions."""

    path: Path
    action_space: str | None
    frame_shape: tuple[int, int, int]
    meta: dict[str, Any]
    records: tuple[RecordInfo, ...]

    @property
    def n_frames(self) -> int:
        return sum(r.n_frames for r in self.records)

    @property
    def episode_ids(self) -> list[str]:
        return list(dict.fromkeys(r.episode_id for r in self.records))


@dataclasses.dataclass
class Segment:
    """One record, decoded: ``frames_thwc`` uint8 (T, H, W, 3), ``actions`` env arrays (T, ...) or None."""

    path: Path
    index: int
    episode_id: str
    source: str
    frame_start: int
    frame_end: int
    first: bool
    labeler: str
    frames_thwc: np.ndarray
    actions: dict[str, np.ndarray] | None
    null: np.ndarray | None
    meta: dict[str, Any]

    @property
    def n_frames(self) -> int:
        return self.frame_end - self.frame_start


def _entry(tag: str, body: dict) -> bytes:
    data = msgpack.packb(body, use_bin_type=True)
    return msgpack.packb([tag, data, zlib.crc32(data)], use_bin_type=True)


def _unpack_entry(path: Path, raw: bytes, tag: str, record: int | None = None, crc32: int | None = None) -> dict:
    """Unpack and check one ``[tag, body, crc]`` entry; ``crc32``: the checksum the index expects."""
    try:
        entry = msgpack.unpackb(raw, raw=False)
    except Exception as e:  # msgpack raises several exception types for malformed input
        raise ShardError(path, f"corrupt {tag} entry (not msgpack: {type(e).__name__}: {e})", record) from None
    if not (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[1], bytes)):
        raise ShardError(path, f"corrupt {tag} entry (expected [tag, body, crc32])", record)
    got_tag, body, crc = entry
    if got_tag != tag:
        raise ShardError(path, f"expected a {tag} entry, found {got_tag!r}", record)
    if zlib.crc32(body) != crc or (crc32 is not None and crc != crc32):
        raise ShardError(path, f"{tag} checksum mismatch (data corrupted)", record)
    try:
        out = msgpack.unpackb(body, raw=False)
    except Exception as e:
        raise ShardError(path, f"corrupt {tag} body ({type(e).__name__}: {e})", record) from None
    if not isinstance(out, dict):
        raise ShardError(path, f"corrupt {tag} body (expected a map)", record)
    return out


def _read_at(f, path: Path, offset: int, length: int, what: str, size: int, record: int | None = None) -> bytes:
    if offset < 0 or length <= 0 or offset + length > size:
        raise ShardError(path, f"{what} at bytes [{offset}, {offset + length}) lies outside the file ({size} bytes)", record)
    f.seek(offset)
    raw = f.read(length)
    if len(raw) != length:
        raise ShardError(path, f"{what} truncated", record)
    return raw


def read_index(path: str | os.PathLike) -> ShardIndex:
    """The header and record index of shard ``path`` (two small reads; checks trailer, footer and header)."""
    path = Path(path)
    try:
        f = open(path, "rb")
    except OSError as e:
        raise ShardError(path, f"cannot open ({e.strerror})") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        if size < TRAILER.size:
            raise ShardError(path, f"truncated or not a shard ({size} bytes, no trailer)")
        f.seek(size - TRAILER.size)
        footer_offset, magic = TRAILER.unpack(f.read(TRAILER.size))
        if magic != TRAILER_MAGIC:
            raise ShardError(path, "truncated or not a shard (no end-of-shard trailer)")
        footer_len = size - TRAILER.size - footer_offset
        footer = _unpack_entry(path, _read_at(f, path, footer_offset, footer_len, "footer", size), "footer")
        try:
            h_off, h_len, h_crc = footer["header"]
            header = _unpack_entry(path, _read_at(f, path, h_off, h_len, "header", size), "header", crc32=h_crc)
            if header.get("magic") != MAGIC:
                raise ShardError(path, f"not a vpt_ray shard (magic {header.get('magic')!r})")
            if header.get("version") != FORMAT_VERSION:
                raise ShardError(path, f"unsupported shard format version {header.get('version')!r} "
                                       f"(this code reads version {FORMAT_VERSION})")  # fmt: skip
            records = tuple(
                RecordInfo(index=i, offset=r["offset"], length=r["length"], crc32=r["crc32"],
                           episode_id=r["episode_id"], source=r["source"], frame_start=r["frame_start"],
                           frame_end=r["frame_end"], first=r["first"], labeler=r["labeler"])  # fmt: skip
                for i, r in enumerate(footer["records"])
            )
            if len(records) != footer["n_records"] or sum(r.n_frames for r in records) != footer["n_frames"]:
                raise ShardError(path, "footer counts disagree with its record index")
            frame_shape = tuple(int(x) for x in header["frame_shape"])
            return ShardIndex(path, header["action_space"], frame_shape, header.get("meta") or {}, records)
        except (KeyError, TypeError, ValueError) as e:
            if isinstance(e, ShardError):
                raise
            raise ShardError(path, f"malformed header or footer ({type(e).__name__}: {e})") from None


def _decode_array(path: Path, spec: Any, what: str, record: int, dtype: np.dtype | None = None,
                  compressed: bool = False) -> np.ndarray:  # fmt: skip
    try:
        shape = tuple(int(x) for x in spec["shape"])
        dt = np.dtype(dtype if dtype is not None else spec["dtype"])
        n_bytes = math.prod(shape) * dt.itemsize
        data = spec["lz4"] if compressed else spec["data"]
        if compressed:
            import lz4.block  # lazily, as in ShardWriter.write: see the imports above

            data = lz4.block.decompress(data, uncompressed_size=n_bytes)
        if len(data) != n_bytes:
            raise ValueError(f"{len(data)} bytes for shape {shape} {dt}")
        return np.frombuffer(data, dtype=dt).reshape(shape)
    except Exception as e:  # KeyError/TypeError for malformed maps, LZ4BlockError for bad data
        raise ShardError(path, f"corrupt {what} ({type(e).__name__}: {e})", record) from None


def _decode_record(path: Path, info: RecordInfo, raw: bytes, index: ShardIndex) -> Segment:
    body = _unpack_entry(path, raw, "record", info.index, crc32=info.crc32)
    try:
        fields = (body["episode_id"], body["source"], body["frame_start"], body["frame_end"], body["first"],
                  body["labeler"])  # fmt: skip
    except KeyError as e:
        raise ShardError(path, f"record lacks field {e}", info.index) from None
    expected = (info.episode_id, info.source, info.frame_start, info.frame_end, info.first, info.labeler)
    if fields != expected:
        raise ShardError(path, "record disagrees with the footer index", info.index)
    t = info.n_frames
    frames = _decode_array(path, body.get("frames"), "frames", info.index, np.dtype(np.uint8), compressed=True)
    if frames.shape != (t, *index.frame_shape):
        raise ShardError(path, f"frames have shape {frames.shape}, expected {(t, *index.frame_shape)}", info.index)
    actions = None
    if body.get("actions") is not None:
        actions = {}
        for key, spec in body["actions"].items():
            actions[key] = _decode_array(path, spec, f"actions[{key!r}]", info.index)
            if actions[key].shape[:1] != (t,):
                raise ShardError(path, f"actions[{key!r}] has {actions[key].shape[:1]} frames, expected {t}", info.index)
    null = None
    if body.get("null") is not None:
        null = _decode_array(path, body["null"], "null", info.index)
        if null.shape != (t,):
            raise ShardError(path, f"null has shape {null.shape}, expected ({t},)", info.index)
    return Segment(path, info.index, *fields, frames, actions, null, body.get("meta") or {})


def read_record(index: ShardIndex, i: int, f=None) -> Segment:
    """Record ``i`` of the shard ``index`` describes, decoded and checked (``f``: an open binary file to reuse)."""
    info = index.records[i]
    if f is None:
        with open(index.path, "rb") as fh:
            return read_record(index, i, fh)
    size = os.fstat(f.fileno()).st_size
    raw = _read_at(f, index.path, info.offset, info.length, "record", size, info.index)
    return _decode_record(index.path, info, raw, index)


def iter_segments(path: str | os.PathLike, index: ShardIndex | None = None) -> Iterator[Segment]:
    """Stream the records of shard ``path`` in order, one decoded :class:`Segment` at a time.

    The index is read (and so truncation detected) before anything is yielded; a record that is corrupt raises
    :class:`ShardError` when it is reached.
    """
    index = index if index is not None else read_index(path)
    with open(index.path, "rb") as f:
        for i in range(len(index.records)):
            yield read_record(index, i, f)


@dataclasses.dataclass(frozen=True)
class ShardInfo:
    """What :func:`verify_shard` found in a sound shard."""

    path: Path
    action_space: str | None
    frame_shape: tuple[int, int, int]
    n_records: int
    n_frames: int
    episodes: int
    labelers: tuple[str, ...]


def verify_shard(path: str | os.PathLike) -> ShardInfo:
    """Read and check every byte of shard ``path`` (checksums, decompression, shapes, the action space's
    ranges); :class:`ShardError` names the first problem."""
    index = read_index(path)
    space = _action_space(index.action_space, index.path) if index.action_space else None
    for seg in iter_segments(index.path, index):
        if seg.actions is not None:
            if space is None:
                raise ShardError(index.path, "record has actions but the header names no action space", seg.index)
            try:
                space.is_null(seg.actions)  # validates keys, shapes and value ranges
            except ValueError as e:
                raise ShardError(index.path, f"invalid actions: {e}", seg.index) from None
    return ShardInfo(index.path, index.action_space, index.frame_shape, len(index.records), index.n_frames,
                     len(index.episode_ids), tuple(sorted({r.labeler for r in index.records})))  # fmt: skip


def _action_space(name: Any, path: Path | None = None):
    from vpt_ray.actions import get_action_space

    if name not in ENV_ARRAY_DTYPES:
        message = f"unknown action space {name!r}; choose one of {sorted(ENV_ARRAY_DTYPES)}"
        raise ShardError(path, message) if path is not None else ValueError(message)
    return get_action_space(name)


# ------------------------------------------------------------------------------------------------ writer


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some filesystems do not allow opening directories; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _array_spec(array: np.ndarray) -> dict:
    array = np.ascontiguousarray(array)
    return {"dtype": array.dtype.str, "shape": list(array.shape), "data": array.tobytes()}


class ShardWriter:
    """Write one shard atomically: records go to a hidden temporary file renamed over ``path`` on close.

    ``action_space``: "minecraft" | "crafter" (or an ``ActionSpace``), or None for frames without actions.
    ``frame_shape``: (H, W, 3) of every frame. ``meta``: free-form provenance for the header (JSON-like values).
    Use as a context manager: on an exception the temporary file is removed and ``path`` is left untouched.
    """

    def __init__(self, path: str | os.PathLike, action_space: Any, frame_shape: Sequence[int], *,
                 meta: Mapping[str, Any] | None = None, max_record_frames: int = DEFAULT_RECORD_FRAMES):  # fmt: skip
        self.path = Path(path)
        name = getattr(action_space, "name", action_space)
        self._space = _action_space(name) if name is not None else None
        self.action_space = name
        self.frame_shape = tuple(int(x) for x in frame_shape)
        if len(self.frame_shape) != 3 or self.frame_shape[2] != 3 or min(self.frame_shape) <= 0:
            raise ValueError(f"{self.path}: frame_shape must be (H, W, 3), got {list(frame_shape)}")
        if max_record_frames <= 0:
            raise ValueError(f"{self.path}: max_record_frames must be positive, got {max_record_frames}")
        self.max_record_frames = max_record_frames
        self._records: list[dict] = []
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex[:12]}.tmp")
        self._f = open(self._tmp, "wb")
        self._offset = 0
        header = {"magic": MAGIC, "version": FORMAT_VERSION, "action_space": name,
                  "frame_shape": list(self.frame_shape), "meta": dict(meta or {})}  # fmt: skip
        self._header = self._write_entry("header", header)

    def _write_entry(self, tag: str, body: dict) -> tuple[int, int, int]:
        data = msgpack.packb(body, use_bin_type=True)
        crc = zlib.crc32(data)
        raw = msgpack.packb([tag, data, crc], use_bin_type=True)
        self._f.write(raw)
        where = (self._offset, len(raw), crc)
        self._offset += len(raw)
        return where

    @property
    def n_frames(self) -> int:
        return sum(r["frame_end"] - r["frame_start"] for r in self._records)

    def write(self, frames_thwc: np.ndarray, *, episode_id: str, source: str, frame_start: int = 0,
              actions: Mapping[str, np.ndarray] | None = None, first: bool = True, labeler: str = "human",
              null: np.ndarray | None = None, meta: Mapping[str, Any] | None = None) -> None:  # fmt: skip
        """Add frames ``[frame_start, frame_start + T)`` of episode ``episode_id`` (split into records of at most
        ``max_record_frames``; only the first of them keeps ``first``). ``null`` defaults to the action space's
        ``is_null`` of ``actions``."""
        if self._f is None:
            raise ShardError(self.path, "writer is closed")
        frames_thwc = np.asarray(frames_thwc)
        if frames_thwc.dtype != np.uint8 or frames_thwc.shape[1:] != self.frame_shape or frames_thwc.shape[0] == 0:
            raise ValueError(f"{self.path}: frames must be uint8 (T>0, {', '.join(map(str, self.frame_shape))}), "
                             f"got {frames_thwc.dtype} {frames_thwc.shape}")  # fmt: skip
        t = frames_thwc.shape[0]
        if not isinstance(episode_id, str) or not episode_id or not isinstance(source, str):
            raise ValueError(f"{self.path}: episode_id must be a non-empty str and source a str")
        if int(frame_start) < 0:
            raise ValueError(f"{self.path}: frame_start must be >= 0, got {frame_start}")
        if actions is not None:
            actions = self._check_actions(actions, t)
            if null is None:
                null = self._space.is_null(actions)
        if null is not None:
            null = np.asarray(null)
            if null.shape != (t,) or null.dtype != np.bool_:
                raise ValueError(f"{self.path}: null must be bool ({t},), got {null.dtype} {null.shape}")
        import lz4.block

        for lo in range(0, t, self.max_record_frames):
            hi = min(t, lo + self.max_record_frames)
            body = {
                "episode_id": episode_id, "source": source,
                "frame_start": int(frame_start) + lo, "frame_end": int(frame_start) + hi,
                "first": bool(first) and lo == 0, "labeler": str(labeler),
                "frames": {"shape": [hi - lo, *self.frame_shape],
                           "lz4": lz4.block.compress(np.ascontiguousarray(frames_thwc[lo:hi]), store_size=False)},
                "actions": None if actions is None else {k: _array_spec(v[lo:hi]) for k, v in actions.items()},
                "null": None if null is None else _array_spec(null[lo:hi]),
                "meta": dict(meta or {}),
            }  # fmt: skip
            offset, length, crc = self._write_entry("record", body)
            index_entry = {k: body[k] for k in ("episode_id", "source", "frame_start", "frame_end", "first", "labeler")}
            self._records.append({"offset": offset, "length": length, "crc32": crc, **index_entry})

    def _check_actions(self, actions: Mapping[str, np.ndarray], t: int) -> dict[str, np.ndarray]:
        if self._space is None:
            raise ValueError(f"{self.path}: actions given but the shard has no action space")
        dtypes = ENV_ARRAY_DTYPES[self.action_space]
        if not isinstance(actions, Mapping) or set(actions) != set(dtypes):
            got = sorted(actions) if isinstance(actions, Mapping) else type(actions).__name__
            raise ValueError(f"{self.path}: {self.action_space} env arrays need keys {sorted(dtypes)}, got {got}")
        out = {}
        for key, dtype in dtypes.items():
            array = np.asarray(actions[key])
            if array.shape[:1] != (t,):
                raise ValueError(f"{self.path}: actions[{key!r}] has shape {array.shape}, expected {t} frames")
            out[key] = array.astype(dtype, copy=False)
        self._space.is_null(out)  # validates shapes and value ranges with the action space's own messages
        return out

    def close(self) -> Path:
        """Write the footer, make the file durable and rename it over ``path``; returns ``path``."""
        if self._f is None:
            return self.path
        try:
            footer = {"n_records": len(self._records), "n_frames": self.n_frames, "header": list(self._header),
                      "records": self._records}  # fmt: skip
            footer_offset = self._offset
            self._write_entry("footer", footer)
            self._f.write(TRAILER.pack(footer_offset, TRAILER_MAGIC))
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
            self._f = None
            os.replace(self._tmp, self.path)
            _fsync_dir(self.path.parent)
        except BaseException:
            self.abort()
            raise
        return self.path

    def abort(self) -> None:
        """Drop everything written; ``path`` is left as it was."""
        if self._f is not None:
            self._f.close()
            self._f = None
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def is_temp_file(path: str | os.PathLike) -> bool:
    """A writer's temporary file (left behind only by a process that died while writing)."""
    name = Path(path).name
    return name.startswith(".") and name.endswith(".tmp") and SHARD_SUFFIX in name


# ------------------------------------------------------------------------------------- many shards, bad ones


def find_shards(*paths: str | os.PathLike) -> list[Path]:
    """Shard files under the given directories (recursively) and files, sorted, without writers' temp files."""
    found: set[Path] = set()
    for p in paths:
        p = Path(p)
        if p.is_dir():
            found.update(q for q in p.rglob(f"*{SHARD_SUFFIX}") if q.is_file() and not q.name.startswith("."))
        elif p.is_file():
            found.add(p)
        else:
            raise FileNotFoundError(f"{p}: no such shard file or directory")
    return sorted(found)


@dataclasses.dataclass
class BadShards:
    """Shards a job skipped, each with the error that made it skip (``count``; ``errors``: path -> message)."""

    errors: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def count(self) -> int:
        return len(self.errors)

    def add(self, error: ShardError) -> None:
        if str(error.path) not in self.errors:
            logger.warning("skipping bad shard: %s", error)
        self.errors.setdefault(str(error.path), str(error))

    def summary(self) -> dict[str, Any]:
        return {"bad_shards": self.count, "errors": dict(self.errors)}


def scan_shards(paths: Iterable[str | os.PathLike], *, verify: bool = False,
                bad: BadShards | None = None) -> tuple[list[ShardIndex], BadShards]:  # fmt: skip
    """Indexes of the readable shards among ``paths``; the rest are counted in ``bad`` (returned).

    ``verify=True`` reads every record too (:func:`verify_shard`); otherwise only the index is checked and
    record checksums are checked when the records are read.
    """
    bad = bad if bad is not None else BadShards()
    good = []
    for p in paths:
        try:
            if verify:
                verify_shard(p)
            good.append(read_index(p))
        except ShardError as e:
            bad.add(e)
    return good, bad


def iter_all_segments(paths: Iterable[str | os.PathLike], bad: BadShards | None = None) -> Iterator[Segment]:
    """Every segment of every shard in ``paths``, in order, skipping (and counting in ``bad``) bad shards.

    A shard that fails part-way has already yielded its sound records before it; its remaining records are
    skipped.
    """
    bad = bad if bad is not None else BadShards()
    for p in paths:
        try:
            yield from iter_segments(p)
        except ShardError as e:
            bad.add(e)


# ------------------------------------------------------------------------------------------------ training


@dataclasses.dataclass(frozen=True)
class Episode:
    """Consecutive records of one episode in one shard: frames ``[frame_start, frame_start + n_frames)``."""

    shard: ShardIndex
    records: tuple[int, ...]
    episode_id: str
    source: str
    frame_start: int
    n_frames: int


def episodes_of(index: ShardIndex) -> list[Episode]:
    """The episodes of a shard: a new one starts at a record marked ``first``, at a new episode id, or at a
    gap in the frame numbers (memory must not carry across frames that are not consecutive)."""
    out: list[Episode] = []
    current: list[RecordInfo] = []

    def flush():
        if current:
            n = sum(r.n_frames for r in current)
            out.append(Episode(index, tuple(r.index for r in current), current[0].episode_id, current[0].source,
                               current[0].frame_start, n))  # fmt: skip

    for r in index.records:
        if current and (r.first or r.episode_id != current[-1].episode_id or r.frame_start != current[-1].frame_end):
            flush()
            current = []
        current.append(r)
    flush()
    return out


@dataclasses.dataclass(frozen=True)
class Piece:
    """Frames ``[lo, hi)`` (offsets into episode ``episode``) that one stream row plays without a break."""

    episode: int
    lo: int
    hi: int


@dataclasses.dataclass
class StreamBatch:
    """B parallel streams x T consecutive frames.

    Row b of the next batch continues row b of this one, so a model carries its memory across batches per row.
    ``first_bt``: a new episode starts at this frame (reset memory there). ``valid_bt``: False on padding (a
    row that ran out of episodes at the end of the epoch, or frames of a shard that turned out corrupt) — mask
    the loss with it. ``actions``: env arrays with leading (B, T) (None for shards without actions).
    ``episode_bt`` indexes :attr:`SegmentStreams.episodes` (-1 on padding); ``frame_index_bt`` is the frame
    number in the source video (-1 on padding).
    """

    frames_bthwc: np.ndarray
    first_bt: np.ndarray
    valid_bt: np.ndarray
    null_bt: np.ndarray
    actions: dict[str, np.ndarray] | None
    episode_bt: np.ndarray
    frame_index_bt: np.ndarray


@dataclasses.dataclass
class _Chunk:
    frames: np.ndarray | None  # None: padding
    actions: dict[str, np.ndarray] | None
    null: np.ndarray | None
    starts_piece: bool
    episode: int
    frame_index: int
    n: int


class SegmentStreams:
    """Batches of ``batch_size`` parallel streams x ``chunk_len`` consecutive frames for IDM/BC training.

    Each row plays episodes back to back: consecutive batches continue the same episodes (Transformer-XL
    memory), and when a row's episode ends the row goes on with the next one, ``first_bt`` True there. Per epoch
    the episode order is shuffled with ``(seed, epoch)`` (``shuffle=False``: shard order). With ``world_size``
    > 1 the episodes are split between workers (disjoint, balanced by frames; every worker computes the same
    plan from the shard indexes) and every worker yields the same number of batches (the fewest any worker can
    fill), so data-parallel workers step together. ``split_frames``: play episodes longer than this as several
    pieces (each starting with ``first``) so rows stay balanced when there are few long videos.

    Bad shards are skipped and counted in :attr:`bad` (``verify=True`` reads every shard up front; otherwise a
    record found corrupt during an epoch becomes padding for the rest of its piece).
    """

    def __init__(self, shards: Iterable[str | os.PathLike | ShardIndex], batch_size: int, chunk_len: int, *,
                 seed: int = 0, shuffle: bool = True, rank: int = 0, world_size: int = 1,
                 split_frames: int | None = None, verify: bool = False):  # fmt: skip
        if batch_size <= 0 or chunk_len <= 0:
            raise ValueError(f"batch_size and chunk_len must be positive, got {batch_size} and {chunk_len}")
        if world_size <= 0 or not 0 <= rank < world_size:
            raise ValueError(f"rank must lie in [0, world_size), got rank {rank} of {world_size}")
        if split_frames is not None and split_frames <= 0:
            raise ValueError(f"split_frames must be positive, got {split_frames}")
        self.batch_size, self.chunk_len = batch_size, chunk_len
        self.seed, self.shuffle, self.rank, self.world_size = seed, shuffle, rank, world_size
        self.split_frames = split_frames
        self.bad = BadShards()
        shards = list(shards)
        indexes = [s for s in shards if isinstance(s, ShardIndex)]
        good, _ = scan_shards([s for s in shards if not isinstance(s, ShardIndex)], verify=verify, bad=self.bad)
        indexes += good
        indexes = [i for i in indexes if i.records]
        if not indexes:
            raise ValueError(f"no readable shards with frames among {len(shards)} given ({self.bad.count} bad)")
        ref = indexes[0]
        for i in indexes[1:]:
            if (i.frame_shape, i.action_space) != (ref.frame_shape, ref.action_space):
                raise ShardError(i.path, f"frame shape {i.frame_shape} / action space {i.action_space!r} differ from "
                                         f"{ref.path}'s {ref.frame_shape} / {ref.action_space!r}")  # fmt: skip
        self.frame_shape, self.action_space = ref.frame_shape, ref.action_space
        self.episodes: list[Episode] = [e for i in sorted(indexes, key=lambda i: str(i.path)) for e in episodes_of(i)]
        if len(self.episodes) < world_size:
            raise ValueError(f"{len(self.episodes)} episodes cannot be split between {world_size} workers")

    @classmethod
    def for_ray_train(cls, shards, batch_size: int, chunk_len: int, **kwargs) -> SegmentStreams:
        """This Ray Train worker's streams (rank and world size from ``ray.train.get_context()``)."""
        import ray.train

        ctx = ray.train.get_context()
        return cls(shards, batch_size, chunk_len, rank=ctx.get_world_rank(), world_size=ctx.get_world_size(), **kwargs)

    @property
    def n_frames(self) -> int:
        return sum(e.n_frames for e in self.episodes)

    def _worker_rows(self, epoch: int) -> list[list[list[Piece]]]:
        """worker -> row -> pieces, the same on every worker."""
        order = np.arange(len(self.episodes))
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(order)
        load = [0] * self.world_size
        assigned: list[list[int]] = [[] for _ in range(self.world_size)]
        for e in order:
            w = int(np.argmin(load))
            assigned[w].append(int(e))
            load[w] += self.episodes[e].n_frames
        plans = []
        for episodes in assigned:
            rows: list[list[Piece]] = [[] for _ in range(self.batch_size)]
            row_load = [0] * self.batch_size
            for e in episodes:
                n = self.episodes[e].n_frames
                step = self.split_frames or n
                for lo in range(0, n, step):
                    b = int(np.argmin(row_load))
                    rows[b].append(Piece(e, lo, min(n, lo + step)))
                    row_load[b] += min(n, lo + step) - lo
            plans.append(rows)
        return plans

    def _steps(self, plans) -> int:
        per_worker = [max(sum(p.hi - p.lo for p in row) for row in rows) for rows in plans]
        return min(math.ceil(n / self.chunk_len) for n in per_worker)

    def steps_per_epoch(self, epoch: int = 0) -> int:
        return self._steps(self._worker_rows(epoch))

    def plan(self, epoch: int = 0) -> list[list[Piece]]:
        """This worker's rows for ``epoch``: the pieces each row plays, in order."""
        return self._worker_rows(epoch)[self.rank]

    def _row_chunks(self, pieces: list[Piece]) -> Iterator[_Chunk]:
        for piece in pieces:
            ep = self.episodes[piece.episode]
            done = piece.lo
            try:
                offset = 0
                for i in ep.records:
                    info = ep.shard.records[i]
                    lo, hi = max(offset, done), min(offset + info.n_frames, piece.hi)
                    if lo < hi:
                        seg = read_record(ep.shard, i)
                        if self.action_space is not None and seg.actions is None:
                            raise ShardError(ep.shard.path, "record has no actions", i)
                        a, b = lo - offset, hi - offset
                        yield _Chunk(seg.frames_thwc[a:b], None if seg.actions is None else
                                     {k: v[a:b] for k, v in seg.actions.items()},
                                     None if seg.null is None else seg.null[a:b], done == piece.lo,
                                     piece.episode, ep.frame_start + lo, hi - lo)  # fmt: skip
                        done = hi
                    offset += info.n_frames
                    if offset >= piece.hi:
                        break
            except ShardError as e:
                self.bad.add(e)
                if piece.hi > done:
                    yield _Chunk(None, None, None, False, -1, -1, piece.hi - done)

    def iter_epoch(self, epoch: int = 0) -> Iterator[StreamBatch]:
        plans = self._worker_rows(epoch)
        steps = self._steps(plans)
        rows = [self._row_chunks(pieces) for pieces in plans[self.rank]]
        pending: list[_Chunk | None] = [None] * self.batch_size
        noop = _action_space(self.action_space).noop(1) if self.action_space else None
        for _ in range(steps):
            b_, t_ = self.batch_size, self.chunk_len
            batch = StreamBatch(
                frames_bthwc=np.zeros((b_, t_, *self.frame_shape), np.uint8),
                first_bt=np.zeros((b_, t_), bool), valid_bt=np.zeros((b_, t_), bool),
                null_bt=np.zeros((b_, t_), bool),
                actions=None if noop is None else {k: np.zeros((b_, t_, *v.shape[1:]), v.dtype) for k, v in noop.items()},
                episode_bt=np.full((b_, t_), -1, np.int64), frame_index_bt=np.full((b_, t_), -1, np.int64),
            )  # fmt: skip
            for b in range(b_):
                t = 0
                while t < t_:
                    chunk = pending[b] if pending[b] is not None else next(rows[b], None)
                    if chunk is None:
                        break  # the row is out of episodes: the rest stays padding
                    n = min(chunk.n, t_ - t)
                    self._place(batch, b, t, chunk, n)
                    pending[b] = self._rest(chunk, n)
                    t += n
            yield batch

    @staticmethod
    def _place(batch: StreamBatch, b: int, t: int, chunk: _Chunk, n: int) -> None:
        if chunk.frames is None:
            return
        sl = slice(t, t + n)
        batch.frames_bthwc[b, sl] = chunk.frames[:n]
        batch.valid_bt[b, sl] = True
        batch.first_bt[b, t] = chunk.starts_piece
        batch.episode_bt[b, sl] = chunk.episode
        batch.frame_index_bt[b, sl] = np.arange(chunk.frame_index, chunk.frame_index + n)
        if chunk.null is not None:
            batch.null_bt[b, sl] = chunk.null[:n]
        if chunk.actions is not None and batch.actions is not None:
            for k, v in chunk.actions.items():
                batch.actions[k][b, sl] = v[:n]

    @staticmethod
    def _rest(chunk: _Chunk, n: int) -> _Chunk | None:
        if n >= chunk.n:
            return None
        return _Chunk(None if chunk.frames is None else chunk.frames[n:],
                      None if chunk.actions is None else {k: v[n:] for k, v in chunk.actions.items()},
                      None if chunk.null is None else chunk.null[n:], False, chunk.episode,
                      chunk.frame_index + n if chunk.frame_index >= 0 else -1, chunk.n - n)  # fmt: skip


# ------------------------------------------------------------------------------------- human-labeled recordings


def recording_to_shard(stem: str | os.PathLike, shard: str | os.PathLike, *, episode_id: str | None = None,
                       frame_size: Sequence[int] | None = None,
                       max_record_frames: int = DEFAULT_RECORD_FRAMES) -> int:  # fmt: skip
    """Convert one labeled contractor-format recording (``vpt_ray.data.recordings``) into shard ``shard``
    (labeler "human"), streaming its frames; ``frame_size`` (H, W) resizes them (cv2 INTER_LINEAR, as VPT does).
    Returns the frame count. A bad recording raises ``RecordingError`` and leaves no shard."""
    from vpt_ray.data import recordings as rec

    stem = rec.stem_of(stem)
    meta = rec.read_meta(stem)
    if not meta["labeled"]:
        raise rec.RecordingError(f"{stem}: not a labeled recording (no actions to train on)")
    rec.check_video(stem, meta)
    _, actions, null = rec.read_labels(stem, meta)
    n = meta["n_frames"]
    if n == 0:
        raise rec.RecordingError(f"{stem}: no frames")
    height, width = (int(x) for x in (frame_size or meta["frame_size"]))
    resize = (height, width) != tuple(meta["frame_size"])
    video = str(stem.with_name(stem.name + rec.VIDEO_SUFFIX))
    provenance = {"recording": str(stem), "task": meta.get("task"), "seed": meta.get("seed"),
                  "source_frame_size": list(meta["frame_size"])}  # fmt: skip
    episode_id = episode_id or stem.name

    def flush(writer: ShardWriter, buf: list[np.ndarray], start: int) -> None:
        stop = start + len(buf)
        writer.write(np.stack(buf), episode_id=episode_id, source=video, frame_start=start, first=start == 0,
                     actions={k: v[start:stop] for k, v in actions.items()}, null=null[start:stop])  # fmt: skip

    with ShardWriter(shard, meta["action_space"], (height, width, 3), meta=provenance,
                     max_record_frames=max_record_frames) as writer:  # fmt: skip
        buf: list[np.ndarray] = []
        start = 0
        for frame in rec.iter_frames(stem):
            if resize:
                import cv2

                frame = cv2.resize(frame, (width, height), interpolation=cv2.INTER_LINEAR)
            buf.append(frame)
            if len(buf) == max_record_frames:
                flush(writer, buf, start)
                start += len(buf)
                buf = []
        if buf:
            flush(writer, buf, start)
    return n


def _convert_one(stem: str, shard: str, episode_id: str, frame_size, max_record_frames: int) -> tuple[int, str | None]:
    from vpt_ray.data.recordings import RecordingError

    try:
        return recording_to_shard(stem, shard, episode_id=episode_id, frame_size=frame_size,
                                  max_record_frames=max_record_frames), None  # fmt: skip
    except (RecordingError, ValueError) as e:  # ValueError: values the shard's action space refuses
        return 0, str(e) if str(stem) in str(e) else f"{stem}: {e}"


@dataclasses.dataclass
class ConversionSummary:
    """What :func:`recordings_to_shards` did: shards written, shards already there, recordings skipped."""

    written: list[str] = dataclasses.field(default_factory=list)
    existing: list[str] = dataclasses.field(default_factory=list)
    bad: dict[str, str] = dataclasses.field(default_factory=dict)
    frames: int = 0


def check_conversion(recording_dir: str | os.PathLike, out_dir: str | os.PathLike,
                     frame_size: Sequence[int] | None = None) -> None:  # fmt: skip
    """Refuse a conversion's arguments before any work: ``frame_size`` [H, W] each from 1 to
    :data:`MAX_FRAME_SIDE`, ``out_dir`` a directory or nothing yet, ``recording_dir`` a directory."""
    if frame_size is not None:
        size = list(frame_size)
        if len(size) != 2 or not all(type(v) is int and 1 <= v <= MAX_FRAME_SIDE for v in size):
            raise ValueError(f"frame size {size}: expected [height, width], each from 1 to {MAX_FRAME_SIDE}")
    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise ValueError(f"{out_dir}: exists and is not a directory (the shards' output directory)")
    if not Path(recording_dir).is_dir():
        raise ValueError(f"{recording_dir}: not a directory of recordings")


def recordings_to_shards(recording_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
                         frame_size: Sequence[int] | None = None, overwrite: bool = False, workers: int = 0,
                         max_record_frames: int = DEFAULT_RECORD_FRAMES, progress: bool = False) -> ConversionSummary:  # fmt: skip
    """Convert every labeled recording under ``recording_dir`` into ``out_dir/<relative stem>.vshard``.

    Shards already present are kept (rerun after an interruption converts the rest) unless ``overwrite``. Bad
    recordings are skipped and reported in ``bad`` (stem -> error). ``workers`` > 0 converts in that many
    Ray tasks at once (on the connected cluster; Ray starts a local one if none is); 0 converts in this process.
    The arguments are checked first (:func:`check_conversion`: ValueError).
    """
    from tqdm import tqdm

    from vpt_ray.data.recordings import iter_recordings

    check_conversion(recording_dir, out_dir, frame_size)
    recording_dir, out_dir = Path(recording_dir), Path(out_dir)
    summary = ConversionSummary()
    todo = []
    for stem in iter_recordings(recording_dir, labeled=True):
        rel = stem.relative_to(recording_dir).as_posix()
        shard = out_dir / (rel + SHARD_SUFFIX)
        if shard.exists() and not overwrite:
            summary.existing.append(str(shard))
        else:
            todo.append((str(stem), str(shard), rel, None if frame_size is None else tuple(frame_size), max_record_frames))
    bar = tqdm(total=len(todo), desc="shard", unit="recording", disable=not progress)

    def done(args, result):
        frames, error = result
        if error is None:
            summary.written.append(args[1])
            summary.frames += frames
        else:
            summary.bad[args[0]] = error
            logger.warning("skipping recording: %s", error)
        bar.update(1)

    try:
        if workers <= 0:
            for args in todo:
                done(args, _convert_one(*args))
        else:
            import ray

            task = ray.remote(num_cpus=1)(_convert_one)
            pending: dict[Any, tuple] = {}
            queue = list(todo)
            while queue or pending:
                while queue and len(pending) < workers:
                    args = queue.pop(0)
                    pending[task.remote(*args)] = args
                ready, _ = ray.wait(list(pending), num_returns=1)
                done(pending.pop(ready[0]), ray.get(ready[0]))
    finally:
        bar.close()
    return summary
