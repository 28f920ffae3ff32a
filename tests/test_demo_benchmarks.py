"""benchmarks/run_all.py: every bench script run in its own process, one JSON document with each figure next to its
same-run reference; a failing, hanging or silent bench is reported and the others still run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

RUN_ALL = Path(__file__).resolve().parents[1] / "benchmarks" / "run_all.py"


def test_run_all_collects_reports_and_failures(tmp_path):
    benches = tmp_path / "benches"
    benches.mkdir()
    (benches / "bench_good.py").write_text(
        "import json, sys\n"
        "print('warming up')\n"
        "print(json.dumps({'row': 1}))\n"  # a per-row line before the report: the last document counts
        "print(json.dumps({'throughput': 12.5, 'speedup_vs_raw': 1.7, 'limit_ms': 3, 'pass': True,\n"
        "                  'rows': [{'ours_over_bare': 0.9}], 'args': sys.argv[1:]}, indent=2))\n"
    )
    (benches / "bench_crash.py").write_text("import sys\nprint('boom', file=sys.stderr)\nsys.exit(3)\n")
    (benches / "bench_silent.py").write_text("print('no json here')\n")
    (benches / "bench_slow.py").write_text("import time\ntime.sleep(30)\n")
    (benches / "helper.py").write_text("raise SystemExit('not a bench: never run')\n")
    out = tmp_path / "all.json"
    done = subprocess.run([sys.executable, str(RUN_ALL), "--dir", str(benches), "--out", str(out), "--timeout", "8"],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)  # stdout is exactly one JSON document
    assert json.loads(out.read_text()) == doc
    b = doc["benchmarks"]
    assert set(b) == {"bench_good", "bench_crash", "bench_silent", "bench_slow"}
    assert b["bench_good"]["status"] == "ok" and b["bench_good"]["result"]["throughput"] == 12.5
    figures = {f["figure"]: f for f in b["bench_good"]["figures"]}
    assert set(figures) == {"speedup_vs_raw", "limit_ms", "pass", "rows[0].ours_over_bare"}
    assert figures["pass"]["ok"] is True and figures["speedup_vs_raw"]["value"] == 1.7
    assert b["bench_crash"]["status"] == "failed" and "exit status 3" in b["bench_crash"]["error"]
    assert "boom" in b["bench_crash"]["output_tail"]
    assert b["bench_silent"]["status"] == "no_json"
    assert b["bench_slow"]["status"] == "timeout"
    assert doc["summary"]["ok"] == ["bench_good"]
    assert set(doc["summary"]["failed"]) == {"bench_crash", "bench_silent", "bench_slow"}
    assert "[1/4]" in done.stderr

    only = subprocess.run([sys.executable, str(RUN_ALL), "--dir", str(benches), "--out", str(out), "--only", "good"],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert list(json.loads(only.stdout)["benchmarks"]) == ["bench_good"]
    bad = subprocess.run([sys.executable, str(RUN_ALL), "--dir", str(benches), "--only", "nope"],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert bad.returncode == 2 and "no such bench" in bad.stderr


def test_headline_extractors_know_the_shipped_benches():
    sys.path.insert(0, str(RUN_ALL.parent))
    try:
        import run_all
    finally:
        sys.path.remove(str(RUN_ALL.parent))
    shipped = set(run_all.find_benches())
    assert set(run_all.EXTRACTORS) <= shipped | {"bench_idm_bc_evidence"}
    doc = {"results": {"raw_crafter": {"steps_per_cpu_s": 400.0}, "ours_robust_inprocess":
                       {"steps_per_cpu_s": 380.0, "per_core_vs_raw": 0.95}}, "limit_per_core_vs_raw": 0.85, "pass": True}  # fmt: skip
    figs = run_all.EXTRACTORS["bench_envs"](doc)
    assert figs[0]["ratio"] == 0.95 and figs[0]["reference_value"] == 400.0
    assert figs[-1]["ok"] is True and figs[-1]["reference_value"] == 0.85
    # bench_rl's report shape (values from a small run): each headline next to its same-run reference.
    rl = {"sampling": {"frames_per_s": 207.4, "limit_frames_per_s": 236.5},
          "learner": {"wake_frames_per_s": 238.8, "sleep_frames_per_s": 214.9, "baseline_bare_torch_frames_per_s": 314.5},
          "memory": {"env_runner_peak_rss_mib": 573.2, "learner_peak_rss_mib": 853.8, "baseline_floor_process_mib": 459.3,
                     "total_peak_rss_mib_with_kl": 2583.4},
          "kl": {"frames_per_s_with_kl": 153.0, "baseline_frames_per_s_without_kl": 207.4}}  # fmt: skip
    figs = {f["figure"]: f for f in run_all.EXTRACTORS["bench_rl"](rl)}
    assert figs["PPG sampled frames/s (env runners, policy inference, rows)"]["ratio"] == round(207.4 / 236.5, 4)
    assert figs["PPG wake-phase frames/s"]["reference_value"] == 314.5
    assert figs["learner peak RSS (MiB)"]["ratio"] == round(853.8 / 459.3, 4)
