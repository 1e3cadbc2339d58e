"""relion_py.io.mrc: RELION's MRC files re-written byte for byte, RELION's float16, reading and errors."""
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from relion_py.io import direct_io
from relion_py.runtime.errors import RelionPyError
from relion_py.io.mrc import (float32_to_relion_float16, mmap_mrc, read_mrc, read_mrc_data, read_mrc_header_shape,
                              relion_float16_to_float32, write_mrc)

FIXTURES = Path(__file__).parent / "data" / "fixtures"
PROGRAMS = {case: spec["program"] for case, spec in json.loads((FIXTURES / "cases.json").read_text()).items()}
LABEL = slice(224, 304)
AMEAN, RMS = 21, 54  # header word indices


def _header_words(raw):
    return np.frombuffer(raw[:1024], "<i4")


def _masked(raw):
    """File bytes with the 80-byte label (RELION's time stamp) zeroed."""
    raw = bytearray(raw)
    raw[LABEL] = bytes(80)
    return bytes(raw)


@pytest.mark.parametrize("case", sorted(c for c in PROGRAMS if c != "d_subtomo_stack2d_float16"))
def test_relion_mrc_files_rewrite_identically(case, tmp_path):
    files = sorted(p for p in (FIXTURES / case).rglob("*.mrc*"))
    assert files
    out = tmp_path / "out.mrc"
    for path in files:
        data, pixel_size = read_mrc(path)
        # The header stores float(ps) * n: recover RELION's pixel size (5, 10, 0.2, 0.1 here) from it.
        write_mrc(out, data, round(pixel_size, 6), stack=path.suffix == ".mrcs")
        ref, new = _masked(path.read_bytes()), _masked(out.read_bytes())
        assert new[1024:] == ref[1024:], path
        ref_words, new_words = _header_words(ref).copy(), _header_words(new).copy()
        if PROGRAMS[case] == "relion_tomo_reconstruct_particle":
            # These maps are double in RELION: their mean and rms come from the double values, which the
            # float32 file does not hold. Equal up to float32 round-off of the data.
            ref_stats, new_stats = (w.view("<f4")[[AMEAN, RMS]].astype(float) for w in (ref_words, new_words))
            assert np.all(np.abs(ref_stats - new_stats) <= 1e-6 * ref_stats[1]), path
            ref_words[[AMEAN, RMS]] = new_words[[AMEAN, RMS]] = 0
        assert np.array_equal(ref_words, new_words), (path, np.flatnonzero(ref_words != new_words))


def test_float16_stacks_equal_relion_from_the_float32_case(tmp_path):
    # d_subtomo_stack2d_float16 is a_subtomo_stack2d written with --float16: its float32 data are the
    # values RELION converted, so the whole file (header statistics included) must come out identical.
    files = sorted((FIXTURES / "d_subtomo_stack2d_float16/Subtomograms/TS_01").glob("*.mrcs"))
    assert len(files) == 20
    for path in files:
        data, pixel_size = read_mrc(FIXTURES / "a_subtomo_stack2d/Subtomograms/TS_01" / path.name)
        write_mrc(tmp_path / "o.mrcs", data, pixel_size, stack=True, float16=True)
        assert _masked((tmp_path / "o.mrcs").read_bytes()) == _masked(path.read_bytes()), path
        halves, _ = read_mrc(path)
        assert halves.dtype == np.float32
        assert np.array_equal(float32_to_relion_float16(halves), mmap_mrc(path))


def _half_bits(values):
    return float32_to_relion_float16(np.asarray(values, np.float32)).view(np.uint16).tolist()


def _from_bits(bits):
    return np.array(bits, np.uint32).view(np.float32)


def test_float16_conversion_bit_patterns():
    assert _half_bits([0.0, -0.0, 1.0, -2.0, 0.5, 65504.0]) == [0, 0x8000, 0x3C00, 0xC000, 0x3800, 0x7BFF]
    # Round half up on the magnitude (numpy rounds half to even: 0x3C00).
    assert _half_bits(_from_bits([0x3F801000, 0xBF801000, 0x3F800FFF])) == [0x3C01, 0xBC01, 0x3C00]
    # Overflow saturates at ±65504, also after the rounding carry.
    assert _half_bits([65519.0, 65520.0, 1e6, -1e6, 3e38]) == [0x7BFF, 0x7BFF, 0x7BFF, 0xFBFF, 0x7BFF]
    # Below 2^-14 (after rounding) → signed zero; no subnormal halves.
    tiny = [2.0 ** -14, 2.0 ** -15, -(2.0 ** -15), 1e-40, -1e-40]
    assert _half_bits(tiny) == [0x0400, 0x0000, 0x8000, 0x0000, 0x8000]
    assert _half_bits(_from_bits([0x387FFFFF])) == [0x0400]  # just below 2^-14, rounds up into range
    # inf and NaN keep exponent 31 and the top 10 mantissa bits (a NaN without them turns into inf).
    specials = _from_bits([0x7F800000, 0xFF800000, 0x7FC00000, 0x7F800001])
    assert _half_bits(specials) == [0x7C00, 0xFC00, 0x7E00, 0x7C00]


