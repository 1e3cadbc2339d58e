"""zarr array metadata — format 2 (``.zarray``) and format 3 (``zarr.json``), sharded or not — and the
decoding of one chunk: what a reader of 3-D tilt-series arrays needs of the zarr storage specifications
(zarr-specs: v2 storage specification; v3 core specification with the ``bytes``, ``transpose``, ``blosc``,
``gzip``, ``zstd``, ``crc32c`` and ``sharding_indexed`` codecs) and of OME-Zarr 0.4 / 0.5 (where level 0 of
an image is). No I/O: metadata dicts and bytes in, arrays out; :mod:`relion_py.io.zarr_images` fetches.

The unit a reader fetches is a **read chunk**: the chunk of an unsharded array, or the inner chunk of a
sharded one (``sharding_indexed``), whose bytes are found through the index of its shard, so that a window
needs only the inner chunks under it (one ranged request each) and the shard's index (one ranged request
per shard).
"""
import math

import numcodecs
import numpy as np
from numcodecs.compat import ensure_ndarray_like


class ZarrFormatError(ValueError):
    """Metadata this reader does not support or cannot parse (the caller names the file)."""


class CorruptChunk(ValueError):
    """Chunk bytes that do not decode to a whole chunk (truncated or damaged on the way)."""


def level0_path(attrs):
    """The path of the full-resolution array of an OME-Zarr image from its group attributes: OME-NGFF 0.4
    keeps ``multiscales`` at the top of ``.zattrs``, 0.5 under ``"ome"`` in ``zarr.json``'s attributes.
    None when the group is not an OME-Zarr image."""
    if not isinstance(attrs, dict):
        return None
    ome = attrs.get("ome") if isinstance(attrs.get("ome"), dict) else attrs
    if not ome.get("multiscales"):
        return None
    try:
        return str(ome["multiscales"][0]["datasets"][0]["path"]).strip("/")
    except (KeyError, IndexError, TypeError):
        raise ZarrFormatError("malformed OME-Zarr multiscales") from None


def _fill_value(value, dtype):
    """A fill_value (v2 or v3 JSON: number, "NaN", "Infinity", "-Infinity", or v3's "0x…" bit pattern) →
    a number of ``dtype``; None when the array has none."""
    if value is None:
        return None
    if isinstance(value, str) and value.startswith("0x"):
        bits = int(value, 16).to_bytes(dtype.itemsize, "big")
        return np.frombuffer(bits, dtype.newbyteorder(">"))[0].astype(dtype)
    if isinstance(value, str):
        value = {"NaN": np.nan, "Infinity": np.inf, "-Infinity": -np.inf}.get(value, value)
    try:
        return np.array(value).astype(dtype)[()]
    except (TypeError, ValueError):
        raise ZarrFormatError(f"unsupported fill_value {value!r}") from None


def _crc32c_strip(data):
    """v3 ``crc32c``: the last 4 bytes are the little-endian CRC-32C of the rest."""
    import google_crc32c  # noqa: PLC0415 - only sharded / checksummed arrays need it
    data = bytes(ensure_ndarray_like(data).reshape(-1).view(np.uint8))
    if len(data) < 4 or google_crc32c.value(data[:-4]) != int.from_bytes(data[-4:], "little"):
        raise CorruptChunk("CRC-32C checksum mismatch")
    return data[:-4]


# v3 bytes -> bytes codecs, decoding direction. blosc, gzip and zstd frames describe themselves, so a
# default-configured numcodecs codec decodes any of them.
_BYTES_CODECS = {
    "blosc": numcodecs.Blosc().decode,
    "gzip": numcodecs.GZip().decode,
    "zstd": numcodecs.Zstd().decode,
    "crc32c": _crc32c_strip,
}


