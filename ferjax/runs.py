"""A training run's metrics.json: the one place that writes and reads it.

The training loop writes it; k-fold search, model export and the results scripts read it back,
so a broken or foreign file is reported the same way everywhere: `MetricsError` naming the file.
"""

from __future__ import annotations

import json
import os

FILENAME = "metrics.json"

# Keys every finished training run writes, whatever splits it evaluated at the end.
RUN_KEYS = ("model", "params", "epochs", "best_epoch", "val_accuracy", "wall_time_s", "device", "commit", "command",
            "config", "history")


class MetricsError(ValueError):
    """A metrics.json that cannot be read, or was not written by a finished training run."""


def metrics_path(workdir: str) -> str:
    return os.path.join(workdir, FILENAME)


def write_metrics(workdir: str, metrics: dict) -> str:
    """Writes `metrics` to the workdir's metrics.json and returns its path."""
    path = metrics_path(workdir)
    with open(path, "w") as f:
        json.dump(metrics, f, indent=2)
    return path


def read_metrics(path: str, required: tuple[str, ...] = ()) -> dict:
    """The metrics of one finished run; MetricsError naming the file if it is unreadable or lacks a key
    (RUN_KEYS and `required`)."""
    try:
        with open(path) as f:
            metrics = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MetricsError(f"{path}: not a readable metrics.json ({e})") from None
    if not isinstance(metrics, dict):
        raise MetricsError(f"{path}: not a training run's metrics.json (a JSON {type(metrics).__name__})")
    missing = [key for key in dict.fromkeys(RUN_KEYS + tuple(required)) if key not in metrics]
    if missing:
        raise MetricsError(f"{path}: not a training run's metrics.json (no {', '.join(missing)})")
    return metrics
