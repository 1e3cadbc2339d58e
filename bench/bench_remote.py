"""Remote tilt series over a far-away link: throughput against the link's bandwidth, and relion_py's own zarr
reader against zarr-python 3 (the choice argued in relion_py/io/zarr_images.py; figures in bench/remote.md).

    pytest bench/bench_remote.py --benchmark-enable -s

Self-contained: one simulated tilt series (1024² px, 41 tilts, 40 particles of 160 Å) as a portal mirror in
zarr format 2 with the portal's chunks (1, 1024, 1024), format 2 with (1, 256, 256) chunks, and format 3
sharded (shards (1, 1024, 1024) of (1, 256, 256) inner chunks, written by zarr-python 3), served by
tests/portal_server.py in a child process with ``LATENCY_MS`` before every answer and ``BANDWIDTH_MB``
shared by all connections. The windows an extraction (--b 128) reads are recorded once on a local
extraction, then replayed. Reported per case: wall time, bytes fetched (server side), requests, and the
throughput as a fraction of the bandwidth.
"""
import asyncio
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
from relion_py.portal.download import download_stack  # noqa: E402
from relion_py.portal import PortalOptions, make_portal_project  # noqa: E402
from relion_py.tools.simulate import (OBJECT_NAME, SimulationParams, simulate, write_portal,  # noqa: E402
                                      write_relion_project)

PARAMS = SimulationParams(seed=11, n_particles=40, image_size="1024,1024", tomo_size="1024,1024,200",
                          tilt_range="-60,60,3", particle_diameter=160.0)
EXTRACT = ["--b", "128", "--crop", "96", "--stack2d", "--j", "2"]
LATENCY_MS, BANDWIDTH_MB = 50.0, 40.0
TS = "cryoet-data-portal-public/10000/TS_01/TiltSeries/TS_01.zarr"


@pytest.fixture(scope="module")
def mirror():
    """(work folder, {layout: server-relative path of the OME-Zarr image}, recorded windows, port of the
    server that work/project/ names)."""
    import zarr
    work = Path(tempfile.mkdtemp(prefix="bench_remote_"))
    sim = simulate(PARAMS)
    write_relion_project(sim, str(work / "local"))
    layouts = {}
    for chunk in (1024, 256):
        write_portal(sim, str(work / f"c{chunk}"), "http://unused", chunks=(1, chunk, chunk))
        layouts[f"v2 chunks 1x{chunk}x{chunk}"] = f"c{chunk}/{TS}"
    sharded = work / "sharded.zarr"
    zarr.open_group(str(sharded), mode="w", zarr_format=3).attrs["ome"] = {
        "version": "0.5", "multiscales": [{"axes": [{"name": a, "type": "space"} for a in "zyx"],
                                           "datasets": [{"path": "0", "coordinateTransformations": [
                                               {"type": "scale", "scale": [1.0, 4.0, 4.0]}]}]}]}
    zarr.create_array(str(sharded / "0"), shape=sim.tilt_series[0].stack.shape, dtype="float32",
                      shards=(1, 1024, 1024), chunks=(1, 256, 256), fill_value=0.0)[...] = sim.tilt_series[0].stack
    layouts["v3 sharded 1x1024x1024 / 1x256x256"] = "sharded.zarr"

    windows = []
    original = zarr_images.ZarrTiltImages.read_windows
    with portal_server(work / "c256") as url, contextlib.chdir(work), \
            contextlib.redirect_stderr(io.StringIO()), pytest.MonkeyPatch.context() as patch:
        write_portal(sim, str(work / "c256"), url, chunks=(1, 256, 256))   # the portal.json URLs of this server

        def logged(images, frames, origins, out):
            windows.append((images._slice_of_frame[frames], np.array(origins), out.shape[1]))
            return original(images, frames, origins, out)
        patch.setattr(zarr_images.ZarrTiltImages, "read_windows", logged)
        make_portal_project(PortalOptions(run_ids="100", object=OBJECT_NAME, ground_truth=True, o="project/",
                                          url=url + "/graphql"))
        assert extract_main(["--i", "project/optimisation_set.star", "--o", "Warmup/"] + EXTRACT) == 0
    yield work, layouts, windows, int(url.rsplit(":", 1)[1])
    shutil.rmtree(work, ignore_errors=True)


def _link_figures(url, before, seconds):
    gets = [r for r in server_requests(url)[before:] if r[0] == "GET"]
    fetched = sum(r[3] for r in gets)
    rate = fetched / seconds / 1e6
    return dict(wall_s=seconds, requests=len(gets), fetched_mb=fetched / 1e6, mb_per_s=rate,
                fraction_of_bandwidth=rate / BANDWIDTH_MB)


@pytest.mark.parametrize("layout", ["v2 chunks 1x1024x1024", "v2 chunks 1x256x256",
                                    "v3 sharded 1x1024x1024 / 1x256x256"])
