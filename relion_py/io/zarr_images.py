"""OME-Zarr tilt series — a local folder, an http(s) URL or an anonymous s3 URL — behind the
:class:`~relion_py.io.tilt_images.TiltImages` interface.

The layout read is the one the CryoET Data Portal publishes for tilt series (``TiltSeries.s3_omezarr_dir``
/ ``https_omezarr_dir``), written by the portal's ingestion (cryoet-data-portal-backend,
``ingestion_tools/scripts/common/image.py``: ``ZarrWriter.write_data``, and
``ingestion_tools/scripts/importers/tiltseries.py``): a zarr **v2** group whose ``.zattrs`` holds OME-NGFF
``multiscales`` (axes z, y, x); level 0 (``datasets[0].path``, ``"0"``) is the unbinned stack, one tilt
image per z (z = stack index = ``PerSectionParameters.z_index``), float32, chunks ``(1, 1024, 1024)``,
compressed with zarr 2's default ``Blosc(lz4, clevel 5, shuffle)``, chunk keys ``z/y/x``
(``dimension_separator "/"``). Nothing of this is assumed: the metadata is read — zarr format 2
(``.zarray``) or format 3 (``zarr.json``, OME-Zarr 0.5, the portal's announced next format), sharded or
not (:mod:`relion_py.io.zarr_format`) — so a user's own stack, a portal download on local disk or the
portal's next layout are read the same way. A folder that is itself a zarr array (no ``multiscales``) is
accepted too.

Why an own reader rather than zarr-python (measured in bench/remote.md): relion_py must work next to
copick 1.x, which pins zarr-python 2.18 (no format 3 at all), as well as with zarr-python 3; it must fetch
each chunk under many overlapping windows once (zarr-python fetches per slice request) and count bytes.
The reader needs only numcodecs (and google-crc32c for checksummed shard indexes), whose decoders both
zarr-python versions use too.

Reading is lazy and counted: a window request first works out which read chunks (chunks, or the inner
chunks of shards) the requested windows touch
(after RELION's edge clamping, so a window hanging over the image edge touches only the edge chunks),
fetches the chunks not fetched before — in parallel, each at most once per reader — and decodes them
into a per-frame buffer, from which the windows are cut by the same kernel as for MRC stacks
(``gather_clamped_windows``), so both sources give bit-identical windows. The buffer holds at most the
whole tilt series, as RELION does (it loads every tilt image, ``TomogramSet::loadTomogram``); its pages
are only committed where chunks were written.

Chunks come through :mod:`relion_py.io.remote` (retried with back-off; a chunk that still cannot be read
raises a one-line :class:`RelionPyError` naming the URL), and no window is ever cut from a chunk that was
not read completely. A chunk that does not exist (HTTP 404, no such key, no such file; an empty entry of a
shard index; a missing shard) is the array's ``fill_value``, as the zarr specs define.
"""
import json
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor, wait

import numpy as np

from ..runtime.errors import RelionPyError
from ..kernels.tomography.windows import gather_clamped_windows
from .remote import MAX_IN_FLIGHT, TransientFault, fetch, open_store
from .tilt_images import TiltImages
from .zarr_format import ArrayFormat, CorruptChunk, ZarrFormatError, level0_path


# Requests kept in flight: enough for IN_FLIGHT_BYTES of chunks, so that a link's bandwidth-delay product
# (e.g. 100 MB/s x 50 ms = 5 MB) is covered whatever the chunk size (bench/remote.md), between 8 and MAX_IN_FLIGHT.
IN_FLIGHT_BYTES = 8 << 20


def _json(store, key, missing_ok=False):
    def decode(data):
        try:
            return json.loads(data)
        except ValueError:
            raise TransientFault("not valid JSON (truncated?)") from None
    return fetch(store, key, decode, missing_ok)


