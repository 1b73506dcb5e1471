"""glibc heap settings for the runners: fewer malloc arenas, free memory handed back.

Every thread that allocates gets a glibc malloc arena of its own (up to 8 per core), and freed
memory stays in them. With CAM++ rows embedded on two threads the diarization runner peaked
370 MiB higher and kept ~250 MiB it no longer used; two arenas and a trim after each request
brought the peak back down by ~220 MiB and the idle size from 1.76 to 1.19 GiB (measured on the
composed meeting). No-ops where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from functools import lru_cache

logger = logging.getLogger("whisperx_service.memory")
M_ARENA_MAX = -8  # glibc's mallopt parameter number


@lru_cache(maxsize=1)
def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    libc = ctypes.CDLL(name)
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def limit_malloc_arenas(arenas: int) -> None:
    """At most `arenas` malloc arenas for threads created from now on."""
    libc = _glibc()
    if libc is not None and not libc.mallopt(M_ARENA_MAX, arenas):
        logger.warning("mallopt(M_ARENA_MAX, %d) was refused", arenas)


def release_free_memory() -> None:
    """Hand the heap's free pages back to the system (after a request's big temporaries)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
