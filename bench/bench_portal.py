"""Extraction from the (loopback) CryoET Data Portal vs from local disk: wall time and bytes fetched.

    pytest bench/bench_portal.py --benchmark-enable -s

Self-contained: relion_py.tools.simulate makes one tilt series (1024² px, 41 tilts, 4 Å/px, 12 particles of
160 Å), written as a RELION project with an MRC stack and as a portal mirror served by
tests/portal_server.py on 127.0.0.1 (in its own process, so that it does not compete with the extraction
for the GIL). For the portal's chunking (1, 1024, 1024) and a finer one
(1, 256, 256), ``relion-py-portal`` builds the project and relion-py-extract (--stack2d, --b 128 --crop 96)
runs once from local disk and once through the portal path, in this process (JIT warm), with identical
output. Reported: both wall times, the bytes fetched (server side), the bytes of the chunks under the
particle windows of the visible frames, and the tilt series' level-0 size.
"""
import contextlib
import io
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import portal_server, report, server_requests  # noqa: E402

from relion_py.cli.extract import main as extract_main  # noqa: E402
from relion_py.io import zarr_images  # noqa: E402
from relion_py.portal import PortalOptions, make_portal_project  # noqa: E402
from relion_py.tools.simulate import (OBJECT_NAME, SimulationParams, simulate, write_portal,  # noqa: E402
                                write_relion_project)

PARAMS = SimulationParams(seed=11, n_particles=12, image_size="1024,1024", tomo_size="1024,1024,200",
                          tilt_range="-60,60,3", particle_diameter=160.0)
EXTRACT = ["--b", "128", "--crop", "96", "--stack2d", "--j", "2"]




@pytest.fixture(scope="module")
def simulation():
    work = Path(tempfile.mkdtemp(prefix="bench_portal_"))
    sim = simulate(PARAMS)
    write_relion_project(sim, str(work / "local"))
    with contextlib.chdir(work / "local"), contextlib.redirect_stderr(io.StringIO()):   # JIT warm-up, untimed
        assert extract_main(["--i", "project/optimisation_set.star", "--o", "Warmup/"] + EXTRACT) == 0
    yield sim, work
    shutil.rmtree(work, ignore_errors=True)


def _extract(cwd, out):
    with contextlib.chdir(cwd), contextlib.redirect_stderr(io.StringIO()):
        t0 = time.perf_counter()
        assert extract_main(["--i", "project/optimisation_set.star", "--o", f"{out}/"] + EXTRACT) == 0
        return time.perf_counter() - t0


@pytest.mark.parametrize("chunk", [1024, 256])
def test_remote_vs_local_extraction(benchmark, simulation, monkeypatch, chunk):
    sim, work = simulation
    root, remote = work / f"portal_{chunk}", work / f"remote_{chunk}"
    remote.mkdir()
    windows = []
    original = zarr_images.ZarrTiltImages.read_windows

    def logged(images, frames, origins, out):
        windows.append((images._slice_of_frame[frames], np.array(origins), out.shape[1]))
        return original(images, frames, origins, out)
    monkeypatch.setattr(zarr_images.ZarrTiltImages, "read_windows", logged)

    root.mkdir()
    with portal_server(root) as url:
        write_portal(sim, str(root), url, chunks=(1, chunk, chunk))
        with contextlib.chdir(remote):
            make_portal_project(PortalOptions(run_ids="100", object=OBJECT_NAME, ground_truth=True,
                                              o="project/", url=url + "/graphql"))
        before = len(server_requests(url))

        def run():
            shutil.rmtree(work / "local" / f"Extract_{chunk}", ignore_errors=True)
            local_s = _extract(work / "local", f"Extract_{chunk}")
            return local_s, _extract(remote, f"Extract_{chunk}")
        local_s, remote_s = benchmark.pedantic(run, rounds=1, iterations=1)
        gets = [r for r in server_requests(url)[before:] if "/TiltSeries/" in r[1]]

    zarr = root / "cryoet-data-portal-public/10000/TS_01/TiltSeries/TS_01.zarr/0"
    under = set()
    for slices, origins, size in windows:
        for z, (x0, y0) in zip(slices, origins):
            ys = set(np.clip(np.arange(y0, y0 + size), 0, 1023) // chunk)
            xs = set(np.clip(np.arange(x0, x0 + size), 0, 1023) // chunk)
            under.update((int(z), int(y), int(x)) for y in ys for x in xs)
    under_bytes = sum(os.path.getsize(zarr / str(z) / str(y) / str(x)) for z, y, x in under)
    whole = sum(os.path.getsize(Path(d) / f) for d, _, fs in os.walk(zarr) for f in fs)
    fetched = sum(r[3] for r in gets)
    assert fetched <= 2 * under_bytes
    report(benchmark, chunk=f"1x{chunk}x{chunk}", local_wall_s=local_s, remote_wall_s=remote_s,
           remote_over_local=remote_s / local_s, particle_tilt_windows=sum(len(w[0]) for w in windows),
           requests=len(gets), fetched_mb=fetched / 1e6, chunks_under_windows_mb=under_bytes / 1e6,
           fetched_over_under_windows=fetched / under_bytes, level0_mb=whole / 1e6,
           fetched_fraction=fetched / whole)
