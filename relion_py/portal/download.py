"""Tilt series of the portal as local MRC stacks (``relion-py-portal --download``).

Each OME-Zarr stack (level 0) becomes one float32 (mode 2) MRC stack, written chunk row by chunk row (one
z chunk of the zarr array at a time, while the chunks of the next rows are being fetched), so memory is a
few chunk rows whatever the size of the stack. The pixels are the float32 values relion_py's OME-Zarr reader gives
(:class:`relion_py.io.zarr_images.ZarrArray`), so extraction from the downloaded stack equals extraction
from the portal bit for bit.

The stack is written as ``<name>.mrcs.part`` (header first, its statistics marked as not computed, then the
slices in order) and renamed when complete. An interrupted download resumes: a ``.part`` file with the
expected header keeps its complete chunk rows, and a finished stack of the expected size is not fetched
again.
"""
import os
from concurrent.futures import ThreadPoolExecutor

from ..io.mrc import stack_header
from ..io.zarr_images import ZarrArray
from ..runtime.errors import RelionPyError
from ..runtime.log import info


def _expected_size(header, shape):
    return len(header) + shape[0] * shape[1] * shape[2] * 4


def _has_header(path, header):
    with open(path, "rb") as fh:
        return fh.read(len(header)) == header


def download_stack(location, path, pixel_size, label):
    """Write the OME-Zarr stack at ``location`` as the MRC stack ``path`` (see the module doc); return the
    number of slices fetched (0 if ``path`` was already complete)."""
    array = ZarrArray(location)
    try:
        header = stack_header(array.shape, pixel_size, label)
        size = _expected_size(header, array.shape)
        if os.path.isfile(path) and os.path.getsize(path) == size and _has_header(path, header):
            return 0
        part, slice_bytes, depth = path + ".part", array.shape[1] * array.shape[2] * 4, array.chunks[0]
        done = 0
        if os.path.isfile(part) and _has_header(part, header):
            complete = min((os.path.getsize(part) - len(header)) // slice_bytes, array.shape[0])
            done = complete // depth                     # whole chunk rows only
        mode = "r+b" if done else "wb"
        with open(part, mode) as fh:
            if not done:
                fh.write(header)
            fh.truncate(len(header) + done * depth * slice_bytes)
            fh.seek(len(header) + done * depth * slice_bytes)
            if done:
                info(f"{path}: resuming at slice {done * depth + 1} of {array.shape[0]}")
            with ThreadPoolExecutor(max_workers=array.requests_in_flight, thread_name_prefix="zarr-download") as pool:
                for slab in array.iter_slabs(pool, done):
                    fh.write(slab.astype("<f4", copy=False).tobytes())
        if os.path.getsize(part) != size:
            raise RelionPyError(f"{part}: {os.path.getsize(part)} bytes written, expected {size}")
        os.replace(part, path)
        return array.shape[0] - done * depth
    finally:
        array.close()
