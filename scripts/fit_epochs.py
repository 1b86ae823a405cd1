"""The epoch count that fits a training-time budget on this machine, measured.

python scripts/fit_epochs.py --flagfile=experiments/recipes/gpu_deep.flags --minutes=6 [--track_test] [train flags]
python scripts/fit_epochs.py ... --until=UNIX_TIME     # a run started right after must be done by then

Builds the run that the train flags describe (model, augmentation, teachers) with the training loop's
own jitted functions, runs its train step on a training batch for --seconds after compilation, times
one validation pass (two with --track_test), one checkpoint save, and the run's final evaluation (its
best checkpoint with every test-time augmentation on val and test, compilations included), and prints
the most epochs whose training, evaluation and checkpoints fit --minutes, as `--epochs=N`: the run's
command then names its epoch count, and the schedule is set for it. With --until, the budget is the
time left once the fit is done, less the start-up and compilation it measured (the run repeats them)
and the final evaluation, and a second line, `--time_limit_minutes=M`, makes a run that turns out
slower than its fit stop training in time to evaluate by --until. Runs that will share a device are
measured side by side: start their fits together with one --barrier folder and --side_by_side=N, and
each times its steps only once all N have compiled.
"""

import os
import sys
import tempfile
import time

_STARTED = time.time()  # before JAX's import: a run's start-up includes it

import jax  # noqa: E402
from absl import app, flags  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments.flags import config_from_flags, define_config_flags, define_data_dir_flag, start  # noqa: E402
from ferjax import checkpoint, data, loop, models, parallel, train  # noqa: E402
from ferjax.configs import ConfigError  # noqa: E402

_IMPORTED = time.time()  # a run's clock (--time_limit_minutes) starts after its imports

define_config_flags()
define_data_dir_flag()
flags.DEFINE_float("minutes", None, "training time to fill, without data loading and compilation")
flags.DEFINE_float("until", None, "instead of --minutes: the Unix time by which a run started after this fit must "
                   "have trained and evaluated")
flags.DEFINE_float("seconds", 10.0, "how long the train step is timed, after compilation")
flags.DEFINE_string("barrier", None, "a folder shared by fits run side by side (see --side_by_side)")
flags.DEFINE_integer("side_by_side", 1, "with --barrier: the fits that time their steps together")
flags.DEFINE_integer("max_epochs", 400, "the most epochs to print")
flags.DEFINE_bool("track_test", False, "the run evaluates the test split after every epoch too")
FLAGS = flags.FLAGS


def _timed(fn) -> float:
    """Seconds of one call of fn (which waits for its result), after an untimed call."""
    fn()
    start_time = time.perf_counter()
    fn()
    return time.perf_counter() - start_time


def _wait_for_all(folder: str, count: int, timeout_s: float = 120.0) -> None:
    """Marks this process ready in `folder` and waits until `count` processes are (or timeout_s has
    passed: a fit that failed must not hold the others)."""
    os.makedirs(folder, exist_ok=True)
    open(os.path.join(folder, f"ready.{os.getpid()}"), "w").close()
    deadline = time.time() + timeout_s
    while len(os.listdir(folder)) < count:
        if time.time() > deadline:
            print(f"warning: {len(os.listdir(folder))} of --side_by_side={count} fits ready after {timeout_s:.0f} s; "
                  "timing without the others", file=sys.stderr)
            return
        time.sleep(0.05)


