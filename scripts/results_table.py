"""The README's results tables, built from metrics.json files: no number is typed by hand.

python scripts/results_table.py results/*/metrics.json          # one row per run
python scripts/results_table.py --seeds results/*/metrics.json  # runs that differ only in --seed: mean ± std
"""

import dataclasses
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ferjax import runs  # noqa: E402
from ferjax.configs import Config  # noqa: E402

# (column title, metrics.json key) of the accuracies the seed summary aggregates.
ACCURACIES = (("val %", "val_accuracy"), ("test %", "test_accuracy"), ("test % (flip TTA)", "test_accuracy_flip_tta"),
              ("test % (ten-crop TTA)", "test_accuracy_tencrop_tta"))
# Keys a row reads beyond those every run writes: the run was evaluated on test at the end.
REPORTED = ("test_accuracy", "test_accuracy_flip_tta")


def row(m: dict) -> str:
    hours = m["wall_time_s"] / 3600
    wall = f"{hours:.2f} h" if hours >= 1 else f"{m['wall_time_s'] / 60:.0f} min"
    # Ten-crop TTA is evaluated for models trained on crops (--crop) only.
    tencrop = f"{100 * m['test_accuracy_tencrop_tta']:.2f}" if "test_accuracy_tencrop_tta" in m else "-"
    # A run cut short by --time_limit_minutes: the epochs it ran, of those its schedule was set for.
    ran = f" (stopped after {m['stopped_after_epoch']})" if "stopped_after_epoch" in m else ""
    return (f"| `{m['model']}` | {m['params']:,} | {m['best_epoch']}/{m['epochs']}{ran} | {m['device']} | {wall} | "
            f"{100 * m['val_accuracy']:.2f} | {100 * m['test_accuracy']:.2f} | "
            f"{100 * m['test_accuracy_flip_tta']:.2f} | {tencrop} | `{m['command']}` | {m['commit']} |")


def runs_table(runs: list[dict]) -> list[str]:
    lines = ["| model | params | best epoch / epochs | device | wall time | val % | test % | test % (flip TTA) "
             "| test % (ten-crop TTA) | command | commit |",
             "|---|---:|---:|---|---:|---:|---:|---:|---:|---|---|"]
    return lines + [row(m) for m in runs]


def mean_std(values: list[float]) -> str:
    """'mean ± sample std' in percent."""
    return f"{100 * statistics.mean(values):.2f} ± {100 * statistics.stdev(values):.2f}"


def seed_groups(runs: list[dict]) -> list[list[dict]]:
    """Runs whose configs are equal but for the seed, in groups of two or more, in first-seen order.

    Fields a run's config lacks (it predates them) count as their defaults, which is how it trained.
    """
    groups: dict[str, list[dict]] = {}
    for m in runs:
        config = dataclasses.asdict(Config.from_dict(m["config"]))
        key = json.dumps({k: v for k, v in config.items() if k != "seed"}, sort_keys=True)
        groups.setdefault(key, []).append(m)
    return [group for group in groups.values() if len(group) > 1]


def seeds_table(runs: list[dict]) -> list[str]:
    lines = ["| model | params | seeds | " + " | ".join(title for title, _ in ACCURACIES) + " | commits |",
             "|---|---:|---|" + "---:|" * len(ACCURACIES) + "---|"]
    for group in seed_groups(runs):
        cells = [mean_std([m[key] for m in group]) if all(key in m for m in group) else "-" for _, key in ACCURACIES]
        seeds = ", ".join(str(m["config"]["seed"]) for m in group)
        commits = ", ".join(dict.fromkeys(m["commit"] for m in group))
        lines.append(f"| `{group[0]['model']}` | {group[0]['params']:,} | {seeds} | " + " | ".join(cells)
                     + f" | {commits} |")
    return lines


def main(argv: list[str]) -> int:
    by_seed = "--seeds" in argv
    paths = [a for a in argv if a != "--seeds"]
    if not paths:
        print("usage: python scripts/results_table.py [--seeds] results/*/metrics.json", file=sys.stderr)
        return 1
    try:
        metrics = [runs.read_metrics(p, required=REPORTED) for p in paths]
    except runs.MetricsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print("\n".join(seeds_table(metrics) if by_seed else runs_table(metrics)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