def test_float16_conversion_matches_numpy_off_ties():
    values = np.random.default_rng(3).standard_normal((7, 11, 13)).astype(np.float32) * 1000
    ours, numpy = float32_to_relion_float16(values), values.astype(np.float16)
    assert ours.shape == values.shape
    ties = (values.view(np.uint32) & 0x1FFF) == 0x1000
    assert np.array_equal(ours.view(np.uint16)[~ties], numpy.view(np.uint16)[~ties])


def test_half_to_float_as_relion():
    halves = np.arange(1 << 16, dtype=np.uint16).view(np.float16)
    ours, numpy = relion_float16_to_float32(halves), halves.astype(np.float32)
    subnormal = (halves.view(np.uint16) & 0x7C00) == 0
    assert np.array_equal(ours.view(np.uint32)[~subnormal & ~np.isnan(numpy)],
                          numpy.view(np.uint32)[~subnormal & ~np.isnan(numpy)])
    assert np.isnan(ours[np.isnan(numpy)]).all()
    signs = (halves.view(np.uint16)[subnormal] & 0x8000).astype(np.uint32) << 16
    assert np.array_equal(ours.view(np.uint32)[subnormal], signs)
    back = float32_to_relion_float16(ours).view(np.uint16)
    assert np.array_equal(back[~subnormal], halves.view(np.uint16)[~subnormal])


def _header(path):
    raw = Path(path).read_bytes()
    return _header_words(raw), _header_words(raw).view("<f4"), raw


@pytest.mark.parametrize("shape, stack, c",
                         [((3, 4, 5), False, 7.5), ((3, 4, 5), True, 3.0), ((4, 5), False, 1.0)])
def test_header_fields(tmp_path, shape, stack, c):
    data = np.arange(np.prod(shape), dtype=np.float32).reshape(shape) - 7
    write_mrc(tmp_path / "x.mrc", data, 2.5, stack=stack)
    words, floats, raw = _header(tmp_path / "x.mrc")
    nz = shape[0] if len(shape) == 3 else 1
    assert words[:10].tolist() == [shape[-1], shape[-2], nz, 2, 0, 0, 0, shape[-1], shape[-2], nz]
    assert floats[10:16].tolist() == [2.5 * shape[-1], 2.5 * shape[-2], c, 90, 90, 90]
    assert words[16:19].tolist() == [1, 2, 3] and words[22:24].tolist() == [0, 0]  # ispg, nsymbt
    assert raw[100:108] == bytes(8)  # exttyp blank, nversion 0
    assert raw[208:216] == b"MAP DA\0\0" and words[55] == 1
    assert re.fullmatch(rb"Relion    \d\d-[A-Z][a-z]{2}-\d\d  \d\d:\d\d:\d\d\0+", raw[224:304])
    assert raw[304:1024] == bytes(720) and len(raw) == 1024 + 4 * data.size
    v = data.astype(np.float64)
    assert floats[19:22].tolist() == [v.min(), v.max(), np.float32(v.mean())]
    assert floats[RMS] == np.float32(v.std())


def test_header_statistics_quirks(tmp_path):
    out = tmp_path / "s.mrc"
    write_mrc(out, np.array([[0.0, 2.0]], np.float32), 1.0)
    assert _header(out)[1][RMS] == np.float32(np.sqrt(2.0))  # n/(n-1) in integers: 2 for n = 2
    write_mrc(out, np.array([[-0.0, 0.0, 1.0]], np.float32), 1.0)
    assert _header(out)[0][19] == np.float32(-0.0).view(np.int32)  # min keeps the first zero's sign
    write_mrc(out, np.array([[1.0, np.nan, -1.0]], np.float32), 1.0)
    assert _header(out)[1][19:21].tolist() == [-1.0, 1.0]  # NaNs after the first value are skipped
    # Double input: statistics over the doubles, data rounded to float32 (relion_reconstruct).
    doubles = np.full((1, 1, 3), 1.0) + np.array([1e-9, 2e-9, 3e-9])
    write_mrc(out, doubles, 1.0)
    words, floats, raw = _header(out)
    mean = doubles.sum() / 3
    assert floats[21] == np.float32(mean)
    assert floats[RMS] == np.float32(np.sqrt(abs((doubles ** 2).sum() / 3 - mean ** 2)))
    assert np.array_equal(np.frombuffer(raw[1024:], "<f4"), doubles.astype(np.float32).ravel())


