"""relion-py-reconstruct in image mode (relion_reconstruct): RELION fixture cases, files written by other
tools (pyTME, Warp), ground truth, bad input, and the kernels of the classic BackProjector."""
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.fft
import scipy.ndimage

import relion_compare
from conftest import FIXTURES, compare_with_relion, mirror_fixtures, set_star_value, working_directory
from relion_py.cli.reconstruct import choose_mode, main
from relion_py.programs.reconstruct import ParticlesWithoutImages
from relion_py.io.mrc import read_mrc, write_mrc
from relion_py.io.particle_images import ImageReader
from relion_py.runtime.errors import RelionPyError
from relion_py.runtime.options import parse_options
from relion_py.tomography.geometry import euler_to_matrix
from relion_py.programs.reconstruct_images import ReconstructImagesOptions, reconstruct_images

CASES = ["g1_reconstruct_3drot", "g2_reconstruct_spa2d", "j1_reconstruct_spa2d_c3",
         "j2_reconstruct_spa2d_maxres_pad1", "j3_reconstruct_spa2d_gridding_iter",
         "j4_reconstruct_3drot_noctf", "j5_reconstruct_spa2d_nn"]
GROUND_TRUTH = FIXTURES / "synthetic" / "ground_truth"
#: masked correlation (r < 0.4 box) of RELION's g1 reconstruction with the ground truth (fixture README)
RELION_G1_CORR = 0.9759


# --------------------------------------------------------------------------------------------------------
# RELION fixture cases
# --------------------------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_fixture_case(case, relion_case):
    relion_case(case, main)


def test_threads_give_the_same_map(tmp_path):
    """--j 2 prepares particles and inserts slabs in parallel; the additions keep a fixed order."""
    work = mirror_fixtures(tmp_path / "project", "none")
    (work / "out").mkdir()
    with working_directory(work):
        for j in ("1", "2"):
            assert main(["--i", "e_subtomo_3d/particles.star", "--o", f"out/j{j}.mrc", "--3d_rot", "--ctf",
                         "--j", j, "--verb", "0"]) == 0
    a, b = read_mrc(work / "out" / "j1.mrc")[0], read_mrc(work / "out" / "j2.mrc")[0]
    np.testing.assert_array_equal(a, b)            # the thread count does not change the sums
    ok, report = compare_with_relion(FIXTURES / "g1_reconstruct_3drot" / "rec.mrc", work / "out" / "j2.mrc")
    assert ok, report


def test_python_api(tmp_path):
    with working_directory(FIXTURES):
        result = reconstruct_images(ReconstructImagesOptions(i="synthetic/spa2d/particles.star",
                                                             o=str(tmp_path / "rec.mrc"), ctf=True, subset=1,
                                                             verb=0))
    assert result.n_particles == 120 and result.box == 48 and result.pixel_size == 5.0
    vol, px = read_mrc(tmp_path / "rec.mrc")
    assert vol.shape == (48, 48, 48) and px == 5.0
    np.testing.assert_array_equal(vol, result.volume.astype(np.float32))


# --------------------------------------------------------------------------------------------------------
# Files written by other tools
# --------------------------------------------------------------------------------------------------------

def _star_table(name, labels, rows, version="30001"):
    text = f"\n# version {version}\n\ndata_{name}\n\nloop_\n"
    text += "".join(f"_{label} #{k + 1}\n" for k, label in enumerate(labels))
    return text + "".join(" ".join(str(v) for v in row) + "\n" for row in rows) + "\n"


