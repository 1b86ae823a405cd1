"""Stratified k-fold cross-validation over a hyperparameter grid, on the training split only.

A search is data: a list of config overrides (`parse_grid`) times the folds. Each (config, fold)
trains in its own workdir, so a rerun skips finished folds, and folds may run in separate
processes (`--fold_index`/`--num_workers` in experiments.kfold) and still make one table.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os

import numpy as np

from ferjax import data, loop, runs
from ferjax.configs import INT_TUPLE, Config, ConfigError, base_type

log = logging.getLogger(__name__)


def parse_grid(spec: str) -> list[dict]:
    """'learning_rate=1e-3,3e-3;dropout=0.3,0.5' -> the cartesian product as a list of overrides.

    Values are converted to the type of the Config field; a tuple field's numbers are joined by '/'
    ('hidden=256,512/256'). An empty spec is one run of the base config.

    Raises:
      ConfigError: an unknown field or a value of the wrong type.
    """
    if not spec.strip():
        return [{}]
    fields = {f.name: f for f in dataclasses.fields(Config)}
    axes = []
    for part in spec.split(";"):
        name, _, values = part.partition("=")
        name = name.strip()
        if name not in fields or not values:
            raise ConfigError(f"--grid: {part!r} is not field=value,value (unknown field or no values)")
        axes.append([(name, _convert(base_type(fields[name]), v.strip(), name)) for v in values.split(",")])
    return [dict(combo) for combo in itertools.product(*axes)]


def _convert(kind: str, value: str, name: str):
    try:
        if kind == "bool":
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(value)
            return value.lower() in ("true", "1")
        if kind == "int":
            return int(value)
        if kind == "float":
            return float(value)
        if kind == INT_TUPLE:
            return tuple(int(v) for v in value.split("/"))
    except ValueError:
        raise ConfigError(f"--grid: {name}={value!r} is not a {kind}") from None
    return value


def fold_dataset(dataset: data.FER2013, fold: tuple[np.ndarray, np.ndarray]) -> data.FER2013:
    """Training split divided: train on the fold's train part, validate on its held-out part."""
    train_index, val_index = fold
    held_out = dataset.train.subset(val_index)
    return data.FER2013(train=dataset.train.subset(train_index), val=held_out, test=held_out, source=dataset.source)


def config_names(index: int, overrides: dict) -> tuple[str, str]:
    """A directory name and a readable label for a grid entry."""
    label = ",".join(f"{k}={v}" for k, v in overrides.items()) or "base"
    return f"config{index:02d}", label


def tasks(grid: list[dict], folds: int) -> list[tuple[int, int]]:
    """Every (config index, fold) pair, in a fixed order that workers split by index."""
    return [(c, k) for c in range(len(grid)) for k in range(folds)]


def run_fold(base: Config, overrides: dict, config_index: int, fold: int, folds: int, dataset: data.FER2013,
             workdir: str, **train_kwargs) -> dict:
    """Trains one (config, fold) unless its metrics.json exists; returns those metrics."""
    name, _ = config_names(config_index, overrides)
    fold_dir = os.path.join(workdir, name, f"fold{fold}")
    metrics_path = runs.metrics_path(fold_dir)
    if os.path.exists(metrics_path):
        log.info("%s fold %d: finished before, reading %s", name, fold, metrics_path)
        return runs.read_metrics(metrics_path)
    config = dataclasses.replace(base, **overrides).validate()
    for flag in ("distill_from", "init_from"):
        if getattr(config, flag):
            raise ConfigError(f"--{flag}: not in cross-validation, where a model trained on the training split "
                              "has seen every fold's held-out faces")
    # limit_train subsets the whole training split before it is divided into folds.
    train_split = data.stratified_subset(dataset.train, config.limit_train, config.seed)
    splits = data.stratified_kfold(train_split.labels, folds, seed=base.seed)
    fold_data = fold_dataset(dataclasses.replace(dataset, train=train_split), splits[fold])
    config = dataclasses.replace(config, limit_train=None, limit_eval=None)
    log.info("%s fold %d/%d: %s", name, fold + 1, folds, overrides or "base config")
    return loop.train_and_evaluate(config, fold_dir, dataset=fold_data, final_splits=("val",), **train_kwargs)


def summarize(grid: list[dict], folds: int, workdir: str) -> list[dict]:
    """Mean and std of validation accuracy per configuration, from the folds' metrics.json files."""
    rows = []
    for index, overrides in enumerate(grid):
        name, label = config_names(index, overrides)
        accuracies = []
        for fold in range(folds):
            path = runs.metrics_path(os.path.join(workdir, name, f"fold{fold}"))
            if os.path.exists(path):
                accuracies.append(runs.read_metrics(path)["val_accuracy"])
        rows.append({"config": name, "overrides": label, "folds_done": len(accuracies),
                     "mean_val_accuracy": float(np.mean(accuracies)) if accuracies else float("nan"),
                     "std_val_accuracy": float(np.std(accuracies)) if accuracies else float("nan")})
    return rows


def _accuracy_cell(row: dict) -> str:
    if not row["folds_done"]:
        return "-"
    return f"{100 * row['mean_val_accuracy']:.2f} ± {100 * row['std_val_accuracy']:.2f}"


def write_tables(rows: list[dict], workdir: str) -> tuple[str, str]:
    """results.csv and results.md in the workdir; returns their paths."""
    import pandas as pd

    frame = pd.DataFrame(rows)
    csv_path, md_path = os.path.join(workdir, "results.csv"), os.path.join(workdir, "results.md")
    frame.to_csv(csv_path, index=False)
    lines = ["| config | overrides | folds | val accuracy (mean ± std) |", "|---|---|---|---|"]
    lines += [f"| {r['config']} | {r['overrides']} | {r['folds_done']} | {_accuracy_cell(r)} |" for r in rows]
    with open(md_path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return csv_path, md_path


def best_overrides(rows: list[dict], grid: list[dict]) -> dict:
    complete = [i for i, r in enumerate(rows) if r["folds_done"] > 0]
    best = max(complete, key=lambda i: rows[i]["mean_val_accuracy"])
    return grid[best]
