"""Files and key-value stores below a local folder, an http(s) URL or an anonymous s3 URL, read with
retries: the remote access shared by the OME-Zarr tilt-series reader (:mod:`relion_py.io.zarr_images`) and
the CryoET Data Portal importer (:mod:`relion_py.portal`).

Network faults are retried (connection errors, resets, timeouts, HTTP 5xx/429, short or undecodable
bodies, bodies trickling in slower than the deadline allows) with exponential back-off; a key that still
cannot be read raises a one-line :class:`RelionPyError` naming the URL. Every request must complete within
``RELION_PY_REMOTE_TIMEOUT`` seconds (default 60: a 4-MB chunk at 70 kB/s), so a failing read gives up
after at most ``ATTEMPTS`` × that plus the back-off (4 min 2 s by default). Reads can be byte ranges (HTTP
``Range``, S3 ``Range``, a seek on disk): the inner chunks and indexes of sharded zarr arrays. Anonymous S3
goes through boto3 with unsigned requests; ``BOTO_ENDPOINT_URL`` points it at another endpoint, as in the cryoet-data-portal client (``cryoet_data_portal/_file_tools.py: get_anon_s3_client``).
"""
import os
import posixpath
import threading
import time
from urllib.parse import quote, urlsplit

import urllib3

from ..runtime.errors import RelionPyError

_TOTAL = [0]                       # bytes fetched by every store of this process
_TOTAL_LOCK = threading.Lock()


def bytes_fetched():
    """Bytes fetched so far by this process, over every store (remote or local)."""
    return _TOTAL[0]

ATTEMPTS = 4            # tries per remote object before giving up
BACKOFF_S = 0.25        # first retry delay; doubles after every failed try
MAX_IN_FLIGHT = 32      # connections kept per store: the most requests a reader keeps in flight


def request_timeout():
    """Seconds a request may take from connecting to its last byte (``RELION_PY_REMOTE_TIMEOUT``)."""
    text = os.environ.get("RELION_PY_REMOTE_TIMEOUT", "60")
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise RelionPyError(f"RELION_PY_REMOTE_TIMEOUT={text!r}: expected a positive number of seconds")
    return value


def _range_header(byte_range):
    """(start, length) → an HTTP Range value; a negative start is a suffix (the last -start bytes)."""
    start, length = byte_range
    return f"bytes={start}" if start < 0 else f"bytes={start}-{start + length - 1}"


class TransientFault(Exception):
    """A failure worth retrying (network error, server error, short or corrupt body)."""


class _Store:
    """Read-only key → bytes access below one location, with request and byte counters.

    ``get(key, byte_range=None)`` makes one attempt: the bytes (of ``byte_range`` = (start, length) only,
    a negative start counting from the end), ``None`` when the key does not exist, ``TransientFault`` on a
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
        with _TOTAL_LOCK:
            _TOTAL[0] += nbytes

    def where(self, key):
        """The URL or path of ``key``, for messages."""
        raise NotImplementedError

    def get(self, key, byte_range=None):
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

    def get(self, key, byte_range=None):
        path = self.where(key)
        try:
            with open(path, "rb") as fh:
                if byte_range is None:
                    data = fh.read()
                else:
                    fh.seek(*((byte_range[0], os.SEEK_END) if byte_range[0] < 0 else (byte_range[0],)))
                    data = fh.read(byte_range[1])
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
        self.timeout = request_timeout()
        timeout = urllib3.Timeout(connect=min(10.0, self.timeout), read=self.timeout)
        self._pool = urllib3.PoolManager(maxsize=MAX_IN_FLIGHT, retries=False, timeout=timeout)

    def where(self, key):
        return f"{self.base}/{quote(key)}"

    def get(self, key, byte_range=None):
        url = self.where(key)
        deadline = time.monotonic() + self.timeout
        headers = {"Range": _range_header(byte_range)} if byte_range else None
        response, data, complete = None, b"", False
        try:
            response = self._pool.request("GET", url, headers=headers, preload_content=False, redirect=True)
            # The body piece by piece (read1: whatever arrived), so that a trickle is cut at the deadline;
            # urllib3 2 enforces Content-Length: a body cut short raises (ProtocolError), never returns.
            pieces = []
            while piece := response.read1(1 << 20):
                pieces.append(piece)
                if time.monotonic() > deadline:
                    raise TransientFault(f"{sum(map(len, pieces))} bytes in {self.timeout:g} s "
                                         "(too slow; RELION_PY_REMOTE_TIMEOUT)")
            data, complete = b"".join(pieces), True
        except urllib3.exceptions.HTTPError as exc:
            raise TransientFault(_reason(exc)) from None
        finally:
            self._count(len(data))
            if response is not None and complete:
                response.release_conn()
            elif response is not None:      # a connection left mid-body cannot serve another request
                response.close()
        if response.status == 200:
            # a server that ignores Range sends the whole object
            if byte_range:
                start, length = byte_range
                return data[start:][:length] if start < 0 else data[start:start + length]
            return data
        if response.status == 206:
            return data
        if response.status == 404:
            return None
        if response.status >= 500 or response.status == 429:
            raise TransientFault(f"HTTP {response.status}")
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
        timeout = request_timeout()
        self._client = boto3.client(
            "s3", endpoint_url=os.environ.get("BOTO_ENDPOINT_URL") or None,
            config=Config(signature_version=UNSIGNED, retries={"max_attempts": 1, "mode": "standard"},
                          connect_timeout=min(10.0, timeout), read_timeout=timeout,
                          max_pool_connections=MAX_IN_FLIGHT))

    def _key(self, key):
        return f"{self.prefix}/{key}" if self.prefix else key

    def where(self, key):
        return f"s3://{self.bucket}/{self._key(key)}"

    def get(self, key, byte_range=None):
        from botocore.exceptions import BotoCoreError, ClientError
        extra = {"Range": _range_header(byte_range)} if byte_range else {}
        try:
            data = self._client.get_object(Bucket=self.bucket, Key=self._key(key), **extra)["Body"].read()
        except ClientError as exc:
            self._count(0)
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            if code in ("NoSuchKey", "404") or status == 404:
                return None
            if status >= 500 or status == 429 or code in ("SlowDown", "RequestTimeout", "InternalError"):
                raise TransientFault(f"S3 {code or status}") from None
            raise RelionPyError(f"cannot read {self.where(key)}: S3 error {code or status}") from None
        except BotoCoreError as exc:  # connection errors, timeouts, short bodies (IncompleteReadError)
            self._count(0)
            raise TransientFault(_reason(exc)) from None
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


def fetch(store, key, decode=lambda data: data, missing_ok=False, byte_range=None):
    """``decode(store.get(key, byte_range))`` with retries: a failure of the fetch or of ``decode`` (raise
    ``TransientFault``, e.g. for a truncated body) is retried ``store.attempts`` times with exponential
    back-off, then reported as one ``RelionPyError``. A missing key returns ``None`` if ``missing_ok``."""
    reason = ""
    for attempt in range(store.attempts):
        if attempt:
            time.sleep(BACKOFF_S * 2 ** (attempt - 1))
        try:
            data = store.get(key, byte_range)
            if data is None:
                if missing_ok:
                    return None
                raise RelionPyError(f"cannot read {store.where(key)}: not found")
            return decode(data)
        except TransientFault as exc:
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
