"""Host memory: let glibc keep the memory XLA frees, so each CPU train step does not page-fault it back in.

XLA's CPU runtime allocates every execution's temporary buffer (about 200 MB for a `cnn_shallow`
train step at batch 128, 400 MB for `cnn_medium`) with posix_memalign. glibc serves requests that
large from a fresh mmap and unmaps them when freed, so every step touches its whole working set for
the first time again: 120,000 page faults and about 300 ms of kernel time per `cnn_medium` step on
a 2-core CPU. With one malloc arena, no mmap and no trimming, freed buffers stay in glibc's heap and
the next step reuses them.
"""

from __future__ import annotations

import ctypes

# mallopt(3) parameters, from glibc's malloc.h.
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
_SETTINGS = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1))


def keep_freed_memory() -> bool:
    """Makes glibc's malloc reuse freed memory instead of returning it to the kernel; True if it could.

    Call it before JAX starts its backend (the first computation): threads that have allocated
    before keep their own arenas. The process then holds on to its peak memory until it exits,
    which is what a training or benchmark process wants. False where the C library is not glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return all(libc.mallopt(option, value) == 1 for option, value in _SETTINGS)
