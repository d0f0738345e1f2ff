"""Keep freed CPU memory for the next step instead of handing it back to the kernel (glibc only).

A render on the CPU allocates activations of tens to hundreds of MB at every layer, forward and
backward, and frees them a moment later. glibc's ``malloc`` serves every block over 32 MB with
its own ``mmap`` and returns it with ``munmap`` on ``free``, so each step takes every page of
every activation from the kernel again, which zeroes it first: on the 2-core CPU a Doorways
decoder forward + backward at 512 px spent 8.7-10.7 s of its 30-33 s of CPU time in the kernel
(1.9 million page faults a step), with or without transparent huge pages.

:func:`reuse_freed_memory` sets two of glibc's ``mallopt`` parameters: no ``mmap`` for large
blocks (they come from the heap, whose freed chunks the next step reuses without a fault) and
no trimming of the heap's top. The same decoder step then takes no page fault after the first
step of a piece, and ran in 9.8-10.2 s instead of 13.0-13.1 s (``benchmarks/bench_cpu_memory.py``);
the process holds its peak while it renders (6.0 GB there, against a peak of 5.3 GB that glibc's
defaults reach and hand back after each step). Transparent huge pages add nothing to that speed
and 1.7 GB to the peak (torch aligns each large block to 2 MB), so the
worker does not ask for them when it reuses memory. The memory stays with the process, which
is what a render worker wants between steps of one piece and between pieces of one series;
:func:`release_freed_memory` (``malloc_trim``) hands free pages back, and the worker calls it
when it goes idle and before it starts a piece of another exhibit.

They are no-ops (logged) where the C library is not glibc (musl, macOS, Windows). Only the
processes that render call them (``kiosk worker`` and ``kiosk render``; ``show.cpu_memory_reuse``, on by
default): they change that process's ``malloc``, not torch, and the display and web processes keep
glibc's defaults.
"""
from __future__ import annotations

import ctypes
import functools
import logging
import os
import sys

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
# mallopt takes an int and glibc stores the trim threshold as a size_t: -1 is "never trim at the top". A finite
# int (at most 2 GiB) is not enough: a Doorways step frees more than that at the top of the heap at once, and
# with 2 GiB the 512 px decoder step still took 0.9 million page faults.
NEVER = -1
# glibc's defaults as a long-running process reaches them: blocks of 32 MiB and more mmapped (the dynamic
# threshold's ceiling on 64-bit), the heap trimmed above twice that
SYSTEM = {M_MMAP_MAX: 65536, M_MMAP_THRESHOLD: 32 << 20, M_TRIM_THRESHOLD: 64 << 20}

_mode = "system"  # "reuse" once reuse_freed_memory took effect


@functools.lru_cache(maxsize=None)
def _glibc() -> ctypes.CDLL | None:
    """The C library where it is glibc (only glibc has ``gnu_get_libc_version``; musl does not), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        lib = ctypes.CDLL(None)
        version = lib.gnu_get_libc_version
        lib.mallopt.argtypes, lib.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        lib.malloc_trim.argtypes, lib.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    except (OSError, AttributeError):
        return None
    version.restype = ctypes.c_char_p
    log.debug("C library: glibc %s", version().decode())
    return lib


def resident_bytes() -> int:
    """This process's resident memory in bytes (0 where ``/proc`` is not there)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def available() -> bool:
    """Whether the C library is glibc, whose ``mallopt`` this module sets."""
    return _glibc() is not None


def mode() -> str:
    """``"reuse"`` after :func:`reuse_freed_memory` took effect, ``"system"`` otherwise (the C library's own)."""
    return _mode


def reuse_freed_memory() -> bool:
    """Large blocks from the heap, and the heap never trimmed at its top: freed memory is reused without page
    faults. Returns whether it took effect (False where the C library is not glibc or refused a setting)."""
    global _mode
    libc = _glibc()
    if libc is None:
        log.info("freed memory is left to the C library's defaults: this is not glibc on Linux")
        return False
    ok = libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, NEVER) == 1
    if ok:
        _mode = "reuse"
        log.info("large CPU blocks come from the heap and freed memory is kept for the next step "
                 "(glibc mallopt: no mmap, no trimming; handed back when idle)")
    else:
        log.warning("glibc refused a mallopt setting: freed memory is left to its defaults")
    return ok


def use_system_defaults() -> bool:
    """Back to glibc's behaviour as a long-running process has it (for a baseline measured in the same process
    as :func:`reuse_freed_memory`): large blocks mmapped again, the heap trimmed. What the heap holds now is
    kept, and reused by blocks under 32 MiB."""
    global _mode
    libc = _glibc()
    if libc is None:
        return False
    ok = all(libc.mallopt(param, value) == 1 for param, value in SYSTEM.items())
    if ok:
        _mode = "system"
    return ok


def release_freed_memory() -> bool:
    """Hand the free pages of the heap back to the kernel (``malloc_trim(0)``, which also releases whole free
    pages in the middle of the heap). Returns whether any memory was released."""
    libc = _glibc()
    if libc is None:
        return False
    return libc.malloc_trim(0) == 1
