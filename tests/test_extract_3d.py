"""relion-py-extract's 3-D pseudo-subtomograms: RELION 5.0.1's own fixture cases, every option, and invariants
where RELION has no case (the kernels' own tests: test_tomo_insertion.py)."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.fft
import scipy.ndimage

from conftest import FIXTURES, compare_with_relion, mirror_fixtures, working_directory
from relion_py.cli.extract import main
from relion_py.tomography.dose import dose_weights, dose_x_ranges
from relion_py.tomography.half_grid import half_to_centred_full
from relion_py.tomography.geometry import euler_to_matrix
from relion_py.io.mrc import float32_to_relion_float16, read_mrc
from relion_py.io.star import read_star, write_star
from relion_py.kernels.tomography.insertion_forward import insert_slices_forward
from relion_py.programs.subtomo import insertion_axes
from relion_py.project.particles import ParticleSet
from relion_py.project.tomograms import TomogramSet

CASES_3D = [
    "e_subtomo_3d",
    "h1_subtomo_3d_apply_orientations",
    "h5_subtomo_3d_gridprecorr_circleprecrop",
    "h8_subtomo_3d_motion",
    "h9_subtomo_3d_bin2",
    "h10_subtomo_3d_extra_outputs",
    "h11_subtomo_3d_cone_weight",
]
E_ARGS = ["--t", "synthetic/tomograms.star", "--p", "synthetic/particles.star", "--b", "48", "--crop", "32", "--j", "2"]
rng = np.random.default_rng(11)


@pytest.mark.parametrize("case", CASES_3D)
def test_3d_matches_relion(case, relion_case):
    relion_case(case, main)


# --------------------------------------------------------------------------------------------------------
# Running the program on variants of the fixture project
# --------------------------------------------------------------------------------------------------------

@pytest.fixture
def project(tmp_path):
    """A project folder with the fixture inputs linked (read-only) and RELION's e_subtomo_3d outputs."""
    return mirror_fixtures(tmp_path / "project", "none")


def run(project, args, out):
    with working_directory(project):
        status = main(args + ["--o", out + "/"])
    assert status == 0
    return project / out


def volume(path):
    return np.asarray(read_mrc(path)[0], np.float32)


def subtomo_files(folder):
    return sorted(p.relative_to(folder) for p in (folder / "Subtomograms").rglob("*.mrc"))


def _sample(vol, coords):
    return scipy.ndimage.map_coordinates(vol, coords, order=1, mode="constant")


