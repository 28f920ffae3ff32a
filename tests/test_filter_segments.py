"""Clean-segment arithmetic of the filter on known label sequences (exact) and the video-level rules."""

from __future__ import annotations

import numpy as np
import pytest

from vpt_ray.config import ConfigError, from_dict
from vpt_ray.filter.config import FilterConfig, TrainConfig
from vpt_ray.filter.segments import (
    clean_segments,
    matched_segments,
    median_filter,
    overlap_precision_recall,
    runs,
    sample_boundaries,
    sample_frame_indices,
)


def test_sample_indices_3fps_of_20fps():
    # k * 20/3 rounded: 0, 6.67, 13.33, 20, 26.67, 33.33, 40, 46.67, 53.33 (60 is past the end)
    assert sample_frame_indices(60, 20.0, 3.0).tolist() == [0, 7, 13, 20, 27, 33, 40, 47, 53]
    assert sample_frame_indices(61, 20.0, 3.0).tolist()[-1] == 60
    assert sample_frame_indices(1, 20.0, 3.0).tolist() == [0]
    assert sample_frame_indices(0, 20.0, 3.0).tolist() == []
    # sampling faster than the video takes every frame once
    assert sample_frame_indices(5, 20.0, 30.0).tolist() == [0, 1, 2, 3, 4]
    # 3 samples per second on average over a long video
    assert len(sample_frame_indices(20 * 3600, 20.0, 3.0)) == 3 * 3600


def test_median_filter_kernel_7_fills_short_gaps_and_drops_short_runs():
    x = np.array([1] * 10 + [0] * 3 + [1] * 10 + [0] * 10 + [1] * 3 + [0] * 10, dtype=np.int8)
    y = median_filter(x, 7)
    expected = np.array([1] * 23 + [0] * 23, dtype=np.int8)
    np.testing.assert_array_equal(y, expected)
    # a gap of 4 is majority 0 in the window centred on it: it survives
    x = np.array([1] * 10 + [0] * 4 + [1] * 10, dtype=np.int8)
    np.testing.assert_array_equal(median_filter(x, 7), x)
    # kernel 3: a single flipped sample is removed, two are kept
    np.testing.assert_array_equal(median_filter(np.array([0, 0, 1, 0, 0, 1, 1, 0]), 3), [0, 0, 0, 0, 0, 1, 1, 0])


def test_median_filter_edges_repeat_edge_values():
    # zero padding would erode the leading run of 2 (and the first 3 of any clean start); edge padding keeps it
    x = np.array([1, 1, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1], dtype=np.int8)
    np.testing.assert_array_equal(median_filter(x, 7), [1, 1, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1])
    with pytest.raises(ValueError, match="odd"):
        median_filter(x, 4)


def test_runs_and_boundaries():
    assert runs(np.array([0, 1, 1, 0, 1])) == [(1, 3), (4, 5)]
    assert runs(np.array([1, 1])) == [(0, 2)]
    assert runs(np.array([], dtype=bool)) == []
    # sample k stands for the frames nearest to it: midpoints between sampled frames
    idx = sample_frame_indices(60, 20.0, 3.0)
    assert sample_boundaries(idx, 60).tolist() == [0, 4, 10, 17, 24, 30, 37, 44, 50, 60]


def test_clean_segments_exact_frames():
    # 90 s at 20 fps = 1800 frames, 270 samples at 3 fps
    idx = sample_frame_indices(1800, 20.0, 3.0)
    assert len(idx) == 270
    labels = np.zeros(270, dtype=np.int8)
    labels[0:100] = 1
    labels[103:200] = 1  # the 3-sample gap at 100..102 is filled by the median filter
    labels[220:231] = 1  # 11 samples: ~3.7 s, shorter than 5 s -> dropped
    labels[240:260] = 1  # 20 samples: ~6.7 s -> kept
    segs = clean_segments(labels, idx, 1800, 20.0, median_kernel=7, min_segment_s=5.0)
    # run 0..199 -> frames [0, mid(f199, f200)); f199 = 1327, f200 = 1333 -> 1330
    # run 240..259 -> [mid(f239, f240), mid(f259, f260)) = [mid(1593, 1600), mid(1727, 1733)) = [1597, 1730)
    assert idx[[199, 200, 239, 240, 259, 260]].tolist() == [1327, 1333, 1593, 1600, 1727, 1733]
    assert segs == [[0, 1330], [1597, 1730]]


def test_five_second_rule_boundary():
    idx = sample_frame_indices(2000, 20.0, 3.0)
    labels = np.zeros(len(idx), dtype=np.int8)
    labels[30:45] = 1  # 15 samples ~ exactly 5 s: frames [mid(193,200), mid(293,300)) = [197, 297): 100 frames
    segs = clean_segments(labels, idx, 2000, 20.0, median_kernel=7, min_segment_s=5.0)
    assert segs == [[197, 297]]
    assert clean_segments(labels, idx, 2000, 20.0, median_kernel=7, min_segment_s=5.01) == []
    labels[44] = 0  # 14 samples: 93 frames < 100
    assert clean_segments(labels, idx, 2000, 20.0, median_kernel=7, min_segment_s=5.0) == []


def test_all_clean_video_is_one_segment_to_the_last_frame():
    idx = sample_frame_indices(1234, 20.0, 3.0)
    segs = clean_segments(np.ones(len(idx)), idx, 1234, 20.0, median_kernel=7, min_segment_s=5.0)
    assert segs == [[0, 1234]]
    assert clean_segments(np.zeros(len(idx)), idx, 1234, 20.0, median_kernel=7, min_segment_s=5.0) == []


def test_evaluation_counts():
    pr = overlap_precision_recall([[0, 100], [200, 260]], [[10, 110], [300, 400]], 500)
    assert pr == {"tp_frames": 90, "pred_frames": 160, "truth_frames": 200}
    m = matched_segments([[0, 100], [200, 260], [305, 395]], [[10, 110], [300, 400]], min_iou=0.5)
    assert m == {"matched": 2, "pred_segments": 3, "truth_segments": 2}
    # one prediction cannot match two truths
    assert matched_segments([[0, 100]], [[0, 100], [0, 99]])["matched"] == 1


def test_configs_defaults_and_validation():
    cfg = FilterConfig()
    assert (cfg.sample_fps, cfg.min_clean_fraction, cfg.median_kernel, cfg.min_segment_s) == (3.0, 0.8, 7, 5.0)
    assert cfg.early_game_s == 300.0
    assert TrainConfig().samples_per_class == (2200, 2200, 4400)
    assert from_dict(FilterConfig, {"median_kernel": 5}).median_kernel == 5
    for bad, field in [({"median_kernel": 6}, "median_kernel"), ({"min_clean_fraction": 1.5}, "min_clean_fraction"),
                       ({"sample_fps": 0}, "sample_fps"), ({"sample_fsp": 3}, "sample_fsp")]:
        with pytest.raises(ConfigError, match=field):
            from_dict(FilterConfig, bad, where="filter.yaml")
    with pytest.raises(ConfigError, match="samples_per_class"):
        from_dict(TrainConfig, {"samples_per_class": [10, 0, 10]})
    with pytest.raises(ConfigError, match="svm_gamma"):
        from_dict(TrainConfig, {"svm_gamma": "big"})
