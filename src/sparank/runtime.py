"""Process settings for steady timings: freed memory kept for reuse by glibc's malloc.

PyTorch's CPU tensors come from the C library's ``malloc``. glibc gives large
blocks back to the operating system when they are freed (``mmap``'d blocks
are unmapped, the top of the heap is trimmed), and every page of a block
taken again is then faulted in afresh. Whether that happens depends on the
process's allocation history: on the Fashion-MNIST MLP a certified
measure of 1000 inputs took about 45 page faults per run, and 17,000 (about
20 ms of its 85) once fast copies of the model (TorchScript) had been made
and dropped in the same process. :func:`keep_freed_memory` raises glibc's
thresholds so that freed blocks stay in the process for reuse: the memory
then held is the peak the process reached, not more.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

#: mallopt parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: blocks below this come from the heap, not from their own mapping (glibc's largest dynamic threshold)
MMAP_THRESHOLD = 32 * 2**20
#: free memory at the heap's top up to this is kept, not given back
TRIM_THRESHOLD = 2**30


@functools.cache
def keep_freed_memory() -> bool:
    """Ask glibc's ``malloc`` to keep freed memory for reuse (``mallopt``); once per process.

    Returns whether it took effect: False where the C library is not glibc
    (macOS, musl), which is left as it is. The ``sparank`` command calls it;
    from Python, call it once before timing a measure.
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version  # glibc's own: its mallopt parameters are the ones above  # noqa: B018
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