def test_float16_header_statistics_use_float32_values(tmp_path):
    data = np.array([[1.0004883, 3.0]], np.float32)  # 1.0004883 is not a half
    write_mrc(tmp_path / "h.mrcs", data, 1.0, stack=True, float16=True)
    words, floats, raw = _header(tmp_path / "h.mrcs")
    assert words[3] == 12 and floats[21] == np.float32((1.0004883 + 3.0) / 2) and len(raw) == 1024 + 4


def test_read_and_mmap(tmp_path):
    path = FIXTURES / "e_subtomo_3d/Subtomograms/TS_01/1_weights.mrc"
    data, pixel_size = read_mrc(path)
    assert data.dtype == np.float32 and data.shape == (64, 32, 17) and data.flags.writeable
    assert abs(pixel_size - 0.2) < 1e-7
    mapped = mmap_mrc(path)
    assert mapped.shape == (64, 32, 17) and not mapped.flags.writeable and np.array_equal(mapped, data)
    assert read_mrc_header_shape(path) == (64, 32, 17)
    whole = read_mrc_data(path)
    assert whole.flags.writeable and np.array_equal(whole, data)
    stack, pixel_size = read_mrc(FIXTURES / "a_subtomo_stack2d/Subtomograms/TS_01/1_stack2d.mrcs")
    assert stack.shape[1:] == (48, 48) and pixel_size == 5.0


def test_big_endian_file(tmp_path):
    src = FIXTURES / "a_subtomo_stack2d/Subtomograms/TS_01/1_stack2d.mrcs"
    raw = bytearray(src.read_bytes())
    header = bytearray(np.frombuffer(bytes(raw[:224]), "<u4").astype(">u4").tobytes())
    header[208:216] = b"MAP \x11\x11\0\0"
    raw[:224] = header
    raw[1024:] = np.frombuffer(bytes(raw[1024:]), "<f4").astype(">f4").tobytes()
    (tmp_path / "be.mrcs").write_bytes(bytes(raw))
    data, pixel_size = read_mrc(tmp_path / "be.mrcs")
    assert pixel_size == 5.0 and np.array_equal(data, read_mrc(src)[0])
    assert mmap_mrc(tmp_path / "be.mrcs").dtype.isnative
    whole = read_mrc_data(tmp_path / "be.mrcs")
    assert whole.dtype.isnative and np.array_equal(whole, data)


