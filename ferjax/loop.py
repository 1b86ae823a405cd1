"""The training loop: `train_and_evaluate(config, workdir)`.

Per epoch: shuffled batches through the jitted `train_step`, progress on the console,
TensorBoard scalars and images, validation, the latest and best checkpoints. At the end,
the best checkpoint is evaluated on val and test, and metrics.json, history.csv and PNGs
are written to the workdir. `resume=True` continues from the latest checkpoint.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import logging
import math
import os
import platform
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from ferjax import checkpoint, data, evaluate, features, inference, models, parallel, plots, preprocess, runs, train
from ferjax.configs import Config, ConfigError
from ferjax.summary import SummaryWriter

log = logging.getLogger(__name__)


class TrainingError(Exception):
    """Training cannot go on (e.g. a non-finite loss); the message says where the last good checkpoint is."""


COMMIT_ENV = "FERJAX_COMMIT"


def git_commit() -> str:
    """The commit of the ferjax source tree, with '+dirty' for uncommitted changes; outside git (a tree
    copied to another machine) $FERJAX_COMMIT, as whoever copied it names the commit, else 'unknown'."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get(COMMIT_ENV, "unknown")
    return commit + ("+dirty" if dirty else "")


def device_description() -> str:
    device = jax.devices()[0]
    if device.platform == "cpu":
        return (f"CPU {platform.processor() or platform.machine()} x{os.cpu_count()} cores "
                f"({jax.device_count()} JAX device{'s' if jax.device_count() > 1 else ''})")
    return f"{jax.device_count()}x {device.device_kind}"


@dataclasses.dataclass
class Inputs:
    """The data a run trains and evaluates on, with per-sample extras (HOG) per split."""

    train: data.Split
    val: data.Split
    test: data.Split
    extras: dict[str, dict[str, np.ndarray]]
    hog_dim: int | None


def prepare_inputs(config: Config, dataset: data.FER2013, needs_hog: bool) -> Inputs:
    """Applies --limit_train / --limit_eval and computes HOG features where the model needs them."""
    splits = {
        "train": data.stratified_subset(dataset.train, config.limit_train, config.seed),
        "val": data.stratified_subset(dataset.val, config.limit_eval, config.seed),
        "test": data.stratified_subset(dataset.test, config.limit_eval, config.seed),
    }
    if config.batch_size > len(splits["train"]):
        raise ConfigError(f"--batch_size={config.batch_size}: larger than the {len(splits['train'])} training faces")
    extras, hog_dim = {name: {} for name in splits}, None
    if needs_hog:
        hog_params = (config.hog_orientations, config.hog_pixels_per_cell, config.hog_cells_per_block)
        extras = {name: features.cached_hog_pair(split.images, *hog_params) for name, split in splits.items()}
        hog_dim = extras["train"]["hog"].shape[1]
    return Inputs(**splits, extras=extras, hog_dim=hog_dim)


def data_mesh(config: Config):
    """The mesh over every device that batches are split across; raises ConfigError where they cannot be."""
    mesh = parallel.data_mesh()
    for flag in ("batch_size", "eval_batch_size"):
        if getattr(config, flag) % mesh.size:
            raise ConfigError(f"--{flag}={getattr(config, flag)}: must be divisible by the {mesh.size} devices")
    return mesh


def initial_state(key: jax.Array, model, config: Config, inputs: Inputs) -> train.TrainState:
    """The state a run on `inputs` starts from: fresh weights, and the training mean face, class weights,
    HOG width and schedule length that the training split sets.

    Raises:
      ConfigError: --train_only names a part the model lacks.
    """
    state = train.create_train_state(
        key, model, config, mean_image=preprocess.training_mean(inputs.train.images),
        steps_per_epoch=data.num_batches(len(inputs.train), config.batch_size),
        weights=train.class_weights(inputs.train.labels, config.class_weighting), hog_dim=inputs.hog_dim)
    unknown = [part for part in config.train_only or () if part not in state.params]
    if unknown:
        raise ConfigError(f"--train_only={','.join(config.train_only)}: {config.model} has no {', '.join(unknown)} "
                          f"(its parts: {', '.join(state.params)})")
    return state


