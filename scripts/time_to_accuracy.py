"""Test accuracy against wall-clock time for several runs, from their metrics.json histories.

Runs trained with --track_test have test accuracy per epoch; for the others the curve shows
validation accuracy, and the legend says so.

python scripts/time_to_accuracy.py results/*/metrics.json --output=results/time_to_accuracy.png
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ferjax import plots, runs  # noqa: E402  (plots sets the matplotlib backend)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("metrics", nargs="+")
    parser.add_argument("--output", default="time_to_accuracy.png")
    args = parser.parse_args(argv)
    try:
        loaded = [(path, runs.read_metrics(path, required=("test_accuracy",))) for path in args.metrics]
    except runs.MetricsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    # tab10 repeats its colours after ten curves; tab20 keeps up to twenty apart.
    colors = plt.get_cmap("tab10" if len(loaded) <= 10 else "tab20").colors
    for i, (path, m) in enumerate(loaded):
        minutes = [h["wall_time"] / 60 for h in m["history"]]
        split = "test" if all("test_accuracy" in h for h in m["history"]) else "val"
        label = (f"{m['model']} ({os.path.basename(os.path.dirname(path))}), {split} curve: "
                 f"final test {100 * m['test_accuracy']:.1f}%")
        # The first file's curve on top: list the runs to compare first.
        ax.plot(minutes, [100 * h[f"{split}_accuracy"] for h in m["history"]], marker="o", markersize=3, label=label,
                color=colors[i % len(colors)], zorder=len(loaded) - i)
    ax.set(xlabel="wall-clock minutes", ylabel="accuracy % (test = PrivateTest, val = PublicTest)",
           title="time to accuracy")
    ax.grid(alpha=0.3)
    # Beside the axes, where it hides no curve; the saved image grows to hold it (a tight bounding box).
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    plots.save_rgb(args.output, plots.figure_to_rgb(fig))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