def _bad_mrc(tmp, case):
    raw = (FIXTURES / "a_subtomo_stack2d/Subtomograms/TS_01/1_stack2d.mrcs").read_bytes()
    path = tmp / f"{case}.mrc"
    if case == "truncated_data":
        path.write_bytes(raw[:len(raw) - 4])
    elif case == "truncated_header":
        path.write_bytes(raw[:500])
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "complex_mode":
        path.write_bytes(raw[:12] + (4).to_bytes(4, "little") + raw[16:])
    elif case == "garbage":
        path.write_bytes(np.random.default_rng(2).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return path


@pytest.mark.parametrize("case", ["missing", "truncated_data", "truncated_header", "empty", "complex_mode",
                                  "garbage"])
@pytest.mark.parametrize("reader", [read_mrc, mmap_mrc, read_mrc_data, read_mrc_header_shape])
def test_bad_mrc_input_is_one_clear_error(tmp_path, case, reader):
    path = _bad_mrc(tmp_path, case)
    with pytest.raises(RelionPyError) as err:
        reader(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("size", [2, 80])       # through the page cache / direct I/O
def test_write_is_atomic(tmp_path, monkeypatch, size):
    target = tmp_path / "m.mrc"
    target.write_bytes(b"old")
    real_pwrite = os.pwrite

    def fail(*args):
        raise OSError("disk full")

    def fail_after_first_write(fd, data, offset):
        if offset > 0:
            fail()
        return real_pwrite(fd, data[:1024], offset)
    monkeypatch.setattr(direct_io, "memoryview", fail, raising=False)  # buffered: fails after the header
    monkeypatch.setattr(direct_io.os, "pwrite", fail_after_first_write)
    with pytest.raises(OSError):
        write_mrc(target, np.zeros((size, size, size), np.float32), 1.0)
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["m.mrc"]


@pytest.mark.parametrize("shape", [(3, 5, 7), (40, 41, 43), (64, 64, 64), (10, 96, 96)])
def test_direct_and_buffered_writes_agree(tmp_path, monkeypatch, shape):
    """Files written around the page cache (block-aligned part + buffered tail) equal buffered ones."""
    data = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    write_mrc(tmp_path / "direct.mrc", data[:, ::-1], 2.0)              # a non-contiguous view, too
    monkeypatch.setattr(direct_io, "_O_DIRECT", 0)
    write_mrc(tmp_path / "buffered.mrc", data[:, ::-1], 2.0)
    direct, buffered = (tmp_path / "direct.mrc").read_bytes(), (tmp_path / "buffered.mrc").read_bytes()
    assert len(direct) == 1024 + data.nbytes
    assert direct[:224] == buffered[:224] and direct[1024:] == buffered[1024:]   # the label holds a time


def test_direct_io_falls_back_when_writes_are_refused(tmp_path, monkeypatch):
    """A file system that accepts O_DIRECT at open but refuses the writes (EINVAL) gets a normal write."""
    import errno
    real_pwrite = os.pwrite
    calls = []

    def refuse_direct(fd, data, offset):
        if not calls:
            calls.append(1)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwrite(fd, data, offset)
    monkeypatch.setattr(direct_io.os, "pwrite", refuse_direct)
    monkeypatch.setattr(direct_io, "_direct_refused", set())
    data = np.arange(80 ** 3, dtype=np.float32).reshape(80, 80, 80)
    write_mrc(tmp_path / "m.mrc", data, 1.0)
    back, _ = read_mrc(tmp_path / "m.mrc")
    np.testing.assert_array_equal(back, data)
    assert direct_io._direct_refused


def _odd_mrc(path, shape, nsymbt):
    """A valid float32 MRC file with an extended header of ``nsymbt`` bytes (its data start unaligned)."""
    data = np.random.default_rng(nsymbt).standard_normal(shape).astype(np.float32)
    write_mrc(path, data, 1.0)
    raw = bytearray(path.read_bytes())
    raw[92:96] = np.int32(nsymbt).tobytes()
    path.write_bytes(bytes(raw[:1024]) + bytes(i % 256 for i in range(nsymbt)) + bytes(raw[1024:]))
    return data


@pytest.mark.parametrize("nsymbt", [0, 3, 3072])
@pytest.mark.parametrize("shape", [(1, 2, 3), (64, 32, 32), (65, 32, 32), (96, 96, 96)])
def test_read_around_the_page_cache(tmp_path, monkeypatch, shape, nsymbt):
    """Whole-file reads with O_DIRECT (block-aligned, the last block short) equal the buffered reads; files large
    enough for it are opened with O_DIRECT where the file system allows it (here: ext4 or xfs)."""
    data = _odd_mrc(tmp_path / "m.mrc", shape, nsymbt)
    real_open, flags = os.open, []
    monkeypatch.setattr(direct_io.os, "open", lambda p, f, *a: flags.append(f) or real_open(p, f, *a))
    monkeypatch.setattr(direct_io, "_direct_refused", set())
    direct = read_mrc_data(tmp_path / "m.mrc")
    size = (tmp_path / "m.mrc").stat().st_size
    assert direct.dtype == np.float32 and np.array_equal(direct, data)
    assert bool(flags and flags[0] & direct_io._O_DIRECT) == (size >= direct_io.MIN_DIRECT_BYTES)
    assert not direct_io._direct_refused
    monkeypatch.setattr(direct_io, "_O_DIRECT", 0)
    assert np.array_equal(read_mrc_data(tmp_path / "m.mrc"), data)


def test_direct_read_falls_back_when_reads_are_refused(tmp_path, monkeypatch):
    """A file system that accepts O_DIRECT at open but refuses the reads (EINVAL) gets a normal read."""
    import errno
    real_readv, calls = os.readv, []

    def refuse_direct(fd, buffers):
        if not calls:
            calls.append(1)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_readv(fd, buffers)
    data = _odd_mrc(tmp_path / "m.mrc", (80, 80, 80), 0)
    monkeypatch.setattr(direct_io.os, "readv", refuse_direct)
    monkeypatch.setattr(direct_io, "_direct_refused", set())
    assert np.array_equal(read_mrc_data(tmp_path / "m.mrc"), data)
    assert direct_io._direct_refused and calls
