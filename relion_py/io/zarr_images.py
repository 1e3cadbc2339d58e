"""OME-Zarr tilt series — a local folder, an http(s) URL or an anonymous s3 URL — behind the
:class:`~relion_py.io.tilt_images.TiltImages` interface.

The layout read is the one the CryoET Data Portal publishes for tilt series (``TiltSeries.s3_omezarr_dir``
/ ``https_omezarr_dir``), written by the portal's ingestion (cryoet-data-portal-backend,
``ingestion_tools/scripts/common/image.py``: ``ZarrWriter.write_data``, and
``ingestion_tools/scripts/importers/tiltseries.py``): a zarr **v2** group whose ``.zattrs`` holds OME-NGFF
``multiscales`` (axes z, y, x); level 0 (``datasets[0].path``, ``"0"``) is the unbinned stack, one tilt
image per z (z = stack index = ``PerSectionParameters.z_index``), float32, chunks ``(1, 1024, 1024)``,
compressed with zarr 2's default ``Blosc(lz4, clevel 5, shuffle)``, chunk keys ``z/y/x``
(``dimension_separator "/"``). Nothing of this is assumed: dtype, chunk shape, compressor, filters, memory
order, fill value and key separator are read from ``.zarray``, so a user's own zarr v2 stack (or a
portal download on local disk) is read the same way. A folder that is itself a zarr array (``.zarray``
and no ``multiscales``) is accepted too.

Reading is lazy and counted: a window request first works out which chunks the requested windows touch
(after RELION's edge clamping, so a window hanging over the image edge touches only the edge chunks),
fetches the chunks not fetched before — in parallel, each at most once per reader — and decodes them
into a per-frame buffer, from which the windows are cut by the same kernel as for MRC stacks
(``gather_clamped_windows``), so both sources give bit-identical windows. The buffer holds at most the
whole tilt series, as RELION does (it loads every tilt image, ``TomogramSet::loadTomogram``); its pages
are only committed where chunks were written.

Chunks come through :mod:`relion_py.io.remote` (retried with back-off; a chunk that still cannot be read
raises a one-line :class:`RelionPyError` naming the URL), and no window is ever cut from a chunk that was
not read completely. A chunk that does not exist (HTTP 404, no such key, no such file) is the array's
``fill_value``, as the zarr v2 spec defines.
"""
import json
import threading
from concurrent.futures import ThreadPoolExecutor

import numcodecs
import numpy as np
from numcodecs.compat import ensure_ndarray_like

from ..runtime.errors import RelionPyError
from ..kernels.tomography.windows import gather_clamped_windows
from .remote import MAX_WORKERS, TransientFault, fetch, open_store
from .tilt_images import TiltImages


def _json(store, key, missing_ok=False):
    def decode(data):
        try:
            return json.loads(data)
        except ValueError:
            raise TransientFault("not valid JSON (truncated?)") from None
    return fetch(store, key, decode, missing_ok)


