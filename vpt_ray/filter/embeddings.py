"""Frame embeddings for the clean-video classifier: a small registry of pluggable models.

An embedding is any object with ``name``, ``dim``, ``options()`` (the keyword arguments that rebuild it: stored
in the classifier file so applying uses exactly the training embedding) and
``embed(frames_nhwc uint8) -> float32 (N, dim)``.

- ``handcrafted`` (default): deterministic, CPU-only, no weights. It describes where colour and texture sit in the
  frame, which is what separates the three classes: overlays (watermarks, face-cam boxes) are local changes in
  colour and edge density at fixed places of the frame; off-mode footage (menus, other modes, other games)
  changes the global colour distribution and layout.
- ``clip``: the paper's embedding (CLIP RN50x64 at 448x448 by default) through ``open_clip``, from a weights file
  on local disk only (never downloaded). ``open_clip`` is an optional dependency imported on first use.

Register another with :func:`register_embedding`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np


class EmbeddingError(ValueError):
    """An unknown embedding, bad options, or a model that cannot be loaded."""


@runtime_checkable
class FrameEmbedding(Protocol):
    name: str
    dim: int

    def options(self) -> dict[str, Any]: ...

    def embed(self, frames_nhwc: np.ndarray) -> np.ndarray: ...


_REGISTRY: dict[str, Callable[..., FrameEmbedding]] = {}


def register_embedding(name: str) -> Callable[[Callable[..., FrameEmbedding]], Callable[..., FrameEmbedding]]:
    """Decorator: ``@register_embedding("mine")`` on a class/factory taking the embedding's options as kwargs."""

    def deco(factory: Callable[..., FrameEmbedding]) -> Callable[..., FrameEmbedding]:
        _REGISTRY[name] = factory
        return factory

    return deco


def available_embeddings() -> list[str]:
    return sorted(_REGISTRY)


def make_embedding(name: str, **options: Any) -> FrameEmbedding:
    """Build a registered embedding; unknown names and options are refused with the allowed ones named."""
    if name not in _REGISTRY:
        raise EmbeddingError(f"unknown embedding {name!r} (available: {', '.join(available_embeddings())})")
    try:
        return _REGISTRY[name](**options)
    except TypeError as e:
        raise EmbeddingError(f"embedding {name!r}: bad options {options}: {e}") from None


def _check_frames(frames_nhwc: np.ndarray) -> np.ndarray:
    frames_nhwc = np.asarray(frames_nhwc)
    if frames_nhwc.dtype != np.uint8 or frames_nhwc.ndim != 4 or frames_nhwc.shape[-1] != 3:
        raise EmbeddingError(
            f"expected uint8 frames of shape (N, H, W, 3), got {frames_nhwc.dtype} {frames_nhwc.shape}"
        )
    return frames_nhwc


# A pixel is "flat saturated" when its HSV saturation exceeds ~half (of 255) and its grey gradient (Sobel
# magnitude, unit step = 4) is below 0.15: flat graphic colour.
_SATURATED, _FLAT = 120, 0.15


@register_embedding("handcrafted")
class HandcraftedEmbedding:
    """Colour + layout + texture statistics of an RGB frame, resized to ``size x size`` first.

    Per frame (all in [0, 1]-ish ranges so an RBF kernel on standardised features treats them alike):
    - a joint HSV histogram (``hue_bins x 3 x 3``, square-rooted: the Hellinger map, so rare colours count);
    - per cell of a ``grid x grid`` layout: mean R, G, B, the grey standard deviation, the mean gradient
      magnitude and the fraction of strong edges (a face-cam box or a logo changes these locally);
    - on a 2x finer ``2*grid x 2*grid`` layout: the gradient energy (thin overlay borders and text) and the
      share of flat, saturated pixels (graphic overlays such as logos are flat colour; game textures are not:
      this tells a red logo from a lava lake in the same corner).

    Measured (``benchmarks/bench_filter.py``: 30 training videos of 20 s, 64x64 Crafter frames with logos,
    face-cams, intro cards and menus; 6 of them held out, 10 more never seen): 97.6 % frame accuracy on the
    held-out videos and 98.0 % on the unseen ones, against 91.1 % / 97.6 % for a raw 16x16 RGB thumbnail (the
    obvious baseline, which takes overlay frames for gameplay); the flat-saturated share took a 16-video
    training set from 90 % to 97.6 %. Overlays in a place no training video had are the weak spot, hence the
    mirrored training frames (``TrainConfig.mirror_augment``).
    """

    name = "handcrafted"

    def __init__(self, size: int = 96, grid: int = 4, hue_bins: int = 8):
        if size < 16 or grid < 1 or size % (2 * grid) != 0 or hue_bins < 2:
            raise EmbeddingError(
                f"handcrafted embedding: need size >= 16 divisible by 2*grid, grid >= 1, hue_bins >= 2 "
                f"(got size={size}, grid={grid}, hue_bins={hue_bins})"
            )
        self.size, self.grid, self.hue_bins = size, grid, hue_bins
        self.dim = hue_bins * 9 + grid * grid * 6 + 2 * (2 * grid) ** 2

    def options(self) -> dict[str, Any]:
        return {"size": self.size, "grid": self.grid, "hue_bins": self.hue_bins}

    def embed(self, frames_nhwc: np.ndarray) -> np.ndarray:
        import cv2

        frames_nhwc = _check_frames(frames_nhwc)
        out = np.empty((len(frames_nhwc), self.dim), dtype=np.float32)
        for i, frame in enumerate(frames_nhwc):
            small = cv2.resize(frame, (self.size, self.size), interpolation=cv2.INTER_AREA)
            out[i] = self._features(small, cv2)
        return out

    def _features(self, rgb: np.ndarray, cv2) -> np.ndarray:
        g, s = self.grid, self.size
        hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)  # H in [0, 180), S and V in [0, 256)
        hist = cv2.calcHist([hsv], [0, 1, 2], None, [self.hue_bins, 3, 3], [0, 180, 0, 256, 0, 256])
        hist = np.sqrt(hist.ravel() / (s * s))

        grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0
        gx = cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3)
        gy = cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3)
        mag = np.sqrt(gx * gx + gy * gy)

        def cells(x: np.ndarray, n: int) -> np.ndarray:  # (s, s, ...) -> (n, n, s/n * s/n, ...)
            c = s // n
            return x.reshape(n, c, n, c, *x.shape[2:]).swapaxes(1, 2).reshape(n, n, c * c, *x.shape[2:])

        rgb_cells = cells(rgb.astype(np.float32) / 255.0, g)
        grey_cells, mag_cells = cells(grey, g), cells(mag, g)
        per_cell = np.concatenate(
            [
                rgb_cells.mean(axis=2),
                grey_cells.std(axis=2)[..., None],
                mag_cells.mean(axis=2)[..., None] / 4.0,  # Sobel magnitude of a unit step is 4
                (mag_cells > 1.0).mean(axis=2)[..., None],
            ],
            axis=-1,
        ).ravel()
        fine_energy = np.sqrt(cells(mag, 2 * g).mean(axis=2).ravel() / 4.0)
        flat_saturated = (hsv[..., 1] > _SATURATED) & (mag < _FLAT)
        fine_flat = cells(flat_saturated.astype(np.float32), 2 * g).mean(axis=2).ravel()
        return np.concatenate([hist, per_cell, fine_energy, fine_flat]).astype(np.float32)


