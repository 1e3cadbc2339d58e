"""The one rule that fixes which particle contributions are added to which, and in what order, so that a
reconstruction is the same bytes on every run and for every thread count (and, built on the same rule,
for every number of distributed workers).

Floating-point addition is not associative: a sum's last bits depend on how its terms are grouped. If
particles went into whichever private accumulator a thread happened to hold (RELION's outer threads), the
grouping would follow thread timing and thread count. Here the data alone fix it:

1. the particles of a tomogram, in STAR-file order, are cut into consecutive batches whose size depends on
   the particle count only (the last one may be shorter) — :func:`batch_bounds`;
2. each batch is summed into its own zeroed accumulator, its particles in order;
3. consecutive batches form groups of at most GROUP_BATCHES (:func:`group_bounds`); the batch sums of a group
   are added, in batch order, to the group's zeroed accumulator: g = ((0 + b₀) + b₁) + … —
   :class:`OrderedReduction`;
4. the group sums are added to the run's total in order (tomograms in tomograms.star order, groups in index
   order): total = ((0 + g₀) + g₁) + ….

Threads only decide *who* computes a batch, and distributed tasks (one per group) *where* a group is summed,
never what is added to what: a task returns its group's sum and the client adds the sums in order, exactly as
the single-process run adds its own. (Level 4 costs one more accumulator and one pass over it per group; it
is what lets a task send one accumulator instead of one per batch.)
"""
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np

#: Fewest particles per batch, and most batches per tomogram. The batch size is fixed by the particle count
#: alone (never by the thread count), since it decides the grouping of the sums: small enough to give every
#: thread batches, large enough that zeroing each batch accumulator and adding it to the total (passes over
#: the whole grid, ~35 ms for a 128-px box and two half sets) stay a small part of the run — at most
#: MAX_BATCHES of them per tomogram, whatever its particle count.
BATCH_SIZE = 8
MAX_BATCHES = 32
#: Batches per group (per distributed task): at most MAX_BATCHES / GROUP_BATCHES tasks per tomogram.
GROUP_BATCHES = 8


def batch_bounds(n_items, batch_size=None):
    """Start indices of the batches of ``n_items`` items, and ``n_items`` last: batch k is
    ``bounds[k]:bounds[k + 1]``. Batch size: ``batch_size``, or by default max(BATCH_SIZE,
    ceil(n_items / MAX_BATCHES)). (n_batches + 1,) int64."""
    if batch_size is None:
        batch_size = max(BATCH_SIZE, -(-n_items // MAX_BATCHES))
    return np.append(np.arange(0, n_items, batch_size, dtype=np.int64), np.int64(n_items))


def group_bounds(n_batches):
    """Batch index bounds of the groups of ``n_batches`` batches (as :func:`batch_bounds` for batches)."""
    return batch_bounds(n_batches, GROUP_BATCHES)


class OrderedReduction:
    """Sum per-batch accumulators into a total in batch order, computing the batches on threads.

    ``buffers`` private accumulators (each shaped like ``like``) bound the memory: at most that many
    batches are in flight, each in its own buffer, which is free again once its batch has been added to the
    total (RELION's --j_out accumulators play this part, and --mem limits their number the same way).
    """

    def __init__(self, like, buffers):
        self._buffers = [np.empty_like(like) for _ in range(max(1, int(buffers)))]

    def _batch(self, accumulate, k, index):
        acc = self._buffers[index]
        acc.fill(0.0)
        accumulate(k, acc)
        return index

    def run(self, total, accumulate, n_batches, threads, done=None):
        """Call ``accumulate(k, acc)`` for every batch k (acc: a zeroed accumulator to add batch k into) on
        ``threads`` threads, and add the results to ``total`` in batch order, calling ``done(k)`` after
        batch k has been added. An exception in ``accumulate`` is re-raised here, and no further batch
        starts. Returns ``total``."""
        if threads <= 1 or len(self._buffers) == 1:
            for k in range(n_batches):
                total += self._buffers[self._batch(accumulate, k, 0)]
                if done is not None:
                    done(k)
            return total
        free = list(range(len(self._buffers)))
        pending = deque()              # futures of the batches in flight, oldest first
        added = 0

        def add_oldest():
            nonlocal added
            index = pending.popleft().result()
            np.add(total, self._buffers[index], out=total)
            free.append(index)
            if done is not None:
                done(added)
            added += 1

        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="relion_py_worker") as pool:
            try:
                for k in range(n_batches):
                    if not free:
                        add_oldest()
                    pending.append(pool.submit(self._batch, accumulate, k, free.pop()))
                while pending:
                    add_oldest()
            finally:
                for future in pending:
                    future.cancel()
        return total
