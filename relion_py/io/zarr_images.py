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

Network faults are retried (connection errors, timeouts, HTTP 5xx/429, short or undecodable bodies) with
exponential back-off; a chunk that still cannot be read raises a one-line :class:`RelionPyError` naming
the URL, and no window is ever cut from a chunk that was not read completely. A chunk that does not exist
(HTTP 404, no such key, no such file) is the array's ``fill_value``, as the zarr v2 spec defines.

Anonymous S3 goes through boto3 with unsigned requests; ``BOTO_ENDPOINT_URL`` points it at another
endpoint, as in the cryoet-data-portal client (``cryoet_data_portal/_file_tools.py:
get_anon_s3_client``).
"""
import json
import os
import posixpath
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote, urlsplit

import numcodecs
import numpy as np
import urllib3
from numcodecs.compat import ensure_ndarray_like

from ..runtime.errors import RelionPyError
from ..kernels.tomography.windows import gather_clamped_windows
from .tilt_images import TiltImages

ATTEMPTS = 4            # tries per remote object before giving up
BACKOFF_S = 0.25        # first retry delay; doubles after every failed try
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 60.0
MAX_WORKERS = 8         # parallel chunk fetches per array


class _Transient(Exception):
    """A failure worth retrying (network error, server error, short or corrupt body)."""


class _Store:
    """Read-only key → bytes access below one location, with request and byte counters.

    ``get(key)`` makes one attempt: bytes, ``None`` when the key does not exist, ``_Transient`` on a
    failure worth retrying, ``RelionPyError`` on a permanent one.
    """

    attempts = ATTEMPTS

    def __init__(self):
        self.requests = 0
        self.bytes = 0
        self._lock = threading.Lock()

    def _count(self, nbytes):
        with self._lock:
            self.requests += 1
            self.bytes += nbytes

    def where(self, key):
        """The URL or path of ``key``, for messages."""
        raise NotImplementedError

    def get(self, key):
        raise NotImplementedError

    def close(self):
        """Release connections."""


class _LocalStore(_Store):
    """A folder on disk (``file://`` URLs included)."""

    attempts = 1  # a local read that fails will fail again

    def __init__(self, root):
        super().__init__()
        self.root = root

    def where(self, key):
        return os.path.join(self.root, *key.split("/"))

    def get(self, key):
        path = self.where(key)
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except (FileNotFoundError, NotADirectoryError):
            self._count(0)
            return None
        except OSError as exc:
            raise RelionPyError(f"cannot read {path}: {exc.strerror}") from None
        self._count(len(data))
        return data


class _HttpStore(_Store):
    """An http(s) URL prefix, read with one thread-safe urllib3 connection pool (keep-alive)."""

    def __init__(self, base):
        super().__init__()
        self.base = base.rstrip("/")
        timeout = urllib3.Timeout(connect=CONNECT_TIMEOUT_S, read=READ_TIMEOUT_S)
        self._pool = urllib3.PoolManager(maxsize=MAX_WORKERS, retries=False, timeout=timeout)

    def where(self, key):
        return f"{self.base}/{quote(key)}"

    def get(self, key):
        url = self.where(key)
        try:
            # urllib3 2 enforces Content-Length: a body cut short raises (ProtocolError), never returns.
            response = self._pool.request("GET", url, preload_content=True, redirect=True)
        except urllib3.exceptions.HTTPError as exc:
            self._count(0)
            raise _Transient(_reason(exc)) from None
        self._count(len(response.data))
        if response.status == 200:
            return response.data
        if response.status == 404:
            return None
        if response.status >= 500 or response.status == 429:
            raise _Transient(f"HTTP {response.status}")
        raise RelionPyError(f"cannot read {url}: HTTP {response.status} {response.reason}")

    def close(self):
        self._pool.clear()


class _S3Store(_Store):
    """An ``s3://bucket/prefix`` location read anonymously (unsigned requests) with boto3."""

    def __init__(self, bucket, prefix):
        super().__init__()
        import boto3
        from botocore import UNSIGNED
        from botocore.config import Config
        self.bucket, self.prefix = bucket, prefix.strip("/")
        # As cryoet_data_portal/_file_tools.py:get_anon_s3_client (BOTO_ENDPOINT_URL: another endpoint);
        # boto3's own retries are off: the reader retries, and counts every request.
        self._client = boto3.client(
            "s3", endpoint_url=os.environ.get("BOTO_ENDPOINT_URL") or None,
            config=Config(signature_version=UNSIGNED, retries={"max_attempts": 1, "mode": "standard"},
                          connect_timeout=CONNECT_TIMEOUT_S, read_timeout=READ_TIMEOUT_S,
                          max_pool_connections=MAX_WORKERS))

    def _key(self, key):
        return f"{self.prefix}/{key}" if self.prefix else key

    def where(self, key):
        return f"s3://{self.bucket}/{self._key(key)}"

    def get(self, key):
        from botocore.exceptions import BotoCoreError, ClientError
        try:
            data = self._client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except ClientError as exc:
            self._count(0)
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            if code in ("NoSuchKey", "404") or status == 404:
                return None
            if status >= 500 or status == 429 or code in ("SlowDown", "RequestTimeout", "InternalError"):
                raise _Transient(f"S3 {code or status}") from None
            raise RelionPyError(f"cannot read {self.where(key)}: S3 error {code or status}") from None
        except BotoCoreError as exc:  # connection errors, timeouts, short bodies (IncompleteReadError)
            self._count(0)
            raise _Transient(_reason(exc)) from None
        self._count(len(data))
        return data


def _reason(exc):
    """A short reason for a network exception: its innermost cause (e.g. 'connection refused',
    'IncompleteRead(145 bytes read, 145 more expected)')."""
    inner = exc
    while True:
        cause = getattr(inner, "reason", None)
        if not isinstance(cause, BaseException):
            cause = next((a for a in getattr(inner, "args", ()) if isinstance(a, BaseException)), None)
        if cause is None:
            break
        inner = cause
    text = str(inner).strip() or type(inner).__name__
    if "Connection refused" in text:
        return "connection refused"
    return text.splitlines()[0][:200]


def open_store(location):
    """A store for a local folder, ``file://``, ``http(s)://`` or ``s3://`` location."""
    location = str(location)
    if "://" not in location:
        return _LocalStore(location)
    parts = urlsplit(location)
    if parts.scheme in ("http", "https"):
        return _HttpStore(location)
    if parts.scheme == "s3":
        if not parts.netloc:
            raise RelionPyError(f"bad S3 URL '{location}': expected s3://bucket/path")
        return _S3Store(parts.netloc, parts.path)
    if parts.scheme == "file":
        return _LocalStore(parts.path)
    raise RelionPyError(f"cannot read '{location}': unsupported URL scheme '{parts.scheme}' "
                        "(use a local path, http(s):// or s3://)")


def fetch(store, key, decode=lambda data: data, missing_ok=False):
    """``decode(store.get(key))`` with retries: a failure of the fetch or of ``decode`` (raise
    ``_Transient``, e.g. for a truncated body) is retried ``store.attempts`` times with exponential
    back-off, then reported as one ``RelionPyError``. A missing key returns ``None`` if ``missing_ok``."""
    reason = ""
    for attempt in range(store.attempts):
        if attempt:
            time.sleep(BACKOFF_S * 2 ** (attempt - 1))
        try:
            data = store.get(key)
            if data is None:
                if missing_ok:
                    return None
                raise RelionPyError(f"cannot read {store.where(key)}: not found")
            return decode(data)
        except _Transient as exc:
            reason = str(exc)
    tries = f" ({store.attempts} attempts)" if store.attempts > 1 else ""
    raise RelionPyError(f"cannot read {store.where(key)}: {reason}{tries}")


def fetch_file(url):
    """The bytes of one file given by a local path or URL, with retries (the portal's annotation files)."""
    url = str(url)
    head, name = posixpath.split(url) if "://" in url else os.path.split(url)
    store = open_store(head or ".")
    try:
        return fetch(store, name)
    finally:
        store.close()


def _json(store, key, missing_ok=False):
    def decode(data):
        try:
            return json.loads(data)
        except ValueError:
            raise _Transient("not valid JSON (truncated?)") from None
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
        """Chunk bytes → (cz, cy, cx) array of ``dtype``; a short or undecodable body is ``_Transient``."""
        try:
            for codec in ([self.compressor] if self.compressor else []) + self.filters[::-1]:
                data = codec.decode(data)
            flat = ensure_ndarray_like(data).reshape(-1).view(np.uint8)
        except Exception as exc:  # noqa: BLE001 - codecs raise RuntimeError, ValueError, ...
            raise _Transient(f"chunk cannot be decoded ({exc})") from None
        expected = int(np.prod(self.chunks)) * self.dtype.itemsize
        if flat.nbytes != expected:
            raise _Transient(f"chunk holds {flat.nbytes} bytes, expected {expected} (truncated?)")
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