def load_teachers(config: Config) -> tuple[tuple[train.TrainState, ...], list[dict]]:
    """The --distill_from models as evaluation states, without their optimizer state, and what identifies each:
    its path, the fingerprint of its weights, and the commit and command that trained it.

    Raises:
      CheckpointError: a teacher cannot be read.
      ConfigError: a teacher that cannot see the student's inputs (another --crop or --standardize, or HOG).
    """
    teachers, records = [], []
    for path in config.distill_from or ():
        teacher, meta = _load_model_for(config, "distill_from", path)
        if meta.get("hog_dim"):
            raise ConfigError(f"--distill_from={path}: a HOG model cannot teach (its inputs include HOG vectors)")
        teachers.append(teacher.replace(tx=None, opt_state=None))
        records.append(_model_record(path, teacher, meta))
    if records:
        log.info("learning from %d teacher(s): %s", len(records), ", ".join(config.distill_from))
    return tuple(teachers), records


def warm_start(state: train.TrainState, config: Config) -> tuple[train.TrainState, dict | None]:
    """`state` with the --init_from model's parameters and batch statistics copied in (`train.transplant`),
    and what identifies that model; without --init_from, `state` unchanged and None.

    Raises:
      CheckpointError: the model cannot be read.
      ConfigError: a model that saw other inputs (--crop, --standardize), or whose weights do not fit this one.
    """
    if not config.init_from:
        return state, None
    source, meta = _load_model_for(config, "init_from", config.init_from)
    try:
        state, fresh = train.transplant(state, source)
    except ValueError as e:
        raise ConfigError(f"--init_from={config.init_from}: {e}") from None
    log.info("started from %s; initialised afresh: %s", config.init_from, ", ".join(fresh) or "nothing")
    return state, _model_record(config.init_from, source, meta)


def _locate_models(config: Config, resume: bool) -> None:
    """Fails on a mistyped --init_from or --distill_from path before the data load and compilation. A resumed
    run reads its --init_from record from the checkpoint, so that model need not be there any more."""
    named = [("init_from", config.init_from)] if config.init_from and not resume else []
    named += [("distill_from", path) for path in config.distill_from or ()]
    for flag, path in named:
        try:
            inference.locate_model(path)
        except checkpoint.CheckpointError as e:
            raise checkpoint.CheckpointError(f"--{flag}: {e}") from None


def _load_model_for(config: Config, flag: str, path: str) -> tuple[train.TrainState, dict]:
    """The model at `path`, named by --`flag`, checked to have been trained on this run's inputs."""
    try:
        state, meta = inference.load_model(path)
    except checkpoint.CheckpointError as e:
        raise checkpoint.CheckpointError(f"--{flag}: {e}") from None
    saved = Config.from_dict(meta["config"])
    for input_flag in ("crop", "standardize"):
        theirs, ours = getattr(saved, input_flag), getattr(config, input_flag)
        if theirs != ours:
            raise ConfigError(f"--{flag}={path}: that model was trained with --{input_flag}={theirs}, this run has "
                              f"--{input_flag}={ours}; it must have seen this run's inputs")
    return state, meta


def _model_record(path: str, state: train.TrainState, meta: dict) -> dict:
    # A path can later hold another model (the bundled one is replaced); the fingerprint cannot.
    return {"path": path, "fingerprint": inference.weights_fingerprint(state),
            "commit": meta.get("commit"), "command": meta.get("command")}


def epochs_that_fit(budget_s: float, step_s: float, steps_per_epoch: int, epoch_overhead_s: float,
                    max_epochs: int) -> int:
    """The most epochs (at least 1, at most max_epochs) whose steps and per-epoch overhead fit budget_s."""
    return max(1, min(max_epochs, math.floor(budget_s / (step_s * steps_per_epoch + epoch_overhead_s))))


def _read_history(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        # Empty cells: a column (test_accuracy) that some epochs of a resumed run did not record.
        return [{k: (float(v) if k != "epoch" else int(v)) for k, v in row.items() if v != ""}
                for row in csv.DictReader(f)]


def _write_history(path: str, history: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for record in history for k in record)))
        writer.writeheader()
        writer.writerows(history)