def test_average_of_pseudo_subtomograms_reproduces_the_ground_truth(project):
    """Sum the 20 particles' data spectra rotated into the reference frame, divide by the summed CTF²
    weights: the particle of synthetic/ground_truth appears (and not its mirror image)."""
    out = run(project, E_ARGS, "avg")
    star = read_star(out / "particles.star")["particles"]
    s = 32
    truth = volume(FIXTURES / "synthetic" / "ground_truth" / "particle_box32.mrc")
    k = np.arange(s) - s // 2
    kz, ky, kx = np.meshgrid(k, k, k, indexing="ij")
    grid = np.stack([kx, ky, kz]).reshape(3, -1)                   # (x, y, z) frequencies of the output
    numerator, denominator = np.zeros(s ** 3, complex), np.zeros(s ** 3)
    for _, row in star.iterrows():
        data = volume(project / row["rlnImageName"])
        ctf = volume(project / row["rlnCtfImage"])[:s]
        spectrum = np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(data)))
        ctf_full = half_to_centred_full(ctf)
        a = euler_to_matrix(row["rlnAngleRot"], row["rlnAngleTilt"], row["rlnAnglePsi"])
        p = a @ grid                                                 # reference k ↦ particle frame A·k
        coords = (p[::-1] + s // 2)                                  # array order (z, y, x), centred
        numerator += _sample(spectrum.real, coords) + 1j * _sample(spectrum.imag, coords)
        denominator += _sample(ctf_full.astype(np.float64), coords)
    average = numerator / (denominator + 0.05 * denominator.mean())
    average[np.sqrt((grid ** 2).sum(axis=0)) > s // 2 - 1] = 0
    real = np.fft.fftshift(np.fft.ifftn(np.fft.ifftshift(average.reshape(s, s, s)))).real
    mask = np.sqrt(kx ** 2 + ky ** 2 + kz ** 2) < 12
    corr = np.corrcoef(real[mask], truth[mask])[0, 1]
    mirrored = np.corrcoef(real[mask], truth[::-1][mask])[0, 1]
    assert corr > 0.95 and mirrored < 0.7, (corr, mirrored)       # measured: 0.98 and 0.48


def test_float16_files_are_the_float32_volumes_rounded_as_relion_does(project):
    ref = run(project, E_ARGS, "f32")
    half = run(project, E_ARGS + ["--float16"], "f16")
    for rel in subtomo_files(ref):
        data32, _, mode32 = read_mrc_with_mode(ref / rel)
        data16, _, mode16 = read_mrc_with_mode(half / rel)
        assert (mode32, mode16) == (2, 12)
        np.testing.assert_array_equal(data16, float32_to_relion_float16(data32).astype(np.float16))
        # header statistics are those of the float32 values
        assert (ref / rel).read_bytes()[76:88] == (half / rel).read_bytes()[76:88]


def read_mrc_with_mode(path):
    raw = Path(path).read_bytes()
    mode = int(np.frombuffer(raw[12:16], "<i4")[0])
    data, pixel_size = read_mrc(path)[:2]
    return np.asarray(data), pixel_size, mode


def test_no_comb_and_only_do_unfinished(project):
    out = run(project, E_ARGS + ["--no_comb"], "nocomb")
    assert not list(out.rglob("*_weights.mrc")) and len(list(out.rglob("*_data.mrc"))) == 20
    star = read_star(out / "particles.star")["particles"]
    assert all(str(v).endswith("_weights.mrc") for v in star["rlnCtfImage"])   # still named, as in RELION
    # --only_do_unfinished skips particles all of whose files exist (whatever they hold), redoes the others:
    # with --no_comb that is _data.mrc alone
    marker = out / "Subtomograms" / "TS_01" / "3_data.mrc"
    marker.write_bytes(b"placeholder")
    (out / "Subtomograms" / "TS_01" / "5_data.mrc").unlink()
    run(project, E_ARGS + ["--no_comb", "--only_do_unfinished"], "nocomb")
    assert marker.read_bytes() == b"placeholder"
    assert not list(out.rglob("*_weights.mrc"))
    # without --no_comb every particle lacks its _weights.mrc: all are redone
    run(project, E_ARGS + ["--only_do_unfinished"], "nocomb")
    assert marker.read_bytes() != b"placeholder"
    assert len(list(out.rglob("*_weights.mrc"))) == 20
    ok, report = compare_with_relion(FIXTURES / "e_subtomo_3d" / "Subtomograms" / "TS_01" / "5_data.mrc",
                                     out / "Subtomograms" / "TS_01" / "5_data.mrc")
    assert ok, report
    ok, report = compare_with_relion(FIXTURES / "e_subtomo_3d" / "Subtomograms" / "TS_01" / "5_data.mrc",
                                     out / "Subtomograms" / "TS_01" / "5_data.mrc")
    assert ok, report


def test_every_particle_dropped_writes_an_empty_table_and_exits_0(project, capsys):
    out = run(project, E_ARGS + ["--min_frames", "41"], "none_left")
    assert "20 particle(s) were removed because they are visible in fewer than --min_frames 41" in \
        capsys.readouterr().err
    # like RELION's MetaDataTable::write, the empty particle table is left out of particles.star
    blocks = read_star(out / "particles.star")
    assert "optics" in blocks and len(blocks.get("particles", [])) == 0
    assert not (out / "Subtomograms").exists() or not list((out / "Subtomograms").rglob("*.mrc"))


def test_env_and_diag_are_accepted_without_effect(project, capsys):
    out = run(project, E_ARGS + ["--env", "3", "--diag"], "envdiag")
    assert "--env has no effect" in capsys.readouterr().err
    ok, report = compare_with_relion(FIXTURES / "e_subtomo_3d" / "Subtomograms", out / "Subtomograms")
    assert ok, report


@pytest.mark.parametrize("particles", ["variants/particles_relion4.star", "variants/particles_picked.star"])
def test_relion4_and_picked_particles_give_relion_e_volumes(project, particles):
    """RELION-4 coordinates (uncentred ts px) and a picking file (no optics table, no names, no angles) describe
    the same particles as synthetic/particles.star: with identity subtomogram frames the volumes are RELION's
    e_subtomo_3d files (up to the print rounding of the coordinates)."""
    args = list(E_ARGS)
    args[3] = particles
    out = run(project, args, "variant")
    ok, report = compare_with_relion(FIXTURES / "e_subtomo_3d" / "Subtomograms", out / "Subtomograms")
    assert ok, report


def relion4_tomograms_star(project):
    """synthetic/tomograms.star rewritten in the RELION-4 layout: no rlnTomoTiltSeriesStarFile, the per-tilt
    tables (with rlnTomoProjX/Y/Z/W projection matrices instead of angles and shifts) inside tomograms.star."""
    with working_directory(project):
        tomograms = TomogramSet("synthetic/tomograms.star")
        projections = {t.name: t.projections for t in tomograms}
    blocks = read_star(project / "synthetic" / "tomograms.star")
    table = blocks["global"].drop(columns=["rlnTomoTiltSeriesStarFile"])
    out = {"global": table}
    for tomo in tomograms:
        frames = tomo.frames.drop(columns=["rlnTomoXTilt", "rlnTomoYTilt", "rlnTomoZRot", "rlnTomoXShiftAngst",
                                           "rlnTomoYShiftAngst"]).copy()
        proj = projections[tomo.name]
        for i, label in enumerate(("rlnTomoProjX", "rlnTomoProjY", "rlnTomoProjZ", "rlnTomoProjW")):
            frames[label] = ["[" + ",".join(repr(float(v)) for v in row) + "]" for row in proj[:, i]]
        out[tomo.name] = frames
    tomograms.close()
    path = project / "tomograms_relion4.star"
    write_star(path, out)
    return path


def test_relion4_tomograms_star_gives_relion_e_volumes(project):
    relion4_tomograms_star(project)
    args = list(E_ARGS)
    args[1] = "tomograms_relion4.star"
    out = run(project, args, "tomo4")
    ok, report = compare_with_relion(FIXTURES / "e_subtomo_3d" / "Subtomograms", out / "Subtomograms")
    assert ok, report


def two_tomogram_project(project):
    """TS_02: the tilt images of TS_01 with other CTF rows (defocus +4000 Å, other scale) and Q0 0.07, its own
    optics group; particles: synthetic/particles.star for TS_01 and a copy for TS_02 (optics group 2)."""
    ts = read_star(project / "synthetic" / "tilt_series" / "TS_01.star")["TS_01"].copy()
    ts["rlnDefocusU"] = ts["rlnDefocusU"] + 4000.0
    ts["rlnDefocusV"] = ts["rlnDefocusV"] + 4000.0
    ts["rlnCtfScalefactor"] = 0.9
    write_star(project / "TS_02.star", {"TS_02": ts})
    glob = read_star(project / "synthetic" / "tomograms.star")["global"]
    two = glob.copy()
    two.loc[1] = glob.loc[0]
    two.loc[1, "rlnTomoName"] = "TS_02"
    two.loc[1, "rlnTomoTiltSeriesStarFile"] = "TS_02.star"
    two.loc[1, "rlnAmplitudeContrast"] = 0.07
    two.loc[1, "rlnOpticsGroupName"] = "opticsGroup2"
    write_star(project / "tomograms2.star", {"global": two})
    write_star(project / "tomograms_ts02.star", {"global": two.loc[[1]].reset_index(drop=True)})
    blocks = read_star(project / "synthetic" / "particles.star")
    optics = blocks["optics"].copy()
    optics.loc[1] = optics.loc[0]
    optics.loc[1, "rlnOpticsGroup"] = 2
    optics.loc[1, "rlnOpticsGroupName"] = "opticsGroup2"
    optics.loc[1, "rlnAmplitudeContrast"] = 0.07
    p1 = blocks["particles"]
    p2 = p1.copy()
    p2["rlnTomoName"] = "TS_02"
    p2["rlnTomoParticleName"] = [n.replace("TS_01", "TS_02") for n in p1["rlnTomoParticleName"]]
    p2["rlnOpticsGroup"] = 2
    both = pd.concat([p2, p1], ignore_index=True)   # TS_02 first in the file: output follows tomograms.star
    write_star(project / "particles2.star", {"optics": optics, "particles": both})
    write_star(project / "particles_ts02.star", {"optics": optics, "particles": p2})


def test_several_tomograms_and_optics_groups_use_their_own_tables(project):
    two_tomogram_project(project)
    out = run(project, ["--t", "tomograms2.star", "--p", "particles2.star", "--b", "48", "--crop", "32", "--j", "2"],
              "two")
    star = read_star(out / "particles.star")["particles"]
    assert list(star["rlnTomoName"]) == ["TS_01"] * 20 + ["TS_02"] * 20
    ok, report = compare_with_relion(FIXTURES / "e_subtomo_3d" / "Subtomograms" / "TS_01", out / "Subtomograms" / "TS_01")
    assert ok, report
    alone = run(project, ["--t", "tomograms_ts02.star", "--p", "particles_ts02.star", "--b", "48", "--crop", "32",
                          "--j", "1"], "alone")
    for rel in subtomo_files(alone):
        np.testing.assert_array_equal(volume(out / rel), volume(alone / rel))
    assert not np.allclose(volume(out / "Subtomograms/TS_02/1_data.mrc"), volume(out / "Subtomograms/TS_01/1_data.mrc"),
                           atol=1e-3)


def test_sum_and_no_writing(project):
    ref = run(project, E_ARGS, "per_particle")
    out = run(project, E_ARGS + ["--sum", "--no_writing"], "sums")
    assert not list((out / "Subtomograms").rglob("*.mrc"))
    data = sum(volume(ref / rel) for rel in subtomo_files(ref) if rel.name.endswith("_data.mrc"))
    weights = sum(volume(ref / rel)[:32] for rel in subtomo_files(ref) if rel.name.endswith("_weights.mrc"))
    np.testing.assert_allclose(volume(out / "sum_data.mrc"), data, rtol=1e-5, atol=1e-5 * np.abs(data).max())
    np.testing.assert_allclose(volume(out / "sum_weight.mrc"), half_to_centred_full(weights), rtol=1e-5)
    div = volume(out / "sum_div.mrc")
    assert div.shape == (32, 32, 32) and np.isfinite(div).all()


# --------------------------------------------------------------------------------------------------------
# 3-D = Fourier insertion of the 2-D stacks (crop = box, bin 1): checks each option's effect on the 3-D
# volumes against relion-py's --stack2d output (itself checked against RELION by the a-h13 cases).
# (Not with --no_circle_crop: then the 3-D path inserts the 2-D spectra directly, whose x = 0 and Nyquist
# columns are not Hermitian, so they differ from the spectra of the written real images.)
# --------------------------------------------------------------------------------------------------------

def reinserted_from_stack2d(project, stack_dir, tomograms_star, particles_star, box, cutoff=0.01):
    """{particle name: (data volume, multiplicity)} by inserting the stack2d images as §9.4 says."""
    with working_directory(project):
        tomograms = TomogramSet(tomograms_star)
        particles = ParticleSet(particles_star, tomograms)
        projections = {t.name: t.projections for t in tomograms}
    names = list(particles.table["rlnTomoParticleName"].astype(str))
    out = {}
    star = read_star(stack_dir / "particles.star")["particles"]
    for _, row in star.iterrows():
        tomo = tomograms.by_name[row["rlnTomoName"]]
        visible = np.flatnonzero(np.array(row["rlnTomoVisibleFrames"]))
        stack = volume(project / row["rlnImageName"])
        spectra = scipy.fft.rfft2(stack, norm="ortho")
        r = names.index(str(row["rlnTomoParticleName"]))
        frame = particles.subtomogram_matrices([r])[0]
        axes = insertion_axes(projections[tomo.name][visible, :3, :3], np.repeat(frame[None], len(visible), 0), 1.0)
        x_ranges = dose_x_ranges(dose_weights(tomo.dose, box, tomo.pixel_size, tomo.bfactor_per_dose), cutoff)
        vol, cm = insert_slices_forward(spectra, np.zeros(spectra.shape, np.float32), np.array([0]),
                                        np.array([len(visible)]), visible, axes, x_ranges, box,
                                        centred_source=True, decentre=True)
        out[str(row["rlnTomoParticleName"])] = (scipy.fft.irfftn(vol[0], s=(box,) * 3, norm="ortho"), cm[0, box:])
    tomograms.close()
    return out


@pytest.mark.parametrize("tomograms,particles,extra", [
    ("variants/tomograms_ctf.star", "variants/particles_zernike.star", []),
    ("synthetic/tomograms.star", "synthetic/particles.star", ["--whiten"]),
    ("synthetic/tomograms.star", "synthetic/particles.star", ["--no_ctf", "--no_ic"]),
    ("synthetic/tomograms.star", "synthetic/particles.star", ["--max_dose", "60", "--min_frames", "21",
                                                              "--cutoff_fract", "0.2"]),
    ("synthetic/tomograms.star", "variants/particles_subtomo.star", ["--dont_apply_offsets"]),
    ("synthetic/tomograms.star", "synthetic/particles.star", ["--circle_precrop"]),
])
def test_3d_volumes_are_the_inserted_2d_stacks(project, tomograms, particles, extra):
    box = 24
    common = ["--t", tomograms, "--p", particles, "--b", str(box), "--j", "2"] + extra
    stacks = run(project, common + ["--stack2d"], "stacks")
    vols = run(project, common, "vols")
    cutoff = float(extra[extra.index("--cutoff_fract") + 1]) if "--cutoff_fract" in extra else 0.01
    expected = reinserted_from_stack2d(project, stacks, tomograms, particles, box, cutoff)
    star = read_star(vols / "particles.star")["particles"]
    assert list(star["rlnTomoParticleName"]) == list(expected)
    for _, row in star.iterrows():
        data, mult = expected[row["rlnTomoParticleName"]]
        got = volume(project / row["rlnImageName"])
        assert np.abs(got - data).max() <= 2e-6 * np.abs(data).max()
        np.testing.assert_array_equal(volume(project / row["rlnCtfImage"])[box:], mult)
