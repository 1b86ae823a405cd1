"""Export a trained model for `predict`: python scripts/export_model.py --workdir=runs/X [--output=PATH]

Writes PATH.msgpack (float16 weights, batch-norm statistics, the training mean face) and PATH.json
(model config, class names, and the run's metrics.json figures), after checking on val and test
that float16 storage costs no accuracy. The default PATH is the model bundled with ferjax.
"""

import json
import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments.flags import quiet_libraries  # noqa: E402
from ferjax import checkpoint, data, evaluate, inference  # noqa: E402

flags.DEFINE_string("workdir", None, "training workdir whose best checkpoint is exported", required=True)
flags.DEFINE_string("output", inference.DEFAULT_MODEL, "output path without suffix")
flags.DEFINE_string("data_dir", None, "FER2013, for the float16 check (default: $FER2013_DIR)")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    quiet_libraries()
    state, meta = checkpoint.load(FLAGS.workdir)
    with open(os.path.join(FLAGS.workdir, "metrics.json")) as f:
        metrics = json.load(f)
    dataset = data.load(FLAGS.data_dir)
    card = {key: metrics[key] for key in ("model", "params", "epochs", "best_epoch", "val_accuracy", "test_accuracy",
                                          "test_accuracy_flip_tta", "wall_time_s", "device", "commit", "command")}
    weights, meta_path = inference.export_model(state, {**meta, "card": card}, FLAGS.output)
    exported, _ = inference.load_model(FLAGS.output)
    standardize = meta["config"]["standardize"]
    for split in ("val", "test"):
        faces = dataset.split(split)
        full = evaluate.metrics_from_probs(faces.labels, evaluate.predict_split(state, faces, 500,
                                                                                 standardize=standardize))
        half = evaluate.metrics_from_probs(faces.labels, evaluate.predict_split(exported, faces, 500,
                                                                                 standardize=standardize))
        card[f"{split}_accuracy_float16"] = half["accuracy"]
        print(f"{split}: float32 {full['accuracy']:.4f}, exported float16 {half['accuracy']:.4f}")
        if half["accuracy"] < full["accuracy"] - 0.001:
            print(f"error: float16 storage costs accuracy on {split}", file=sys.stderr)
            return 1
    with open(meta_path, "w") as f:  # the card now holds the float16 check too
        json.dump({**meta, "card": card}, f, indent=2)
    print(f"wrote {weights} ({os.path.getsize(weights) / 1e6:.1f} MB) and {meta_path}")
    return 0


if __name__ == "__main__":
    app.run(main)