def _format_eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def evaluate_totals(eval_fn, state, split: data.Split, batch_size: int, extra, mesh) -> dict:
    """Loss, accuracy and confusion matrix over every face of `split` once, summed across devices."""
    rows = parallel.local_rows(batch_size)
    totals = None
    for batch in data.batches(split, batch_size, extra=extra):
        sums = eval_fn(state, parallel.shard_batch({k: v[rows] for k, v in batch.items()}, mesh))
        totals = sums if totals is None else jax.tree.map(lambda a, b: a + b, totals, sums)
    totals = jax.device_get(totals)
    return {"loss": float(totals["loss_sum"] / totals["count"]), "accuracy": float(totals["correct"] / totals["count"]),
            "confusion": np.asarray(totals["confusion"])}


def _log_images(writer: SummaryWriter, state, batch, config: Config, step: int) -> None:
    """A grid of augmented training inputs and, for attention models, the warped faces."""
    faces, warped = _image_summaries(state, {k: batch[k][:32] for k in ("image", "hog") if k in batch},
                                     jax.random.key(step), train._augment_config(config), config.standardize)
    writer.image("train/augmented_inputs", plots.image_grid(np.asarray(faces)), step)
    if warped is not None and warped.shape[1:3] == batch["image"].shape[1:3]:
        pairs = np.concatenate([np.asarray(batch["image"][:16], np.float32), np.asarray(warped[..., 0])])
        writer.image("stn/input_and_warped", plots.image_grid(pairs), step)


@functools.partial(jax.jit, static_argnames=("augment", "standardize"))
def _image_summaries(state, batch: dict, key: jax.Array, augment: preprocess.Augment, standardize: bool):
    """The batch's faces as augmentation makes them, and what the spatial transformer warps the first 16 to
    (or None). Jitted: one compile instead of a first run op by op."""
    faces, _, _ = preprocess.augment(key, batch["image"].astype(jnp.float32), augment)
    (_, aux) = state.apply_fn({"params": state.params, "batch_stats": state.batch_stats},
                              train.model_inputs(state, batch["image"][:16], standardize), train=False,
                              **({"hog": batch["hog"][:16]} if "hog" in batch else {}))
    return faces, aux.get("warped")


@dataclasses.dataclass
class _Progress:
    """Progress lines and train scalars: img/s since the last line, ETA from this process's mean pace."""

    total_steps: int
    batch_size: int
    writer: SummaryWriter
    first_step: int
    clock: float = dataclasses.field(default_factory=time.time)

    def __post_init__(self):
        self.restart_interval(self.first_step)

    def restart_interval(self, step: int) -> None:
        """Starts the img/s interval afresh, e.g. after validation, which is not training throughput."""
        self.last_time, self.last_step = time.time(), step

    def report(self, epoch: int, epochs: int, step: int, metrics: dict) -> None:
        now = time.time()
        images_per_s = (step - self.last_step) * self.batch_size / max(now - self.last_time, 1e-9)
        eta = (self.total_steps - step) * (now - self.clock) / max(step - self.first_step, 1)
        log.info("epoch %d/%d step %d/%d loss %.4f acc %.3f lr %.2e %.0f img/s ETA %s", epoch, epochs, step,
                 self.total_steps, metrics["loss"], metrics["accuracy"], metrics["learning_rate"], images_per_s,
                 _format_eta(eta))
        self.writer.scalars({"train/loss": metrics["loss"], "train/accuracy": metrics["accuracy"],
                             "train/learning_rate": metrics["learning_rate"], "train/img_per_s": images_per_s}, step)
        self.last_time, self.last_step = now, step


def _train_epoch(train_fn, state, inputs: Inputs, config: Config, epoch: int, *, loop_key: jax.Array, mesh,
                 teachers: tuple, progress: _Progress, log_every_steps: int, checkpoint_dir: str):
    """One pass over the shuffled training split. Returns the state, the mean logged train loss and accuracy,
    and the last logged learning rate."""
    rows = parallel.local_rows(config.batch_size)
    steps_per_epoch = data.num_batches(len(inputs.train), config.batch_size)
    logged = []
    # The step count on the host: reading state.step would wait for every step, and an accelerator
    # would idle while the host prepares the next batch.
    first_step = int(state.step)
    progress.restart_interval(first_step)
    for step, batch in enumerate(data.batches(inputs.train, config.batch_size, shuffle_seed=(config.seed, epoch),
                                              extra=inputs.extras["train"]), start=first_step):
        if step == 0 and jax.process_count() == 1:
            _log_images(progress.writer, state, batch, config, step)
        local = {k: v[rows] for k, v in batch.items()}
        state, metrics = train_fn(state, parallel.shard_batch(local, mesh), jax.random.fold_in(loop_key, step),
                                  teachers)
        if (step + 1) % log_every_steps == 0 or (step + 1) % steps_per_epoch == 0:
            metrics = jax.device_get(metrics)
            if not np.isfinite(metrics["loss"]):
                raise TrainingError(f"non-finite loss at step {step + 1} (epoch {epoch + 1}); the last good checkpoint "
                                    f"is in {checkpoint_dir}. Lower --learning_rate or set --grad_clip.")
            progress.report(epoch + 1, config.epochs, step + 1, metrics)
            logged.append(metrics)
    return (state, float(np.mean([m["loss"] for m in logged])), float(np.mean([m["accuracy"] for m in logged])),
            float(logged[-1]["learning_rate"]))


