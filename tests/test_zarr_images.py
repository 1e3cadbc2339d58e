"""OME-Zarr tilt series (local, http, anonymous s3) read through the TiltImages interface."""
import json
import os
import shutil
import threading
import time

import numcodecs
import numpy as np
import pytest
import zarr
from conftest_portal import CHUNKS
from zarr_copies import LAYOUTS, stored_bytes, write_copies

from relion_py.runtime.errors import RelionPyError
from relion_py.io import remote
from relion_py.io.open_tilt_images import open_tilt_images
from relion_py.io.zarr_images import ZarrArray, ZarrTiltImages
from relion_py.kernels.tomography.windows import gather_clamped_windows
from relion_py.tools.simulate import write_zarr

SIZE = 48


def _windows(fc, n=60, seed=0, width=384, height=352):
    """Random windows, many hanging over an edge or entirely outside (clamped to the edge pixels)."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, fc, n)
    origins = np.stack([rng.integers(-SIZE - 20, width + 20, n), rng.integers(-SIZE - 20, height + 20, n)],
                       axis=1)
    return frames, origins


def _read(images, frames, origins):
    out = np.full((len(frames), SIZE, SIZE), np.nan, np.float32)
    images.read_windows(frames, origins, out)
    return out


def _reference(stack, frames, origins):
    out = np.empty((len(frames), SIZE, SIZE), np.float32)
    gather_clamped_windows(np.ascontiguousarray(stack), frames, origins, out)
    return out


def _expected_chunks(frames, origins, shape, chunks):
    """Chunks that the clamped windows overlap, worked out pixel by pixel."""
    depth, height, width = shape
    touched = set()
    for f, (x0, y0) in zip(frames, origins):
        ys = np.clip(np.arange(y0, y0 + SIZE), 0, height - 1) // chunks[1]
        xs = np.clip(np.arange(x0, x0 + SIZE), 0, width - 1) // chunks[2]
        touched.update((int(f) // chunks[0], int(cy), int(cx)) for cy in set(ys) for cx in set(xs))
    return touched


def _names(location, fc):
    return [f"{z + 1}@{location}" for z in range(fc)]


def test_local_zarr_equals_stack(portal):
    stack = portal.sim.tilt_series[0].stack
    frames, origins = _windows(len(stack))
    with open_tilt_images(_names(portal.zarr_path(), len(stack))) as images:
        assert isinstance(images, ZarrTiltImages)
        assert images.n_frames == len(stack) and images.image_size == (384, 352)
        np.testing.assert_array_equal(_read(images, frames, origins), _reference(stack, frames, origins))


def test_remote_reads_only_overlapping_chunks_once(portal):
    stack = portal.sim.tilt_series[0].stack
    frames, origins = _windows(len(stack), n=25, seed=1)
    expected = _expected_chunks(frames, origins, stack.shape, CHUNKS)
    with open_tilt_images(_names(portal.zarr_url(), len(stack))) as images:
        np.testing.assert_array_equal(_read(images, frames, origins), _reference(stack, frames, origins))
        more_frames, more_origins = _windows(len(stack), n=25, seed=2)
        np.testing.assert_array_equal(_read(images, more_frames, more_origins),
                                      _reference(stack, more_frames, more_origins))
        expected |= _expected_chunks(more_frames, more_origins, stack.shape, CHUNKS)
        _read(images, frames, origins)          # everything cached: no request
        stats = images.stats
    chunk_requests = [r.path for r in portal.server.requests("/0/") if not r.path.endswith(".zarray")]
    assert len(chunk_requests) == len(set(chunk_requests)) == len(expected) == stats["chunks"]
    fetched = {tuple(int(v) for v in path.split("/0/", 1)[1].split("/")) for path in chunk_requests}
    assert fetched == expected
    level0 = os.path.join(portal.zarr_path(), "0")
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(level0) for f in fs
                if f != ".zarray")
    assert stats["bytes"] < 0.8 * total


def test_zarr_written_by_zarr_python(tmp_path):
    """A user's own stack written by zarr-python (v2): zstd, '.' keys, F order, chunks spanning z,
    partial edge chunks, float64 → read as float32 like an MRC of that data."""
    rng = np.random.default_rng(3)
    data = rng.normal(size=(7, 90, 110))
    path = str(tmp_path / "own.zarr")
    array = zarr.create_array(path, shape=data.shape, chunks=(3, 40, 50), dtype="float64", zarr_format=2,
                              compressors=numcodecs.Zstd(level=3), order="F", fill_value=0.0)
    array[...] = data
    frames, origins = _windows(7, n=30, seed=4, width=110, height=90)
    with ZarrTiltImages([(path, z) for z in range(7)]) as images:
        np.testing.assert_array_equal(_read(images, frames, origins),
                                      _reference(data.astype(np.float32), frames, origins))


def test_portal_shaped_zarr_is_standard(tmp_path):
    """The simulator's portal-shaped OME-Zarr reads back with zarr-python, level 0 being the stack."""
    stack = np.random.default_rng(5).normal(size=(3, 70, 90)).astype(np.float32)
    write_zarr(str(tmp_path / "ts.zarr"), stack, 2.5, chunks=(1, 32, 32))
    group = zarr.open_group(str(tmp_path / "ts.zarr"), mode="r", zarr_format=2)
    assert [d["path"] for d in group.attrs["multiscales"][0]["datasets"]] == ["0", "1", "2"]
    np.testing.assert_array_equal(group["0"][...], stack)
    assert group["1"].shape == (3, 35, 45)


