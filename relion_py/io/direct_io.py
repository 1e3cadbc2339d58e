"""Writing and reading large files around the page cache (``O_DIRECT``).

The extraction programs write gigabytes (2393 pseudo-subtomograms of 96³ are 17 GB): through the page
cache every byte is first copied by the kernel, which on the virtual machines this runs on costs about
2.7 ms of CPU per MB — as much as the whole computation. With ``O_DIRECT`` the disk reads the bytes
straight from an aligned user buffer, so the writer thread mostly waits for the disk instead of
competing with the workers for the CPU (measured: 2.1 GB in 0.5 s of CPU instead of 5.9 s).
relion_reconstruct reads those gigabytes back once each; read directly, they cost no page-cache pages to
allocate and reclaim either (bench/reconstruct_images.md).

The last block is padded (and a written file truncated back to its size).
Where ``O_DIRECT`` is refused (tmpfs, some network file systems), files are written and read the usual way.
"""
import errno
import os
import threading

import numpy as np

#: alignment of the staging buffer, of the file offset and of the directly written length
BLOCK = 4096
#: smaller files go through the page cache (the saving would not pay for the staging copy or the lost caching)
MIN_DIRECT_BYTES = 1 << 18

_O_DIRECT = getattr(os, "O_DIRECT", 0)
_local = threading.local()
_direct_refused = set()     # devices on which O_DIRECT was refused


def _aligned(nbytes):
    """A new block-aligned uint8 buffer of ``nbytes``."""
    raw = np.empty(nbytes + BLOCK, np.uint8)
    start = (-raw.ctypes.data) % BLOCK
    return raw[start:start + nbytes]


def _staging(nbytes):
    """This thread's block-aligned staging buffer of at least ``nbytes`` (reused: touched once)."""
    buf = getattr(_local, "buffer", None)
    if buf is None or buf.size < nbytes:
        buf = _local.buffer = _aligned(nbytes + BLOCK)
    return buf


def _write_all(fd, view, offset):
    while len(view):
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _direct_device(path, nbytes):
    """The device of ``path``'s folder if ``nbytes`` are to go around the page cache there, else None."""
    device = os.stat(os.path.dirname(os.path.abspath(path))).st_dev
    ok = _O_DIRECT and nbytes >= MIN_DIRECT_BYTES and device not in _direct_refused
    return device if ok else None


def _direct(path, flags, device, use):
    """``use(fd)`` of ``path`` opened with ``flags | O_DIRECT``, or None where the file system refuses
    ``O_DIRECT`` (at open, or on some file systems at the first read or write: EINVAL); it is then not tried
    again on that device."""
    try:
        fd = os.open(path, flags | _O_DIRECT, 0o666)
        try:
            return use(fd)
        finally:
            os.close(fd)
    except OSError as e:
        if e.errno != errno.EINVAL:
            raise
        _direct_refused.add(device)
        return None


def write_arrays(path, header, payload):
    """Write ``header`` (bytes) followed by the array ``payload`` (any shape; written in C order) to
    ``path``, created or truncated."""
    payload = np.asarray(payload)
    total = len(header) + payload.nbytes
    device = _direct_device(path, total)
    if device is None:
        _write_buffered(path, header, payload)
        return
    buf = _staging(total)
    buf[:len(header)] = np.frombuffer(header, np.uint8)
    np.copyto(buf[len(header):total].view(payload.dtype).reshape(payload.shape), payload)
    padded = -(-total // BLOCK) * BLOCK
    buf[total:padded] = 0

    def write(fd):
        # whole blocks (the last one padded), then the file is cut back to its true size
        _write_all(fd, memoryview(buf[:padded]), 0)
        if padded != total:
            os.ftruncate(fd, total)
        return True
    if _direct(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, device, write) is None:
        _write_buffered(path, header, payload)


def _write_buffered(path, header, payload):
    with open(path, "wb") as fh:
        fh.write(header)
        fh.write(memoryview(np.ascontiguousarray(payload)).cast("B"))


def read_file(path):
    """The whole content of ``path`` as a uint8 array. Raises ``OSError``."""
    size = os.stat(path).st_size
    device = _direct_device(path, size)
    if device is not None:
        # whole blocks; the last read stops at the end of the file
        buf = _aligned(-(-size // BLOCK) * BLOCK)
        data = _direct(path, os.O_RDONLY, device,
                       lambda fd: buf[:_read_all(lambda view: os.readv(fd, [view]), buf)])
        if data is not None:
            return data
    buf = np.empty(size, np.uint8)
    with open(path, "rb", buffering=0) as fh:
        return buf[:_read_all(fh.readinto, buf)]


def _read_all(read, buf):
    """Call ``read(view)`` (bytes read into the view) until ``buf`` is full or the file ends; the bytes read."""
    view, done = memoryview(buf), 0
    while done < len(view):
        n = read(view[done:])
        if not n:
            break
        done += n
    return done
