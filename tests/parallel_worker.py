"""Runs in a subprocess for test_parallel.py (device counts are fixed when JAX starts).

    python tests/parallel_worker.py equivalence            # with 4 forced host devices
    python tests/parallel_worker.py distributed PORT ID DIR  # one of two jax.distributed processes
"""

import functools
import json
import os
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ferjax import configs, data, loop, models, parallel, preprocess, train  # noqa: E402


def small_data() -> data.FER2013:
    full = data.load(os.environ["FER2013_DIR"])
    return data.FER2013(train=data.stratified_subset(full.train, 128), val=data.stratified_subset(full.val, 40),
                        test=data.stratified_subset(full.test, 40), source=full.source)


def equivalence() -> dict:
    """K steps on every device (sharded batch) against one device, same global batch and keys."""
    dataset = small_data()
    config = configs.tiny_config(batch_size=32, shift=2, erase=0.5, eval_batch_size=16)
    model = models.create(config.model)
    state0 = train.create_train_state(jax.random.key(0), model, config,
                                      mean_image=preprocess.training_mean(dataset.train.images), steps_per_epoch=4)
    batches = list(data.batches(dataset.train, 32, shuffle_seed=0))[:3]
    step = functools.partial(train.train_step, config=config)

    single = jax.jit(step)
    state_1, losses_1 = state0, []
    for i, batch in enumerate(batches):
        state_1, m = single(state_1, batch, jax.random.key(i))
        losses_1.append(float(m["loss"]))

    mesh = parallel.data_mesh()
    replicated = parallel.replicated(mesh)
    sharded = jax.jit(step, out_shardings=(replicated, replicated))
    state_n, losses_n = parallel.replicate(state0, mesh), []
    for i, batch in enumerate(batches):
        state_n, m = sharded(state_n, parallel.shard_batch(batch, mesh), jax.random.key(i))
        losses_n.append(float(m["loss"]))
    max_param_diff = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
                         for a, b in zip(jax.tree.leaves(state_1.params), jax.tree.leaves(state_n.params)))
    eval_fn = jax.jit(train.eval_step, out_shardings=replicated)
    totals = loop.evaluate_totals(eval_fn, state_n, dataset.val, 16, {}, mesh)
    return {"devices": mesh.size, "losses_1": losses_1, "losses_n": losses_n, "max_param_diff": max_param_diff,
            "eval_count": int(np.asarray(totals["confusion"]).sum()), "val_size": len(dataset.val)}


def distributed(port: str, process_id: str, workdir: str) -> dict:
    parallel.initialize_distributed(f"localhost:{port}", 2, int(process_id))
    config = configs.tiny_config(batch_size=32, eval_batch_size=20, epochs=1)
    metrics = loop.train_and_evaluate(config, workdir, dataset=small_data(), log_every_steps=2)
    return {"process": jax.process_index(), "processes": jax.process_count(), "devices": jax.device_count(),
            "test_accuracy": metrics["test_accuracy"], "test_count": metrics["test_metrics"]["count"]}


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    print("RESULT " + json.dumps(equivalence() if mode == "equivalence" else distributed(*args)), flush=True)
