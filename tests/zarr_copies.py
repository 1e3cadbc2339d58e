"""One tilt series written by zarr-python 3 in the layouts the CryoET Data Portal has (zarr format 2, OME-Zarr
0.4) and may move to (format 3, OME-Zarr 0.5, sharded), for tests/test_zarr_images.py and, in copick's zarr-2
environment, tests/copick_env/check_copick.py."""
import json
import os

import numcodecs
import numpy as np
import zarr
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, GzipCodec, TransposeCodec, ZstdCodec


def _ome(path, zarr_format):
    """Make the group at ``path`` an OME-Zarr image with one level "0" (0.4 for format 2, 0.5 for 3)."""
    multiscales = [{"version": "0.4", "axes": [{"name": a, "type": "space"} for a in "zyx"],
                    "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale",
                                                                               "scale": [1.0, 1.0, 1.0]}]}]}]
    if zarr_format == 2:
        zarr.open_group(path, mode="a", zarr_format=2).attrs["multiscales"] = multiscales
    else:
        for m in multiscales:
            del m["version"]
        zarr.open_group(path, mode="a", zarr_format=3).attrs["ome"] = {"version": "0.5",
                                                                       "multiscales": multiscales}


# name -> (zarr format, zarr.create_array keywords); chunks are (1, 32, 32) read units throughout
LAYOUTS = {
    # as the portal writes it: '/' separated keys z/y/x
    "v2": (2, dict(chunks=(1, 32, 32), compressors=numcodecs.Blosc("lz4", 5, numcodecs.Blosc.SHUFFLE),
                   chunk_key_encoding={"name": "v2", "separator": "/"})),
    "v3": (3, dict(chunks=(1, 32, 32), compressors=BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"))),
    # big-endian, transposed, gzip + checksum: every codec of the reader at once
    "v3-codecs": (3, dict(chunks=(1, 32, 32), filters=[TransposeCodec(order=(0, 2, 1))],
                          serializer=BytesCodec(endian="big"), compressors=[GzipCodec(level=1), Crc32cCodec()])),
    "v3-sharded": (3, dict(shards=(1, 128, 128), chunks=(1, 32, 32), compressors=ZstdCodec(level=3))),
}


def write_copies(stack, root, layouts=LAYOUTS):
    """Write ``stack`` (z, y, x float32) under ``root`` as ``<name>.zarr`` OME-Zarr images for every layout;
    return {name: path}. Every chunk is written (a float stack has no chunk equal to the fill value)."""
    paths = {}
    for name, (zarr_format, kwargs) in layouts.items():
        path = os.path.join(root, f"{name}.zarr")
        zarr.open_group(path, mode="w", zarr_format=zarr_format)
        array = zarr.create_array(f"{path}/0", shape=stack.shape, dtype="float32", zarr_format=zarr_format,
                                  fill_value=0.0, **kwargs)
        array[...] = stack
        _ome(path, zarr_format)
        paths[name] = path
    return paths


def stored_bytes(path, name, read_chunks):
    """Bytes stored for ``read_chunks`` {(cz, cy, cx)} of copy ``name`` at ``path``: the chunk files, or for
    the sharded copy the inner chunks' lengths from the shard indexes (parsed here with numpy: 16 bytes
    (offset, length) per inner chunk, little-endian, then a CRC-32C) plus one index per shard touched."""
    level0 = os.path.join(path, "0")
    with open(os.path.join(level0, "zarr.json" if name != "v2" else ".zarray")) as fh:
        meta = json.load(fh)
    if name != "v3-sharded":
        key = (lambda i: os.path.join(level0, *map(str, i))) if name == "v2" else \
            (lambda i: os.path.join(level0, "c", *map(str, i)))
        return sum(os.path.getsize(key(i)) for i in read_chunks)
    sharding = meta["codecs"][0]["configuration"]
    per = [s // c for s, c in zip(meta["chunk_grid"]["configuration"]["chunk_shape"], sharding["chunk_shape"])]
    total, shards = 0, {}
    for index in read_chunks:
        shard = tuple(i // n for i, n in zip(index, per))
        if shard not in shards:
            with open(os.path.join(level0, "c", *map(str, shard)), "rb") as fh:
                fh.seek(-(int(np.prod(per)) * 16 + 4), os.SEEK_END)
                shards[shard] = np.frombuffer(fh.read()[:-4], "<u8").reshape(per + [2])
                total += int(np.prod(per)) * 16 + 4
        total += int(shards[shard][tuple(i % n for i, n in zip(index, per))][1])
    return total