def main(argv):
    start(argv)
    if (FLAGS.minutes is None) == (FLAGS.until is None):
        print("error: --minutes, --until: give exactly one", file=sys.stderr)
        return 1
    for flag in ("minutes", "seconds", "max_epochs", "side_by_side"):
        if getattr(FLAGS, flag) is not None and getattr(FLAGS, flag) <= 0:
            print(f"error: --{flag}={getattr(FLAGS, flag)}: must be positive", file=sys.stderr)
            return 1
    if FLAGS.until is not None and FLAGS.until <= time.time():
        print(f"error: --until={FLAGS.until:.0f}: already past (now {time.time():.0f})", file=sys.stderr)
        return 1
    try:
        config = config_from_flags().validate()
        model = models.create(config.model, **config.model_kwargs())
        inputs = loop.prepare_inputs(config, data.load(FLAGS.data_dir), model.needs_hog)
        teachers, _ = loop.load_teachers(config)
        mesh = loop.data_mesh(config)
    except (ConfigError, data.DataError, checkpoint.CheckpointError, flags.ValidationError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    steps_per_epoch = data.num_batches(len(inputs.train), config.batch_size)
    state = parallel.replicate(loop.initial_state(jax.random.key(config.seed), model, config, inputs), mesh)
    teachers = parallel.replicate(teachers, mesh)
    train_fn, evaluators = loop.jit_train_step(config, mesh), loop.jit_eval_steps(config, mesh)
    batch = next(data.batches(inputs.train, config.batch_size, shuffle_seed=(config.seed, 0),
                              extra=inputs.extras["train"]))
    batch = parallel.shard_batch({k: v[parallel.local_rows(config.batch_size)] for k, v in batch.items()}, mesh)
    holder = {"state": state}

    def train_steps(count: int) -> None:
        for i in range(count):
            holder["state"], metrics = train_fn(holder["state"], batch, jax.random.key(i), teachers)
        jax.block_until_ready(metrics)

    train_steps(2)  # compilation
    startup_s = time.time() - _STARTED
    if FLAGS.barrier:
        _wait_for_all(FLAGS.barrier, FLAGS.side_by_side)
    steps, start_time = 0, time.perf_counter()
    while time.perf_counter() - start_time < FLAGS.seconds:
        train_steps(10)
        steps += 10
    step_s = (time.perf_counter() - start_time) / steps
    evaluated = train.evaluation_state(holder["state"])
    eval_s = _timed(lambda: loop.evaluate_totals(evaluators["none"], evaluated, inputs.val, config.eval_batch_size,
                                                 inputs.extras["val"], mesh))
    with tempfile.TemporaryDirectory() as tmp, checkpoint.manager(tmp) as manager:
        # What a save holds training up for: the files are written in the background, over the next epoch.
        checkpoint.save(manager, 1, holder["state"], {"config": {}})
        manager.wait_until_finished()
        save_start = time.perf_counter()
        checkpoint.save(manager, 2, holder["state"], {"config": {}})
        save_s = time.perf_counter() - save_start
    final_start = time.perf_counter()  # once: the run compiles its TTA evaluations at the end too
    loop.evaluate_splits(evaluators, evaluated, inputs, config, ("val", "test"), mesh)
    final_s = time.perf_counter() - final_start
    # Per epoch: val (and test) evaluation, the latest checkpoint, and at worst a new best one.
    overhead_s = eval_s * (2 if FLAGS.track_test else 1) + 2 * save_s
    if FLAGS.minutes is not None:
        budget_s = FLAGS.minutes * 60
    else:
        budget_s = FLAGS.until - time.time() - startup_s - final_s
        if budget_s <= 0:
            print(f"error: --until={FLAGS.until:.0f}: leaves no time to train once start-up ({startup_s:.0f} s) and "
                  f"the final evaluation ({final_s:.0f} s) are taken off", file=sys.stderr)
            return 1
    epochs = loop.epochs_that_fit(budget_s, step_s, steps_per_epoch, overhead_s, FLAGS.max_epochs)
    print(f"{config.model}: {step_s * 1e3:.1f} ms per step of {config.batch_size} "
          f"({config.batch_size / step_s:.0f} img/s), {steps_per_epoch} steps per epoch, {overhead_s:.1f} s of "
          f"evaluation ({eval_s:.2f} s per pass) and checkpoints ({save_s:.2f} s per save) per epoch, "
          f"{startup_s:.0f} s of start-up and compilation, {final_s:.0f} s of final evaluation: {epochs} epochs fit "
          f"{budget_s / 60:.2f} min", file=sys.stderr)
    print(f"--epochs={epochs}")
    if FLAGS.until is not None:
        # The run's clock starts after its imports, and its training must leave the final evaluation time.
        print(f"--time_limit_minutes={(FLAGS.until - final_s - time.time() - (_IMPORTED - _STARTED)) / 60:.2f}")
    return 0


if __name__ == "__main__":
    app.run(main)
