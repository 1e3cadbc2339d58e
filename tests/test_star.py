"""relion_py.io.star: byte-exact round trips of RELION's STAR files, RELION's number formatting, typing on
reading, clear errors on bad input, atomic writing."""
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from relion_py.runtime.errors import RelionPyError
from relion_py.io.atomic import atomic_output
from relion_py.io.star import format_value, read_star, write_star
from relion_py.io.star_labels import label_type

FIXTURES = Path(__file__).parent / "data" / "fixtures"
# STAR files written by RELION (synthetic/ and variants/ hold generator-written inputs).
RELION_STAR = sorted(p for p in FIXTURES.glob("*/*.star") if p.parent.name not in ("synthetic", "variants"))


def test_fixture_star_files_are_found():
    assert len(RELION_STAR) >= 37
    assert any(p.name == "motion.star" for p in RELION_STAR)


@pytest.mark.parametrize("path", RELION_STAR, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_relion_star_round_trip_is_byte_identical(path, tmp_path):
    out = tmp_path / path.name
    write_star(out, read_star(path))
    assert out.read_bytes() == path.read_bytes()


GENERATOR_STAR = sorted((FIXTURES / "variants").glob("*.star")) + [
    FIXTURES / "synthetic/tilt_series/TS_01.star"]


@pytest.mark.parametrize("path", GENERATOR_STAR, ids=lambda p: p.name)
def test_generator_inputs_read_and_round_trip_through_relion_format(path, tmp_path):
    blocks = read_star(path)
    write_star(tmp_path / "a.star", blocks)
    write_star(tmp_path / "b.star", read_star(tmp_path / "a.star"))
    assert (tmp_path / "a.star").read_bytes() == (tmp_path / "b.star").read_bytes()


def test_reading_uses_relion_types():
    blocks = read_star(FIXTURES / "a_subtomo_stack2d/particles.star")
    assert blocks["general"] == {"rlnTomoSubTomosAre2DStacks": True}
    optics, particles = blocks["optics"], blocks["particles"]
    assert optics["rlnImageSize"].dtype == np.int64 and optics["rlnImageSize"][0] == 48
    assert optics["rlnCtfDataAreCtfPremultiplied"].dtype == bool
    assert optics["rlnOpticsGroupName"][0] == "opticsGroup1"
    assert particles["rlnAngleRot"].dtype == np.float64 and particles["rlnAngleRot"][0] == -165.07948
    frames = particles["rlnTomoVisibleFrames"][2]
    assert isinstance(frames, list) and frames[:10] == [1, 1, 1, 1, 1, 1, 1, 0, 0, 1]
    zernike = read_star(FIXTURES / "variants/particles_zernike.star")["optics"]["rlnEvenZernike"][0]
    assert zernike == [0.05, 30.0, 0.1, -20.0, 800.0]


@pytest.mark.parametrize("value, text", [
    (0.0, "    0.000000"),
    (139.314805, "  139.314805"),
    (-150.515215, "  -150.51522"),        # negatives lose the 6th decimal (%12.5f)
    (-0.038289, "    -0.03829"),
    (0.001, "    0.001000"),
    (0.0009, "9.000000e-04"),            # 0 < |v| < 0.001: %12.6e
    (-0.0009, "-9.00000e-04"),
    (100000.0, "100000.00000"),          # not > 100000: %12.6f cut to 12 characters
    (-100000.0, "-100000.0000"),
    (123456.7, "1.234567e+05"),
    (1e-100, "1.000000e-10"),            # 3-digit exponent cut to 12 characters
    (-2.5e-150, "-2.50000e-15"),
    (float("nan"), "         nan"),
    (float("inf"), "         inf"),
    (np.float32(0.1), "    0.100000"),
    ("2.5", "    2.500000"),
])
def test_double_format(value, text):
    assert format_value("rlnAngleRot", value) == text


@pytest.mark.parametrize("label, value, text", [
    ("rlnImageSize", 48, "          48"),
    ("rlnImageSize", np.int64(-3), "          -3"),
    ("rlnImageSize", "7", "           7"),
    ("rlnTomoSubTomosAre2DStacks", True, "           1"),
    ("rlnTomoSubTomosAre2DStacks", 0, "           0"),
    ("rlnImageName", "a/b.mrcs", "a/b.mrcs"),
    ("rlnImageName", "a b", '"a b"'),
    ("rlnImageName", "", '""'),
    ("rlnImageName", "'quoted", "\"'quoted\""),
    ("rlnImageName", 'say "hi" now', '"say "hi\a" now"'),  # BEL before a quote that precedes a blank
    ("rlnImageName", 'a "b"c', '"a "b\a"c"'),              # ... or the last character (RELION's test)
    ("rlnTomoName", "1", "1"),
    ("rlnTomoVisibleFrames", [1, 0, 1], "[1,0,1]"),
    ("rlnTomoVisibleFrames", np.array([0, 1], np.int8), "[0,1]"),
    ("rlnTomoVisibleFrames", "[1,1,0]", "[1,1,0]"),
    ("rlnTomoVisibleFrames", [], "[]"),
    ("rlnEvenZernike", "[0.05,30.0,0.1,-20.0,800.0]", "[0.05,30,0.1,-20,800]"),
    ("rlnEvenZernike", (0.1 + 0.2, 1e-20, 123456789.123456), "[0.3,1e-20,123456789.123]"),
    ("rlnTomoProjX", np.array([1.0, -0.5, 0.0, 120.0]), "[1,-0.5,0,120]"),
    ("myOwnLabel", 1.5, "1.5"),
    ("myOwnLabel", "1.50", "1.50"),
])
def test_value_format(label, value, text):
    assert format_value(label, value) == text


def test_label_types():
    assert label_type("rlnAngleRot") == "double"
    assert label_type("rlnTomoVisibleFrames") == "vector_int"
    assert label_type("rlnTomoProjW") == "vector_double"
    assert label_type("rlnTomoSubTomosAre2DStacks") == "bool"
    assert label_type("rlnOpticsGroup") == "int"
    assert label_type("rlnTomoParticleName") == "string"
    assert label_type("rlnKullbackLeibnerDivergence") == "double"  # RELION's alternative spelling
    assert label_type("myOwnLabel") is None and label_type("rlnUnknownLabel") is None


def test_write_layout(tmp_path):
    blocks = {
        "general": {"rlnTomoSubTomosAre2DStacks": 1, "myNote": "1.50"},
        "optics": pd.DataFrame({"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"]}),
        "empty": pd.DataFrame({"rlnAngleRot": []}),  # RELION does not write tables without rows
        "particles": pd.DataFrame({"rlnTomoName": ["TS_01", "1"], "rlnAngleRot": [-1.5, 200000.0],
                                   "rlnTomoVisibleFrames": [[1, 0], [1, 1]], "myCol": ["x y", "1.50"]}),
    }
    write_star(tmp_path / "t.star", blocks)
    assert (tmp_path / "t.star").read_text() == (
        "\n# version 50001\n\ndata_general\n\n"
        "_rlnTomoSubTomosAre2DStacks" + " " * 12 + "           1\n"
        "_myNote" + " " * 32 + "1.50\n"
        " \n"
        "\n# version 50001\n\ndata_optics\n\n"
        "loop_ \n_rlnOpticsGroup #1 \n_rlnOpticsGroupName #2 \n"
        "           1 opticsGroup1 \n"
        " \n"
        "\n# version 50001\n\ndata_particles\n\n"
        "loop_ \n_rlnTomoName #1 \n_rlnAngleRot #2 \n_rlnTomoVisibleFrames #3 \n_myCol #4 \n"
        "     TS_01     -1.50000      [1,0]      \"x y\" \n"
        "         1 2.000000e+05      [1,1]       1.50 \n"
        " \n")
    back = read_star(tmp_path / "t.star")
    assert back["particles"]["rlnTomoName"].tolist() == ["TS_01", "1"]
    assert back["particles"]["myCol"].tolist() == ["x y", "1.50"]  # unknown labels keep their text
    assert back["general"]["myNote"] == "1.50" and "empty" not in back


