"""Classification metrics from confusion matrices, and evaluation of a state on a split.

Test-time augmentation (flip, ten-crop) and ensembles average class probabilities.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ferjax import data, features, inference, train

log = logging.getLogger(__name__)


def metrics_from_confusion(confusion_KxK: np.ndarray) -> dict:
    """Accuracy, per-class accuracy (recall), macro-F1 from a confusion matrix (rows: truth, columns: prediction)."""
    confusion = np.asarray(confusion_KxK, np.float64)
    true_per_class = confusion.sum(1)
    predicted_per_class = confusion.sum(0)
    hits = np.diag(confusion)
    recall = np.divide(hits, true_per_class, out=np.zeros_like(hits), where=true_per_class > 0)
    precision = np.divide(hits, predicted_per_class, out=np.zeros_like(hits), where=predicted_per_class > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(hits), where=denom > 0)
    return {
        "accuracy": float(hits.sum() / max(confusion.sum(), 1)),
        "per_class_accuracy": {name: float(r) for name, r in zip(data.CLASS_NAMES, recall)},
        "macro_f1": float(f1.mean()),
        "count": int(confusion.sum()),
        "confusion_matrix": confusion.astype(int).tolist(),
    }


@functools.partial(jax.jit, static_argnames=("tta", "standardize"))
def predict_probs(state: train.TrainState, batch: dict, tta: str = "none", standardize: bool = False) -> jax.Array:
    """Class probabilities of a batch, averaged over the test-time augmentations (`train.tta_log_probs`)."""
    return jnp.exp(train.tta_log_probs(state, batch, tta=tta, standardize=standardize))


def predict_split(state: train.TrainState, split: data.Split, batch_size: int, *, tta: str = "none",
                  standardize: bool = False, extra: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """Class probabilities [N, 7] for every sample of `split`, in order."""
    probs = [np.asarray(predict_probs(state, batch, tta=tta, standardize=standardize))[batch["mask"] > 0]
             for batch in data.batches(split, batch_size, extra=extra)]
    return np.concatenate(probs)


def metrics_from_probs(labels_N: np.ndarray, probs_NxK: np.ndarray) -> dict:
    """Accuracy, per-class accuracy, macro-F1 and confusion matrix of the arg-max predictions."""
    confusion = np.zeros((data.NUM_CLASSES, data.NUM_CLASSES), np.int64)
    np.add.at(confusion, (labels_N, probs_NxK.argmax(-1)), 1)
    return metrics_from_confusion(confusion)


def checkpoint_probs(paths: Sequence[str], faces: data.Split, *, tta: str = "none",
                     batch_size: int = 500) -> tuple[list[dict], list[np.ndarray]]:
    """Each model's class probabilities [N, 7] for `faces`, and a description of each model.

    A path is a training workdir, a checkpoint folder or an exported model (path without suffix); each
    model brings its own preprocessing (training mean, standardisation, HOG parameters).

    Raises:
      CheckpointError: a path holds no readable model.
    """
    train.check_tta(tta)
    members, probs = [], []
    for index, path in enumerate(paths, 1):
        started = time.perf_counter()
        state, meta = inference.load_model(path)
        config = meta["config"]
        extra = None
        if meta.get("hog_dim"):
            extra = features.cached_hog_pair(faces.images, config["hog_orientations"], config["hog_pixels_per_cell"],
                                             config["hog_cells_per_block"])
        probs.append(predict_split(state, faces, batch_size, tta=tta, standardize=config["standardize"], extra=extra))
        members.append({"path": path, "model": config["model"], "commit": meta.get("commit"),
                        "epoch": meta.get("epoch")})
        accuracy = float(np.mean(probs[-1].argmax(-1) == faces.labels))
        log.info("model %d/%d %s: accuracy %.4f on %d faces (tta=%s) in %.0f s", index, len(paths), path, accuracy,
                 len(faces), tta, time.perf_counter() - started)
    return members, probs


def evaluate_checkpoints(paths: Sequence[str], dataset: data.FER2013, split: str = "test", *,
                         tta: str = "none", batch_size: int = 500, limit: int | None = None) -> dict:
    """Metrics of one model, or of an ensemble of several (averaged probabilities), on a split.

    Raises:
      CheckpointError: a path holds no readable model.
    """
    faces = data.stratified_subset(dataset.split(split), limit)
    members, probs = checkpoint_probs(paths, faces, tta=tta, batch_size=batch_size)
    results = metrics_from_probs(faces.labels, np.mean(probs, axis=0))
    return {"split": split, "tta": tta, "members": members, **results}


def greedy_ensemble(probs: Sequence[np.ndarray], labels_N: np.ndarray) -> list[int]:
    """Indices of an ensemble chosen by forward selection (Caruana et al., 2004), in the order chosen.

    Starts from the most accurate member and adds, one at a time, the member whose addition makes the averaged
    probabilities most accurate, until every member is in; returns the most accurate of these nested
    ensembles, the smallest on a tie. Going on past a step that lowers accuracy, as Caruana et al. do, lets in
    members that help only together. Each member is used at most once; ties go to the earlier index. Select
    on val, never on the split you report.
    """
    def accuracy(chosen):
        return float(np.mean(np.mean([probs[i] for i in chosen], axis=0).argmax(-1) == labels_N))

    order, accuracies = [], []
    while len(order) < len(probs):
        scores = {i: accuracy(order + [i]) for i in range(len(probs)) if i not in order}
        candidate = max(scores, key=lambda i: (scores[i], -i))
        order.append(candidate)
        accuracies.append(scores[candidate])
    return order[:int(np.argmax(accuracies)) + 1]  # argmax: the first, so the smallest of equals
