"""Data parallelism with JAX's own SPMD: one mesh with a 'data' axis over every device of every host.

The global batch is sharded over 'data'; the train state (parameters, optimizer state, batch-norm
statistics) is replicated. `jax.jit` then compiles one program in which gradients, batch-norm
moments and metric sums are reduced across devices, so the same code runs on one CPU, N local
devices or several hosts, and gives the results of one device with the same global batch.
"""

from __future__ import annotations

import logging

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

log = logging.getLogger(__name__)


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> None:
    """Joins a multi-host run: explicit flags, else what `jax.distributed` reads from the environment.

    With no arguments and a single-host environment this does nothing.
    """
    if coordinator_address or num_processes:
        jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                                   process_id=process_id)
    elif _cluster_environment():
        jax.distributed.initialize()  # TPU pods, SLURM, and other auto-detected clusters
    if jax.process_count() > 1:
        if jax.process_index() != 0:  # one console for the whole run
            logging.getLogger("ferjax").setLevel(logging.WARNING)
        log.info("process %d of %d, %d local / %d global devices", jax.process_index(), jax.process_count(),
                 jax.local_device_count(), jax.device_count())


def _cluster_environment() -> bool:
    import os

    return any(key in os.environ for key in ("SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES", "JAX_COORDINATOR_ADDRESS"))


def data_mesh() -> Mesh:
    """All devices of all processes on one 'data' axis."""
    return Mesh(np.asarray(jax.devices()), ("data",))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec("data"))


def local_rows(global_batch_size: int) -> slice:
    """The rows of each global batch that this process loads and feeds."""
    per_process = global_batch_size // jax.process_count()
    start = jax.process_index() * per_process
    return slice(start, start + per_process)


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """A global batch as arrays sharded over 'data'.

    `batch` holds this process's rows only (`local_rows`); one process holds the whole batch.
    """
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}


def replicate(tree, mesh: Mesh):
    return jax.device_put(tree, replicated(mesh))


def is_logging_process() -> bool:
    return jax.process_index() == 0