def _pytme_star(path, images, ctf_images, angles, box, pixel, premultiplied, image_size=True):
    """A particle file as pyTME's ``postprocess --output_format relion`` writes it for extracted 3-D boxes:
    '# version 30001', an optics table, rlnCoordinateX/Y/Z, absolute rlnImageName, optional rlnCtfImage."""
    optics = ["rlnOpticsGroup", "rlnOpticsGroupName", "rlnSphericalAberration", "rlnVoltage",
              "rlnImagePixelSize", "rlnImageDimensionality", "rlnAmplitudeContrast",
              "rlnCtfDataAreCtfPremultiplied"]
    orow = [1, "opticsGroup1", 2.7, 300.0, f"{pixel:.6f}", 3, 0.1, int(premultiplied)]
    if image_size:
        optics.append("rlnImageSize")
        orow.append(box)
    labels = ["rlnMicrographName", "rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ", "rlnAngleRot",
              "rlnAngleTilt", "rlnAnglePsi", "rlnImageName"]
    if ctf_images is not None:
        labels.append("rlnCtfImage")
    labels += ["rlnOpticsGroup", "pytmeScore"]
    rows = []
    for k, (img, (rot, tilt, psi)) in enumerate(zip(images, angles)):
        row = ["tomo.mrc", 100 + k, 120 - k, 40 + k % 7, f"{rot:.6f}", f"{tilt:.6f}", f"{psi:.6f}", img]
        if ctf_images is not None:
            row.append(ctf_images[k])
        rows.append(row + [1, 0.5])
    Path(path).write_text(_star_table("optics", optics, [orow]) + _star_table("particles", labels, rows))


def _relion_particles():
    """(angles, data files, weight files) of RELION's 3-D pseudo-subtomograms (case e), absolute paths."""
    lines = (FIXTURES / "e_subtomo_3d" / "particles.star").read_text().split("data_particles")[1].splitlines()
    rows = [ln.split() for ln in lines if ln.strip().startswith("TS_01")]
    angles = [tuple(float(v) for v in r[5:8]) for r in rows]
    return angles, [str(FIXTURES / r[11]) for r in rows], [str(FIXTURES / r[12]) for r in rows]