@register_embedding("clip")
class ClipEmbedding:
    """CLIP image embedding (``open_clip``), L2-normalised, from a local weights file.

    ``weights``: a state dict saved with ``torch.save`` (optionally under a ``state_dict`` key; a ``module.``
    prefix is stripped) or a ``.safetensors`` file; it is loaded with ``weights_only=True``, never unpickled.
    Frames are squashed to the model's square input (not centre-cropped: overlays sit at the frame edges).
    """

    name = "clip"

    def __init__(self, weights: str, model: str = "RN50x64", device: str = "cpu", batch_size: int = 32):
        try:
            import open_clip
        except ImportError:
            raise EmbeddingError(
                "embedding 'clip' needs the optional package open_clip (pip install open_clip_torch) and a local "
                "weights file; the default 'handcrafted' embedding needs neither"
            ) from None
        import torch

        path = Path(weights)
        if not path.is_file():
            raise EmbeddingError(f"embedding 'clip': weights file {path} not found (weights are never downloaded)")
        try:
            net = open_clip.create_model(model, pretrained=None, device="cpu")
        except RuntimeError as e:
            raise EmbeddingError(f"embedding 'clip': unknown open_clip model {model!r}: {e}") from None
        state = _load_state_dict(path, torch)
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise EmbeddingError(f"embedding 'clip': {path} does not fit model {model!r}: {e}") from None
        self._torch = torch
        self._net = net.to(device).eval()
        size = net.visual.image_size
        self._size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        mean = getattr(net.visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN
        std = getattr(net.visual, "image_std", None) or open_clip.OPENAI_DATASET_STD
        self._mean = torch.tensor(mean, device=device).view(1, 3, 1, 1)
        self._std = torch.tensor(std, device=device).view(1, 3, 1, 1)
        self._device = device
        self._options = {"weights": str(path), "model": model, "device": device, "batch_size": batch_size}
        self.batch_size = batch_size
        self.dim = int(net.visual.output_dim)

    def options(self) -> dict[str, Any]:
        return dict(self._options)

    def embed(self, frames_nhwc: np.ndarray) -> np.ndarray:
        torch = self._torch
        frames_nhwc = _check_frames(frames_nhwc)
        out = []
        with torch.inference_mode():
            for i in range(0, len(frames_nhwc), self.batch_size):
                x = torch.from_numpy(frames_nhwc[i : i + self.batch_size]).to(self._device)
                x = x.permute(0, 3, 1, 2).float() / 255.0
                x = torch.nn.functional.interpolate(x, size=self._size, mode="bicubic", align_corners=False)
                x = (x.clamp(0, 1) - self._mean) / self._std
                z = self._net.encode_image(x)
                out.append(torch.nn.functional.normalize(z, dim=-1).float().cpu().numpy())
        if not out:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.concatenate(out).astype(np.float32)


def _load_state_dict(path: Path, torch) -> dict:
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise EmbeddingError(f"embedding 'clip': {path} is .safetensors but safetensors is not installed") from None
        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # a TorchScript archive or a pickled model: refuse, never unpickle code
            raise EmbeddingError(
                f"embedding 'clip': {path} is not a plain state dict loadable with weights_only=True ({e}); save "
                "the model's state_dict() with torch.save, or use a .safetensors file"
            ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise EmbeddingError(f"embedding 'clip': {path} holds a {type(state).__name__}, not a state dict")
    return {k.removeprefix("module."): v for k, v in state.items()}
