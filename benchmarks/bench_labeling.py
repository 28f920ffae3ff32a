"""Pseudo-labeling throughput: the `vpt-ray label` pipeline (Ray Data actor pool) against a single-process loop that
labels window by window, with the same IDM and the same videos, measured in the same run. Prints JSON.

Both do the whole job per video: decode (PyAV) + resize, the IDM over 128/64-style sliding windows (here the
preset's clip length, stride half of it), labels to env arrays, one shard written. The pipeline's time is
end to end (actor start-up included); ``label_frames_per_s`` is its rate once the actors are up (frames over
the actors' summed per-video seconds, times the number of actors). The labels of both must agree frame for
frame (``label_agreement``: the share of frames with the same label).

    python benchmarks/bench_labeling.py [--videos 6] [--frames 400] [--preset crafter-idm-small] [--actors 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("RAY_AUTH_MODE", "token")  # Ray token auth (vpt_ray.ray_session), set before Ray is imported


def write_video(path: Path, n_frames: int, size: tuple[int, int], seed: int) -> None:
    """A smooth moving pattern with noise (compresses like game footage rather than like pure noise)."""
    import av

    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=20)
        stream.height, stream.width, stream.pix_fmt = h, w, "yuv420p"
        for t in range(n_frames):
            base = np.stack([(xx + 3 * t) % 256, (yy + 2 * t) % 256, (xx + yy + t) % 256], -1)
            frame = np.clip(base + rng.integers(-20, 20, base.shape), 0, 255).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def baseline(job, tasks, threads: int) -> tuple[float, int, dict[str, np.ndarray]]:
    """One process, one window at a time: decode, label, write the shard (``threads`` torch threads)."""
    import torch

    torch.set_num_threads(threads)
    from vpt_ray.data.shards import ShardWriter
    from vpt_ray.labeling import decode_video, plan_windows
    from vpt_ray.models import load_checkpoint

    idm = load_checkpoint(job.idm)
    space = idm.action_space
    labels_by_video = {}
    frames_total = 0
    start = time.perf_counter()
    for task in tasks:
        frames = decode_video(task.path, job.frame_size)
        idx = {k: np.zeros((len(frames), f), np.int64) for k, (f, _) in space.idm_heads.items()}
        for w in plan_windows(len(frames), job.spec):
            pred = idm.predict(torch.from_numpy(frames[None, w.start : w.stop]))
            for k, v in pred.items():
                idx[k][w.keep_lo : w.keep_hi] = v[0, w.keep_lo - w.start : w.keep_hi - w.start].numpy()
        actions = space.from_idm(idx)
        with ShardWriter(Path(job.out) / "baseline" / task.shard, space.name, frames.shape[1:]) as writer:
            writer.write(frames, episode_id=task.key, source=task.path, actions=actions, labeler=job.labeler)
        labels_by_video[task.key] = next(iter(actions.values()))
        frames_total += len(frames)
    return time.perf_counter() - start, frames_total, labels_by_video


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=6)
    parser.add_argument("--frames", type=int, default=400, help="frames per video")
    parser.add_argument("--video-size", type=int, nargs=2, default=(96, 128), metavar=("H", "W"))
    parser.add_argument("--preset", default="crafter-idm-small", help="IDM preset (random weights)")
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--batch-windows", type=int, default=8)
    args = parser.parse_args()

    import ray
    import torch

    from vpt_ray.data.shards import iter_segments
    from vpt_ray.labeling import collect_videos, prepare_job, run_labeling
    from vpt_ray.ledger import open_ledger
    from vpt_ray.models import build_model, load_preset, save_checkpoint

    root = Path(tempfile.mkdtemp(prefix="bench_labeling_"))
    try:
        torch.manual_seed(0)
        idm_dir = save_checkpoint(build_model(load_preset(args.preset)), root / args.preset)
        (root / "videos").mkdir()
        for i in range(args.videos):
            write_video(root / "videos" / f"v{i:03d}.mp4", args.frames, tuple(args.video_size), seed=i)
        job = prepare_job(idm_dir, root / "out", batch_windows=args.batch_windows)
        tasks = collect_videos([root / "videos"])

        # The single process with torch's default threads and with one (on a busy machine one can be faster).
        default_threads = torch.get_num_threads()
        baselines = {n: baseline(job, tasks, n) for n in sorted({1, default_threads})}
        best = min(baselines, key=lambda n: baselines[n][0])
        base_s, base_frames, base_labels = baselines[best]

        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, configure_logging=False,
                 log_to_driver=False)  # fmt: skip
        try:
            summary = run_labeling(job, tasks, num_actors=args.actors, cpus_per_actor=1, progress=False)
        finally:
            ray.shutdown()
        with open_ledger(job.ledger) as ledger:
            busy_s = sum(ledger.done_info(job.job_id, t.key)["seconds"] for t in tasks)
        same = total = 0
        for t in tasks:
            got = np.concatenate([next(iter(s.actions.values())) for s in iter_segments(root / "out" / t.shard)])
            same += int(np.all(got == base_labels[t.key], axis=tuple(range(1, got.ndim))).sum())
            total += len(got)
        result = {
            "benchmark": "labeling",
            "preset": args.preset,
            "videos": args.videos,
            "frames_per_video": args.frames,
            "video_size": list(args.video_size),
            "idm_frame_size": list(job.frame_size),
            "window": {"window": job.spec.window, "stride": job.spec.stride,
                       "keep": [job.spec.keep_start, job.spec.keep_end]},  # fmt: skip
            "cpus": os.cpu_count(),
            "baseline_single_process": [{"torch_threads": n, "seconds": round(t, 3), "frames": f,
                                         "frames_per_s": round(f / t, 2)} for n, (t, f, _) in baselines.items()],
            "pipeline": {"seconds": summary["seconds"], "frames": summary["frames"],
                         "frames_per_s": summary["frames_per_s"], "actors": summary["actors"],
                         "batch_windows": args.batch_windows,
                         "label_frames_per_s": round(summary["frames"] / busy_s * summary["actors"], 2)},  # fmt: skip
            # Against the faster of the baselines.
            "speedup_end_to_end": round(summary["frames_per_s"] / (base_frames / base_s), 3),
            "speedup_steady": round(summary["frames"] / busy_s * summary["actors"] / (base_frames / base_s), 3),
            # Batched windows (pipeline) and single windows (baseline) may round differently; labels must agree.
            "label_agreement": round(same / total, 5),
        }
        print(json.dumps(result, indent=2))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
