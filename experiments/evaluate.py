"""Evaluate checkpoints: python -m experiments.evaluate --workdir=runs/stn [--split=test] [--tta=flip]

Several --workdir / --checkpoint values make an ensemble (averaged probabilities). Writes the
same metrics format as training to --output (default: <first workdir>/eval_<split>_<tta>.json).
"""

import json
import os
import sys

from absl import app, flags

from experiments.flags import define_data_dir_flag, start
from ferjax import checkpoint, data, evaluate, loop, train

flags.DEFINE_multi_string("workdir", [], "training workdir(s); their best checkpoint is used")
flags.DEFINE_multi_string("checkpoint", [], "checkpoint folder(s), e.g. runs/stn/checkpoints/latest")
flags.DEFINE_enum("split", "test", data.SPLITS, "which split to evaluate")
flags.DEFINE_enum("tta", "none", train.TTA_MODES, "test-time augmentation")
define_data_dir_flag()
flags.DEFINE_integer("limit", None, "evaluate a stratified subset of this many faces", lower_bound=1)
flags.DEFINE_integer("batch_size", 500, "evaluation batch size", lower_bound=1)
flags.DEFINE_string("output", None, "where to write the metrics JSON")
FLAGS = flags.FLAGS


def main(argv):
    start(argv)
    paths = FLAGS.workdir + FLAGS.checkpoint
    if not paths:
        print("error: pass --workdir=DIR or --checkpoint=DIR (repeat for an ensemble)", file=sys.stderr)
        return 1
    try:
        dataset = data.load(FLAGS.data_dir)
        results = evaluate.evaluate_checkpoints(paths, dataset, FLAGS.split, tta=FLAGS.tta,
                                                batch_size=FLAGS.batch_size, limit=FLAGS.limit)
    except (data.DataError, checkpoint.CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    results.update(device=loop.device_description(), commit=loop.git_commit(),
                   command=" ".join(["python -m experiments.evaluate"] + sys.argv[1:]))
    output = FLAGS.output or os.path.join(paths[0], f"eval_{FLAGS.split}_{FLAGS.tta}.json")
    with open(output, "w") as f:
        json.dump(results, f, indent=2)
    per_class = ", ".join(f"{k} {v:.3f}" for k, v in results["per_class_accuracy"].items())
    print(f"{FLAGS.split} accuracy {results['accuracy']:.4f} (macro-F1 {results['macro_f1']:.4f}, "
          f"{results['count']} faces, tta={FLAGS.tta}, {len(paths)} model(s))")
    print(f"per class: {per_class}")
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    app.run(main)
