"""relion_py.runtime.partition: the fixed batches and the order of their sums."""
import numpy as np
import pytest

from relion_py.runtime.partition import BATCH_SIZE, MAX_BATCHES, OrderedReduction, batch_bounds


def test_batch_bounds():
    assert batch_bounds(0).tolist() == [0]
    assert batch_bounds(3, 8).tolist() == [0, 3]
    assert batch_bounds(16, 8).tolist() == [0, 8, 16]
    assert batch_bounds(17, 8).tolist() == [0, 8, 16, 17]
    assert batch_bounds(2 * BATCH_SIZE + 1).tolist() == [0, BATCH_SIZE, 2 * BATCH_SIZE, 2 * BATCH_SIZE + 1]
    many = batch_bounds(2393)                   # a bench tomogram: at most MAX_BATCHES batches of equal size
    assert len(many) - 1 <= MAX_BATCHES and set(np.diff(many)[:-1]) == {75}


@pytest.mark.parametrize("threads,buffers", [(1, 1), (2, 1), (2, 2), (2, 5), (4, 3)])
def test_sums_are_grouped_by_batch_whatever_the_threads(threads, buffers):
    """Terms of wildly different magnitudes, so that any other grouping changes the last bits."""
    rng = np.random.default_rng(5)
    terms = rng.standard_normal((37, 50)) * 10.0 ** rng.integers(-8, 9, (37, 50))
    bounds = batch_bounds(len(terms), 4)
    expected = np.zeros(50)
    for b in range(len(bounds) - 1):
        part = np.zeros(50)
        for k in range(bounds[b], bounds[b + 1]):
            part += terms[k]
        expected += part
    shuffled = np.zeros(50)
    for k in rng.permutation(len(terms)):
        shuffled += terms[k]
    assert not np.array_equal(shuffled, expected)             # the grouping matters for these terms

    def accumulate(b, acc):
        for k in range(bounds[b], bounds[b + 1]):
            acc += terms[k]
    done = []
    total = OrderedReduction(np.zeros(50), buffers).run(np.zeros(50), accumulate, len(bounds) - 1, threads, done.append)
    np.testing.assert_array_equal(total, expected)
    assert done == list(range(len(bounds) - 1))


def test_an_error_in_a_batch_is_raised_and_stops_the_rest():
    started = []

    def accumulate(b, acc):
        started.append(b)
        if b == 3:
            raise ValueError("bad particle")
    with pytest.raises(ValueError, match="bad particle"):
        OrderedReduction(np.zeros(4), 2).run(np.zeros(4), accumulate, 100, 2)
    assert len(started) < 100
