"""The scripted Crafter player (the "contractor" of the recordings): item progression over many episodes against
a uniformly random player measured in the same run, its speed, and the video presets' reconstruction error on
its frames. Prints JSON; writes a bar chart of the item progression.

    python benchmarks/bench_demonstrator.py [--episodes 50] [--max-steps 1000] [--random-episodes 20]
                                            [--workers 2] [--plot runs/bench/demonstrator_items.png]

Checks: the stone pickaxe in most episodes, an iron pickaxe in some, and every item at least as often as the
random player gets it.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np


def _task(name: str, max_steps: int):
    from vpt_ray.spec import load_task

    spec = load_task(name)
    return dataclasses.replace(spec, env=dataclasses.replace(spec.env, max_steps=min(max_steps, spec.env.max_steps)))


def play(task_name: str, max_steps: int, seed: int, episode: int, scripted: bool, keep_frames: bool = False) -> dict:
    """One episode; returns item progression, length, timings (and the frames, if asked)."""
    from vpt_ray.envs import episode_seed, make_env
    from vpt_ray.envs.crafter_scripted import CrafterDemonstrator

    env = make_env(_task(task_name, max_steps), robust=False)
    obs, _ = env.reset(seed=episode_seed(seed, episode))
    rng = np.random.default_rng([seed, episode, 1])
    player = CrafterDemonstrator(seed=int(rng.integers(2**31))) if scripted else None
    frames, actions = [], []
    agent_s = env_s = 0.0
    done = False
    while not done:
        t0 = time.perf_counter()
        action = player.act(env) if scripted else int(rng.integers(env.action_space.n))
        t1 = time.perf_counter()
        if keep_frames:
            frames.append(obs)
        obs, _, terminated, truncated, info = env.step(action)
        env_s += time.perf_counter() - t1
        agent_s += t1 - t0
        actions.append(action)
        done = terminated or truncated
    env.close()
    ep = info["episode"]
    return {
        "items": ep["items"],
        "item_steps": ep["item_steps"],
        "length": ep["length"],
        "died": bool(terminated),
        "null_fraction": float(np.mean(np.asarray(actions) == 0)),
        "agent_s": agent_s,
        "env_s": env_s,
        "frames": np.stack(frames) if keep_frames else None,
    }


def progression(results: list[dict]) -> dict:
    return {item: float(np.mean([r["items"][item] for r in results])) for item in results[0]["items"]}


def codec_errors(frames: np.ndarray) -> dict:
    """Encode ``frames`` with each preset of the recorder and decode them back."""
    import av

    from vpt_ray.data.recordings import FPS, VIDEO_PRESETS

    out = {}
    for name, v in VIDEO_PRESETS.items():
        buf = io.BytesIO()
        t = time.perf_counter()
        with av.open(buf, "w", format="mp4") as container:
            stream = container.add_stream(v.codec, rate=FPS)
            stream.height, stream.width = frames.shape[1:3]
            stream.pix_fmt, stream.options = v.pix_fmt, {"crf": str(v.crf), "preset": v.preset}
            for f in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        encode_s = time.perf_counter() - t
        size = buf.tell()
        buf.seek(0)
        with av.open(buf) as container:
            decoded = np.stack([fr.to_ndarray(format="rgb24") for fr in container.decode(video=0)])
        err = np.abs(decoded.astype(np.int16) - frames.astype(np.int16))
        out[name] = {
            **dataclasses.asdict(v),
            "bytes_per_frame": round(size / len(frames), 1),
            "encode_ms_per_frame": round(1000 * encode_s / len(frames), 3),
            "abs_err_mean": round(float(err.mean()), 4),
            "abs_err_p99": float(np.percentile(err, 99)),
            "abs_err_max": int(err.max()),
            "frames_decoded": int(len(decoded)),
        }
    return out


def plot(scripted: dict, random: dict, path: Path, n_scripted: int, n_random: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    items = list(scripted)
    x = np.arange(len(items))
    fig, ax = plt.subplots(figsize=(9, 3.6))
    ax.bar(x - 0.2, [scripted[i] for i in items], 0.4, label=f"scripted player ({n_scripted} episodes)")
    ax.bar(x + 0.2, [random[i] for i in items], 0.4, label=f"random actions ({n_random} episodes)")
    ax.set_xticks(x, items, rotation=30, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("fraction of episodes")
    ax.set_title("Crafter item progression")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="crafter-tech-tree")
    p.add_argument("--episodes", type=int, default=50)
    p.add_argument("--random-episodes", type=int, default=20)
    p.add_argument("--max-steps", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--plot", default="runs/bench/demonstrator_items.png")
    args = p.parse_args()

    t0 = time.perf_counter()
    jobs = [(args.task, args.max_steps, args.seed, i, True) for i in range(1, args.episodes)]
    jobs += [(args.task, args.max_steps, args.seed, i, False) for i in range(args.random_episodes)]
    with ProcessPoolExecutor(args.workers) as pool:
        futures = [pool.submit(play, *job) for job in jobs]
        first = play(args.task, args.max_steps, args.seed, 0, True, keep_frames=True)  # here: its frames
        results = [f.result() for f in futures]
    wall = time.perf_counter() - t0
    scripted = [first] + [r for r, job in zip(results, jobs) if job[4]]
    random = [r for r, job in zip(results, jobs) if not job[4]]

    lengths = np.array([r["length"] for r in scripted])
    steps = int(lengths.sum())
    agent_s = sum(r["agent_s"] for r in scripted)
    env_s = sum(r["env_s"] for r in scripted)
    ours, theirs = progression(scripted), progression(random)
    item_steps = {
        item: (float(np.median(s)) if (s := [r["item_steps"][item] for r in scripted if r["item_steps"][item]]) else None)
        for item in ours
    }  # fmt: skip
    report = {
        "task": args.task,
        "max_steps": args.max_steps,
        "episodes": len(scripted),
        "item_fraction": ours,
        "item_median_first_step": item_steps,
        "random_baseline": {"episodes": len(random), "item_fraction": theirs,
                            "length_mean": float(np.mean([r["length"] for r in random]))},  # fmt: skip
        "episode_length": {"mean": float(lengths.mean()), "median": float(np.median(lengths)),
                           "min": int(lengths.min()), "max": int(lengths.max()),
                           "reached_cap": float(np.mean(lengths >= args.max_steps)),
                           "died": float(np.mean([r["died"] for r in scripted]))},  # fmt: skip
        "null_action_fraction": float(np.mean([r["null_fraction"] for r in scripted])),
        "speed": {
            "steps_per_s_per_process": round(steps / (agent_s + env_s), 1),
            "agent_ms_per_step": round(1000 * agent_s / steps, 3),
            "env_ms_per_step": round(1000 * env_s / steps, 3),
            "wall_s": round(wall, 1),
            "workers": args.workers,
        },
        "video_presets_on_episode_0": codec_errors(first["frames"]),
        "checks": {
            "stone_pickaxe_in_most_episodes": ours.get("stone_pickaxe", 0) > 0.5,
            "iron_pickaxe_in_some_episodes": ours.get("iron_pickaxe", 0) > 0,
            "every_item_at_least_as_often_as_random": all(ours[i] >= theirs[i] for i in ours),
        },
    }
    if args.plot:
        plot(ours, theirs, Path(args.plot), len(scripted), len(random))
        report["plot"] = args.plot
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