def test_unknown_label_in_list_table_is_not_quoted(tmp_path):
    # RELION writes unknown list values raw (quoted only in loops), even when that breaks re-reading.
    write_star(tmp_path / "o.star", {"": {"myNote": "a b"}})
    assert (tmp_path / "o.star").read_text().splitlines()[5] == "_myNote" + " " * 16 + "a b"


def test_list_table_padding_uses_longest_label(tmp_path):
    write_star(tmp_path / "o.star", {"": {"rlnTomoParticlesFile": "a/particles.star", "rlnTomoName": "x"}})
    lines = (tmp_path / "o.star").read_text().splitlines()
    assert lines[5] == "_rlnTomoParticlesFile" + " " * 12 + "a/particles.star"
    assert lines[6] == "_rlnTomoName" + " " * 21 + "x"
    assert lines[6].index("x") == len("rlnTomoParticlesFile") + 13


PARTICLES = FIXTURES / "a_subtomo_stack2d/particles.star"


def _bad_files(tmp):
    text = PARTICLES.read_text()
    cut = text.index("TS_01/5") + 40  # inside a particle row, after a few numbers
    files = {
        "missing": tmp / "nope.star",
        "empty": tmp / "empty.star",
        "binary": tmp / "binary.star",
        "not_star": tmp / "text.star",
        "truncated": tmp / "truncated.star",
        "truncated_at_newline": tmp / "truncated_nl.star",
        "extra_value": tmp / "extra.star",
        "bad_number": tmp / "number.star",
    }
    files["empty"].write_text("")
    noise = np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes()
    files["binary"].write_bytes(noise + b"\n")
    files["not_star"].write_text("hello\nworld\n")
    files["truncated"].write_text(text[:cut])
    files["truncated_at_newline"].write_text(text[:cut] + "\n")
    files["extra_value"].write_text("data_x\n\nloop_\n_rlnAngleRot #1\n_rlnTomoName #2\n1 a\n2 b 3\n")
    files["bad_number"].write_text("data_x\n\nloop_\n_rlnAngleRot #1\n_rlnTomoName #2\n1 a\nabc b\n")
    return files


