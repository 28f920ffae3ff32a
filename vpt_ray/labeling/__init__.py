"""Pseudo-labeling unlabeled video with the IDM (VPT §5): sliding windows, a Ray Data actor pool, one shard
per video, resumable through the run ledger.

Public API: ``WindowSpec`` / ``plan_windows`` / ``label_clip`` (windows), ``decode_video`` / ``VideoError``
(video), ``load_segments`` / ``collect_videos`` / ``VideoTask`` / ``InputError`` (inputs), ``prepare_job`` /
``run_labeling`` / ``label_video`` / ``checkpoint_id`` / ``LabelJob`` / ``LabelJobError`` (job).
"""

from vpt_ray.labeling.inputs import InputError, VideoTask, collect_videos, load_segments
from vpt_ray.labeling.job import LabelJob, LabelJobError, checkpoint_id, label_video, prepare_job, run_labeling
from vpt_ray.labeling.video import VideoError, decode_video
from vpt_ray.labeling.windows import Window, WindowSpec, label_clip, plan_windows

__all__ = [
    "InputError",
    "LabelJob",
    "LabelJobError",
    "VideoError",
    "VideoTask",
    "Window",
    "WindowSpec",
    "checkpoint_id",
    "collect_videos",
    "decode_video",
    "label_clip",
    "label_video",
    "load_segments",
    "plan_windows",
    "prepare_job",
    "run_labeling",
]