class _Pipeline:
    """One chain of codecs turning stored bytes into a chunk of ``shape``: v2 (compressor + filters, memory
    ``order``) or v3 (array→array, one array→bytes, bytes→bytes codecs)."""

    def __init__(self, shape, dtype, bytes_steps, order="C", transposes=()):
        self.shape, self.dtype = tuple(shape), dtype
        self.bytes_steps = bytes_steps     # applied in this order when decoding
        self.order = order
        self.transposes = transposes       # v3 transpose orders, as listed in the metadata

    @property
    def stored_shape(self):
        shape = self.shape
        for order in self.transposes:
            shape = tuple(shape[i] for i in order)
        return shape

    def decode(self, data):
        try:
            for step in self.bytes_steps:
                data = step(data)
            flat = ensure_ndarray_like(data).reshape(-1).view(np.uint8)
        except CorruptChunk:
            raise
        except Exception as exc:  # noqa: BLE001 - codecs raise RuntimeError, ValueError, ...
            raise CorruptChunk(f"cannot be decoded ({exc})") from None
        expected = math.prod(self.shape) * self.dtype.itemsize
        if flat.nbytes != expected:
            raise CorruptChunk(f"holds {flat.nbytes} bytes, expected {expected} (truncated?)")
        array = flat.view(self.dtype).reshape(self.stored_shape, order=self.order)
        for order in self.transposes[::-1]:
            array = np.transpose(array, np.argsort(order))
        return array


def _v3_pipeline(codecs, shape, dtype, where):
    """v3 ``codecs`` → (pipeline, sharding configuration or None)."""
    transposes, bytes_steps, endian, sharding = [], [], None, None
    for codec in codecs or []:
        if not isinstance(codec, dict) or "name" not in codec:
            raise ZarrFormatError(f"malformed codec {codec!r}")
        name, config = codec["name"], codec.get("configuration") or {}
        if name == "transpose" and endian is None and sharding is None:
            order = tuple(int(i) for i in config.get("order", ()))
            if sorted(order) != list(range(len(shape))):
                raise ZarrFormatError(f"bad transpose order {order}")
            transposes.append(order)
        elif name == "bytes" and endian is None and sharding is None:
            endian = ">" if config.get("endian") == "big" else "<"
        elif name == "sharding_indexed" and endian is None and sharding is None and where == "array":
            sharding = config
        elif name in _BYTES_CODECS and (endian is not None or sharding is not None):
            bytes_steps.insert(0, _BYTES_CODECS[name])
        else:
            raise ZarrFormatError(f"unsupported codec '{name}' (or codec order) in the {where} codecs")
    if sharding is not None:
        if transposes or bytes_steps:
            raise ZarrFormatError("codecs around sharding_indexed are not supported")
        return None, sharding
    if endian is None:
        raise ZarrFormatError(f"no array-to-bytes codec in the {where} codecs")
    return _Pipeline(shape, dtype.newbyteorder(endian), bytes_steps, "C", tuple(transposes)), None