def _fill_value(value, dtype):
    """zarr v2 ``fill_value`` → a number of ``dtype`` (None when the array has none)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = {"NaN": np.nan, "Infinity": np.inf, "-Infinity": -np.inf}.get(value, value)
    try:
        return np.array(value).astype(dtype)[()]
    except (TypeError, ValueError):
        raise RelionPyError(f"unsupported zarr fill_value {value!r}") from None


class ZarrArray:
    """Level 0 of one OME-Zarr tilt series (or one zarr v2 array): shape (z, y, x), lazily read.

    Mirrors the zarr v2 storage specification (zarr-specs, v2 array metadata and chunk encoding):
    chunk (i, j, k) is ``<array>/i<sep>j<sep>k``, decoded by the compressor then the filters in reverse
    order, in ``order`` memory layout, edge chunks stored at full chunk size.
    """

    def __init__(self, location):
        self.location = str(location).rstrip("/")
        self.store = open_store(self.location)
        attrs = _json(self.store, ".zattrs", missing_ok=True)
        self.path = ""
        if isinstance(attrs, dict) and attrs.get("multiscales"):
            try:
                self.path = str(attrs["multiscales"][0]["datasets"][0]["path"]).strip("/")
            except (KeyError, IndexError, TypeError):
                raise RelionPyError(f"{self.location}: malformed OME-Zarr multiscales in .zattrs") from None
        meta = _json(self.store, self._key(".zarray"), missing_ok=True)
        if meta is None:
            if fetch(self.store, self._key("zarr.json"), missing_ok=True) is not None:
                raise RelionPyError(f"{self.location}: zarr format 3 is not supported; write the tilt series "
                                    "as zarr format 2, as the CryoET Data Portal does")
            raise RelionPyError(f"{self.location} is not a zarr array or OME-Zarr image "
                                f"(no {self._key('.zarray')})")
        self._parse(meta)
        self.filled = set()  # chunk indices (cz, cy, cx) already in the buffer
        self._buffer = None
        self._lock = threading.Lock()

    def _key(self, name):
        return f"{self.path}/{name}" if self.path else name

    def _parse(self, meta):
        where = f"{self.location}/{self._key('.zarray')}"
        try:
            if meta.get("zarr_format") != 2:
                raise RelionPyError(f"{where}: zarr_format {meta.get('zarr_format')} is not supported "
                                    "(need 2)")
            self.shape = tuple(int(v) for v in meta["shape"])
            self.chunks = tuple(int(v) for v in meta["chunks"])
            self.dtype = np.dtype(meta["dtype"])
            self.order = meta.get("order", "C")
            self.separator = meta.get("dimension_separator") or "."
            self.compressor = numcodecs.get_codec(meta["compressor"]) if meta.get("compressor") else None
            self.filters = [numcodecs.get_codec(f) for f in meta.get("filters") or []]
            self.fill_value = _fill_value(meta.get("fill_value"), self.dtype)
        except (KeyError, TypeError, ValueError) as exc:
            raise RelionPyError(f"{where}: unsupported or malformed array metadata ({exc})") from None
        if len(self.shape) != 3 or len(self.chunks) != 3:
            raise RelionPyError(f"{where}: a tilt series must be a 3-D (z, y, x) array, "
                                f"not shape {list(self.shape)}")
        if self.dtype.kind not in "biuf" or min(self.chunks) < 1 or self.order not in ("C", "F") \
                or self.separator not in (".", "/"):
            raise RelionPyError(f"{where}: unsupported array (dtype {meta['dtype']}, chunks {meta['chunks']},"
                                f" order {self.order}, dimension_separator {self.separator!r})")

    def chunk_key(self, index):
        return self._key(self.separator.join(str(i) for i in index))

    def _decode(self, data):
        """Chunk bytes → (cz, cy, cx) array of ``dtype``; a short or undecodable body is ``TransientFault``."""
        try:
            for codec in ([self.compressor] if self.compressor else []) + self.filters[::-1]:
                data = codec.decode(data)
            flat = ensure_ndarray_like(data).reshape(-1).view(np.uint8)
        except Exception as exc:  # noqa: BLE001 - codecs raise RuntimeError, ValueError, ...
            raise TransientFault(f"chunk cannot be decoded ({exc})") from None
        expected = int(np.prod(self.chunks)) * self.dtype.itemsize
        if flat.nbytes != expected:
            raise TransientFault(f"chunk holds {flat.nbytes} bytes, expected {expected} (truncated?)")
        return flat.view(self.dtype).reshape(self.chunks, order=self.order)

    def _load(self, index, target=None, z0=0):
        """Fetch, decode and copy one chunk into ``target`` (the buffer by default), whose slice 0 is
        array slice ``z0`` (worker thread; regions are disjoint)."""
        block = fetch(self.store, self.chunk_key(index), self._decode, missing_ok=True)
        lo = [i * c for i, c in zip(index, self.chunks)]
        hi = [min(a + c, n) for a, c, n in zip(lo, self.chunks, self.shape)]
        target = self._buffer if target is None else target
        region = target[lo[0] - z0:hi[0] - z0, lo[1]:hi[1], lo[2]:hi[2]]
        if block is None:
            if self.fill_value is None:
                raise RelionPyError(f"chunk {self.store.where(self.chunk_key(index))} is missing and the "
                                    "array has no fill_value")
            region[...] = self.fill_value
        else:
            region[...] = block[:hi[0] - lo[0], :hi[1] - lo[1], :hi[2] - lo[2]]
        return index

    def chunks_touched(self, z, origins, size):
        """Chunk indices overlapped by the clamped windows: z (n,) slice, origins (n, 2) (x0, y0)."""
        depth, height, width = self.shape
        cz_, cy_, cx_ = self.chunks
        x = np.asarray(origins)[:, 0].astype(np.int64)
        y = np.asarray(origins)[:, 1].astype(np.int64)
        spans = np.stack([np.asarray(z, np.int64) // cz_,
                          np.clip(y, 0, height - 1) // cy_, np.clip(y + size - 1, 0, height - 1) // cy_,
                          np.clip(x, 0, width - 1) // cx_, np.clip(x + size - 1, 0, width - 1) // cx_],
                         axis=1)
        touched = set()
        for cz, y0, y1, x0, x1 in np.unique(spans, axis=0).tolist():
            touched.update((cz, cy, cx) for cy in range(y0, y1 + 1) for cx in range(x0, x1 + 1))
        return touched

    def read_windows(self, z, origins, out, pool):
        """Cut the clamped windows (pixel (0, 0) at ``origins``) of slices ``z`` into ``out``."""
        with self._lock:
            if self._buffer is None:
                # zero pages are not committed until written: memory grows with the chunks read
                self._buffer = np.zeros(self.shape, np.float32)
            todo = sorted(self.chunks_touched(z, origins, out.shape[1]) - self.filled)
            for index in pool.map(self._load, todo):
                self.filled.add(index)
        gather_clamped_windows(self._buffer, z, origins, out)

    def read_slab(self, cz, pool):
        """The slices of chunk row ``cz`` (z chunk index) as a new float32 (depth, y, x) array, fetched
        chunk by chunk past the window buffer (a download's memory is one chunk row)."""
        z0 = cz * self.chunks[0]
        slab = np.empty((min(z0 + self.chunks[0], self.shape[0]) - z0,) + self.shape[1:], np.float32)
        rows, cols = (-(-n // c) for n, c in zip(self.shape[1:], self.chunks[1:]))
        indices = [(cz, cy, cx) for cy in range(rows) for cx in range(cols)]
        list(pool.map(lambda index: self._load(index, slab, z0), indices))
        return slab

    def close(self):
        self.store.close()
        self._buffer = None


class ZarrTiltImages(TiltImages):
    """Frames of a tilt series stored in one or more OME-Zarr stacks (local, http(s), s3)."""

    def __init__(self, locations, max_workers=MAX_WORKERS):
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
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="zarr-fetch")

    @property
    def stats(self):
        """What was read so far: ``{'chunks': n, 'requests': n, 'bytes': n}`` (metadata included in the
        last two; retries count as requests)."""
        arrays = list(self._arrays.values())
        return {"chunks": sum(len(a.filled) for a in arrays),
                "requests": sum(a.store.requests for a in arrays),
                "bytes": sum(a.store.bytes for a in arrays)}

    def read_windows(self, frames, origins, out):
        frames = np.asarray(frames, np.int64)
        origins = np.asarray(origins, np.int64)
        for location, array in self._arrays.items():
            sel = np.flatnonzero(self._array_of_frame[frames] == location)
            if len(sel) == len(frames):
                array.read_windows(self._slice_of_frame[frames], origins, out, self._pool)
                return
            if len(sel):
                part = np.empty((len(sel),) + out.shape[1:], np.float32)
                array.read_windows(self._slice_of_frame[frames[sel]], origins[sel], part, self._pool)
                out[sel] = part

    def close(self):
        if getattr(self, "_pool", None) is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        for array in self._arrays.values():
            array.close()
