"""Clean-video filter (VPT paper App. A, method doc §2).

- frame classifier: a pluggable embedding (:mod:`~vpt_ray.filter.embeddings`: ``handcrafted`` offline default,
  ``clip`` from local weights) + an RBF SVM over the classes clean / artifacts / none
  (:class:`FrameClassifier`, :func:`train_filter`, saved as plain arrays: :func:`load_classifier` never unpickles);
- per video: classify 3 frames/s, keep videos with >= 80 % clean frames, median filter (7), clean segments
  >= 5 s (:func:`filter_video`; :func:`filter_videos` runs one Ray task per video);
- metadata: :func:`blacklist_match` and :func:`early_game_match` on titles/descriptions.

Output of ``vpt-ray filter apply`` (and input of ``vpt-ray label --segments``): a JSONL, one object per video,
``{"video", "segments": [[start_frame, end_frame), ...], "clean_fraction", "kept", "reason", ...}``.
"""

from vpt_ray.filter.classifier import (
    CLASS_NAMES,
    ClassifierError,
    FrameClassifier,
    load_classifier,
    train_classifier,
)
from vpt_ray.filter.config import FilterConfig, TrainConfig
from vpt_ray.filter.embeddings import (
    EmbeddingError,
    FrameEmbedding,
    available_embeddings,
    make_embedding,
    register_embedding,
)
from vpt_ray.filter.metadata import (
    blacklist_match,
    early_game_match,
    is_blacklisted,
    is_early_game,
)
from vpt_ray.filter.pipeline import VideoResult, filter_video, filter_videos, read_segments_jsonl, summarize
from vpt_ray.filter.segments import clean_segments, median_filter, sample_frame_indices
from vpt_ray.filter.train import LabeledVideo, TrainResult, train_filter

__all__ = [
    "CLASS_NAMES",
    "ClassifierError",
    "EmbeddingError",
    "FilterConfig",
    "FrameClassifier",
    "FrameEmbedding",
    "LabeledVideo",
    "TrainConfig",
    "TrainResult",
    "VideoResult",
    "available_embeddings",
    "blacklist_match",
    "clean_segments",
    "early_game_match",
    "filter_video",
    "filter_videos",
    "is_blacklisted",
    "is_early_game",
    "load_classifier",
    "make_embedding",
    "median_filter",
    "read_segments_jsonl",
    "register_embedding",
    "sample_frame_indices",
    "summarize",
    "train_classifier",
    "train_filter",
]
