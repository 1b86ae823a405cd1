"""Export a trained model for `predict`: python scripts/export_model.py --workdir=runs/X [--output=PATH]

Writes PATH.msgpack (weights and batch-norm statistics, the training mean face) and PATH.json
(model config, class names, the run's metrics.json figures and the fingerprint of the stored weights,
which a student distilled from this model records). The weights are stored in float16
or float32, whichever has the better val accuracy once exported and reloaded among those that fit
--max_mb; float16 on a tie. The default PATH is the model bundled with ferjax, with its 10 MB budget.
"""

import os
import sys
import tempfile

import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments.flags import define_data_dir_flag, start  # noqa: E402
from ferjax import checkpoint, data, evaluate, inference, runs  # noqa: E402

flags.DEFINE_string("workdir", None, "training workdir whose best checkpoint is exported", required=True)
flags.DEFINE_string("output", inference.DEFAULT_MODEL, "output path without suffix")
flags.DEFINE_float("max_mb", 10.0, "size budget of the weights file in MB (the bundled model's); 0: none")
define_data_dir_flag()
FLAGS = flags.FLAGS
STORAGES = (np.float16, np.float32)


def _accuracies(state, dataset, standardize: bool) -> dict:
    return {f"{split}_accuracy": evaluate.metrics_from_probs(dataset.split(split).labels, evaluate.predict_split(
        state, dataset.split(split), 500, standardize=standardize))["accuracy"] for split in ("val", "test")}


def _exported_candidates(state, meta: dict, dataset) -> list[dict]:
    """Each storage dtype exported, reloaded and evaluated as `predict` would load it."""
    candidates = []
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in STORAGES:
            name = np.dtype(dtype).name
            path = os.path.join(tmp, name)
            weights, _ = inference.export_model(state, meta, path, dtype)
            reloaded = inference.load_model(path)[0]
            accuracies = _accuracies(reloaded, dataset, meta["config"]["standardize"])
            candidates.append({"storage": name, "bytes": os.path.getsize(weights),
                               "fingerprint": inference.weights_fingerprint(reloaded), **accuracies})
            print(f"{name}: {candidates[-1]['bytes'] / 1e6:.1f} MB, val {accuracies['val_accuracy']:.4f} "
                  f"test {accuracies['test_accuracy']:.4f}")
    return candidates


def main(argv):
    start(argv)
    if FLAGS.max_mb < 0:
        print(f"error: --max_mb={FLAGS.max_mb}: must be >= 0", file=sys.stderr)
        return 1
    try:
        state, meta = checkpoint.load(FLAGS.workdir)
        metrics = runs.read_metrics(runs.metrics_path(FLAGS.workdir))
        dataset = data.load(FLAGS.data_dir)
    except (checkpoint.CheckpointError, runs.MetricsError, data.DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    card = {key: metrics[key] for key in ("model", "params", "epochs", "best_epoch", "val_accuracy", "test_accuracy",
                                          "test_accuracy_flip_tta", "test_accuracy_tencrop_tta", "wall_time_s",
                                          "device", "commit", "command", "init_from", "teachers") if key in metrics}
    print(f"checkpoint: val {card['val_accuracy']:.4f} test {card['test_accuracy']:.4f}")
    candidates = _exported_candidates(state, meta, dataset)
    try:
        chosen = inference.pick_storage(candidates, int(FLAGS.max_mb * 1e6) if FLAGS.max_mb else None)
    except ValueError as e:
        print(f"error: --max_mb={FLAGS.max_mb}: {e}", file=sys.stderr)
        return 1
    card.update(storage=chosen["storage"], fingerprint=chosen["fingerprint"],
                val_accuracy_exported=chosen["val_accuracy"], test_accuracy_exported=chosen["test_accuracy"])
    weights, meta_path = inference.export_model(state, {**meta, "card": card}, FLAGS.output, chosen["storage"])
    print(f"wrote {weights} ({os.path.getsize(weights) / 1e6:.1f} MB, {chosen['storage']}) and {meta_path}")
    return 0


if __name__ == "__main__":
    app.run(main)
