"""The per-thread machinery: ordered parallel map, background writer, FFTW stacks, window gathering."""
import os
import random
import subprocess
import sys
import time

import numpy as np
import pytest
import scipy.fft

from relion_py.runtime.fftw_plans import RealFFT
from relion_py.kernels.tomography.windows import gather_clamped_windows
from relion_py.runtime.parallel import BackgroundWriter, map_in_order

rng = np.random.default_rng(5)


@pytest.mark.parametrize("threads", [1, 3])
def test_map_in_order_keeps_the_order(threads):
    def slow_square(k):
        time.sleep(random.random() * 0.003)
        return k * k
    assert list(map_in_order(slow_square, 40, threads)) == [k * k for k in range(40)]


@pytest.mark.parametrize("threads", [1, 2])
def test_map_in_order_reraises_and_stops(threads):
    done = []

    def task(k):
        if k == 5:
            raise ValueError("bad particle")
        done.append(k)
        return k
    with pytest.raises(ValueError, match="bad particle"):
        list(map_in_order(task, 1000, threads))
    assert len(done) < 100          # the remaining tasks were not run


def test_background_writer_reraises_errors():
    writer = BackgroundWriter(max_pending=2)
    written = []
    writer.submit(written.append, 1)

    def fail():
        raise OSError("disk full")
    writer.submit(fail)
    with pytest.raises(OSError, match="disk full"):
        writer.close()
    assert written == [1]


@pytest.mark.parametrize("max_bytes, most_waiting", [(10 * 2**20, 2), (64 * 2**20, 8), (1, 1)])
def test_background_writer_bounds_the_waiting_bytes(max_bytes, most_waiting):
    """Writes of 4 MiB arrays held up by the disk: at most max_bytes of them wait (but always one), at most
    max_pending per thread."""
    import threading
    disk = threading.Event()
    writer = BackgroundWriter(threads=2, max_pending=4, max_bytes=max_bytes)
    waiting = []
    released = threading.Timer(0.5, disk.set)
    released.start()
    for _ in range(12):
        writer.submit(lambda a: disk.wait(), np.zeros(2**19))
        waiting.append(len(writer.pending))
    writer.close()
    released.cancel()
    assert max(waiting) == most_waiting


@pytest.mark.parametrize("shape", [(32, 32), (24, 40), (12, 12, 12)])
def test_real_fft_matches_scipy(shape):
    fft = RealFFT(5, shape)
    x = rng.standard_normal((3,) + shape).astype(np.float32)
    fft.real[:3] = x
    axes = tuple(range(1, len(shape) + 1))
    spectra = fft.forward(3)
    expect = scipy.fft.rfftn(x.astype(np.float64), axes=axes, norm="ortho")
    assert spectra.shape == expect.shape and spectra.dtype == np.complex64
    assert np.abs(spectra - expect).max() < 1e-5 * np.abs(expect).max()
    back = fft.backward(3)
    np.testing.assert_allclose(back, x, atol=1e-5)


def test_real_fft_with_kept_columns_only():
    """Binning: only the low-frequency columns are transformed along y, and they are exact."""
    fft = RealFFT(4, (32, 32), columns=9)
    x = rng.standard_normal((2, 32, 32)).astype(np.float32)
    fft.real[:2] = x
    spectra = fft.forward(2)
    expect = scipy.fft.rfft2(x.astype(np.float64), norm="ortho")[:, :, :9]
    assert spectra.shape == (2, 32, 9)
    assert np.abs(spectra - expect).max() < 1e-5 * np.abs(expect).max()


def test_gather_inside_wide_images_matches_slicing():
    """Windows inside the image take the row-copy path with prefetching (also across windows)."""
    stack = rng.standard_normal((4, 70, 1100)).astype(np.float32)
    n, size = 9, 24
    slices = rng.integers(0, 4, n)
    origins = np.stack([rng.integers(0, 1100 - size, n), rng.integers(0, 70 - size, n)], axis=1)
    out = np.empty((n, size, size), np.float32)
    gather_clamped_windows(stack, slices, origins, out)
    for i in range(n):
        x0, y0 = origins[i]
        np.testing.assert_array_equal(out[i], stack[slices[i], y0:y0 + size, x0:x0 + size])


_PLAN_AND_PRINT = """
import sys
import numpy as np
import relion_py.runtime.fftw_plans as F
if sys.argv[1] == "wisdom_only":          # FFTW_WISDOM_ONLY: plan from kept wisdom, or fail
    F.FFTW_MEASURE |= 1 << 21
fft = F.RealFFT(2, (48, 40), columns=9)
fft.real[:] = np.random.default_rng(3).standard_normal(fft.real.shape)
sys.stdout.write(fft.forward(2).tobytes().hex())
"""


def _plan_in_new_process(cache, mode="measure"):
    env = dict(os.environ, XDG_CACHE_HOME=str(cache))
    return subprocess.run([sys.executable, "-c", _PLAN_AND_PRINT, mode], env=env, capture_output=True, text=True)


def test_measured_plans_are_kept_between_runs(tmp_path):
    """FFTW's wisdom is kept in the cache folder: a later run plans from it alone (so it uses the same
    algorithms and repeats the numbers bit for bit); without it, planning from wisdom alone fails."""
    assert _plan_in_new_process(tmp_path / "empty", "wisdom_only").returncode != 0
    first = _plan_in_new_process(tmp_path / "cache")
    assert first.returncode == 0, first.stderr
    assert len(list((tmp_path / "cache" / "relion_py").glob("fftwf_wisdom-*"))) == 1
    again = _plan_in_new_process(tmp_path / "cache", "wisdom_only")
    assert again.returncode == 0, again.stderr
    assert again.stdout == first.stdout


def test_an_unwritable_cache_only_means_measuring_again(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    run = _plan_in_new_process(tmp_path / "file")
    assert run.returncode == 0 and run.stderr == "" and len(run.stdout) > 0


def test_processes_planning_at_once_share_one_measurement(tmp_path):
    """Four processes plan the same transforms at the same time on an empty cache (a run's Dask workers): they
    take turns through the wisdom file's lock, the first to hold it measures, the others import its plans, and
    all compute the same bits (as does a later process planning from the kept wisdom alone)."""
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path))
    first = subprocess.Popen([sys.executable, "-c", _PLAN_AND_PRINT, "measure"], env=env, stdout=subprocess.PIPE,
                             text=True)
    others = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.3)\n" + _PLAN_AND_PRINT,
                                "measure"], env=env, stdout=subprocess.PIPE, text=True) for _ in range(3)]
    outputs = [p.communicate()[0] for p in [first] + others]
    assert all(p.returncode == 0 for p in [first] + others)
    assert len(set(outputs)) == 1 and outputs[0]
    again = _plan_in_new_process(tmp_path, "wisdom_only")
    assert again.returncode == 0 and again.stdout == outputs[0]


def test_importing_pyfftw_does_not_change_the_plans(tmp_path):
    """pyfftw's import calls fftwf_init_threads, which changes the plans FFTW measures; relion_py makes the same
    call, so a process that imported pyfftw (the CCP-EM pipeliner does) computes the bits of one that did not."""
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path))
    runs = [subprocess.run([sys.executable, "-c", prefix + _PLAN_AND_PRINT, "measure"], env=env,
                           capture_output=True, text=True) for prefix in ("import pyfftw\n", "", "import pyfftw\n")]
    assert all(r.returncode == 0 for r in runs), [r.stderr for r in runs]
    assert runs[0].stdout == runs[1].stdout == runs[2].stdout