class ArrayFormat:
    """Where the read chunks of one 3-D array are stored and how to decode them.

    ``shape`` (z, y, x); ``chunks``: read-chunk shape; ``dtype``; ``fill_value`` (None if the array has
    none); ``shard``: shard shape, or None for an unsharded array.
    """

    def __init__(self, meta):
        try:
            if meta.get("zarr_format") == 2:
                self._parse_v2(meta)
            elif meta.get("zarr_format") == 3:
                self._parse_v3(meta)
            else:
                raise ZarrFormatError(f"zarr_format {meta.get('zarr_format')} is not supported (need 2 or 3)")
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, ZarrFormatError):
                raise
            raise ZarrFormatError(f"unsupported or malformed array metadata ({exc})") from None
        if len(self.shape) != 3 or len(self.chunks) != 3:
            raise ZarrFormatError(f"a tilt series must be a 3-D (z, y, x) array, not shape {list(self.shape)}")
        if self.dtype.kind not in "biuf" or min(self.chunks) < 1:
            raise ZarrFormatError(f"unsupported array (dtype {self.dtype}, chunks {list(self.chunks)})")

    def _parse_v2(self, meta):
        self.shape = tuple(int(v) for v in meta["shape"])
        self.chunks = tuple(int(v) for v in meta["chunks"])
        self.dtype = np.dtype(meta["dtype"])
        order = meta.get("order", "C")
        self.separator = meta.get("dimension_separator") or "."
        if order not in ("C", "F") or self.separator not in (".", "/"):
            raise ZarrFormatError(f"unsupported order {order!r} or dimension_separator {self.separator!r}")
        codecs = ([meta["compressor"]] if meta.get("compressor") else []) + (meta.get("filters") or [])[::-1]
        steps = [numcodecs.get_codec(c).decode for c in codecs]
        self.pipeline = _Pipeline(self.chunks, self.dtype, steps, order)
        self.fill_value = _fill_value(meta.get("fill_value"), self.dtype)
        self.prefix, self.shard = "", None

    def _parse_v3(self, meta):
        if meta.get("node_type") != "array":
            raise ZarrFormatError(f"node_type {meta.get('node_type')!r} is not an array")
        if meta.get("storage_transformers"):
            raise ZarrFormatError("storage transformers are not supported")
        self.shape = tuple(int(v) for v in meta["shape"])
        grid = meta["chunk_grid"]
        if grid.get("name") != "regular":
            raise ZarrFormatError(f"chunk grid '{grid.get('name')}' is not supported (need regular)")
        outer = tuple(int(v) for v in grid["configuration"]["chunk_shape"])
        self.dtype = np.dtype(meta["data_type"])
        encoding = meta.get("chunk_key_encoding") or {"name": "default"}
        default = encoding.get("name") == "default"
        if encoding.get("name") not in ("default", "v2"):
            raise ZarrFormatError(f"chunk key encoding '{encoding.get('name')}' is not supported")
        self.separator = (encoding.get("configuration") or {}).get("separator", "/" if default else ".")
        self.prefix = f"c{self.separator}" if default else ""
        self.fill_value = _fill_value(meta.get("fill_value"), self.dtype)
        self.pipeline, sharding = _v3_pipeline(meta.get("codecs"), outer, self.dtype, "array")
        if sharding is None:
            self.chunks, self.shard = outer, None
            return
        self.chunks = tuple(int(v) for v in sharding["chunk_shape"])
        if len(self.chunks) != len(outer) or any(s % c for s, c in zip(outer, self.chunks)):
            raise ZarrFormatError(f"inner chunks {list(self.chunks)} do not tile the shards {list(outer)}")
        self.shard = outer
        self.pipeline, nested = _v3_pipeline(sharding.get("codecs"), self.chunks, self.dtype, "shard")
        if nested is not None:
            raise ZarrFormatError("nested sharding is not supported")
        self.per_shard = tuple(s // c for s, c in zip(outer, self.chunks))
        index_codecs = sharding.get("index_codecs") or [{"name": "bytes", "configuration": {"endian": "little"}},
                                                        {"name": "crc32c"}]
        self._index, _ = _v3_pipeline(index_codecs, self.per_shard + (2,), np.dtype("uint64"), "index")
        if self._index.transposes or any(s is not _crc32c_strip for s in self._index.bytes_steps):
            raise ZarrFormatError("shard index codecs other than bytes and crc32c are not supported")
        # fixed size: 16 bytes (offset, nbytes) per inner chunk, 4 per checksum
        self.index_nbytes = math.prod(self.per_shard) * 16 + 4 * len(self._index.bytes_steps)
        self.index_at_end = sharding.get("index_location", "end") == "end"

    def key(self, index):
        """Storage key, relative to the array, of the chunk — or of the shard holding the inner chunk — at
        read-chunk ``index`` (cz, cy, cx)."""
        if self.shard is not None:
            index = self.shard_of(index)
        return self.prefix + self.separator.join(str(int(i)) for i in index)

    def decode(self, data):
        """Stored bytes of one read chunk → array of shape ``chunks`` (raises :class:`CorruptChunk`)."""
        return self.pipeline.decode(data)

    # sharded arrays
    def shard_of(self, index):
        return tuple(int(i) // n for i, n in zip(index, self.per_shard))

    def index_range(self):
        """(start, length) of the shard index in a shard; a negative start counts from the shard's end."""
        return (-self.index_nbytes if self.index_at_end else 0, self.index_nbytes)

    def decode_index(self, data):
        """Shard index bytes → (n0, n1, n2, 2) uint64 (offset, nbytes) per inner chunk."""
        return self._index.decode(data)

    def inner_range(self, shard_index, index):
        """(offset, nbytes) of inner chunk ``index`` in its shard, or None when it is empty (fill value)."""
        offset, nbytes = (int(v) for v in shard_index[tuple(int(i) % n for i, n in zip(index, self.per_shard))])
        if offset == nbytes == 2 ** 64 - 1:
            return None
        return offset, nbytes
