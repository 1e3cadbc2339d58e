"""MRC files as RELION reads and writes them (src/rwMRC.h), with RELION's own float16 (src/float16.h)."""
import os
import time

import numpy as np
from mrcfile.dtypes import HEADER_DTYPE

from ..runtime.errors import RelionPyError
from ..kernels.statistics import running_moments
from .atomic import atomic_output
from .direct_io import read_file, write_arrays

HEADER_BYTES = 1024
# The modes RELION's readMRC accepts (101, SerialEM's 4-bit, is not supported here).
_MODE_DTYPES = {0: np.int8, 1: np.int16, 2: np.float32, 6: np.uint16, 12: np.float16}
_CHUNK = 1 << 22


def float32_to_relion_float16(a):
    """float32 → IEEE half bit patterns (returned as a float16 array), exactly as ``float2half``.

    RELION's rounding differs from numpy's ``astype(np.float16)``: 1 is added to bit 12 of the mantissa
    and the rest truncated (round half up on the magnitude); after that carry, magnitudes below 2^-14
    (float32 subnormals included) become signed zeros and magnitudes ≥ 2^16 become ±65504 (never inf);
    inf/NaN keep exponent 31 and the top 10 mantissa bits (so a NaN with only low mantissa bits becomes inf).
    """
    bits = np.ascontiguousarray(a, dtype=np.float32).reshape(-1).view(np.uint32)
    out = np.empty(bits.shape, np.uint16)
    for start in range(0, bits.size, _CHUNK):
        u = bits[start:start + _CHUNK]
        mag = u & np.uint32(0x7FFFFFFF)
        rounded = mag + np.uint32(1 << 12)  # the carry may run into the exponent, as in RELION
        # Clipping at 2^16 - ulp gives 0x7bff (65504); re-bias the exponent from 127 to 15.
        h = (np.minimum(rounded, np.uint32((143 << 23) - 1)) >> 13) - np.uint32(112 << 10)
        h[rounded < np.uint32(113 << 23)] = 0
        special = mag >= np.uint32(0x7F800000)
        if special.any():
            h[special] = (mag[special] >> 13) - np.uint32(224 << 10)
        out[start:start + _CHUNK] = h | ((u >> 16) & np.uint32(0x8000))
    return out.view(np.float16).reshape(np.shape(a))


def relion_float16_to_float32(h):
    """IEEE half → float32 as ``half2float``: like numpy's conversion, except that subnormal halves
    become signed zeros."""
    bits = np.ascontiguousarray(h).reshape(-1).view(np.uint16)
    out = np.empty(bits.shape, np.uint32)
    for start in range(0, bits.size, _CHUNK):
        u = bits[start:start + _CHUNK].astype(np.uint32)
        mag = u & np.uint32(0x7FFF)
        f = (mag << 13) + np.uint32(112 << 23)  # re-bias the exponent from 15 to 127
        f[mag >= 0x7C00] += np.uint32(112 << 23)  # inf/NaN: exponent 31 → 255
        f[mag < 0x0400] = 0
        out[start:start + _CHUNK] = f | ((u & np.uint32(0x8000)) << 16)
    return out.view(np.float32).reshape(np.shape(h))


