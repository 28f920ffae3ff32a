"""``vpt-ray demo``: the whole VPT pipeline in miniature on Crafter, each stage a Ray workload, with a report.

Stages (:data:`vpt_ray.demo.stages.STAGES`): record demonstrations and web-like videos, train the clean filter
and filter the videos, train the IDM, pseudo-label the clean segments, train the BC foundation model (and BC on
the labeled set alone, for the IDM-vs-BC comparison), RL fine-tune three ways at an equal env-step budget,
evaluate every agent, write the report. Presets (``vpt_ray/demo/presets``): ``quick``, ``default``, ``full``.

``run_demo(load_demo_config("default"), "runs/demo")`` runs or resumes a demo; ``plan`` says what would run.
"""

from vpt_ray.demo.config import DemoConfig, load_demo_config, resolve
from vpt_ray.demo.pipeline import DemoError, plan, run_demo, stage_hashes
from vpt_ray.demo.stages import STAGES

__all__ = ["STAGES", "DemoConfig", "DemoError", "load_demo_config", "plan", "resolve", "run_demo", "stage_hashes"]
