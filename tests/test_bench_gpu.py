"""The device check in its CPU smoke mode (``benchmarks/gpu_check.sh --cpu-smoke``): every section runs at tiny
sizes through the package's own code paths, the JSON holds every section and check with figures that can be
checked on a CPU (fp32 parity with the released code's vectors, bf16 errors within the tolerances, the same
FLOPs counted in both precisions), the import path needs nothing the GPU image lacks, and a failing section is
reported while the others still run. GPU figures come from the same script on a GPU machine (README)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"
BUILT = ["env", "matmul_ceiling", "parity", "bc_train", "inference", "labeling", "compile_train"]
PART_B = ["wake", "sleep", "serve_replica"]


def gpu_check(out: Path, *args: str, fixtures: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}
    if fixtures is not None:
        env["VPT_REFERENCE_DIR"] = str(fixtures)
    return subprocess.run([str(SCRIPT), "--cpu-smoke", "--threads", "1", *args], env=env, capture_output=True,
                          text=True, timeout=900)  # fmt: skip


def test_cpu_smoke_runs_every_section_and_prints_the_checks(tmp_path, reference_dir):
    done = gpu_check(tmp_path / "out", fixtures=reference_dir)
    assert done.returncode == 0, done.stderr[-4000:]
    doc = json.loads(done.stdout)
    assert json.loads((tmp_path / "out" / "gpu_check.json").read_text()) == doc
    assert "bench_gpu: compile_train: ok" in (tmp_path / "out" / "gpu_check.log").read_text()
    assert doc["mode"] == "cpu-smoke" and doc["peak_bf16_tflops_assumed"] is None
    sections = doc["sections"]
    assert list(sections) == BUILT + PART_B
    assert doc["summary"]["ok"] == BUILT and doc["summary"]["pending"] == PART_B
    assert all(sections[n]["part_b"] for n in PART_B)  # what part B of issue 15 measures there

    for which in ("foundation", "idm"):
        p = sections["parity"][which]
        assert p["fp32_ok"] and p["fp32_device_vs_released_max_abs"] <= 1e-4
        err = p["bf16_device_vs_fp32_cpu"]
        assert p["bf16_within_tolerance"] and 0 < err["max_abs"] <= 0.3 and err["kl_max"] <= 2e-3

    bc = sections["bc_train"]
    assert bc["frames_per_step"] == 2 * 8 and bc["fp32"]["flops_per_step"] == bc["bf16"]["flops_per_step"] > 0
    assert bc["bf16"]["frames_per_s"] > 0 and bc["bf16"]["mfu"] is None  # no peak to compare with on a CPU
    inf = sections["inference"]
    assert inf["T"] == 1 and inf["bf16"]["frames_per_s"] > 0 and inf["bf16"]["flops_per_step"] > 0
    lab = sections["labeling"]
    assert lab["windows"] == 3 and lab["bf16_fp32_label_agreement"] >= 0.9
    assert lab["bf16"]["idm_frames_per_s"] > lab["bf16"]["labeled_frames_per_s"] > 0  # overlapping windows
    comp = sections["compile_train"]
    assert comp["backend"] == "aot_eager" and comp["first_call_s"] > 0 and comp["speedup"] > 0

    checks = {c["check"]: c for c in doc["checks"]}
    assert all(c["ok"] for c in checks.values() if c["kind"] == "correctness")
    assert checks["modules this run imported that the GPU image lacks"]["value"] == []
    assert all(c["ok"] is None for c in checks.values() if c["kind"] == "target")  # targets are for a GPU


def test_a_failing_section_is_reported_and_the_others_still_run(tmp_path):
    done = gpu_check(tmp_path / "out", "--only", "env", "parity", "wake", "--fixtures", str(tmp_path / "none"))
    assert done.returncode == 1
    doc = json.loads(done.stdout)
    assert [doc["sections"][n]["status"] for n in ("env", "parity", "wake")] == ["ok", "failed", "pending"]
    assert "fixtures/vpt-reference not found" in doc["sections"]["parity"]["error"]
    over = gpu_check(tmp_path / "out2", "--only", "env", "matmul_ceiling", "--budget-s", "0")
    assert over.returncode == 1
    assert json.loads(over.stdout)["summary"]["skipped"] == ["env", "matmul_ceiling"]
