"""Frame classifier pieces that need no video: embedding registry, CLIP plugin errors, safe classifier files."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest

from vpt_ray.filter.classifier import (
    CLASS_NAMES,
    ClassifierError,
    FrameClassifier,
    fit_svm,
    load_classifier,
)
from vpt_ray.filter.config import TrainConfig
from vpt_ray.filter.embeddings import (
    EmbeddingError,
    FrameEmbedding,
    HandcraftedEmbedding,
    available_embeddings,
    make_embedding,
    register_embedding,
)


def _frames(n: int, seed: int = 0, size=(64, 64)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, *size, 3), dtype=np.uint8)


def test_handcrafted_embedding_is_deterministic_and_sized():
    emb = make_embedding("handcrafted")
    assert isinstance(emb, FrameEmbedding)
    frames = _frames(5)
    z = emb.embed(frames)
    assert z.shape == (5, emb.dim) and z.dtype == np.float32
    np.testing.assert_array_equal(z, emb.embed(frames))
    # any frame size works (squashed to size x size), e.g. MineRL's 640x360
    assert emb.embed(_frames(2, size=(360, 640))).shape == (2, emb.dim)
    assert emb.embed(np.zeros((0, 64, 64, 3), np.uint8)).shape == (0, emb.dim)
    # a uniform grey frame: one histogram bin, no edges, nothing saturated
    n_hist, n_cells, n_fine = emb.hue_bins * 9, emb.grid**2 * 6, (2 * emb.grid) ** 2
    flat = emb.embed(np.full((1, 64, 64, 3), 128, np.uint8))[0]
    hist = flat[:n_hist]
    assert np.isclose(hist.max(), 1.0) and np.count_nonzero(hist) == 1
    assert np.all(flat[n_hist + n_cells :] == 0)
    # a flat red logo in the top-left quarter: flat-saturated share 1 in its fine cells, 0 elsewhere
    logo = np.full((1, 64, 64, 3), 128, np.uint8)
    logo[0, :32, :32] = (230, 30, 40)
    share = emb.embed(logo)[0, n_hist + n_cells + n_fine :].reshape(2 * emb.grid, 2 * emb.grid)
    assert share[: emb.grid - 1, : emb.grid - 1].min() == 1.0  # cells inside the logo (not on its edge)
    assert share[emb.grid :, :].max() == 0.0 and share[:, emb.grid :].max() == 0.0
    with pytest.raises(EmbeddingError, match=r"uint8 frames of shape \(N, H, W, 3\)"):
        emb.embed(np.zeros((2, 64, 64), np.uint8))
    with pytest.raises(EmbeddingError, match="divisible"):
        HandcraftedEmbedding(size=90, grid=4)


def test_registry_builds_named_embeddings_and_refuses_unknown():
    assert {"handcrafted", "clip"} <= set(available_embeddings())
    with pytest.raises(EmbeddingError, match="unknown embedding 'resnet'.*available: .*handcrafted"):
        make_embedding("resnet")
    with pytest.raises(EmbeddingError, match="bad options"):
        make_embedding("handcrafted", colour=True)

    @register_embedding("test-mean-colour")
    class MeanColour:
        name, dim = "test-mean-colour", 3

        def options(self):
            return {}

        def embed(self, frames_nhwc):
            return frames_nhwc.reshape(len(frames_nhwc), -1, 3).mean(axis=1).astype(np.float32)

    emb = make_embedding("test-mean-colour")
    assert emb.embed(np.full((2, 4, 4, 3), 7, np.uint8)).tolist() == [[7.0] * 3] * 2


def test_clip_plugin_fails_clearly_without_open_clip_or_weights(tmp_path):
    try:
        import open_clip  # noqa: F401
    except ImportError:
        with pytest.raises(EmbeddingError, match="open_clip.*local weights file.*handcrafted"):
            make_embedding("clip", weights=str(tmp_path / "RN50x64.pt"))
    else:
        with pytest.raises(EmbeddingError, match="not found .*never downloaded"):
            make_embedding("clip", weights=str(tmp_path / "RN50x64.pt"))


def _toy_classifier(n_classes: int = 3) -> tuple[FrameClassifier, np.ndarray, object, object]:
    emb = make_embedding("handcrafted", size=32, grid=2)
    rng = np.random.default_rng(1)
    y = rng.integers(0, n_classes, 300)
    z = rng.normal(size=(300, emb.dim)).astype(np.float32)
    z[:, :4] += 2.0 * y[:, None]
    scaler, svc = fit_svm(z[:200], y[:200], TrainConfig(svm_c=1.0))
    return FrameClassifier.from_sklearn(scaler, svc, emb), z[200:], scaler, svc


@pytest.mark.parametrize("n_classes", [3, 2])
def test_numpy_vote_equals_sklearn_and_survives_save_load(tmp_path, n_classes):
    clf, z_test, scaler, svc = _toy_classifier(n_classes)
    expected = svc.predict(scaler.transform(z_test))
    assert len(np.unique(expected)) == n_classes  # the comparison covers every class
    np.testing.assert_array_equal(clf.predict_embeddings(z_test), expected)
    path = clf.save(tmp_path / "clf.npz")
    loaded = load_classifier(path)
    np.testing.assert_array_equal(loaded.predict_embeddings(z_test), expected)
    assert loaded.embedding.options() == {"size": 32, "grid": 2, "hue_bins": 8}
    assert loaded.gamma == clf.gamma and loaded.support_vectors.shape == clf.support_vectors.shape


def test_classifier_file_is_never_unpickled(tmp_path):
    clf, z_test, _, _ = _toy_classifier()
    good = clf.save(tmp_path / "good.npz")
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    # the same file with one array replaced by a pickled object array
    bad = tmp_path / "evil.npz"
    with np.load(good) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["support_vectors"] = np.array([Evil()], dtype=object)
    np.savez(bad, **arrays)
    with pytest.raises(ClassifierError, match="evil.npz: unreadable classifier file"):
        load_classifier(bad)
    assert not marker.exists()


def test_bad_classifier_files_are_refused_with_the_file_named(tmp_path):
    clf, _, _, _ = _toy_classifier()
    good = clf.save(tmp_path / "good.npz")
    with pytest.raises(ClassifierError, match="missing.npz: no such classifier file"):
        load_classifier(tmp_path / "missing.npz")
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[:500])
    with pytest.raises(ClassifierError, match="truncated.npz: unreadable"):
        load_classifier(truncated)
    other = tmp_path / "other.npz"
    np.savez(other, x=np.zeros(3))
    with pytest.raises(ClassifierError, match=r"other.npz: not a vpt_ray classifier \(missing arrays"):
        load_classifier(other)

    def rewrite(name, **changes):
        with np.load(good) as data:
            arrays = {k: data[k] for k in data.files}
        header = json.loads(bytes(arrays["header"]).decode())
        for k, v in changes.items():
            if k in arrays and k != "header":
                arrays[k] = v
            else:
                header[k] = v
        arrays["header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
        path = tmp_path / name
        np.savez(path, **arrays)
        return path

    with pytest.raises(ClassifierError, match="v2.npz: format .* version 99"):
        load_classifier(rewrite("v2.npz", version=99))
    with pytest.raises(ClassifierError, match="classes"):
        load_classifier(rewrite("classes.npz", class_names=["a", "b", "c"]))
    with pytest.raises(ClassifierError, match="dims.npz: .*embedding 'handcrafted' gives"):
        load_classifier(rewrite("dims.npz", embedding_options={"size": 32, "grid": 4, "hue_bins": 8}))
    with pytest.raises(EmbeddingError, match="unknown embedding"):
        load_classifier(rewrite("emb.npz", embedding="nope"))
    assert list(CLASS_NAMES) == ["clean", "artifacts", "none"]


def test_save_is_atomic_and_plain_npz(tmp_path):
    clf, _, _, _ = _toy_classifier()
    path = clf.save(tmp_path / "sub" / "clf.npz")
    assert not (tmp_path / "sub" / "clf.npz.tmp").exists()
    with zipfile.ZipFile(path) as z:
        names = sorted(z.namelist())
    assert names == sorted(f"{k}.npy" for k in ("header", "mean", "scale", "support_vectors", "dual_coef",
                                                "intercept", "n_support", "gamma", "classes"))  # fmt: skip
    # every member is a plain numeric/byte array (np.load with allow_pickle=False reads all of them)
    with np.load(io.BytesIO(path.read_bytes()), allow_pickle=False) as data:
        assert all(data[k].dtype != object for k in data.files)
