"""orbax checkpoints of a run: the full train state plus the JSON needed to rebuild it.

A workdir holds ``checkpoints/latest`` (for --resume) and ``checkpoints/best`` (best validation
accuracy). Each checkpoint step stores ``state`` (params, batch-norm statistics, optimizer state,
the training mean face and class weights) and ``meta`` (model name and config, class names,
HOG vector length, commit, command and epoch), so `load` rebuilds model and preprocessing alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os

import jax
import numpy as np
import orbax.checkpoint as ocp

from ferjax import data, models, train
from ferjax.configs import Config


class CheckpointError(Exception):
    """A missing or unreadable checkpoint; the message names the path."""


class _DrainingEventLoop(asyncio.SelectorEventLoop):
    """Finishes its pending tasks before closing.

    orbax runs each restore in a fresh event loop and closes it as soon as the first read fails,
    while tensorstore still has the other reads in flight; their completion callbacks then hit
    the closed loop and print "Event loop is closed" tracebacks after our one-line error.
    """

    def close(self) -> None:
        pending = [task for task in asyncio.all_tasks(self) if not task.done()]
        if pending and not self.is_running():
            self.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        super().close()


class _DrainingPolicy(asyncio.DefaultEventLoopPolicy):
    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        return _DrainingEventLoop()


@contextlib.contextmanager
def _draining_event_loops():
    previous = asyncio.get_event_loop_policy()
    asyncio.set_event_loop_policy(_DrainingPolicy())
    try:
        yield
    finally:
        asyncio.set_event_loop_policy(previous)


def manager(directory: str, *, best: bool = False) -> ocp.CheckpointManager:
    """A manager that keeps one checkpoint: the latest, or (best=True) the best by val accuracy.

    In a single process its saves are asynchronous (see `save`): call its `wait_until_finished` before
    reading back what it saved; its next save and closing it wait too.
    """
    options = ocp.CheckpointManagerOptions(
        max_to_keep=1,
        best_fn=(lambda metrics: metrics["val_accuracy"]) if best else None,
        best_mode="max",
        create=True,
        # Across processes orbax's background finalisation raced: one process validated the array
        # metadata before the other had written its own, and the save failed.
        enable_async_checkpointing=jax.process_count() == 1,
    )
    return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def _stored_arrays(state: train.TrainState) -> dict:
    """The state's array fields as orbax stores them, by name. A run without a weight average stores no
    `averaged` entry, so its checkpoints and those from before --ema existed have the same layout."""
    return {field.name: getattr(state, field.name) for field in dataclasses.fields(state)
            if field.metadata.get("pytree_node", True) and getattr(state, field.name) is not None}


def save(mngr: ocp.CheckpointManager, step: int, state: train.TrainState, meta: dict,
         metrics: dict | None = None) -> None:
    """Saves `state` and `meta` at `step`. An asynchronous manager returns once the arrays are copied off
    the device, so training goes on (and may donate their buffers) while the files are written."""
    mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(_stored_arrays(state)),
                                            meta=ocp.args.JsonSave(meta)), metrics=metrics)


def read_meta(mngr: ocp.CheckpointManager, step: int) -> dict:
    with _draining_event_loops():
        return mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]


def abstract_state(meta: dict, steps_per_epoch: int = 1) -> train.TrainState:
    """The shapes of a checkpoint's state, built from its meta without running anything."""
    config = Config.from_dict(meta["config"])
    model = models.create(config.model, **config.model_kwargs())
    size = meta.get("image_size", data.IMAGE_SIZE)

    def build():
        return train.create_train_state(jax.random.key(0), model, config, mean_image=np.zeros((size, size)),
                                        steps_per_epoch=steps_per_epoch, hog_dim=meta.get("hog_dim"))

    return jax.eval_shape(build)


def restore_state(mngr: ocp.CheckpointManager, step: int, target: train.TrainState) -> train.TrainState:
    """The state saved at `step`, with the structure, shapes and shardings of `target`."""
    with _draining_event_loops():
        arrays = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(_stored_arrays(target))))
    return target.replace(**arrays["state"])


def _reason(e: Exception) -> str:
    """An exception as one short line: orbax and tensorstore messages run over many."""
    return f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"


def changed_flags(saved_config: dict, config: Config) -> list[str]:
    """The config fields whose values differ between a checkpoint's stored config and `config`, as flags."""
    saved = Config.from_dict(saved_config)
    return [f"--{f.name}" for f in dataclasses.fields(config) if getattr(saved, f.name) != getattr(config, f.name)]


def resume(mngr: ocp.CheckpointManager, target: train.TrainState, config: Config) -> tuple[train.TrainState, list[str]]:
    """The latest state in `mngr` restored into `target`, and the flags `config` changes from the saved run.

    Raises:
      CheckpointError: the checkpoint cannot be read into `target`; names the flags that differ, since a changed
        model, optimizer or --ema changes the state's layout.
    """
    step = mngr.latest_step()
    try:
        changed = changed_flags(read_meta(mngr, step)["config"], config)
    except Exception as e:
        raise CheckpointError(f"{mngr.directory}/{step}: unreadable meta ({_reason(e)})") from None
    try:
        return restore_state(mngr, step, target), changed
    except Exception as e:  # orbax and tensorstore raise many types for a layout that does not match
        why = f"flags changed since it was saved: {', '.join(changed)}" if changed else _reason(e)
        raise CheckpointError(f"{mngr.directory}/{step}: cannot resume this run ({why})") from None


def _find_checkpoint(path: str) -> tuple[str, int]:
    """(manager directory, step) for a workdir (prefers checkpoints/best), a checkpoints/{best,latest} folder,
    or one step folder."""
    path = os.path.abspath(path)
    candidates = [os.path.join(path, "checkpoints", "best"), os.path.join(path, "checkpoints", "latest"), path]
    for directory in candidates:
        if os.path.isdir(directory):
            with ocp.CheckpointManager(directory) as mngr:
                step = mngr.latest_step()
            if step is not None:
                return directory, step
    parent, name = os.path.split(path)
    if name.isdigit() and os.path.isdir(parent):
        return parent, int(name)
    raise CheckpointError(f"{path}: no checkpoint found (expected a workdir, its checkpoints/best or a step folder)")


def load(path: str) -> tuple[train.TrainState, dict]:
    """Loads a state, ready to evaluate (`train.evaluation_state`), and its meta from a workdir or checkpoint folder.

    Raises:
      CheckpointError: nothing there, or it cannot be read.
    """
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such checkpoint or workdir")
    directory, step = _find_checkpoint(path)
    try:
        with ocp.CheckpointManager(directory) as mngr:
            meta = read_meta(mngr, step)
            state = restore_state(mngr, step, abstract_state(meta))
    except Exception as e:  # a bad config, or any of the many types orbax and tensorstore raise for damaged files
        raise CheckpointError(f"{path}: unreadable checkpoint ({_reason(e)})") from None
    return train.evaluation_state(state), meta
