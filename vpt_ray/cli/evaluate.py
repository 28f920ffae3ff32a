"""``vpt-ray evaluate --task TASK --agent A [--agent B ...]``: item progression, returns and Crafter score per agent."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = (
    "Evaluate agents (policy checkpoints, the scripted player, random play) for N episodes of a task on Ray actors: "
    "per-item success rates with standard errors and 95 percent Wilson intervals, mean return, Crafter score; "
    "JSON, a Markdown table and a bar chart."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", required=True, help="task spec (rollouts/*.yaml or a bare name)")
    parser.add_argument("--agent", action="append", required=True, metavar="[NAME=]AGENT",
                        help="`random`, `demonstrator` (scripted Crafter player) or a policy checkpoint directory "
                        "(model.yaml + weights.pt, e.g. RUN_DIR/final); repeatable; NAME= labels it")  # fmt: skip
    parser.add_argument("--episodes", type=int, default=32, help="episodes per agent (default 32)")
    parser.add_argument("--seed", type=int, help="evaluation seed: episode i plays world episode_seed(SEED, i) "
                        "(default: vpt_ray.evaluation.EVAL_SEED, disjoint from training seeds)")  # fmt: skip
    parser.add_argument("--max-steps", type=int, help="cap episodes at this many steps (default: the task's)")
    parser.add_argument("--deterministic", action="store_true", help="policies take their argmax action "
                        "(default: sampled, as in training)")  # fmt: skip
    parser.add_argument("--workers", type=int, default=2, help="Ray actors, one CPU each (0: in this process)")
    parser.add_argument("--envs-per-worker", type=int, default=8, help="envs each actor steps in lockstep")
    parser.add_argument("--out", "-o", type=Path, help="write the results JSON here (and the bar chart next to it)")
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a new local cluster)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    import json

    from vpt_ray.config import ConfigError
    from vpt_ray.evaluation import (EVAL_SEED, EvaluationError, check_agent_for_task, evaluate_agents, format_table,
                                    parse_agent, plot_item_rates, resolve_task)  # fmt: skip
    from vpt_ray.ray_session import init_ray

    started = False
    try:
        agents = [parse_agent(a, deterministic=args.deterministic) for a in args.agent]
        names = [a.name for a in agents]
        if len(set(names)) != len(names):
            raise EvaluationError(f"--agent: names must differ, got {names} (label them NAME=...)")
        spec = resolve_task(args.task, args.max_steps)  # a bad task, cap or agent is refused before Ray starts
        for agent in agents:
            check_agent_for_task(agent, spec)
        seed = EVAL_SEED if args.seed is None else args.seed
        if args.workers > 0:
            started = init_ray(args.address, num_cpus=args.workers, configure_logging=False)
        summaries = evaluate_agents(agents, args.task, episodes=args.episodes, seed=seed, workers=args.workers,
                                    envs_per_worker=args.envs_per_worker, max_steps=args.max_steps,
                                    progress=args.progress)  # fmt: skip
    except (ConfigError, EvaluationError) as e:
        print(f"vpt-ray evaluate: {e}", file=sys.stderr)
        return 1
    finally:
        if started:
            import ray

            ray.shutdown()
    print(format_table(summaries))
    for name, s in summaries.items():
        if s["crafter"] is not None:
            print(f"{name}: Crafter score {s['crafter']['score']:.2f} over {s['crafter']['episodes']} episodes")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"task": args.task, "seed": seed, "agents": summaries}, indent=1))
        png = plot_item_rates(summaries, args.out.with_suffix(".png"), title=f"{args.task}: item progression")
        print(f"results: {args.out}; bar chart: {png}")
    return 0
