"""The README's results table, built from metrics.json files: no number is typed by hand.

python scripts/results_table.py results/*/metrics.json
"""

import json
import sys


def row(path: str) -> str:
    with open(path) as f:
        m = json.load(f)
    hours = m["wall_time_s"] / 3600
    wall = f"{hours:.2f} h" if hours >= 1 else f"{m['wall_time_s'] / 60:.0f} min"
    # Ten-crop TTA is evaluated for models trained on crops (--crop) only.
    tencrop = f"{100 * m['test_accuracy_tencrop_tta']:.2f}" if "test_accuracy_tencrop_tta" in m else "-"
    return (f"| `{m['model']}` | {m['params']:,} | {m['best_epoch']}/{m['epochs']} | {m['device']} | {wall} | "
            f"{100 * m['val_accuracy']:.2f} | {100 * m['test_accuracy']:.2f} | "
            f"{100 * m['test_accuracy_flip_tta']:.2f} | {tencrop} | `{m['command']}` | {m['commit']} |")


def main(paths):
    if not paths:
        print("usage: python scripts/results_table.py results/*/metrics.json", file=sys.stderr)
        return 1
    print("| model | params | best epoch / epochs | device | wall time | val % | test % | test % (flip TTA) "
          "| test % (ten-crop TTA) | command | commit |")
    print("|---|---:|---:|---|---:|---:|---:|---:|---:|---|---|")
    for path in paths:
        print(row(path))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
