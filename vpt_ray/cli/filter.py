"""``vpt-ray filter``: train the clean-frame classifier, apply it to videos (clean segments JSONL for labeling)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = (
    "Clean-video filter (VPT App. A): `train` an embedding + RBF-SVM frame classifier from recordings with "
    "ground-truth frame classes; `apply` it to videos with Ray (3 frames/s, videos at least 80 percent clean, "
    "median filter 7, segments >= 5 s, metadata blacklist) writing the clean segments JSONL that "
    "`vpt-ray label --segments` reads."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="filter_command", metavar="{train,apply}", required=True)

    t = sub.add_parser("train", help="train the frame classifier from recordings with ground-truth frame classes")
    t.add_argument("recordings", metavar="DIR", type=Path, help="directory of recordings (.mp4 + .json metadata)")
    t.add_argument("--out", "-o", type=Path, required=True, help="classifier file to write (.npz)")
    t.add_argument("--config", type=Path, help="YAML with TrainConfig fields (flags below override it)")
    t.add_argument("--samples-per-class", type=int, nargs=3, metavar=("CLEAN", "ARTIFACTS", "NONE"),
                   help="frames sampled per class (paper and default: 2200 2200 4400)")  # fmt: skip
    t.add_argument("--embedding", help="embedding name (default: handcrafted; clip needs open_clip + weights)")
    t.add_argument("--embedding-option", action="append", default=[], metavar="KEY=VALUE",
                   help="embedding option, repeatable (e.g. weights=/models/RN50x64.pt for clip)")  # fmt: skip
    t.add_argument("--svm-c", type=float, help="SVM C")
    t.add_argument("--no-mirror-augment", dest="mirror_augment", action="store_false", default=None,
                   help="do not add left-right mirrored copies of the training frames")  # fmt: skip
    t.add_argument("--holdout", type=float, dest="holdout_fraction", help="share of videos held out (default 0.2)")
    t.add_argument("--seed", type=int)
    t.add_argument("--report-dir", type=Path, help="where the report JSON and confusion-matrix PNG go "
                   "(default: next to --out)")  # fmt: skip
    _ray_arguments(t)

    a = sub.add_parser("apply", help="find the clean segments of videos (one Ray task per video)")
    a.add_argument("inputs", metavar="PATH", type=Path, nargs="+", help="videos or directories of them (searched "
                   "recursively for .mp4, .mkv, .webm, .avi, .mov)")  # fmt: skip
    a.add_argument("--classifier", "-c", type=Path, required=True, help="classifier file from `filter train`")
    a.add_argument("--out", "-o", type=Path, required=True, help="segments JSONL to write")
    a.add_argument("--config", type=Path, help="YAML with FilterConfig fields (flags below override it)")
    a.add_argument("--sample-fps", type=float, help="frames classified per second (default 3)")
    a.add_argument("--min-clean-fraction", type=float, help="keep videos with at least this clean share (0.8)")
    a.add_argument("--median-kernel", type=int, help="median filter length in samples, odd (7)")
    a.add_argument("--min-segment-s", type=float, help="shortest clean segment kept, seconds (5)")
    a.add_argument("--early-game-only", action="store_true", default=None,
                   help="keep only videos whose title/description match the early-game keywords, and only "
                   "their first 5 minutes")  # fmt: skip
    a.add_argument("--no-blacklist", dest="metadata_blacklist", action="store_false", default=None,
                   help="do not drop videos whose metadata hits the blacklist")  # fmt: skip
    a.add_argument("--embedding-option", action="append", default=[], metavar="KEY=VALUE",
                   help="override a stored embedding option that depends on the machine (device, weights "
                   "path)")  # fmt: skip
    a.add_argument("--resume", action="store_true", help="keep the videos already in --out and do the rest")
    a.add_argument("--report-dir", type=Path, help="where the summary and, for videos with ground truth, the "
                   "evaluation JSON and timeline PNG go (default: next to --out)")  # fmt: skip
    _ray_arguments(a)


def _ray_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a new local Ray)")
    p.add_argument("--num-cpus", type=int, help="CPUs of the local Ray (default: all)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from vpt_ray.config import ConfigError

    try:
        if args.filter_command == "train":
            return _train(args)
        return _apply(args)
    except (ConfigError, ValueError, OSError) as e:
        print(f"vpt-ray filter {args.filter_command}: {e}", file=sys.stderr)
        return 1


def _options(pairs: list[str]) -> dict:
    import yaml

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--embedding-option {pair!r}: expected KEY=VALUE")
        out[key] = yaml.safe_load(value)  # numbers become numbers, paths stay strings
    return out


def _init_ray(args) -> bool:
    from vpt_ray.ray_session import init_ray

    return init_ray(args.address, num_cpus=args.num_cpus, configure_logging=False)


def _train(args) -> int:
    import json

    from vpt_ray.config import from_dict, load_yaml
    from vpt_ray.filter.config import TrainConfig, replace
    from vpt_ray.filter.report import labeled_videos, plot_confusion

    cfg = from_dict(TrainConfig, load_yaml(args.config), where=str(args.config)) if args.config else TrainConfig()
    emb_opts = {**cfg.embedding_options, **_options(args.embedding_option)}
    cfg = replace(
        cfg,
        samples_per_class=tuple(args.samples_per_class) if args.samples_per_class else None,
        embedding=args.embedding,
        embedding_options=emb_opts,
        svm_c=args.svm_c,
        mirror_augment=args.mirror_augment,
        holdout_fraction=args.holdout_fraction,
        seed=args.seed,
    )
    from vpt_ray.filter.classifier import embedding_from_config

    embedding_from_config(cfg)  # refuse a bad embedding before any decoding
    videos, errors = labeled_videos(args.recordings)
    for err in errors:
        print(f"skipped: {err}", file=sys.stderr)
    if not videos:
        raise ValueError(f"{args.recordings}: no recordings with ground-truth frame classes")
    from vpt_ray.filter.train import train_filter

    started = _init_ray(args)
    try:
        result = train_filter(videos, cfg, progress=args.progress)
    finally:
        if started:
            import ray

            ray.shutdown()
    result.classifier.save(args.out)
    report_dir = args.report_dir or args.out.parent
    report = {**result.report, "classifier": str(args.out), "unreadable_recordings": errors}
    report_path = report_dir / f"{args.out.stem}_train_report.json"
    report_dir.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report, indent=1))
    hold = report["holdout"]
    print(f"classifier: {args.out} ({report['support_vectors']} support vectors, embedding {report['embedding']}"
          f" dim {report['embedding_dim']}); trained on {report['train_frames_per_class']} frames of "
          f"{report['train_videos']} videos")  # fmt: skip
    if hold:
        png = plot_confusion(hold["confusion"], report_dir / f"{args.out.stem}_confusion.png",
                             title=f"{report['holdout_videos']} held-out videos")  # fmt: skip
        print(f"held-out frames: {hold['frames']}, accuracy {hold['accuracy']:.3f}, balanced "
              f"{hold['balanced_accuracy']:.3f}, clean-vs-rest {hold['clean_vs_rest_accuracy']:.3f}")  # fmt: skip
        print(_confusion_table(hold["confusion"]))
        print(f"report: {report_path}, confusion matrix: {png}")
    else:
        print(f"no held-out videos (holdout {cfg.holdout_fraction}); report: {report_path}")
    return 0


def _confusion_table(m) -> str:
    from vpt_ray.filter.classifier import CLASS_NAMES

    lines = ["true \\ predicted " + " ".join(f"{c:>10}" for c in CLASS_NAMES)]
    for name, row in zip(CLASS_NAMES, m):
        lines.append(f"{name:>17} " + " ".join(f"{v:>10}" for v in row))
    return "\n".join(lines)


def _find_videos(inputs: list[Path]) -> list[Path]:
    from vpt_ray.labeling.inputs import VIDEO_SUFFIXES  # the same videos `vpt-ray label` finds

    videos = []
    for p in inputs:
        if p.is_dir():
            videos.extend(sorted(v for v in p.rglob("*") if v.suffix.lower() in VIDEO_SUFFIXES and v.is_file()))
        elif p.exists():
            videos.append(p)
        else:
            raise ValueError(f"{p}: no such file or directory")
    return videos


def _apply(args) -> int:
    import json

    from vpt_ray.config import from_dict, load_yaml
    from vpt_ray.data import recordings as rec
    from vpt_ray.filter.classifier import load_classifier
    from vpt_ray.filter.config import FilterConfig, replace
    from vpt_ray.filter.pipeline import filter_videos, read_segments_jsonl, summarize, write_jsonl_line

    cfg = from_dict(FilterConfig, load_yaml(args.config), where=str(args.config)) if args.config else FilterConfig()
    cfg = replace(
        cfg,
        sample_fps=args.sample_fps,
        min_clean_fraction=args.min_clean_fraction,
        median_kernel=args.median_kernel,
        min_segment_s=args.min_segment_s,
        early_game_only=args.early_game_only,
        metadata_blacklist=args.metadata_blacklist,
    )
    classifier = load_classifier(args.classifier, **_options(args.embedding_option))
    videos = _find_videos(args.inputs)
    done = []
    if args.resume and args.out.exists():
        done = read_segments_jsonl(args.out)
    done_paths = {d["video"] for d in done}
    todo = []
    for video in videos:
        if str(video) in done_paths:
            continue
        meta = None
        stem = rec.stem_of(video)
        if stem.with_name(stem.name + rec.META_SUFFIX).is_file():
            try:
                meta = rec.read_meta(video)
            except rec.RecordingError as e:  # the video may still be fine: filter it without metadata filters
                print(f"warning: {e}; filtering {video} without its metadata", file=sys.stderr)
        todo.append((str(video), meta))
    if not todo and not done:
        raise ValueError(f"no videos in {', '.join(map(str, args.inputs))}")
    print(f"{len(todo)} videos to filter" + (f" ({len(done)} already in {args.out})" if done else ""))

    args.out.parent.mkdir(parents=True, exist_ok=True)
    started = _init_ray(args)
    try:
        with open(args.out, "a" if done else "w") as f:
            results = filter_videos(todo, classifier, cfg, on_result=lambda r: write_jsonl_line(f, r),
                                    progress=args.progress)  # fmt: skip
    finally:
        if started:
            import ray

            ray.shutdown()
    summary = {"config": _asdict(cfg), "classifier": str(args.classifier), "out": str(args.out),
               **summarize(read_segments_jsonl(args.out))}  # fmt: skip
    report_dir = args.report_dir or args.out.parent
    report_dir.mkdir(parents=True, exist_ok=True)
    summary_path = report_dir / f"{args.out.stem}.summary.json"
    print(f"videos: {summary['videos_in']} in, {summary['videos_kept']} kept; hours: {summary['hours_in']:.3f} in, "
          f"{summary['hours_kept']:.3f} clean kept; dropped: "
          + ", ".join(f"{k} {v}" for k, v in summary["dropped"].items()))  # fmt: skip

    truths = {}
    for video, meta in todo:
        if meta and meta.get("ground_truth"):
            truths[video] = rec.frame_classes(meta), rec.clean_segments(meta)
    if truths:
        from vpt_ray.filter.report import evaluate, plot_timelines
        from vpt_ray.filter.train import LabeledVideo

        labeled = {v: LabeledVideo(v, fc, cs) for v, (fc, cs) in truths.items()}
        ev = evaluate(results, labeled, cfg)
        summary["evaluation"] = ev
        png = plot_timelines(sorted(results, key=lambda r: r.video), labeled,
                             report_dir / f"{args.out.stem}_timelines.png")  # fmt: skip
        seg, frames = ev["segments"], ev["sampled_frames"]
        print(f"against ground truth ({ev['videos_scored']} videos): sampled-frame accuracy "
              f"{_fmt(frames and frames['accuracy'])}; clean segments frame precision {_fmt(seg['frame_precision'])}"
              f" recall {_fmt(seg['frame_recall'])}, segment precision {_fmt(seg['segment_precision'])} recall "
              f"{_fmt(seg['segment_recall'])}; timelines: {png}")  # fmt: skip
    summary_path.write_text(json.dumps(summary, indent=1))
    print(f"segments: {args.out}; summary: {summary_path}")
    return 0


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _asdict(cfg):
    from vpt_ray.config import to_dict

    return to_dict(cfg)