def _statistics(values):
    """(min, max, mean, rms) for the header, as ``MultidimArray::computeMin/Max/Avg/Stddev``: sequential
    double sums, min/max = first occurrence of the extreme value (that decides the sign of a zero; NaNs
    are skipped unless the first value is one), rms = sqrt(|E[v^2] - mean^2|) times the integer ratio
    n/(n-1) — 1 except for n = 2."""
    n = values.size
    if n == 0:
        return 0.0, 0.0, 0.0, 0.0
    lo, hi, total, total_sq = running_moments(values)
    mean = total / n
    if n == 1:
        return lo, hi, mean, 0.0
    var = (total_sq / n - mean * mean) * (n // (n - 1))
    return lo, hi, mean, float(np.sqrt(abs(var)))


# MRC2014: dmax < dmin, dmean < both and rms < 0 mean "not computed" (for headers written before the data)
UNDETERMINED_STATISTICS = (0.0, -1.0, -2.0, -1.0)


def _header(shape, mode, pixel_size, stack, stats, label=None):
    """The 1024 header bytes of ``writeMRC`` (after ``Image::setSamplingRateInHeader``); ``label``
    (ASCII, at most 80 characters) replaces RELION's time-stamped first label."""
    nz, ny, nx = shape
    words = np.zeros(HEADER_BYTES // 4, "<i4")
    floats = words.view("<f4")
    words[0:4] = nx, ny, nz, mode
    words[7:10] = nx, ny, nz  # mx, my, mz; nxstart.. stay 0
    with np.errstate(over="ignore"):
        ps = np.float32(pixel_size)
        # Cell in float arithmetic; z is only scaled for volumes (nz > 1): a stack's "z" is its image count.
        floats[10:12] = ps * np.float32(nx), ps * np.float32(ny)
        floats[12] = ps * np.float32(nz) if (nz > 1 and not stack) else nz
    if not np.isfinite(floats[10:13]).all():
        raise RelionPyError(f"pixel size {pixel_size:g} A: a {nx} px cell of it does not fit an MRC header (float32)")
    floats[13:16] = 90.0
    words[16:19] = 1, 2, 3
    amin, amax, amean, rms = stats
    floats[19:22] = amin, amax, amean
    floats[54] = rms
    words[55] = 1  # nlabl; ispg, nsymbt, exttyp, nversion and origin stay 0
    raw = bytearray(words.tobytes())
    raw[208:216] = b"MAP DA\0\0"  # map, then the little-endian machine stamp 0x44 0x41
    # "Relion " + PACKAGE_VERSION (undefined in RELION's CMake build) + "   " + time stamp
    if label is None:
        label = "Relion    " + time.strftime("%d-%b-%y  %H:%M:%S")
    label = label.encode("ascii", "replace")[:80]
    raw[224:224 + len(label)] = label
    return bytes(raw)


def write_mrc(path, data, pixel_size, *, stack=False, float16=False):
    """Write ``data`` ((nz, ny, nx), or (ny, nx)) as RELION does, atomically. Mirrors ``writeMRC``.

    Mode 2 (float32), or 12 with ``float16`` (RELION's rounding). ``stack=True`` for ``.mrcs`` image
    stacks (cell c = nz, unscaled). The header statistics are computed in double over ``data`` as given
    (float32 in the tomo programs, double in relion_reconstruct), i.e. before any conversion.
    """
    data = np.asarray(data)
    if data.ndim == 2:
        data = data[np.newaxis]
    if data.ndim != 3:
        raise ValueError(f"write_mrc: expected a 2-D or 3-D array, got shape {data.shape}")
    header = _header(data.shape, 12 if float16 else 2, pixel_size, stack, _statistics(data))
    payload = float32_to_relion_float16(data).astype("<f2", copy=False) if float16 else data.astype("<f4", copy=False)
    with atomic_output(path) as tmp:
        write_arrays(tmp, header, payload)


def write_map(path, data, pixel_size):
    """:func:`write_mrc` for a reconstructed map, refused (nothing written) if it holds NaN or Inf values. Those can
    only come from absurd input numbers (a pixel size of 1e-300 Å, say); RELION would write them without a word."""
    if not np.isfinite(data).all():
        raise RelionPyError(f"{path} not written: the map holds NaN or Inf values (from absurd input numbers: check "
                            "the pixel sizes, CTF values and weights)")
    write_mrc(path, data, pixel_size)


def stack_header(shape, pixel_size, label):
    """The header of a float32 (mode 2) image stack of ``shape`` (nz, ny, nx), written before its data
    (statistics marked as not computed)."""
    return _header(shape, 2, pixel_size, True, UNDETERMINED_STATISTICS, label)


def _read_header(path):
    """Header, on-disk dtype, (nz, ny, nx) and data offset of an MRC file, checked against the file size.

    Mirrors ``parseMRCHeader``: the byte order is the one in which mode and nx look sane (not the machine
    stamp), and only the modes RELION reads are accepted.
    """
    try:
        with open(path, "rb") as fh:
            raw = fh.read(HEADER_BYTES)
        size = os.path.getsize(path)
    except OSError as exc:
        raise RelionPyError(f"cannot read MRC file {path}: {exc.strerror or exc}") from None
    return _parse_header(raw, size, path)


def _parse_header(raw, size, path):
    """``_read_header`` of a file of ``size`` bytes whose first bytes are ``raw``."""
    if len(raw) < HEADER_BYTES:
        raise RelionPyError(f"{path} is not an MRC file: {len(raw)} bytes, shorter than the 1024-byte header")
    header = np.frombuffer(raw, HEADER_DTYPE.newbyteorder("<"))[0]
    if abs(int(header["mode"])) > 65535 or abs(int(header["nx"])) > 65535:
        header = np.frombuffer(raw, HEADER_DTYPE.newbyteorder(">"))[0]
    mode = int(header["mode"])
    if mode not in _MODE_DTYPES:
        raise RelionPyError(f"MRC file {path} has unsupported mode {mode} "
                            "(RELION reads modes 0, 1, 2, 6, 12)")
    shape = int(header["nz"]), int(header["ny"]), int(header["nx"])
    if min(shape) < 1 or int(header["nsymbt"]) < 0:
        raise RelionPyError(f"MRC file {path} has a corrupt header (size {shape[2]} x {shape[1]} x "
                            f"{shape[0]}, extended header {int(header['nsymbt'])} bytes)")
    dtype = np.dtype(_MODE_DTYPES[mode]).newbyteorder(header.dtype["mode"].byteorder)
    offset = HEADER_BYTES + int(header["nsymbt"])
    needed = offset + shape[0] * shape[1] * shape[2] * dtype.itemsize
    if size < needed:
        raise RelionPyError(f"MRC file {path} is truncated: {size} bytes, but its header "
                            f"({shape[2]} x {shape[1]} x {shape[0]}, mode {mode}) needs {needed}")
    return header, dtype, shape, offset


def read_mrc_header_shape(path):
    """(nz, ny, nx) of a valid MRC file, from its header only."""
    return _read_header(path)[2]


def _map(path):
    header, dtype, shape, offset = _read_header(path)
    data = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)
    if not dtype.isnative:
        data = data.astype(dtype.newbyteorder("="))
        data.flags.writeable = False
    return header, data


def mmap_mrc(path):
    """Read-only memory map of the data, shape (nz, ny, nx), in the file's mode (float16 stays float16:
    convert with ``relion_float16_to_float32``). Files of the other byte order are copied to native."""
    return _map(path)[1]


def read_mrc_data(path):
    """The data of an MRC file, shape (nz, ny, nx), in the file's mode (native byte order), read whole by
    sequential reads around the page cache (``direct_io.read_file``): a file read once (relion_reconstruct's
    pseudo-subtomograms) comes from the disk at its streaming speed, where a memory map's page faults (4 KiB
    each, read ahead only a little) reach a fraction of it."""
    try:
        raw = read_file(path)
    except OSError as exc:
        raise RelionPyError(f"cannot read MRC file {path}: {exc.strerror or exc}") from None
    # the size read, not the size of the file: a file that shrank while being read is truncated
    _, dtype, shape, offset = _parse_header(raw[:HEADER_BYTES].tobytes(), len(raw), path)
    data = raw[offset:offset + int(np.prod(shape)) * dtype.itemsize].view(dtype).reshape(shape)
    return data if dtype.isnative else data.byteswap().view(dtype.newbyteorder("="))


def read_mrc(path):
    """(float32 array (nz, ny, nx), pixel size). Mirrors ``readMRC``: float16 through ``half2float``, the
    pixel size is cell a / mx (1 if either is 0)."""
    header, data = _map(path)
    data = relion_float16_to_float32(data) if data.dtype == np.float16 else np.array(data, dtype=np.float32)
    mx, a = int(header["mx"]), float(header["cella"]["x"])
    return data, (a / mx if mx and a != 0 else 1.0)
