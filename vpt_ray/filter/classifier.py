"""The frame classifier: embedding -> standardise -> RBF SVM over 3 classes (VPT paper App. A).

Training uses scikit-learn's ``SVC`` (libsvm) with class-balanced weights. The fitted model is then held as
plain arrays (scaler statistics, support vectors, dual coefficients, intercepts, gamma) and predicts with the
same one-vs-one vote libsvm uses, in numpy. Saving writes those arrays to an ``.npz`` plus a JSON header;
loading reads them back with ``allow_pickle=False``: a classifier file cannot run code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from vpt_ray.data.recordings import FRAME_CLASSES
from vpt_ray.filter.config import TrainConfig
from vpt_ray.filter.embeddings import FrameEmbedding, make_embedding

# The paper's 3 classes (survival/no artifacts, survival/with artifacts, none of the above), named as in the
# recordings' ground truth; only CLEAN counts as clean.
CLASS_NAMES: tuple[str, ...] = FRAME_CLASSES
CLEAN, ARTIFACTS, NONE = 0, 1, 2
FORMAT_VERSION = 1


class ClassifierError(ValueError):
    """A classifier file that is missing, malformed, or was written by an incompatible version."""


def fit_svm(z_nd: np.ndarray, y_n: np.ndarray, cfg: TrainConfig):
    """Fit ``StandardScaler`` + ``SVC(rbf, class_weight="balanced")`` on embeddings; returns (scaler, svc)."""
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    y_n = np.asarray(y_n, dtype=np.int64)
    present = np.unique(y_n)
    if len(present) < 2:
        raise ValueError(f"training needs frames of at least 2 classes, got only {[CLASS_NAMES[c] for c in present]}")
    scaler = StandardScaler().fit(z_nd)
    svc = SVC(
        kernel="rbf",
        C=cfg.svm_c,
        gamma=cfg.svm_gamma,
        class_weight="balanced",
        decision_function_shape="ovo",
        random_state=cfg.seed,
    )
    svc.fit(scaler.transform(z_nd), y_n)
    return scaler, svc


class FrameClassifier:
    """Embedding + standardisation + RBF SVM as arrays; ``predict(frames)`` gives class ids in CLASS_NAMES."""

    def __init__(
        self,
        embedding: FrameEmbedding,
        *,
        mean: np.ndarray,
        scale: np.ndarray,
        support_vectors: np.ndarray,
        dual_coef: np.ndarray,
        intercept: np.ndarray,
        n_support: np.ndarray,
        gamma: float,
        classes: np.ndarray,
        info: dict[str, Any] | None = None,
    ):
        self.embedding = embedding
        self.mean = np.asarray(mean, dtype=np.float64)
        self.scale = np.asarray(scale, dtype=np.float64)
        self.support_vectors = np.asarray(support_vectors, dtype=np.float64)
        self.dual_coef = np.asarray(dual_coef, dtype=np.float64)
        self.intercept = np.asarray(intercept, dtype=np.float64)
        self.n_support = np.asarray(n_support, dtype=np.int64)
        self.gamma = float(gamma)
        self.classes = np.asarray(classes, dtype=np.int64)
        self.info = dict(info or {})
        self._check()
        self._sv_sqnorm = (self.support_vectors**2).sum(axis=1)
        self._sv_start = np.concatenate([[0], np.cumsum(self.n_support)])

    @classmethod
    def from_sklearn(cls, scaler, svc, embedding: FrameEmbedding, info: dict[str, Any] | None = None):
        # libsvm's raw one-vs-one arrays: sklearn flips the public dual_coef_/intercept_ signs for 2 classes only,
        # the private ones are what its predict() hands to libsvm.
        return cls(
            embedding,
            mean=scaler.mean_,
            scale=scaler.scale_,
            support_vectors=svc.support_vectors_,
            dual_coef=svc._dual_coef_,
            intercept=svc._intercept_,
            n_support=svc.n_support_,
            gamma=svc._gamma,
            classes=svc.classes_,
            info=info,
        )

    def _check(self) -> None:
        k, d = len(self.classes), self.support_vectors.shape[1]
        problems = []
        if self.mean.shape != (d,) or self.scale.shape != (d,):
            problems.append(f"scaler stats {self.mean.shape}/{self.scale.shape} for {d} features")
        if self.embedding.dim != d:
            problems.append(f"embedding {self.embedding.name!r} gives {self.embedding.dim} features, SVM has {d}")
        if self.n_support.shape != (k,) or self.n_support.sum() != len(self.support_vectors):
            problems.append(f"n_support {self.n_support.tolist()} for {len(self.support_vectors)} support vectors")
        if self.dual_coef.shape != (k - 1, len(self.support_vectors)):
            problems.append(f"dual_coef shape {self.dual_coef.shape}")
        if self.intercept.shape != (k * (k - 1) // 2,):
            problems.append(f"intercept shape {self.intercept.shape}")
        if not np.isin(self.classes, range(len(CLASS_NAMES))).all() or k < 2:
            problems.append(f"classes {self.classes.tolist()}")
        if problems:
            raise ClassifierError("inconsistent classifier arrays: " + "; ".join(problems))

    def embed(self, frames_nhwc: np.ndarray) -> np.ndarray:
        return self.embedding.embed(frames_nhwc)

    def predict_embeddings(self, z_nd: np.ndarray) -> np.ndarray:
        """Class ids (N,) for embeddings, by libsvm's one-vs-one vote (ties go to the lower class index)."""
        x = (np.asarray(z_nd, dtype=np.float64) - self.mean) / self.scale
        if len(x) == 0:
            return np.zeros(0, dtype=np.int64)
        sq = (x**2).sum(axis=1)[:, None] + self._sv_sqnorm[None, :] - 2.0 * x @ self.support_vectors.T
        kern = np.exp(-self.gamma * np.maximum(sq, 0.0))
        k = len(self.classes)
        votes = np.zeros((len(x), k), dtype=np.int64)
        pair = 0
        for i in range(k):
            si = slice(self._sv_start[i], self._sv_start[i + 1])
            for j in range(i + 1, k):
                sj = slice(self._sv_start[j], self._sv_start[j + 1])
                dec = (
                    kern[:, si] @ self.dual_coef[j - 1, si]
                    + kern[:, sj] @ self.dual_coef[i, sj]
                    + self.intercept[pair]
                )
                votes[:, i] += dec > 0
                votes[:, j] += dec <= 0
                pair += 1
        return self.classes[np.argmax(votes, axis=1)]

    def predict(self, frames_nhwc: np.ndarray) -> np.ndarray:
        return self.predict_embeddings(self.embed(frames_nhwc))

    def save(self, path: str | Path) -> Path:
        """Write the classifier to ``path`` (.npz): arrays plus a JSON header naming the embedding and options."""
        path = Path(path)
        header = {
            "format": "vpt_ray.filter.classifier",
            "version": FORMAT_VERSION,
            "embedding": self.embedding.name,
            "embedding_options": self.embedding.options(),
            "class_names": list(CLASS_NAMES),
            "info": self.info,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            np.savez(
                f,
                header=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8),
                mean=self.mean,
                scale=self.scale,
                support_vectors=self.support_vectors,
                dual_coef=self.dual_coef,
                intercept=self.intercept,
                n_support=self.n_support,
                gamma=np.float64(self.gamma),
                classes=self.classes,
            )
        tmp.replace(path)
        return path


