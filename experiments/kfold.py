"""Stratified k-fold search on the training split:
python -m experiments.kfold --model=cnn_shallow --folds=5 --grid='learning_rate=1e-3,3e-3;dropout=0.3,0.5'

Every Config field is a flag and sets the base config; --grid varies fields. Finished folds are
not rerun. --num_workers=N --worker=i splits the (config, fold) tasks over N processes (one per
device or host); any process, or a rerun with --summarize_only, writes the combined table.
"""

import dataclasses
import os
import sys

from absl import app, flags

from experiments.flags import config_from_flags, define_config_flags, define_data_dir_flag, start
from ferjax import data, kfold, loop, runs
from ferjax.configs import ConfigError

define_config_flags()
define_data_dir_flag()
flags.DEFINE_string("workdir", None, "search directory (default: runs/kfold_<model>)")
flags.DEFINE_integer("folds", 5, "number of stratified folds", lower_bound=2)
flags.DEFINE_string("grid", "", "hyperparameter grid: 'field=v1,v2;field2=v3,v4' (cartesian product)")
flags.DEFINE_integer("num_workers", 1, "processes sharing the search", lower_bound=1)
flags.DEFINE_integer("worker", 0, "this process's index among --num_workers", lower_bound=0)
flags.DEFINE_bool("summarize_only", False, "only (re)write the results table from finished folds")
flags.DEFINE_bool("retrain", False, "retrain the best configuration on the full training split, report val and test")
FLAGS = flags.FLAGS


def main(argv):
    start(argv)
    try:
        base = config_from_flags().validate()
        if FLAGS.worker >= FLAGS.num_workers:
            raise ConfigError(f"--worker={FLAGS.worker}: must be below --num_workers={FLAGS.num_workers}")
        grid = kfold.parse_grid(FLAGS.grid)
        for overrides in grid:
            dataclasses.replace(base, **overrides).validate()
        workdir = FLAGS.workdir or f"runs/kfold_{base.model}"
        os.makedirs(workdir, exist_ok=True)
        command = " ".join(["python -m experiments.kfold"] + sys.argv[1:])
        if not FLAGS.summarize_only:
            dataset = data.load(FLAGS.data_dir)
            for i, (c, k) in enumerate(kfold.tasks(grid, FLAGS.folds)):
                if i % FLAGS.num_workers == FLAGS.worker:
                    kfold.run_fold(base, grid[c], c, k, FLAGS.folds, dataset, workdir, command=command)
        rows = kfold.summarize(grid, FLAGS.folds, workdir)
        csv_path, md_path = kfold.write_tables(rows, workdir)
        with open(md_path) as f:
            print(f.read())
        print(f"wrote {csv_path} and {md_path}")
        unfinished = sum(FLAGS.folds - r["folds_done"] for r in rows)
        if FLAGS.retrain and unfinished:
            # Another worker's folds may still be running: say why nothing is retrained, and how to later.
            print(f"--retrain: {unfinished} fold(s) not finished; once they are, rerun with --summarize_only "
                  "--retrain")
        elif FLAGS.retrain:
            best = kfold.best_overrides(rows, grid)
            print(f"best configuration: {best or 'base'}; retraining on the full training split")
            config = dataclasses.replace(base, **best).validate()
            loop.train_and_evaluate(config, os.path.join(workdir, "best_retrained"), data_dir=FLAGS.data_dir,
                                    command=command)
    except (ConfigError, data.DataError, loop.TrainingError, runs.MetricsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    app.run(main)
