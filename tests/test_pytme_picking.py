"""A RELION-5 picking STAR file as pyTME >= 0.3 writes it (``pytme postprocess --output-format relion5``):
an optics table, rlnTomoName, rlnCenteredCoordinateX/Y/ZAngst and angles, but no rlnImageName."""
from pathlib import Path

from conftest import FIXTURES, mirror_fixtures, working_directory
from relion_py.cli.extract import main as extract_main
from relion_py.cli.reconstruct import main as reconstruct_main

EXTRACT = ["--stack2d", "--b", "32", "--crop", "24", "--j", "2"]


def write_pytme_relion5_picks(path):
    """The coordinates of variants/particles_picked.star, with angles and a score, as pyTME lists its
    template-matching peaks for RELION 5."""
    rows = [line.split() for line in (FIXTURES / "variants" / "particles_picked.star").read_text().splitlines()
            if line.strip().startswith("TS_01")]
    text = ("\n# version 50001\n\ndata_optics\n\nloop_\n_rlnOpticsGroup #1\n_rlnOpticsGroupName #2\n"
            "_rlnSphericalAberration #3\n_rlnVoltage #4\n_rlnTomoTiltSeriesPixelSize #5\n"
            "_rlnAmplitudeContrast #6\n_rlnImageDimensionality #7\n"
            "1 opticsGroup1 2.700000 300.000000 5.000000 0.100000 3\n\n"
            "\n# version 50001\n\ndata_particles\n\nloop_\n_rlnTomoName #1\n_rlnCenteredCoordinateXAngst #2\n"
            "_rlnCenteredCoordinateYAngst #3\n_rlnCenteredCoordinateZAngst #4\n_rlnAngleRot #5\n"
            "_rlnAngleTilt #6\n_rlnAnglePsi #7\n_rlnOpticsGroup #8\n_pytmeScore #9\n")
    for k, (name, x, y, z) in enumerate(rows):
        text += f"{name}\t{x}\t{y}\t{z}\t{10.0 * k:.6f}\t{90.0 - k:.6f}\t{-5.0 * k:.6f}\t1\t{0.9 - 0.01 * k:.6f}\n"
    Path(path).write_text(text + "\n")


def test_reconstructing_picks_says_what_to_do(tmp_path, capsys):
    picks = tmp_path / "pytme_relion5.star"
    write_pytme_relion5_picks(picks)
    for extra in (["--3d_rot"], []):
        assert reconstruct_main(["--i", str(picks), "--o", str(tmp_path / "rec.mrc"), *extra]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        assert "particles without images" in err
        assert f"relion-py-extract --p {picks}" in err and "--t tomograms.star" in err
        assert f"relion-py-reconstruct --p {picks} --t" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pytme_relion5.star"]


def test_extract_accepts_pytme_picks(tmp_path):
    """Same images as RELION's own picking-table case (h13), whose coordinates they are."""
    work = mirror_fixtures(tmp_path / "project", "none")
    write_pytme_relion5_picks(work / "pytme.star")
    with working_directory(work):
        assert extract_main(["--t", "synthetic/tomograms.star", "--p", "pytme.star", "--o", "out/", *EXTRACT]) == 0
    ours = sorted((work / "out" / "Subtomograms" / "TS_01").iterdir())
    theirs = FIXTURES / "h13_subtomo_stack2d_picked" / "Subtomograms" / "TS_01"
    assert len(ours) == 20
    for path in ours:
        assert path.read_bytes()[1024:] == (theirs / path.name).read_bytes()[1024:], path.name
    star = (work / "out" / "particles.star").read_text()
    assert "rlnImageName" in star and "pytmeScore" in star
