"""Mu-law camera quantiser against the reference vectors and its own invariants."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from vpt_ray.actions.camera import VPT_CAMERA, CameraQuantizer


@pytest.fixture(scope="module")
def actions_ref(reference_dir):
    return json.loads((reference_dir / "actions.json").read_text())


def test_bins_centres_and_switch_points_match_reference(actions_ref):
    assert VPT_CAMERA.n_bins == 11
    assert VPT_CAMERA.zero_bin == actions_ref["camera_zero_bin"] == 5
    np.testing.assert_allclose(VPT_CAMERA.bin_centres, actions_ref["camera_bin_centres_deg"], atol=1e-6, rtol=0)
    np.testing.assert_allclose(
        VPT_CAMERA.switch_points, actions_ref["camera_bin_switch_points_deg"], atol=1e-6, rtol=0
    )


def test_discretize_matches_every_reference_case(actions_ref):
    # Includes cameras exactly on a switch point, where only float64 and half-to-even rounding agree.
    cases = actions_ref["env_to_policy_cases"]
    switch = np.array(actions_ref["camera_bin_switch_points_deg"])
    assert any(np.isin(np.abs(c["input"]["camera"]), switch).any() for c in cases)
    camera = np.array([c["input"]["camera"] for c in cases], dtype=np.float64)
    expected = np.array([c["camera_bins"] for c in cases])
    bins = VPT_CAMERA.discretize(camera)
    assert bins.dtype == np.int64
    np.testing.assert_array_equal(bins, expected)


def test_clipping_and_signed_zero():
    np.testing.assert_array_equal(VPT_CAMERA.discretize([-1e9, -10.0, -0.0, 0.0, 10.0, np.inf]), [0, 0, 5, 5, 10, 10])


def test_bad_values_are_refused():
    with pytest.raises(ValueError, match="NaN"):
        VPT_CAMERA.discretize([0.0, np.nan])
    with pytest.raises(ValueError, match=r"\[0, 11\)"):
        VPT_CAMERA.undiscretize([11])
    with pytest.raises(ValueError, match="whole number"):
        CameraQuantizer(maxval=10, binsize=3)
    with pytest.raises(ValueError, match="> 0"):
        CameraQuantizer(mu=0)


def test_other_settings_give_consistent_bins():
    q = CameraQuantizer(maxval=20, binsize=4, mu=5)
    assert q.n_bins == 11 and q.zero_bin == 5
    np.testing.assert_array_equal(q.discretize(q.bin_centres), np.arange(11))
    assert q.bin_centres[0] == pytest.approx(-20) and q.bin_centres[-1] == pytest.approx(20)


@given(st.lists(st.floats(-50, 50, allow_nan=False), min_size=1, max_size=20))
def test_discretize_is_monotone_odd_and_centres_are_fixed_points(values):
    x = np.sort(np.array(values))
    bins = VPT_CAMERA.discretize(x)
    assert (np.diff(bins) >= 0).all()
    assert ((bins >= 0) & (bins < 11)).all()
    # Bins are symmetric about the zero bin except exactly on a tie, where half-to-even breaks the symmetry.
    mirrored = 10 - VPT_CAMERA.discretize(-x)
    ties = np.isin(np.abs(np.clip(x, -10, 10)), VPT_CAMERA.switch_points)
    np.testing.assert_array_equal(bins[~ties], mirrored[~ties])
    np.testing.assert_array_equal(VPT_CAMERA.discretize(VPT_CAMERA.undiscretize(bins)), bins)
