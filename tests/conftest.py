"""Shared test fixtures: paths to the shared reference vectors and one local Ray cluster per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Ray 2.60 turns token auth on by default; local test clusters run without it.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("VPT_SHARED_DIR", REPO_ROOT.parent / "shared"))
REFERENCE_DIR = SHARED_DIR / "fixtures" / "vpt-reference"


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not REFERENCE_DIR.is_dir():
        pytest.fail(f"reference vectors not found at {REFERENCE_DIR} (set VPT_SHARED_DIR)")
    return REFERENCE_DIR


@pytest.fixture
def ray_local():
    """A local Ray cluster without the dashboard (it costs ~1 GiB), shared by the tests that use it.

    Tests that need a different topology (ray.cluster_utils.Cluster) call ``ray.shutdown()`` first; the next
    test that asks for this fixture then starts a fresh local cluster.
    """
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=4,
            include_dashboard=False,
            object_store_memory=512 * 1024**2,
            log_to_driver=False,
            configure_logging=False,
        )
    yield ray


def pytest_sessionfinish(session, exitstatus):
    try:
        import ray
    except ImportError:
        return
    if ray.is_initialized():
        ray.shutdown()