class ZarrArray:
    """Level 0 of one OME-Zarr tilt series (or one zarr array): shape (z, y, x), lazily read.

    Format 2 (OME-Zarr 0.4, the portal's today) and format 3 (OME-Zarr 0.5), sharded or not
    (:mod:`relion_py.io.zarr_format`). Read chunks (chunks, or the inner chunks of shards) are fetched
    each at most once; a shard's index is fetched once, the first time one of its inner chunks is needed.
    """

    def __init__(self, location):
        self.location = str(location).rstrip("/")
        self.store = open_store(self.location)
        self.path, meta = self._find_array()
        try:
            self.format = ArrayFormat(meta)
        except ZarrFormatError as exc:
            raise RelionPyError(f"{self.location}/{self._key(self._meta_name)}: {exc}") from None
        self.shape, self.chunks = self.format.shape, self.format.chunks
        self.filled = set()        # read-chunk indices (cz, cy, cx) already in the buffer
        self._pending = {}         # read-chunk index -> Future of its load into the buffer
        self._index_futures = {}   # shard -> Future of its index ((n0, n1, n2, 2) uint64, None: no shard)
        self._buffer = None
        self._lock = threading.Lock()

    def _find_array(self):
        """(path of level 0 below the location, its array metadata): format 2 first (``.zattrs``, then
        ``.zarray``), then format 3 (``zarr.json`` of the group, then of the array)."""
        try:
            attrs = _json(self.store, ".zattrs", missing_ok=True)
            if attrs is not None:
                path, self._meta_name = level0_path(attrs) or "", ".zarray"
                return path, self._metadata(path, ".zarray", "no .zarray")
            node = _json(self.store, "zarr.json", missing_ok=True)
            if node is None:
                self._meta_name = ".zarray"
                return "", self._metadata("", ".zarray", "no .zarray, .zattrs or zarr.json")
            self._meta_name = "zarr.json"
            if node.get("node_type") == "array":
                return "", node
            path = level0_path(node.get("attributes"))
            if path is None:
                raise RelionPyError(f"{self.location} is a zarr group but not an OME-Zarr image "
                                    "(no multiscales in its attributes)")
            return path, self._metadata(path, "zarr.json", "no zarr.json at level 0")
        except ZarrFormatError as exc:
            raise RelionPyError(f"{self.location}: {exc}") from None

    def _metadata(self, path, name, missing):
        meta = _json(self.store, f"{path}/{name}" if path else name, missing_ok=True)
        if not isinstance(meta, dict):
            raise RelionPyError(f"{self.location} is not a zarr array or OME-Zarr image ({missing})")
        return meta

    def _key(self, name):
        return f"{self.path}/{name}" if self.path else name

    @property
    def requests_in_flight(self):
        """How many read-chunk requests to keep in flight (``IN_FLIGHT_BYTES`` of decoded chunks)."""
        nbytes = int(np.prod(self.chunks)) * self.format.dtype.itemsize
        return int(np.clip(-(-IN_FLIGHT_BYTES // nbytes), 8, MAX_IN_FLIGHT))

    def chunk_key(self, index):
        """Storage key of the chunk (or shard) holding read chunk ``index``."""
        return self._key(self.format.key(index))

    def _decode(self, data):
        try:
            return self.format.decode(data)
        except CorruptChunk as exc:
            raise TransientFault(f"chunk {exc}") from None

    def _fetch_shard_index(self, shard):
        key = self._key(self.format.key(tuple(s * n for s, n in zip(shard, self.format.per_shard))))

        def decode(data):
            try:
                return self.format.decode_index(data)
            except CorruptChunk as exc:
                raise TransientFault(f"shard index {exc}") from None
        # None: the shard does not exist (all fill value)
        return fetch(self.store, key, decode, missing_ok=True, byte_range=self.format.index_range())

    def _request_shard_indexes(self, indices, pool):
        """Submit the fetch of the indexes of the shards holding read chunks ``indices``, unless under way or
        done (a failed one is tried again) — before the chunks' own loads, which the pool starts later (FIFO)
        and which wait for them, so that the index requests are in flight together instead of one by one."""
        if self.format.shard is None:
            return
        with self._lock:
            for shard in dict.fromkeys(self.format.shard_of(i) for i in indices):
                future = self._index_futures.get(shard)
                if future is None or (future.done() and future.exception() is not None):
                    self._index_futures[shard] = pool.submit(self._fetch_shard_index, shard)

    def _fetch_block(self, index):
        """The decoded read chunk at ``index``, or None if it is not stored (fill value)."""
        if self.format.shard is None:
            return fetch(self.store, self.chunk_key(index), self._decode, missing_ok=True)
        shard_index = self._index_futures[self.format.shard_of(index)].result()
        where = shard_index is not None and self.format.inner_range(shard_index, index)
        if not where:
            return None
        return fetch(self.store, self.chunk_key(index), self._decode, byte_range=where)

    def _load(self, index, target, z0=0):
        """Fetch, decode and copy one read chunk into ``target``, whose slice 0 is array slice ``z0``
        (worker thread; regions are disjoint)."""
        block = self._fetch_block(index)
        lo = [i * c for i, c in zip(index, self.chunks)]
        hi = [min(a + c, n) for a, c, n in zip(lo, self.chunks, self.shape)]
        region = target[lo[0] - z0:hi[0] - z0, lo[1]:hi[1], lo[2]:hi[2]]
        if block is None:
            if self.format.fill_value is None:
                raise RelionPyError(f"chunk {self.store.where(self.chunk_key(index))} is missing and the "
                                    "array has no fill_value")
            region[...] = self.format.fill_value
        else:
            region[...] = block[:hi[0] - lo[0], :hi[1] - lo[1], :hi[2] - lo[2]]

    def _load_into_buffer(self, index):
        loaded = False
        try:
            self._load(index, self._buffer)
            loaded = True
        finally:
            with self._lock:
                self._pending.pop(index, None)       # a failed load is tried again by the next request
                if loaded:
                    self.filled.add(index)

    def _submit(self, indices, pool):
        """Futures of the read chunks ``indices`` (in this order) landing in the window buffer: a load under
        way is shared, a finished one skipped. Caller holds the lock."""
        if self._buffer is None:
            # zero pages are not committed until written: memory grows with the chunks read
            self._buffer = np.zeros(self.shape, np.float32)
        futures = []
        for index in indices:
            if index in self.filled:
                continue
            future = self._pending.get(index)
            if future is None:
                future = self._pending[index] = pool.submit(self._load_into_buffer, index)
            futures.append(future)
        return futures

    def chunks_touched(self, z, origins, size):
        """Read-chunk indices overlapped by the clamped windows, in the order of the windows that first
        touch them: z (n,) slice, origins (n, 2) (x0, y0)."""
        depth, height, width = self.shape
        cz_, cy_, cx_ = self.chunks
        x = np.asarray(origins)[:, 0].astype(np.int64)
        y = np.asarray(origins)[:, 1].astype(np.int64)
        spans = np.stack([np.asarray(z, np.int64) // cz_,
                          np.clip(y, 0, height - 1) // cy_, np.clip(y + size - 1, 0, height - 1) // cy_,
                          np.clip(x, 0, width - 1) // cx_, np.clip(x + size - 1, 0, width - 1) // cx_],
                         axis=1)
        touched = {}
        for cz, y0, y1, x0, x1 in dict.fromkeys(map(tuple, spans.tolist())):
            touched.update(((cz, cy, cx), None) for cy in range(y0, y1 + 1) for cx in range(x0, x1 + 1))
        return list(touched)

    def prefetch(self, z, origins, size, pool):
        """Start fetching the read chunks of windows that will be read, in their order (the pool keeps
        :attr:`requests_in_flight` requests in flight, which hides the latency of each)."""
        touched = self.chunks_touched(z, origins, size)
        self._request_shard_indexes(touched, pool)
        with self._lock:
            self._submit(touched, pool)

    def read_windows(self, z, origins, out, pool):
        """Cut the clamped windows (pixel (0, 0) at ``origins``) of slices ``z`` into ``out``."""
        touched = self.chunks_touched(z, origins, out.shape[1])
        self._request_shard_indexes(touched, pool)
        with self._lock:
            futures = self._submit(touched, pool)
        wait(futures)                # all of them, so that none of this request is still under way after an error
        for future in futures:
            future.result()          # a chunk that could not be read raises its one-line error here
        gather_clamped_windows(self._buffer, z, origins, out)

    def iter_slabs(self, pool, first_row=0):
        """The slices of chunk rows ``first_row``, ``first_row + 1``, … (z chunk index) as new float32
        (depth, y, x) arrays, in order, fetched past the window buffer. The chunks of the next rows are
        fetched while a row is handed out (at most 2 × requests_in_flight in flight or waiting), so the
        link stays busy and memory is a few chunk rows whatever the stack size."""
        rows = -(-self.shape[0] // self.chunks[0])
        ny, nx = (-(-n // c) for n, c in zip(self.shape[1:], self.chunks[1:]))
        self._request_shard_indexes([(cz, cy, cx) for cz in range(first_row, rows) for cy in range(ny)
                                     for cx in range(nx)], pool)       # small: 16 bytes per inner chunk
        pending, in_flight = deque(), 0
        try:
            for cz in range(first_row, rows + 1):
                if cz < rows:
                    z0 = cz * self.chunks[0]
                    slab = np.empty((min(z0 + self.chunks[0], self.shape[0]) - z0,) + self.shape[1:], np.float32)
                    futures = [pool.submit(self._load, (cz, cy, cx), slab, z0) for cy in range(ny)
                               for cx in range(nx)]
                    pending.append((slab, futures))
                    in_flight += len(futures)
                while pending and (in_flight >= 2 * self.requests_in_flight or cz == rows):
                    slab, futures = pending.popleft()
                    for future in futures:
                        future.result()
                    in_flight -= len(futures)
                    yield slab
        finally:
            for _, futures in pending:
                for future in futures:
                    future.cancel()

    def close(self):
        self.store.close()
        self._buffer = None


class ZarrTiltImages(TiltImages):
    """Frames of a tilt series stored in one or more OME-Zarr stacks (local, http(s), s3)."""

    def __init__(self, locations):
        """locations: list of (location, 0-based slice index) per frame."""
        self._arrays = {}
        array_of_frame, self._slice_of_frame = [], np.empty(len(locations), np.int64)
        try:
            for f, (location, index) in enumerate(locations):
                if location not in self._arrays:
                    self._arrays[location] = ZarrArray(location)
                depth = self._arrays[location].shape[0]
                if not 0 <= index < depth:
                    raise RelionPyError(f"tilt image {index + 1}@{location} does not exist: the stack holds "
                                        f"{depth} images")
                array_of_frame.append(location)
                self._slice_of_frame[f] = index
        except BaseException:
            self.close()
            raise
        shapes = {loc: a.shape[1:] for loc, a in self._arrays.items()}
        first = locations[0][0]
        for loc, shape in shapes.items():
            if shape != shapes[first]:
                self.close()
                raise RelionPyError(f"tilt images of {loc} are {shape[1]}x{shape[0]} px but those of "
                                    f"{first} are {shapes[first][1]}x{shapes[first][0]} px: all tilt images "
                                    "must have one size")
        self.n_frames = len(locations)
        self.image_size = (int(shapes[first][1]), int(shapes[first][0]))
        self._array_of_frame = np.array(array_of_frame, dtype=object)
        workers = max(a.requests_in_flight for a in self._arrays.values())
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="zarr-fetch")

    @property
    def stats(self):
        """What was read so far: ``{'chunks': n, 'requests': n, 'bytes': n}`` (metadata included in the
        last two; retries count as requests)."""
        arrays = list(self._arrays.values())
        return {"chunks": sum(len(a.filled) for a in arrays),
                "requests": sum(a.store.requests for a in arrays),
                "bytes": sum(a.store.bytes for a in arrays)}

    def _by_array(self, frames):
        """(array, selection of ``frames`` in it) for every stack holding some of ``frames``."""
        for location, array in self._arrays.items():
            sel = np.flatnonzero(self._array_of_frame[frames] == location)
            if len(sel):
                yield array, sel

    def prefetch(self, frames, origins, size):
        frames, origins = np.asarray(frames, np.int64), np.asarray(origins, np.int64)
        for array, sel in self._by_array(frames):
            array.prefetch(self._slice_of_frame[frames[sel]], origins[sel], size, self._pool)

    def read_windows(self, frames, origins, out):
        frames, origins = np.asarray(frames, np.int64), np.asarray(origins, np.int64)
        for array, sel in self._by_array(frames):
            if len(sel) == len(frames):
                array.read_windows(self._slice_of_frame[frames], origins, out, self._pool)
                return
            part = np.empty((len(sel),) + out.shape[1:], np.float32)
            array.read_windows(self._slice_of_frame[frames[sel]], origins[sel], part, self._pool)
            out[sel] = part

    def close(self):
        if getattr(self, "_pool", None) is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        for array in self._arrays.values():
            array.close()
