"""Evaluate models: python -m experiments.evaluate --workdir=runs/stn [--split=test] [--tta=flip]

--checkpoint also takes an exported model (the path without .msgpack, as scripts/export_model.py
writes it). Several --workdir / --checkpoint values make an ensemble (averaged probabilities); with
--select_on_val the ensemble is the subset of them that greedy forward selection picks on val.
Writes the same metrics format as training to --output (default: eval_<split>_<tta>.json in the first
model's workdir or checkpoint folder; for an exported model <name>_eval_<split>_<tta>.json in the working
directory).
"""

import json
import sys

import numpy as np
from absl import app, flags

from experiments.flags import default_output, define_data_dir_flag, start
from ferjax import checkpoint, data, evaluate, inference, loop, train

flags.DEFINE_multi_string("workdir", [], "training workdir(s); their best checkpoint is used")
flags.DEFINE_multi_string("checkpoint", [], "checkpoint folder(s), e.g. runs/stn/checkpoints/latest, or exported "
                          "model(s), e.g. ferjax/assets/default_model")
flags.DEFINE_enum("split", "test", data.SPLITS, "which split to evaluate")
flags.DEFINE_enum("tta", "none", train.TTA_MODES, "test-time augmentation")
define_data_dir_flag()
flags.DEFINE_integer("limit", None, "evaluate a stratified subset of this many faces", lower_bound=1)
flags.DEFINE_integer("batch_size", 500, "evaluation batch size", lower_bound=1)
flags.DEFINE_string("output", None, "where to write the metrics JSON")
flags.DEFINE_bool("select_on_val", False, "ensemble only the models that greedy forward selection on val picks "
                  "(with the same --tta), then evaluate those on --split")
FLAGS = flags.FLAGS


def _select_on_val(candidates: list[str], dataset: data.FER2013) -> dict:
    """The candidates that greedy forward selection keeps, by val accuracy, with that accuracy."""
    val = data.stratified_subset(dataset.split("val"), FLAGS.limit)
    _, probs = evaluate.checkpoint_probs(candidates, val, tta=FLAGS.tta, batch_size=FLAGS.batch_size)
    chosen = evaluate.greedy_ensemble(probs, val.labels)
    accuracy = evaluate.metrics_from_probs(val.labels, np.mean([probs[i] for i in chosen], axis=0))["accuracy"]
    return {"split": "val", "candidates": candidates, "chosen": [candidates[i] for i in chosen],
            "val_accuracy": accuracy}


def main(argv):
    start(argv)
    commit = loop.git_commit()  # of the code that evaluates, before any later edit of the tree
    paths = FLAGS.workdir + FLAGS.checkpoint
    if not paths:
        print("error: pass --workdir=DIR or --checkpoint=DIR (repeat for an ensemble)", file=sys.stderr)
        return 1
    try:
        for path in paths:
            inference.locate_model(path)  # a mistyped path fails before the data load, not after it
        dataset = data.load(FLAGS.data_dir)
        selection = _select_on_val(paths, dataset) if FLAGS.select_on_val else None
        if selection:
            paths = selection["chosen"]
        results = evaluate.evaluate_checkpoints(paths, dataset, FLAGS.split, tta=FLAGS.tta,
                                                batch_size=FLAGS.batch_size, limit=FLAGS.limit)
    except (data.DataError, checkpoint.CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if selection:
        results["selection"] = selection
        print(f"chosen on val ({selection['val_accuracy']:.4f}, tta={FLAGS.tta}): {', '.join(paths)}")
    results.update(device=loop.device_description(), commit=commit,
                   command=" ".join(["python -m experiments.evaluate"] + sys.argv[1:]))
    output = FLAGS.output or default_output(paths[0], f"eval_{FLAGS.split}_{FLAGS.tta}.json")
    try:
        with open(output, "w") as f:
            json.dump(results, f, indent=2)
    except OSError as e:
        print(f"error: --output={output}: {e.strerror}", file=sys.stderr)
        return 1
    per_class = ", ".join(f"{k} {v:.3f}" for k, v in results["per_class_accuracy"].items())
    print(f"{FLAGS.split} accuracy {results['accuracy']:.4f} (macro-F1 {results['macro_f1']:.4f}, "
          f"{results['count']} faces, tta={FLAGS.tta}, {len(paths)} model(s))")
    print(f"per class: {per_class}")
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    app.run(main)
