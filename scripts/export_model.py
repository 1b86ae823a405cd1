"""Export a trained model for `predict`: python scripts/export_model.py --workdir=runs/X [--output=PATH]

Writes PATH.msgpack (weights and batch-norm statistics, the training mean face) and PATH.json
(model config, class names, and the run's metrics.json figures). Weights are stored in float16 when
that loses no val or test accuracy, else in float32. The default PATH is the model bundled with ferjax.
"""

import json
import os
import sys

import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments.flags import define_data_dir_flag, quiet_libraries  # noqa: E402
from ferjax import checkpoint, data, evaluate, inference, runs  # noqa: E402

flags.DEFINE_string("workdir", None, "training workdir whose best checkpoint is exported", required=True)
flags.DEFINE_string("output", inference.DEFAULT_MODEL, "output path without suffix")
define_data_dir_flag()
FLAGS = flags.FLAGS


def _accuracies(state, dataset, standardize: bool) -> dict:
    return {split: evaluate.metrics_from_probs(dataset.split(split).labels, evaluate.predict_split(
        state, dataset.split(split), 500, standardize=standardize))["accuracy"] for split in ("val", "test")}


def main(argv):
    del argv
    quiet_libraries()
    try:
        state, meta = checkpoint.load(FLAGS.workdir)
        metrics = runs.read_metrics(runs.metrics_path(FLAGS.workdir))
        dataset = data.load(FLAGS.data_dir)
    except (checkpoint.CheckpointError, runs.MetricsError, data.DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    card = {key: metrics[key] for key in ("model", "params", "epochs", "best_epoch", "val_accuracy", "test_accuracy",
                                          "test_accuracy_flip_tta", "test_accuracy_tencrop_tta", "wall_time_s",
                                          "device", "commit", "command") if key in metrics}
    standardize = meta["config"]["standardize"]
    full = _accuracies(state, dataset, standardize)
    for dtype in (np.float16, np.float32):  # half precision only where it costs no accuracy
        weights, meta_path = inference.export_model(state, meta, FLAGS.output, dtype)
        exported = _accuracies(inference.load_model(FLAGS.output)[0], dataset, standardize)
        print(f"{np.dtype(dtype).name}: val {exported['val']:.4f} test {exported['test']:.4f} "
              f"(checkpoint: val {full['val']:.4f} test {full['test']:.4f})")
        if all(exported[split] >= full[split] for split in full):
            break
    card.update(storage=np.dtype(dtype).name, **{f"{split}_accuracy_exported": exported[split] for split in full})
    with open(meta_path, "w") as f:
        json.dump({**meta, "card": card}, f, indent=2)
    print(f"wrote {weights} ({os.path.getsize(weights) / 1e6:.1f} MB) and {meta_path}")
    return 0


if __name__ == "__main__":
    app.run(main)