def jit_train_step(config: Config, mesh):
    """The jitted train step, its state donated, its outputs replicated over `mesh`."""
    return jax.jit(functools.partial(train.train_step, config=config), donate_argnums=0,
                   out_shardings=(parallel.replicated(mesh), parallel.replicated(mesh)))


def jit_eval_steps(config: Config, mesh) -> dict:
    """The jitted eval step per test-time augmentation: plain, flip, and ten-crop for crop models."""
    return {tta: jax.jit(functools.partial(train.eval_step, standardize=config.standardize, tta=tta),
                         out_shardings=parallel.replicated(mesh))
            for tta in ("none", "flip") + (("tencrop",) if config.crop else ())}


def evaluate_splits(evaluators: dict, state, inputs: Inputs, config: Config, splits: tuple[str, ...], mesh) -> dict:
    """Metrics of `state` on each split for every eval function (keys 'test', 'test_flip', 'test_tencrop', ...)."""
    results = {}
    for tta, eval_fn in evaluators.items():
        for split_name in splits:
            totals = evaluate_totals(eval_fn, state, getattr(inputs, split_name), config.eval_batch_size,
                                     inputs.extras[split_name], mesh)
            key = split_name if tta == "none" else f"{split_name}_{tta}"
            results[key] = evaluate.metrics_from_confusion(totals["confusion"])
    return results