def test_missing_chunk_is_fill_value(portal, tmp_path):
    path = str(tmp_path / "copy.zarr")
    shutil.copytree(portal.zarr_path(), path)
    os.remove(os.path.join(path, "0", "2", "0", "0"))
    stack = portal.sim.tilt_series[0].stack.copy()
    stack[2, :32, :32] = 0.0                     # fill_value
    frames, origins = np.array([2, 2, 3]), np.array([[-5, -7], [30, 40], [0, 0]])
    with ZarrTiltImages([(path, z) for z in range(len(stack))]) as images:
        np.testing.assert_array_equal(_read(images, frames, origins), _reference(stack, frames, origins))


@pytest.fixture(scope="module")
def copies(portal_session):
    """TS_01 in every layout of tests/zarr_copies.py, served by the loopback portal: {name: (path, url)}."""
    root = os.path.join(portal_session.root, "formats")
    paths = write_copies(portal_session.sim.tilt_series[0].stack, root)
    return {name: (path, f"{portal_session.server.url}/formats/{name}.zarr") for name, path in paths.items()}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_zarr_formats_give_identical_windows_and_fetch_only_their_chunks(portal, copies, layout):
    """zarr format 2 / OME-Zarr 0.4 (the portal's today), format 3 / OME-Zarr 0.5, with every codec, and
    sharded (inner chunks by range requests): the same windows, pixel for pixel, and no more bytes than
    the chunks (inner chunks plus shard indexes) under them, each fetched once."""
    stack = portal.sim.tilt_series[0].stack
    path, url = copies[layout]
    frames, origins = _windows(len(stack), n=25, seed=1)
    more_frames, more_origins = _windows(len(stack), n=25, seed=2)
    with open_tilt_images(_names(url, len(stack))) as images:
        np.testing.assert_array_equal(_read(images, frames, origins), _reference(stack, frames, origins))
        np.testing.assert_array_equal(_read(images, more_frames, more_origins),
                                      _reference(stack, more_frames, more_origins))
        stats = images.stats
    touched = _expected_chunks(frames, origins, stack.shape, CHUNKS) | \
        _expected_chunks(more_frames, more_origins, stack.shape, CHUNKS)
    assert stats["chunks"] == len(touched)
    data = [r for r in portal.server.requests(f"{layout}.zarr/0/") if not r.path.endswith(("json", "array"))]
    chunk_bytes = sum(r.nbytes for r in data)
    assert chunk_bytes == stored_bytes(path, layout, touched)
    assert stats["bytes"] <= 1.05 * chunk_bytes            # metadata included
    if layout == "v3-sharded":                             # one index request per shard, one per chunk
        assert len(data) == len(touched) + len({(z, y // 4, x // 4) for z, y, x in touched})
        assert all(r.status == 206 for r in data)
    else:
        assert len(data) == len({r.path for r in data}) == len(touched)


def test_zarr_v3_local_and_s3(portal, copies, monkeypatch):
    """Sharded format 3 from a local folder (seek + read) and from anonymous S3 (Range GetObject)."""
    monkeypatch.setenv("BOTO_ENDPOINT_URL", portal.server.url)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    stack = portal.sim.tilt_series[0].stack
    frames, origins = _windows(len(stack), n=10, seed=9)
    for location in (copies["v3-sharded"][0], "s3://formats/v3-sharded.zarr"):
        with open_tilt_images(_names(location, len(stack))) as images:
            np.testing.assert_array_equal(_read(images, frames, origins), _reference(stack, frames, origins))
    assert portal.server.requests("/formats/v3-sharded.zarr/0/c/")


def test_empty_inner_chunks_and_missing_shards_are_fill_value(tmp_path):
    data = np.zeros((4, 64, 64), np.float32)
    data[1, 10:20, 40:50] = 3.0                       # one non-empty inner chunk; other shards never written
    path = str(tmp_path / "sparse.zarr")
    array = zarr.create_array(path, shape=data.shape, shards=(2, 64, 64), chunks=(1, 32, 32), dtype="float32",
                              fill_value=0.0)
    array[...] = data
    assert sorted(os.listdir(os.path.join(path, "c"))) == ["0"]
    frames, origins = np.array([0, 1, 1, 2, 3]), np.array([[0, 0], [30, 0], [10, 20], [5, 5], [16, 16]])
    with ZarrTiltImages([(path, z) for z in range(4)]) as images:
        np.testing.assert_array_equal(_read(images, frames, origins), _reference(data, frames, origins))


def test_damaged_shard_index_is_retried(portal, copies):
    stack = portal.sim.tilt_series[0].stack
    with open_tilt_images(_names(copies["v3-sharded"][1], len(stack))) as images:
        portal.server.add_fault("v3-sharded.zarr/0/c/3/0/0", "corrupt")      # the index (then the chunk)
        np.testing.assert_array_equal(_read(images, np.array([3]), np.array([[20, 20]])),
                                      _reference(stack, np.array([3]), np.array([[20, 20]])))
    assert not portal.server.faults[0][2]


@pytest.mark.parametrize("mode", ["500", "503", "truncate", "corrupt", "drop", "reset", "timeout", "trickle"])
def test_transient_faults_are_retried(portal, mode, monkeypatch):
    """Every fault is retried; a stalled answer or a trickling body is given up on after
    RELION_PY_REMOTE_TIMEOUT seconds."""
    monkeypatch.setenv("RELION_PY_REMOTE_TIMEOUT", "0.5")
    portal.server.stall_s = 2.0
    stack = portal.sim.tilt_series[0].stack
    frames, origins = np.array([4, 5]), np.array([[40, 40], [10, 100]])
    with open_tilt_images(_names(portal.zarr_url(), len(stack))) as images:
        portal.server.add_fault("/0/4/1/1", mode)
        np.testing.assert_array_equal(_read(images, frames, origins), _reference(stack, frames, origins))
    for _ in range(100):           # the server logs a trickle once it notices that the client has gone
        if len(portal.server.requests("/0/4/1/1")) == 2:
            break
        time.sleep(0.1)
    assert len(portal.server.requests("/0/4/1/1")) == 2


def test_persistent_fault_is_a_clear_error(portal):
    stack = portal.sim.tilt_series[0].stack
    with open_tilt_images(_names(portal.zarr_url(), len(stack))) as images:
        portal.server.add_fault("/0/6/", "truncate", times=100)
        with pytest.raises(RelionPyError, match=r"cannot read http://127.0.0.1:\d+/.*/0/6/1/1: .*4 attempts"):
            _read(images, np.array([6]), np.array([[40, 40]]))
        portal.server.reset()
        # nothing of the failed chunk was used: it is read again, correctly, once the server recovers
        np.testing.assert_array_equal(_read(images, np.array([6]), np.array([[40, 40]])),
                                      _reference(stack, np.array([6]), np.array([[40, 40]])))


def test_server_down(portal):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]       # nothing listens on it
    with pytest.raises(RelionPyError, match="cannot read http://127.0.0.1:.*connection refused"):
        ZarrTiltImages([(f"http://127.0.0.1:{port}/ts.zarr", 0)])


def test_slice_beyond_stack(portal):
    stack = portal.sim.tilt_series[0].stack
    with open_tilt_images(_names(portal.zarr_url(), len(stack))) as images:
        with pytest.raises(RelionPyError, match="does not exist: the stack holds 13 images"):
            ZarrTiltImages([(portal.zarr_url(), 13)])
        portal.server.reset()
        _read(images, np.array([0]), np.array([[0, 0]]))
    assert len(portal.server.requests()) == 4       # the 2 x 2 chunks under one 48-px window at (0, 0)


def test_anonymous_s3(portal, monkeypatch):
    """s3:// URLs through boto3 (unsigned), pointed at the loopback server by BOTO_ENDPOINT_URL."""
    monkeypatch.setenv("BOTO_ENDPOINT_URL", portal.server.url)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    stack = portal.sim.tilt_series[1].stack
    location = "s3://" + portal.zarr_url("TS_02").split("/", 3)[3]
    frames, origins = _windows(len(stack), n=10, seed=6)
    with open_tilt_images(_names(location, len(stack))) as images:
        np.testing.assert_array_equal(_read(images, frames, origins), _reference(stack, frames, origins))
    assert portal.server.requests("/cryoet-data-portal-public/10000/TS_02/TiltSeries/TS_02.zarr/0/")


def test_concurrent_readers_share_one_fetch(portal):
    stack = portal.sim.tilt_series[0].stack
    frames, origins = _windows(len(stack), n=20, seed=8)
    results = [None] * 4
    with open_tilt_images(_names(portal.zarr_url(), len(stack))) as images:
        def work(k):
            results[k] = _read(images, frames, origins)
        threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for r in results:
        np.testing.assert_array_equal(r, _reference(stack, frames, origins))
    paths = [r.path for r in portal.server.requests("/0/")]
    assert len(paths) == len(set(paths))


def test_bad_locations(tmp_path, portal):
    with pytest.raises(RelionPyError, match="is not a zarr array or OME-Zarr image"):
        ZarrArray(str(tmp_path))
    zarr.open_group(str(tmp_path / "group.zarr"), mode="w")
    with pytest.raises(RelionPyError, match="group.zarr is a zarr group but not an OME-Zarr image"):
        ZarrArray(str(tmp_path / "group.zarr"))
    array = zarr.create_array(str(tmp_path / "v3.zarr"), shape=(2, 8, 8), chunks=(1, 8, 8), dtype="float32")
    meta_path = tmp_path / "v3.zarr" / "zarr.json"
    meta = json.loads(meta_path.read_text())
    for codecs, message in [([{"name": "bytes"}, {"name": "lzma"}], "unsupported codec 'lzma'"),
                            ([{"name": "zstd"}, {"name": "bytes"}], "unsupported codec 'zstd'"),
                            ([{"name": "sharding_indexed", "configuration": {
                                "chunk_shape": [1, 4, 4], "codecs": [{"name": "sharding_indexed",
                                                                      "configuration": {}}]}}],
                             "unsupported codec 'sharding_indexed' .* shard codecs"),
                            ([{"name": "sharding_indexed", "configuration": {
                                "chunk_shape": [1, 3, 4], "codecs": [{"name": "bytes"}]}}],
                             r"inner chunks \[1, 3, 4\] do not tile the shards")]:
        meta_path.write_text(json.dumps({**meta, "codecs": codecs}))
        with pytest.raises(RelionPyError, match=f"v3.zarr/zarr.json: {message}"):
            ZarrArray(str(tmp_path / "v3.zarr"))
    assert array.shape == (2, 8, 8)
    zarr.create_array(str(tmp_path / "2d.zarr"), shape=(8, 8), chunks=(8, 8), dtype="float32", zarr_format=2)
    with pytest.raises(RelionPyError, match="must be a 3-D"):
        ZarrArray(str(tmp_path / "2d.zarr"))
    with pytest.raises(RelionPyError, match="unsupported URL scheme 'ftp'"):
        ZarrArray("ftp://example.org/ts.zarr")


def test_persistent_server_error_on_metadata(portal):
    portal.server.add_fault(".zattrs", "500", times=10)
    with pytest.raises(RelionPyError, match=r"TS_01.zarr/.zattrs: HTTP 500 \(4 attempts\)"):
        ZarrTiltImages([(portal.zarr_url(), 0)])
    assert len(portal.server.requests(".zattrs")) == remote.ATTEMPTS
