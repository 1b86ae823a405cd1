"""ferjax.host_memory: with it, repeated XLA computations reuse freed memory instead of faulting it in again."""

import os
import platform
import subprocess
import sys

import pytest

# A jitted computation with a 64 MB temporary buffer (the 4096 x 4096 product), as a train step has;
# prints the page faults of calls 11-40. glibc's heap needs a few calls to settle (an aligned request is
# a little larger than the chunk the previous call freed), so the first calls are not counted; even then
# it now and then places the buffer on fresh pages (0-2 of 30 calls in 20 runs here, 3 of 10 once in
# CI), so the test allows up to a third.
PROGRAM = """
import resource, sys
from ferjax import host_memory
if sys.argv[1] == "keep":
    assert host_memory.keep_freed_memory()
import jax, jax.numpy as jnp
a = jnp.ones((4096, 64), jnp.float32)
f = jax.jit(lambda a: jnp.sum(jnp.sin(a @ a.T)))
for call in range(10 + int(sys.argv[2])):
    if call == 10:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    jax.block_until_ready(f(a))
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
CALLS, PAGES = 30, 64 * 2**20 // 4096


def _faults(mode: str) -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}
    run = subprocess.run([sys.executable, "-c", PROGRAM, mode, str(CALLS)], capture_output=True, text=True, timeout=120,
                         env={**env, "JAX_PLATFORMS": "cpu"})
    assert run.returncode == 0, run.stderr[-2000:]
    return int(run.stdout.split()[-1])


@pytest.mark.skipif(platform.system() != "Linux", reason="glibc's malloc")
def test_freed_buffers_are_reused_without_page_faults():
    kept, default = _faults("keep"), _faults("default")
    # glibc's default faults the buffer in on every call (CALLS x PAGES); kept, now and then.
    assert kept < CALLS * PAGES / 3 and default > CALLS * PAGES * 0.9, (kept, default)
