"""Clean-video filter: classifier accuracy on held-out videos, clean-segment precision/recall against ground truth,
and the filter's speed against decoding alone, all in one run. Prints JSON.

Data: web-style Crafter videos with overlays recorded by ``vpt_ray.data.recordings.record_episodes`` (kept in
``--data`` so a rerun reuses them): ``--train-videos`` of run seed 1 to train on (a share of them held out for
frame accuracy), ``--test-videos`` of run seed 2 never seen in training, filtered end to end with Ray.

- accuracy: the default classifier (``handcrafted`` embedding, mirror augmentation), and in the same run the
  same without the mirrored training frames and a raw 16x16 RGB thumbnail embedding, the obvious baseline
  (same frames, same SVM); held-out-video frames of the training run and sampled frames of the test videos;
- segments: frame-overlap and IoU >= 0.5 segment precision/recall of the clean segments found (before the 80 %
  video rule) against the true clean segments of >= 5 s, and kept/dropped videos against the true clean share;
- speed: frames of video per second of one process, ``filter_video`` (decode, convert the 3 sampled frames/s,
  embed, classify, segments) against ``count_frames`` (decode only), alternating per video so both see the same
  machine load.

    python benchmarks/bench_filter.py [--train-videos 30] [--test-videos 10] [--steps 400] [--data DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def _thumbnail_embedding():
    from vpt_ray.filter.embeddings import register_embedding

    @register_embedding("bench-thumbnail16")
    class Thumbnail:
        name, dim = "bench-thumbnail16", 16 * 16 * 3

        def options(self):
            return {}

        def embed(self, frames_nhwc):
            import cv2

            return np.stack([cv2.resize(f, (16, 16), interpolation=cv2.INTER_AREA).ravel() for f in frames_nhwc]
                            ).astype(np.float32) / 255.0  # fmt: skip

    return Thumbnail.name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train-videos", type=int, default=30)
    parser.add_argument("--test-videos", type=int, default=10)
    parser.add_argument("--steps", type=int, default=400, help="gameplay steps per video (20 per second)")
    parser.add_argument("--task", default="crafter-tech-tree")
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "vpt_ray_bench_filter")
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 1)))
    parser.add_argument("--plots", type=Path, help="write the confusion matrix and timeline PNGs here")
    args = parser.parse_args()

    from vpt_ray.ray_session import init_ray, use_token_auth

    use_token_auth()  # before Ray is imported
    import ray

    from vpt_ray.data.recordings import record_episodes
    from vpt_ray.filter.config import FilterConfig, TrainConfig
    from vpt_ray.filter.pipeline import filter_video, filter_videos
    from vpt_ray.filter.report import evaluate, labeled_videos, plot_confusion, plot_timelines
    from vpt_ray.filter.train import train_filter
    from vpt_ray.filter.video import count_frames

    init_ray(num_cpus=args.workers, configure_logging=False)
    try:
        t0 = time.perf_counter()
        for split, seed, n in (("train", 1, args.train_videos), ("test", 2, args.test_videos)):
            result = record_episodes(args.task, args.data / split, n, seed=seed, labeled=False, overlays=True,
                                     max_steps=args.steps, workers=args.workers, progress=False)  # fmt: skip
            if result["failed"]:
                raise SystemExit(f"recording failed: {result['failed'][:3]}")
        record_s = time.perf_counter() - t0
        train_videos, _ = labeled_videos(args.data / "train")
        test_videos, _ = labeled_videos(args.data / "test")

        cfg = FilterConfig()
        truths = {v.video: v for v in test_videos}
        variants = {
            "handcrafted": TrainConfig(),
            "handcrafted_no_mirror": TrainConfig(mirror_augment=False),
            "thumbnail16": TrainConfig(embedding=_thumbnail_embedding()),
        }
        by_variant = {}
        for name, train_cfg in variants.items():
            res = train_filter(train_videos, train_cfg, progress=False)
            results = filter_videos([(v.video, v.meta) for v in test_videos], res.classifier, cfg, progress=False)
            scores = evaluate(results, truths, cfg)
            hold, test = res.report["holdout"], scores["sampled_frames"]
            by_variant[name] = {
                "heldout_frames": hold["frames"],
                "heldout_accuracy": hold["accuracy"],
                "heldout_balanced_accuracy": hold["balanced_accuracy"],
                "heldout_confusion": hold["confusion"],
                "test_frames": test["frames"],
                "test_accuracy": test["accuracy"],
                "test_confusion": test["confusion"],
                "segments": {k: scores["segments"][k] for k in ("frame_precision", "frame_recall",
                                                               "segment_precision", "segment_recall")},
                "kept_segments": {k: scores["kept_segments"][k] for k in ("frame_precision", "frame_recall")},
                "videos": {k: scores["videos"][k] for k in ("tp", "fp", "fn", "tn")},
                "train_frames": sum(res.report["train_frames_per_class"].values()),
                "embed_s": round(res.report["embed_seconds"], 2),
                "fit_s": round(res.report["fit_seconds"], 2),
            }
            if name == "handcrafted":
                classifier, report, default_results = res.classifier, res.report, results

        # speed, one process: decode alone vs the whole filter, alternating per video
        decode_s = filter_s = 0.0
        frames = 0
        for v in test_videos:
            t = time.perf_counter()
            n, _ = count_frames(v.video)
            decode_s += time.perf_counter() - t
            t = time.perf_counter()
            r = filter_video(v.video, classifier, FilterConfig(metadata_blacklist=False))
            filter_s += time.perf_counter() - t
            assert r.n_frames == n
            frames += n
        if args.plots:
            plot_confusion(report["holdout"]["confusion"], args.plots / "filter_confusion.png")
            plot_timelines(default_results, truths, args.plots / "filter_timelines.png")
    finally:
        ray.shutdown()

    print(json.dumps({
        "data": {"task": args.task, "steps": args.steps, "train_videos": len(train_videos),
                 "holdout_videos": report["holdout_videos"], "test_videos": len(test_videos),
                 "record_s": round(record_s, 1)},
        "classifiers": by_variant,
        "speed": {
            "frames": frames,
            "decode_only_fps": round(frames / decode_s, 1),
            "filter_fps": round(frames / filter_s, 1),
            "filter_time_over_decode_time": round(filter_s / decode_s, 3),
            "sample_fps": cfg.sample_fps,
        },
    }, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
