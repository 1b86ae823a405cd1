"""Train a model on FER2013: python -m experiments.train --model=stn [--workdir=runs/stn] [flags].

Every field of ferjax.configs.Config is a flag (see --helpfull); --flagfile=FILE reads them
from a file (recipes in experiments/recipes/).
"""

import sys

from absl import app, flags

from experiments.flags import config_from_flags, define_config_flags, define_data_dir_flag, start
from ferjax import checkpoint, data, loop, parallel
from ferjax.configs import ConfigError

define_config_flags()
define_data_dir_flag()
flags.DEFINE_string("workdir", None, "where checkpoints, TensorBoard events and metrics go (default: runs/<model>)")
flags.DEFINE_bool("resume", False, "continue from the latest checkpoint in --workdir")
flags.DEFINE_integer("log_every_steps", 50, "console and TensorBoard logging interval, in steps")
flags.DEFINE_bool("track_test", False, "also evaluate the test split after every epoch, for time-to-accuracy curves "
                  "(history only: checkpoints are selected on val)")
flags.DEFINE_float("time_limit_minutes", None, "end training before an epoch that would end past this many minutes "
                   "from the start (the best checkpoint so far is evaluated and reported; metrics.json says where "
                   "it stopped)")
flags.DEFINE_string("coordinator_address", None, "multi-host: host:port of process 0 (else auto-detected)")
flags.DEFINE_integer("num_processes", None, "multi-host: number of processes")
flags.DEFINE_integer("process_id", None, "multi-host: this process's index")
FLAGS = flags.FLAGS


def main(argv):
    start(argv)
    parallel.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    try:
        if FLAGS.time_limit_minutes is not None and FLAGS.time_limit_minutes <= 0:
            raise flags.ValidationError(f"--time_limit_minutes={FLAGS.time_limit_minutes}: must be positive")
        config = config_from_flags().validate()
        workdir = FLAGS.workdir or f"runs/{config.model}"
        loop.train_and_evaluate(config, workdir, data_dir=FLAGS.data_dir, resume=FLAGS.resume,
                                command=" ".join(["python -m experiments.train"] + sys.argv[1:]),
                                log_every_steps=FLAGS.log_every_steps, track_test=FLAGS.track_test,
                                time_limit_s=FLAGS.time_limit_minutes and FLAGS.time_limit_minutes * 60)
    except (ConfigError, data.DataError, checkpoint.CheckpointError, loop.TrainingError, flags.ValidationError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: rerun with --resume to continue from the last epoch's checkpoint", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    app.run(main)