def _weights_as_cube(weights_file, cube_file):
    """Rewrite a relion_tomo_subtomo weights file (half transform, z = 2y: CTF² then multiplicity) as a full
    centred cube, RELION's other rlnCtfImage layout (value at logical -k for frequency k)."""
    w = read_mrc(weights_file)[0]
    n = w.shape[1]
    half = w[:n]                                   # CTF², (kz, ky, kx) half transform
    q = np.where(np.arange(n) < n // 2 + 1, np.arange(n), np.arange(n) - n)    # signed kz, ky
    kx = np.arange(n // 2 + 1)
    cube = np.zeros((n, n, n), np.float32)
    # Friedel mates first (never read), then Fctf(k) = Ictf(-k) with the logical origin at n/2
    cube[np.ix_((n // 2 + q) % n, (n // 2 + q) % n, (n // 2 + kx) % n)] = half
    cube[np.ix_((n // 2 - q) % n, (n // 2 - q) % n, (n // 2 - kx) % n)] = half
    write_mrc(cube_file, cube, 5.0)


def test_pytme_star_of_relion_subtomograms_matches_relion(tmp_path):
    """RELION's own pseudo-subtomograms listed in a pyTME-style STAR file (version 30001 optics table,
    coordinates, absolute paths) with full-cube CTF volumes reconstruct to RELION's g1 map."""
    angles, data, weights = _relion_particles()
    cubes = []
    for k, wfile in enumerate(weights):
        cubes.append(str(tmp_path / f"ctf_{k}.mrc"))
        _weights_as_cube(wfile, cubes[-1])
    for image_size in (True, False):
        star = tmp_path / f"pytme_{image_size}.star"
        _pytme_star(star, data, cubes, angles, 32, 5.0, premultiplied=True, image_size=image_size)
        out = tmp_path / f"rec_{image_size}.mrc"
        assert main(["--i", str(star), "--o", str(out), "--3d_rot", "--ctf", "--verb", "0"]) == 0
        ok, report = compare_with_relion(FIXTURES / "g1_reconstruct_3drot" / "rec.mrc", out)
        assert ok, report


def test_warp_style_star_without_optics_matches_relion(tmp_path):
    """A Warp 3-D export (RELION 3.0 columns, no optics table: converted as RELION's StarConverter does)."""
    angles, data, weights = _relion_particles()
    labels = ["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ", "rlnAngleRot", "rlnAngleTilt",
              "rlnAnglePsi", "rlnMicrographName", "rlnMagnification", "rlnDetectorPixelSize",
              "rlnCtfMaxResolution", "rlnImageName", "rlnCtfImage", "rlnPixelSize", "rlnVoltage",
              "rlnSphericalAberration"]
    rows = [[10, 20, 30, f"{a[0]:.6f}", f"{a[1]:.6f}", f"{a[2]:.6f}", "TS_01.tomostar", 10000.0, 5.0, 10.0,
             d, w, 5.0, 300.0, 2.7] for a, d, w in zip(angles, data, weights)]
    star = tmp_path / "warp.star"
    star.write_text("\ndata_\n\nloop_\n" + "".join(f"_{lab}\n" for lab in labels)
                    + "".join("\t".join(map(str, r)) + "\n" for r in rows))
    out = tmp_path / "rec.mrc"
    assert main(["--i", str(star), "--o", str(out), "--3d_rot", "--verb", "0"]) == 0
    ok, report = compare_with_relion(FIXTURES / "j4_reconstruct_3drot_noctf" / "rec.mrc", out)
    assert ok, report


def test_star_without_optics_table_and_pixel_size(tmp_path):
    """A particle table without optics table that RELION cannot convert (no rlnMagnification /
    rlnDetectorPixelSize): read as is, CTF values from the rows, pixel size from --angpix."""
    text = (FIXTURES / "synthetic" / "spa2d" / "particles.star").read_text().split("data_particles")[1]
    header = [ln.split()[0][1:] for ln in text.splitlines() if ln.startswith("_")]
    rows = [ln.split() for ln in text.splitlines() if "@" in ln]
    labels = header + ["rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast"]
    absolute = [r[0].split("@")[0] + "@" + str(FIXTURES / r[0].split("@")[1]) for r in rows]
    rows = [[name] + r[1:] + ["300", "2.7", "0.1"] for name, r in zip(absolute, rows)]
    star = tmp_path / "legacy.star"
    star.write_text("\ndata_images\n\nloop_\n" + "".join(f"_{lab}\n" for lab in labels)
                    + "".join(" ".join(r) + "\n" for r in rows))
    out = tmp_path / "rec.mrc"
    assert main(["--i", str(star), "--o", str(out), "--ctf", "--verb", "0"]) == 1     # no pixel size
    assert main(["--i", str(star), "--o", str(out), "--ctf", "--angpix", "5", "--verb", "0"]) == 0
    ok, report = compare_with_relion(FIXTURES / "g2_reconstruct_spa2d" / "rec.mrc", out)
    assert ok, report


def _rotated_subtomogram(truth, a):
    """I(x) = truth(Aᵀ x) about the box centre n//2: the particle in the pose A (reference → particle)."""
    n = truth.shape[0]
    rev = np.eye(3)[::-1]                         # (x, y, z) ↔ array (z, y, x)
    m = rev @ a.T @ rev
    c = np.full(3, n // 2, float)
    return scipy.ndimage.affine_transform(truth, m, offset=c - m @ c, order=3, mode="constant")


def _wedge_cube(n, max_tilt=60.0):
    """Missing-wedge weights (1 = measured) as a full centred cube: tilt axis y, beam along z."""
    k = np.arange(n) - n // 2
    kz, _, kx = np.meshgrid(k, k, k, indexing="ij")
    return (np.abs(kz) <= np.abs(kx) * math.tan(math.radians(max_tilt))).astype(np.float32)


def test_pytme_subtomograms_reconstruct_ground_truth(tmp_path):
    """Noisy, missing-wedge subtomograms of the ground-truth particle in random poses, listed as pyTME lists
    them, average to the ground truth at least as well as RELION's own g1 reconstruction does."""
    truth = read_mrc(GROUND_TRUTH / "particle_box32.mrc")[0].astype(np.float64)
    n = truth.shape[0]
    rng = np.random.default_rng(7)
    rot, psi = rng.uniform(-180, 180, (2, 60))
    tilt = np.degrees(np.arccos(rng.uniform(-1, 1, 60)))
    mats = euler_to_matrix(rot, tilt, psi)
    wedge = _wedge_cube(n)
    wedge_file = tmp_path / "wedge.mrc"
    write_mrc(wedge_file, wedge, 5.0)
    wedge_half = np.fft.ifftshift(wedge)[:, :, :n // 2 + 1]
    images = []
    for k, a in enumerate(mats):
        sub = _rotated_subtomogram(truth, a)
        sub = scipy.fft.irfftn(scipy.fft.rfftn(sub) * wedge_half, s=sub.shape)
        sub += rng.normal(0, 0.05 * truth.std(), sub.shape)
        images.append(str(tmp_path / f"sub_{k}.mrc"))
        write_mrc(images[-1], sub.astype(np.float32), 5.0)
    star = tmp_path / "pytme.star"
    _pytme_star(star, images, [str(wedge_file)] * len(images), zip(rot, tilt, psi), n, 5.0,
                premultiplied=False)
    out = tmp_path / "rec.mrc"
    assert main(["--i", str(star), "--o", str(out), "--3d_rot", "--ctf", "--verb", "0"]) == 0
    rec = read_mrc(out)[0].astype(np.float64)
    corr = relion_compare.masked_corr(truth, rec)
    mirrored = relion_compare.masked_corr(truth[:, :, ::-1], rec)
    assert corr >= RELION_G1_CORR, (corr, mirrored)
    assert mirrored < corr - 0.1


# --------------------------------------------------------------------------------------------------------
# Mode choice and bad input
# --------------------------------------------------------------------------------------------------------

def _run(argv, capsys, cwd=FIXTURES):
    with working_directory(cwd):
        status = main(argv)
    return status, capsys.readouterr().err.strip()


def test_mode_is_chosen_by_content():
    with working_directory(FIXTURES):
        assert choose_mode(["--i", "synthetic/spa2d/particles.star"]) == "images"
        assert choose_mode(["--i", "e_subtomo_3d/particles.star", "--3d_rot"]) == "images"
        assert choose_mode(["--i", "synthetic/optimisation_set.star"]) == "tilt_series"
        with pytest.raises(ParticlesWithoutImages):                 # no rlnImageName, no --t
            choose_mode(["--i", "synthetic/particles.star"])
        assert choose_mode(["--t", "synthetic/tomograms.star", "--p", "synthetic/particles.star"]) == \
            "tilt_series"


@pytest.mark.parametrize("argv", [["--i", "synthetic/optimisation_set.star", "--o", "x/"],
                                  ["--t", "synthetic/tomograms.star", "--p", "synthetic/particles.star",
                                   "--b", "64"]])
def test_tilt_series_inputs_go_to_the_tilt_series_mode(argv, monkeypatch):
    import relion_py.cli.reconstruct as cli
    seen = []
    monkeypatch.setattr(cli, "_tilt_series", seen.append)
    with working_directory(FIXTURES):
        assert main(argv) == 0
    assert seen == [argv]


def test_help_names_both_modes(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "relion_reconstruct" in out and "relion_tomo_reconstruct_particle" in out
    assert "--3d_rot" in out and "--class" in out and "--j" in out and "not supported" in out


def test_2d_subtomogram_stacks_are_refused(tmp_path, capsys):
    status, err = _run(["--i", "a_subtomo_stack2d/particles.star", "--o", str(tmp_path / "rec.mrc"),
                        "--verb", "0"], capsys)
    assert status == 1 and "reconstruct does not yet work with 2D subtomogram stacks" in err
    assert len(err.splitlines()) == 1 and not list(tmp_path.iterdir())


def test_missing_image_file(tmp_path, capsys):
    angles, data, weights = _relion_particles()
    data[5] = str(tmp_path / "nowhere" / "5_data.mrc")
    star = tmp_path / "p.star"
    _pytme_star(star, data, weights, angles, 32, 5.0, premultiplied=True)
    status, err = _run(["--i", str(star), "--o", str(tmp_path / "rec.mrc"), "--3d_rot", "--ctf",
                        "--verb", "0"], capsys)
    assert status == 1 and "nowhere/5_data.mrc does not exist" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "rec.mrc").exists() and not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_announced_files_are_read_in_the_background_alike(tmp_path):
    """Files announced by ImageReader.prefetch are read (and converted) on a background thread: the same
    arrays as a direct read; an announced file that is missing fails at its read, with the usual error."""
    folder = FIXTURES / "e_subtomo_3d" / "Subtomograms" / "TS_01"
    names = [str(folder / f"{k}_data.mrc") for k in (1, 2)]
    weights = [str(folder / f"{k}_weights.mrc") for k in (1, 2)]
    direct = ImageReader()
    expected = [direct.read(n) for n in names] + [direct.read_raw(n) for n in weights]
    reader = ImageReader()
    missing = str(tmp_path / "gone_data.mrc")
    reader.prefetch(names + [missing], weights)
    got = [reader.read(n) for n in names] + [reader.read_raw(n) for n in weights]
    assert all(a.dtype == b.dtype and np.array_equal(a, b) for a, b in zip(got, expected))
    assert expected[0].dtype == np.float64 and expected[2].dtype == np.float32
    with pytest.raises(RelionPyError, match="gone_data.mrc does not exist"):
        reader.read(missing)
    reader.close()


def test_mixed_box_sizes(tmp_path, capsys):
    angles, data, weights = _relion_particles()
    small = tmp_path / "small.mrc"
    write_mrc(small, np.zeros((24, 24, 24), np.float32), 5.0)
    data[3] = str(small)
    star = tmp_path / "p.star"
    _pytme_star(star, data, None, angles, 32, 5.0, premultiplied=True)
    status, err = _run(["--i", str(star), "--o", str(tmp_path / "rec.mrc"), "--3d_rot"], capsys)
    assert status == 1 and "mixed box sizes" in err and "small.mrc is 24x24x24 px" in err


@pytest.mark.parametrize("argv, message", [
    (["--ewald"], "option --ewald is not supported"),
    (["--refdim", "2"], "option --refdim is not supported"),
    (["--pad", "0.5"], "Padding factor cannot be less than 1."),
    (["--pad", "1e6"], "--pad 1e+06: the padded Fourier grids (4.8e+07 voxels a side, the total and a group's) need about"),
    (["--pad", "1e30"], "--pad 1e+30: the padded Fourier grids (4.8e+31 voxels a side, the total and a group's) need about"),
    (["--pad", "1e300"], "--pad 1e+300 is out of range: RELION reads it in single precision (magnitudes 1.4e-45 to 3.4e+38)"),
    (["--angpix", "1e-300"], "--angpix 1e-300 is out of range: RELION reads it in single precision"),
    (["--maxres", "1e39"], "--maxres 1e+39 is out of range: RELION reads it in single precision"),
    (["--sym", "X7"], "symmetry"),
    (["--subset", "1", "--i", "e_subtomo_3d/particles.star"], None),
])
def test_bad_options(argv, message, tmp_path, capsys):
    base = ["--i", "synthetic/spa2d/particles.star", "--o", str(tmp_path / "rec.mrc"), "--verb", "0"]
    status, err = _run(base + argv, capsys)
    if message is None:
        assert status == 0          # (a valid combination, for contrast)
    else:
        assert status == 1 and message in err and len(err.splitlines()) == 1


def test_pixel_size_too_far_from_angpix(tmp_path, capsys):
    star = tmp_path / "huge_pixels.star"
    shutil.copy(FIXTURES / "synthetic" / "spa2d" / "particles.star", star)
    set_star_value(star, "rlnImagePixelSize", 0, "1e300")
    status, err = _run(["--i", str(star), "--o", str(tmp_path / "rec.mrc"), "--angpix", "5"], capsys)
    assert status == 1 and "--angpix 5 is too far from the particles' pixel sizes (1e+300 A)" in err


@pytest.mark.parametrize("label, value, message", [
    ("rlnAngleTilt", "nan", "rlnAngleTilt of particle 000004@synthetic/spa2d/particles.mrcs is nan;"),
    ("rlnOriginXAngst", "inf", "rlnOriginXAngst / pixel size of particle 000004@synthetic/spa2d/particles.mrcs is "
                               "inf;"),
    ("rlnDefocusU", "-inf", "rlnDefocusU of particle 000004@synthetic/spa2d/particles.mrcs is -inf;"),
    ("rlnImagePixelSize", "0", "an optics group's pixel size is 0.0; it must be a positive number"),
    ("rlnImagePixelSize", "1e-300", "rec.mrc not written: the map holds NaN or Inf values"),
    ("rlnImagePixelSize", "1e-310", "rlnOriginXAngst / pixel size of particle 000001@synthetic/spa2d/particles.mrcs "
                                    "is inf;"),
    ("rlnImagePixelSize", "1e37", "pixel size 1e+37 A: a 48 px cell of it does not fit an MRC header"),
])
@pytest.mark.filterwarnings("error")         # no numpy warning on the way to the one error line
def test_non_finite_particle_values_are_refused(label, value, message, tmp_path, capsys):
    """RELION would drop such a particle without a word (a NaN orientation) or fill the map with NaN."""
    shutil.copytree(FIXTURES / "synthetic" / "spa2d", tmp_path / "synthetic" / "spa2d")
    star = tmp_path / "synthetic" / "spa2d" / "particles.star"
    set_star_value(star, label, 0 if label == "rlnImagePixelSize" else 3, value)
    status, err = _run(["--i", str(star), "--o", str(tmp_path / "rec.mrc"), "--ctf", "--verb", "0"], capsys,
                       cwd=tmp_path)
    assert status == 1 and message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "rec.mrc").exists()


@pytest.mark.parametrize("which", ["data", "weights"])
def test_non_finite_voxels_are_refused(which, tmp_path, capsys):
    """A NaN or Inf voxel of a pseudo-subtomogram or of its CTF volume would spread over the whole map."""
    angles, data, weights = _relion_particles()
    files = data if which == "data" else weights
    values, pixel_size = read_mrc(files[4])
    values[1, 2, 3] = np.inf if which == "data" else np.nan
    files[4] = str(tmp_path / f"bad_{which}.mrc")
    write_mrc(files[4], values, pixel_size)
    star = tmp_path / "p.star"
    _pytme_star(star, data, weights, angles, 32, 5.0, premultiplied=True)
    status, err = _run(["--i", str(star), "--o", str(tmp_path / "rec.mrc"), "--3d_rot", "--ctf", "--verb", "0"],
                       capsys)
    assert status == 1 and f"image file {files[4]} holds NaN or Inf values" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "rec.mrc").exists()


def test_non_finite_pixel_of_a_stack_is_refused(tmp_path, capsys):
    shutil.copytree(FIXTURES / "synthetic" / "spa2d", tmp_path / "synthetic" / "spa2d")
    stack = tmp_path / "synthetic" / "spa2d" / "particles.mrcs"
    values, pixel_size = read_mrc(stack)
    values[6, 20, 30] = np.nan
    write_mrc(stack, values, pixel_size)
    status, err = _run(["--i", "synthetic/spa2d/particles.star", "--o", "rec.mrc", "--ctf", "--verb", "0"], capsys,
                       cwd=tmp_path)
    assert status == 1 and "image 000007@synthetic/spa2d/particles.mrcs holds NaN or Inf values" in err, err
    assert len(err.splitlines()) == 1 and not (tmp_path / "rec.mrc").exists()


def test_output_folder_must_exist(tmp_path, capsys):
    status, err = _run(["--i", "synthetic/spa2d/particles.star", "--o", str(tmp_path / "no" / "rec.mrc")],
                       capsys)
    assert status == 1 and "does not exist" in err


def test_3d_ctf_needs_ctf_images(tmp_path, capsys):
    angles, data, weights = _relion_particles()
    star = tmp_path / "p.star"
    _pytme_star(star, data, None, angles, 32, 5.0, premultiplied=True)
    status, err = _run(["--i", str(star), "--o", str(tmp_path / "rec.mrc"), "--3d_rot", "--ctf"], capsys)
    assert status == 1 and "rlnCtfImage" in err


def test_img_replaces_the_image_folder(tmp_path):
    star = tmp_path / "moved.star"
    star.write_text((FIXTURES / "synthetic" / "spa2d" / "particles.star").read_text()
                    .replace("@synthetic/spa2d/particles.mrcs", "@elsewhere/particles.mrcs"))
    out = tmp_path / "rec.mrc"
    assert main(["--i", str(star), "--o", str(out), "--ctf", "--verb", "0"]) == 1
    assert main(["--i", str(star), "--o", str(out), "--ctf", "--verb", "0",
                 "--img", str(FIXTURES / "synthetic" / "spa2d")]) == 0
    ok, report = compare_with_relion(FIXTURES / "g2_reconstruct_spa2d" / "rec.mrc", out)
    assert ok, report


RELION_BUILT_HERE = Path(__file__).parent / "data" / "relion_built_here"


def test_single_precision_flags_match_relion(tmp_path):
    """relion_reconstruct reads --angpix and --maxres (among others) in single precision: with a pixel size
    float32 cannot hold, RELION's map is matched only if relion_py computes with the same float32 values
    (tests/data/relion_built_here/README.md)."""
    work = mirror_fixtures(tmp_path / "project", "none")
    shutil.copy(work / "synthetic" / "spa2d" / "particles.star", work / "spa2d_px4p4.star")
    set_star_value(work / "spa2d_px4p4.star", "rlnImagePixelSize", 0, "4.400000")
    with working_directory(work):
        (work / "out").mkdir()
        assert main(["--i", "spa2d_px4p4.star", "--o", "out/rec.mrc", "--ctf", "--angpix", "4.4",
                     "--maxres", "19.2"]) == 0
    ok, report = compare_with_relion(RELION_BUILT_HERE / "spa2d_single_precision_flags" / "rec.mrc",
                                     work / "out" / "rec.mrc")
    assert ok, report


def test_single_precision_flags_hold_float32_values():
    """The same rounding for the command line and the Python API; the other numbers stay doubles."""
    single = ("maxres", "pad", "angpix", "helical_rise", "helical_twist", "blob_r", "blob_a")
    from_api = ReconstructImagesOptions(i="p.star", maxres=19.2, pad=1.7, angpix=4.4, helical_rise=7.3,
                                        helical_twist=21.7, blob_r=2.3, blob_a=11.7)
    for name in single:
        value = getattr(from_api, name)
        assert value == float(np.float32(value)) and value != round(value, 1), name
    parsed = parse_options(ReconstructImagesOptions, ["--i", "p.star", "--maxres", "19.2", "--blob_r", "2.3"],
                           "relion-py-reconstruct", "")
    assert (parsed.maxres, parsed.blob_r) == (from_api.maxres, from_api.blob_r)
    assert ReconstructImagesOptions(mask_diameter=0.1).mask_diameter == 0.1


def test_float16_pseudo_subtomograms_of_several_optics_groups(tmp_path):
    """3-D pseudo-subtomograms written as float16 from a project with one optics group per tomogram (three
    amplitude contrasts) average to the map of their float32 twins, up to half-precision rounding."""
    from relion_py.cli.extract import main as extract

    project = Path(__file__).parent / "data" / "projects" / "multi_tomo"
    maps = {}
    with working_directory(project):
        for tag, extra in (("f32", []), ("f16", ["--float16"])):
            out = tmp_path / tag
            assert extract(["--t", "input/tomograms.star", "--p", "input/particles.star", "--o", f"{out}/",
                            "--b", "32", "--crop", "24", "--j", "1", *extra]) == 0
            assert main(["--i", f"{out}/particles.star", "--o", str(tmp_path / f"{tag}.mrc"), "--3d_rot",
                         "--ctf"]) == 0
            maps[tag] = read_mrc(tmp_path / f"{tag}.mrc")[0]
    assert "opticsGroup3" in (tmp_path / "f16" / "particles.star").read_text()
    corr = np.corrcoef(maps["f32"].ravel(), maps["f16"].ravel())[0, 1]
    assert corr > 0.9999