@pytest.mark.parametrize("case", ["missing", "empty", "binary", "not_star", "truncated",
                                  "truncated_at_newline", "extra_value", "bad_number"])
def test_bad_star_input_is_one_clear_error(case, tmp_path):
    path = _bad_files(tmp_path)[case]
    with pytest.raises(RelionPyError) as err:
        read_star(path)
    message = str(err.value)
    assert str(path) in message and "\n" not in message


def test_failed_write_leaves_nothing_behind(tmp_path):
    target = tmp_path / "out.star"
    target.write_text("old\n")
    bad = {"t": pd.DataFrame({"rlnAngleRot": [1.0], "rlnTomoVisibleFrames": ["not a vector"]})}
    with pytest.raises(ValueError):
        write_star(target, bad)
    assert target.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["out.star"]


def test_atomic_output(tmp_path):
    target = tmp_path / "f.bin"
    with pytest.raises(RuntimeError):
        with atomic_output(target) as tmp:
            Path(tmp).write_bytes(b"half")
            assert Path(tmp).parent == tmp_path and not target.exists()
            raise RuntimeError("interrupted")
    assert os.listdir(tmp_path) == []
    with atomic_output(target) as tmp:
        Path(tmp).write_bytes(b"whole")
    assert target.read_bytes() == b"whole" and os.listdir(tmp_path) == ["f.bin"]


def test_complete_file_without_final_newline_is_read(tmp_path):
    path = tmp_path / "no_newline.star"
    path.write_text("data_x\n\nloop_\n_rlnAngleRot #1\n_rlnTomoName #2\n1 a\n2 b")
    table = read_star(path)["x"]
    assert list(table["rlnTomoName"]) == ["a", "b"] and list(table["rlnAngleRot"]) == [1.0, 2.0]