_ARRAYS = ("mean", "scale", "support_vectors", "dual_coef", "intercept", "n_support", "gamma", "classes")


def load_classifier(path: str | Path, **embedding_overrides: Any) -> FrameClassifier:
    """Load a classifier saved by :meth:`FrameClassifier.save` (no pickle: ``allow_pickle=False``).

    ``embedding_overrides`` replace stored embedding options that depend on the machine (e.g. ``device`` or the
    ``weights`` path of the CLIP embedding).
    """
    path = Path(path)
    if not path.is_file():
        raise ClassifierError(f"{path}: no such classifier file")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in ("header", *_ARRAYS) if k not in data.files]
            if missing:
                raise ClassifierError(f"{path}: not a vpt_ray classifier (missing arrays {missing})")
            header = json.loads(bytes(data["header"]).decode())
            arrays = {k: data[k] for k in _ARRAYS}
    except ClassifierError:
        raise
    except Exception as e:  # zip/npy/JSON damage
        raise ClassifierError(f"{path}: unreadable classifier file: {e}") from None
    if header.get("format") != "vpt_ray.filter.classifier" or header.get("version") != FORMAT_VERSION:
        raise ClassifierError(
            f"{path}: format {header.get('format')!r} version {header.get('version')!r} "
            f"(this vpt_ray reads vpt_ray.filter.classifier version {FORMAT_VERSION})"
        )
    if header.get("class_names") != list(CLASS_NAMES):
        raise ClassifierError(f"{path}: classes {header.get('class_names')} (expected {list(CLASS_NAMES)})")
    embedding = make_embedding(header["embedding"], **{**header["embedding_options"], **embedding_overrides})
    try:
        return FrameClassifier(embedding, info=header.get("info"), gamma=float(arrays.pop("gamma")), **arrays)
    except ClassifierError as e:
        raise ClassifierError(f"{path}: {e}") from None


def train_classifier(
    z_nd: np.ndarray, y_n: np.ndarray, embedding: FrameEmbedding, cfg: TrainConfig, info: dict[str, Any] | None = None
) -> FrameClassifier:
    scaler, svc = fit_svm(z_nd, y_n, cfg)
    return FrameClassifier.from_sklearn(scaler, svc, embedding, info=info)


def embedding_from_config(cfg: TrainConfig) -> FrameEmbedding:
    return make_embedding(cfg.embedding, **cfg.embedding_options)
