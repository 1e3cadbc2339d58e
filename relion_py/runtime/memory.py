"""Refusing, before anything is allocated, a run whose buffers cannot fit in the memory this process may use.

Without it a too-large box or padding makes a run grow until the kernel's OOM killer ends it (or the whole node,
or, on a cluster, the SLURM job, with nothing on record but "Killed"); RELION does the same. Each program
estimates the memory its largest buffers will touch and calls :func:`check_memory`.
"""
import math
import os

from .errors import RelionPyError

GIB = 2.0 ** 30


def memory_limit():
    """Bytes this process may use: the machine's physical memory, or less if a control group (SLURM's cgroup
    task plugin, a container) limits the process's memory."""
    limit = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for cgroup_limit in _cgroup_limits():
        limit = min(limit, cgroup_limit)
    return limit


def _cgroup_limits(membership="/proc/self/cgroup", mount="/sys/fs/cgroup"):
    """The memory limits of the process's control group and of its ancestors (cgroup v2 ``memory.max``, v1
    ``memory.limit_in_bytes``; "max" means none, and v1's "none" is a huge number)."""
    try:
        with open(membership) as fh:
            lines = fh.read().splitlines()
    except OSError:
        return
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":                                         # v2: 0::/path
            root, name = mount, "memory.max"
        elif "memory" in controllers.split(","):
            root, name = os.path.join(mount, "memory"), "memory.limit_in_bytes"
        else:
            continue
        parts = [p for p in path.split("/") if p]
        for depth in range(len(parts), -1, -1):
            try:
                with open(os.path.join(root, *parts[:depth], name)) as fh:
                    text = fh.read().strip()
            except OSError:
                continue
            if text.isdigit():
                yield int(text)


def half_spectrum_bytes(shape, itemsize):
    """Bytes of one FFTW half-layout array of real ``shape`` (the last axis halved + 1)."""
    n = itemsize * (shape[-1] // 2 + 1)
    for side in shape[:-1]:
        n *= side
    return n


def real_fft_bytes(shape):
    """Bytes of one item of a :class:`~relion_py.runtime.fftw_plans.RealFFT` of real ``shape``: its float32 image
    and its complex64 half spectrum."""
    return 4 * math.prod(shape) + half_spectrum_bytes(shape, 8)


def _resident_bytes():
    """The process's resident memory now (interpreter, libraries, what it holds already)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def check_memory(need, what, advice):
    """Raise one clear error if ``need`` bytes (``what`` needs them) and what the process already holds exceed
    :func:`memory_limit`; ``advice`` says which options make it smaller."""
    have, used = memory_limit(), _resident_bytes()
    if not math.isfinite(need):
        raise RelionPyError(f"{what} cannot be held in memory; {advice}")
    if need + used > have:
        raise RelionPyError(f"{what} need about {need / GIB:.3g} GiB, and this process holds {used / GIB:.2g} GiB "
                            f"already: more than the {have / GIB:.3g} GiB it may use; {advice}")
