"""Decode a whole video with PyAV into uint8 frames at the IDM's frame size (cv2 INTER_LINEAR, as VPT resizes).

Frames are counted in decode order, as the clean-video filter counts them, so its segments index these frames.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


class VideoError(RuntimeError):
    """A video that cannot be opened or fully decoded (corrupt, truncated, no video stream, no frames)."""


def decode_video(path: str | Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """Every frame of ``path`` as uint8 (N, H, W, 3) RGB, resized to ``size`` = (H, W) when given.

    Raises :class:`VideoError` naming the file for anything that stops decoding part-way: a partially readable
    video is not labeled from a guess of where its damage ends.
    """
    import av
    import cv2

    path = Path(path)
    frames = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoError(f"{path}: no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                rgb = frame.to_ndarray(format="rgb24")
                if size is not None and rgb.shape[:2] != tuple(size):
                    rgb = cv2.resize(rgb, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
                frames.append(rgb)
    except (av.FFmpegError, OSError, ValueError) as e:
        raise VideoError(f"{path}: cannot decode video after {len(frames)} frames: {e}") from None
    if not frames:
        raise VideoError(f"{path}: no decodable frames")
    return np.stack(frames)