def test_download_throughput(benchmark, mirror, layout):
    """relion-py-portal --download of the whole tilt series (41 × 4 MB)."""
    work, layouts, _, _ = mirror
    with portal_server(work, LATENCY_MS, BANDWIDTH_MB) as url:
        before = len(server_requests(url))
        target = work / "download.mrcs"

        def run():
            target.unlink(missing_ok=True)
            t0 = time.perf_counter()
            download_stack(f"{url}/{layouts[layout]}", str(target), 4.0, "bench")
            return time.perf_counter() - t0
        seconds = benchmark.pedantic(run, rounds=1, iterations=1)
        report(benchmark, layout=layout, latency_ms=LATENCY_MS, bandwidth_mb=BANDWIDTH_MB,
               **_link_figures(url, before, seconds))


def _clamped_boxes(windows):
    """(z, y0, y1, x0, x1) of the in-image part of every recorded window (what a zarr-python user reads)."""
    for slices, origins, size in windows:
        for z, (x0, y0) in zip(slices, origins):
            yield (int(z), max(y0, 0), min(max(y0 + size, 1), 1024), max(x0, 0), min(max(x0 + size, 1), 1024))


def _read_own(url, windows):
    """As the programs read: every window announced first (prefetch), then read particle by particle."""
    with zarr_images.ZarrTiltImages([(url, z) for z in range(41)]) as images:
        images.prefetch(np.concatenate([w[0] for w in windows]), np.concatenate([w[1] for w in windows]),
                        windows[0][2])
        for slices, origins, size in windows:
            out = np.empty((len(slices), size, size), np.float32)
            images.read_windows(slices, origins, out)


def _read_zarr_python(url, windows):
    """zarr-python 3 on obstore's HTTP store, the windows of one particle requested at once (asyncio.gather),
    within zarr's own concurrency limit. (All 1527 windows in one gather was slower, 66 s, and failed on the
    sharded copy with obstore body errors.)"""
    import zarr
    HTTPStore = pytest.importorskip("obstore.store", reason="pip install obstore for the zarr-python rows").HTTPStore
    from zarr.storage import ObjectStore
    store = HTTPStore.from_url(url, client_options={"allow_http": True})
    array = zarr.open_array(ObjectStore(store, read_only=True), path="0", mode="r")

    async def batch(boxes):
        return await asyncio.gather(*[array._async_array.getitem((z, slice(y0, y1), slice(x0, x1)))
                                      for z, y0, y1, x0, x1 in boxes])
    for window in windows:
        asyncio.run(batch(list(_clamped_boxes([window]))))


@pytest.mark.parametrize("reader", ["relion_py", "zarr-python 3 + obstore"])
@pytest.mark.parametrize("layout", ["v2 chunks 1x256x256", "v3 sharded 1x1024x1024 / 1x256x256"])
def test_extraction_windows(benchmark, mirror, layout, reader):
    """The windows of one extraction (40 particles × 41 tilts, 128 px), as the extraction asks for them."""
    work, layouts, windows, _ = mirror
    read = _read_own if reader == "relion_py" else _read_zarr_python
    with portal_server(work, LATENCY_MS, BANDWIDTH_MB) as url:
        before = len(server_requests(url))

        def run():
            t0 = time.perf_counter()
            read(f"{url}/{layouts[layout]}", windows)
            return time.perf_counter() - t0
        seconds = benchmark.pedantic(run, rounds=1, iterations=1)
        report(benchmark, layout=layout, reader=reader, windows=sum(len(w[0]) for w in windows),
               **_link_figures(url, before, seconds))


def test_extraction_over_the_link(benchmark, mirror):
    """relion-py-extract from the portal project (chunks 1x256x256) over the slow link, vs the link's floor
    (bytes / bandwidth + one latency per round of requests in flight)."""
    work, _, _, port = mirror
    with portal_server(work / "c256", LATENCY_MS, BANDWIDTH_MB, port) as url, contextlib.chdir(work), \
            contextlib.redirect_stderr(io.StringIO()) as err:
        before = len(server_requests(url))

        def run():
            shutil.rmtree("Remote", ignore_errors=True)
            t0 = time.perf_counter()
            assert extract_main(["--i", "project/optimisation_set.star", "--o", "Remote/"] + EXTRACT) == 0, \
                err.getvalue()
            return time.perf_counter() - t0
        seconds = benchmark.pedantic(run, rounds=1, iterations=1)
        figures = _link_figures(url, before, seconds)
    with contextlib.chdir(work / "local"), contextlib.redirect_stderr(io.StringIO()):
        t0 = time.perf_counter()
        assert extract_main(["--i", "project/optimisation_set.star", "--o", "Local/"] + EXTRACT) == 0
        local_s = time.perf_counter() - t0
    report(benchmark, local_disk_s=local_s, **figures)
    assert os.path.getsize(work / "Remote" / "particles.star") > 0