def train_and_evaluate(config: Config, workdir: str, *, dataset: data.FER2013 | None = None,
                       data_dir: str | None = None, resume: bool = False, command: str | None = None,
                       log_every_steps: int = 50, final_splits: tuple[str, ...] = ("val", "test"),
                       track_test: bool = False, time_limit_s: float | None = None) -> dict:
    """Trains `config` in `workdir` and returns the final metrics (also written to metrics.json).

    Runs data-parallel over every device of every process (`ferjax.parallel`). The best
    checkpoint by validation accuracy is evaluated on `final_splits` at the end
    (cross-validation folds pass ("val",): their test split is never looked at).
    track_test=True also records test accuracy after every epoch in the history, for
    time-to-accuracy curves; nothing is selected on it. time_limit_s (wall-clock seconds from the
    start of this call) ends training before an epoch that would end past it, as long as the last
    one took; the best checkpoint so far is then evaluated and reported as usual, and metrics.json
    records the epoch training stopped after. A resumed run's wall times go on from its last kept
    epoch's, so they add up the calls that made the run (an interrupted epoch's time is not counted).

    Raises:
      ConfigError: a bad value, e.g. a batch larger than the training set.
      DataError: missing or bad data.
      CheckpointError: resume=True and the latest checkpoint cannot be read into this config's state.
      TrainingError: a non-finite loss; the last good checkpoint is kept.
    """
    config.validate()
    _locate_models(config, resume)
    start_time = time.time()
    os.makedirs(workdir, exist_ok=True)
    mesh = data_mesh(config)
    model = models.create(config.model, **config.model_kwargs())
    dataset = dataset or data.load(data_dir)
    inputs = prepare_inputs(config, dataset, model.needs_hog)
    steps_per_epoch = data.num_batches(len(inputs.train), config.batch_size)
    teachers, teacher_records = load_teachers(config)
    teachers = parallel.replicate(teachers, mesh)

    init_key, loop_key = jax.random.split(jax.random.key(config.seed))
    state = initial_state(init_key, model, config, inputs)
    params = int(sum(p.size for p in jax.tree.leaves(state.params)))

    # Closed on exit: orbax managers left to the garbage collector outlive their asyncio loop.
    with (checkpoint.manager(os.path.join(workdir, "checkpoints", "latest")) as latest,
          checkpoint.manager(os.path.join(workdir, "checkpoints", "best"), best=True) as best):
        history_path = os.path.join(workdir, "history.csv")
        history = []
        earlier_calls_s = 0.0  # wall time of the calls this one resumes
        if resume and latest.latest_step() is not None:
            state, changed = checkpoint.resume(latest, parallel.replicate(state, mesh), config)
            if changed:
                log.warning("resuming with flags changed since the last checkpoint: %s", ", ".join(changed))
            # The --init_from weights were copied in when the run began; the checkpoint holds what became of them.
            init_record = checkpoint.read_meta(latest, latest.latest_step()).get("init_from")
            history = [h for h in _read_history(history_path) if h["step"] <= int(state.step)]
            earlier_calls_s = history[-1]["wall_time"] if history else 0.0
            log.info("resumed from %s at step %d", latest.directory, int(state.step))
        elif latest.latest_step() is not None:
            raise ConfigError(f"--workdir={workdir}: holds checkpoints already; pass --resume or choose a new workdir")
        else:
            # A requeued job's first launch wants this fresh start; said aloud, as it also follows a mistyped --workdir.
            if resume:
                log.warning("--resume: no checkpoint in %s yet; starting from step 0", latest.directory)
            state, init_record = warm_start(state, config)
            state = parallel.replicate(state, mesh)
        # Which models this run learnt from: in every checkpoint, metrics.json and exported card.
        lineage = {**({"teachers": teacher_records} if teacher_records else {}),
                   **({"init_from": init_record} if init_record else {})}
        meta = {
            "config": dataclasses.asdict(config),
            "class_names": list(data.CLASS_NAMES),
            "image_size": data.IMAGE_SIZE,
            "hog_dim": inputs.hog_dim,
            "commit": git_commit(),
            "command": command or " ".join(sys.argv),
            **lineage,
        }

        train_fn = jit_train_step(config, mesh)
        evaluators = jit_eval_steps(config, mesh)
        eval_fn = evaluators["none"]  # per epoch; the final evaluation adds the TTA ones
        writer = SummaryWriter(workdir, enabled=parallel.is_logging_process())
        if int(state.step) == 0:
            settings = dataclasses.asdict(config)
            writer.text("config", "\n".join(f"    {k} = {v}" for k, v in settings.items()), 0)
            writer.hparams(settings)
        progress = _Progress(config.epochs * steps_per_epoch, config.batch_size, writer, first_step=int(state.step))
        best_val = max([h["val_accuracy"] for h in history], default=-1.0)
        stopped_after = None
        log.info("%s: %d params, %d train / %d val / %d test faces, %d steps per epoch, on %s", config.model, params,
                 len(inputs.train), len(inputs.val), len(inputs.test), steps_per_epoch, device_description())
        for epoch in range(int(state.step) // steps_per_epoch, config.epochs):
            epoch_start = time.time()
            state, train_loss, train_accuracy, learning_rate = _train_epoch(
                train_fn, state, inputs, config, epoch, loop_key=loop_key, mesh=mesh, teachers=teachers,
                progress=progress, log_every_steps=log_every_steps, checkpoint_dir=latest.directory)
            step = int(state.step)
            evaluated = train.evaluation_state(state)
            val = evaluate_totals(eval_fn, evaluated, inputs.val, config.eval_batch_size, inputs.extras["val"], mesh)
            epoch_seconds = time.time() - epoch_start
            record = {"epoch": epoch + 1, "step": step, "train_loss": train_loss, "train_accuracy": train_accuracy,
                      "val_loss": val["loss"], "val_accuracy": val["accuracy"], "learning_rate": learning_rate,
                      "img_per_s": steps_per_epoch * config.batch_size / epoch_seconds,
                      "wall_time": earlier_calls_s + time.time() - start_time}
            if track_test:
                record["test_accuracy"] = evaluate_totals(eval_fn, evaluated, inputs.test, config.eval_batch_size,
                                                          inputs.extras["test"], mesh)["accuracy"]
            history.append({k: v if k in ("epoch", "step") else float(v) for k, v in record.items()})
            if parallel.is_logging_process():
                _write_history(history_path, history)
            writer.scalars({"val/loss": val["loss"], "val/accuracy": val["accuracy"],
                            "epoch/img_per_s": record["img_per_s"],
                            **({"test/accuracy": record["test_accuracy"]} if track_test else {})}, step)
            checkpoint.save(latest, step, state, {**meta, "epoch": epoch + 1})
            if val["accuracy"] > best_val:
                best_val = val["accuracy"]
                checkpoint.save(best, step, state, {**meta, "epoch": epoch + 1}, {"val_accuracy": val["accuracy"]})
            log.info("epoch %d/%d done in %.0f s: val loss %.4f val acc %.4f (best %.4f)", epoch + 1, config.epochs,
                     epoch_seconds, val["loss"], val["accuracy"], best_val)
            writer.flush()
            # The next epoch is judged by this one's whole cost: training, evaluation and checkpoints.
            now = time.time()
            if (time_limit_s is not None and epoch + 1 < config.epochs
                    and (now - start_time) + (now - epoch_start) > time_limit_s):
                stopped_after = epoch + 1
                log.warning("stopping after epoch %d of %d: another would pass the time limit of %.1f min",
                            stopped_after, config.epochs, time_limit_s / 60)
                break

        # The best checkpoint, restored into the live (sharded) state once its files are written.
        best.wait_until_finished()
        best_step = best.latest_step()
        state = checkpoint.restore_state(best, best_step, state)
        best_epoch = checkpoint.read_meta(best, best_step).get("epoch")
    results = evaluate_splits(evaluators, train.evaluation_state(state), inputs, config, final_splits, mesh)
    metrics = {
        "model": config.model,
        "params": params,
        "epochs": config.epochs,
        "best_epoch": best_epoch,
        **({"stopped_after_epoch": stopped_after} if stopped_after else {}),
        **{f"{k}_accuracy": results[k]["accuracy"] for k in final_splits},
        **{f"{k}_accuracy_{tta}_tta": results[f"{k}_{tta}"]["accuracy"] for k in final_splits
           for tta in ("flip", "tencrop") if f"{k}_{tta}" in results},
        **{f"{k}_metrics": v for k, v in results.items()},
        "wall_time_s": earlier_calls_s + time.time() - start_time,
        "train_img_per_s": float(np.median([h["img_per_s"] for h in history])) if history else None,
        "device": device_description(),
        "commit": meta["commit"],
        "command": meta["command"],
        "config": meta["config"],
        **lineage,
        "history": history,
    }
    if parallel.is_logging_process():
        write_reports(workdir, metrics, results, final_splits[-1], writer)
    writer.close()
    return metrics


def write_reports(workdir: str, metrics: dict, results: dict, reported: str, writer: SummaryWriter) -> None:
    """metrics.json, history and confusion-matrix PNGs, and the final TensorBoard entries."""
    metrics_file = runs.write_metrics(workdir, metrics)
    history = metrics["history"]
    if history:
        plots.save_rgb(os.path.join(workdir, "history.png"), plots.figure_to_rgb(plots.history_figure(history)))
    confusion_rgb = plots.figure_to_rgb(plots.confusion_figure(
        results[reported]["confusion_matrix"],
        f"{metrics['model']}: {reported} accuracy {results[reported]['accuracy']:.2%}"))
    plots.save_rgb(os.path.join(workdir, "confusion_matrix.png"), confusion_rgb)
    step = history[-1]["step"] if history else 0
    writer.image(f"{reported}/confusion_matrix", confusion_rgb, step)
    splits = [k for k in results if not k.endswith(("_flip", "_tencrop"))]
    writer.scalars({f"{k}/best_checkpoint_accuracy": results[k]["accuracy"] for k in splits}, step)
    with_tta = {k: ", ".join(f"{tta} TTA {results[f'{k}_{tta}']['accuracy']:.4f}" for tta in ("flip", "tencrop")
                             if f"{k}_{tta}" in results) for k in splits}
    log.info("best checkpoint (epoch %s): %s; wrote %s", metrics["best_epoch"],
             ", ".join(f"{k} {results[k]['accuracy']:.4f} ({with_tta[k]})" for k in splits),
             metrics_file)
