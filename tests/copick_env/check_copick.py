"""relion-py-portal --copick, run by tests/test_copick_environment.py in an environment with copick 1.x (which pins
zarr < 3 and numcodecs < 0.16): a copick project written with copick's own API from the fixture project's RELION
particles (copick's ``relion_df_to_picks``) reads back to the same particles, agrees with copick's own
``picks_to_df_relion``, and extracts to the fixture project's images; relion_py's zarr reading works next to
zarr 2. (Named check_*.py: the main test suite, whose environment has no copick, does not collect it.)"""
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))

import copick  # noqa: E402
import zarr  # noqa: E402
from copick.models import PickableObject  # noqa: E402
from copick.ops.open import new_config  # noqa: E402
from copick.util.relion import picks_to_df_relion, relion_df_to_picks  # noqa: E402

import relion_compare  # noqa: E402
from relion_py.cli.extract import main as extract_main  # noqa: E402
from relion_py.cli.portal import main as portal_main  # noqa: E402
from relion_py.io.star import read_star  # noqa: E402
from relion_py.tomography.geometry import euler_to_matrix  # noqa: E402

FIXTURES = TESTS / "data" / "fixtures"
OBJECT = "particle"
EXTRACT = ["--b", "32", "--crop", "24", "--stack2d"]


def test_environment_is_copick_1_with_zarr_2():
    assert copick.__version__.startswith("1.") and zarr.__version__.startswith("2.")


def centres(tomograms):
    """{rlnTomoName: tomogram centre in Å} of a tomograms.star table."""
    return {row["rlnTomoName"]: tuple(float(row[f"rlnTomoSize{a}"]) * float(row["rlnTomoTiltSeriesPixelSize"]) / 2
                                      for a in "XYZ") for _, row in tomograms.iterrows()}


@pytest.fixture
def project(tmp_path):
    """The fixture project (linked) and a copick project with its particles as picks, written by copick."""
    (tmp_path / "synthetic").symlink_to(FIXTURES / "synthetic")
    particles = read_star(FIXTURES / "synthetic/particles.star").loop("particles")
    tomograms = read_star(FIXTURES / "synthetic/tomograms.star").loop("global")
    root = new_config(str(tmp_path / "copick.json"), str(tmp_path / "overlay"),
                      pickable_objects=[PickableObject(name=OBJECT, is_particle=True, label=1, radius=60.0)])
    for name, rows in particles.groupby("rlnTomoName", sort=True):
        run = root.new_run(name)
        picks = run.new_picks(OBJECT, session_id="0", user_id="relion")
        relion_df_to_picks(picks, rows.reset_index(drop=True), tomogram_center=centres(tomograms)[name])
        picks.store()
    os.chdir(tmp_path)
    return tmp_path, particles, tomograms


def copick_to_relion(extra=()):
    return portal_main(["--copick", "copick.json", "--object", OBJECT, "--tomograms", "synthetic/tomograms.star",
                        "--o", "Copick/", *extra])


def matrices(table):
    return euler_to_matrix(*(table[f"rlnAngle{a}"].to_numpy(float) for a in ("Rot", "Tilt", "Psi")))


def test_round_trip_gives_the_relion_particles(project):
    _, particles, _ = project
    assert copick_to_relion() == 0
    back = read_star("Copick/particles.star").loop("particles")
    assert list(back["rlnTomoName"]) == list(particles["rlnTomoName"])
    for axis in "XYZ":
        label = f"rlnCenteredCoordinate{axis}Angst"
        np.testing.assert_allclose(back[label], particles[label], atol=1e-5)   # the STAR text: %12.6f, or %12.5f if negative (RELION)
    np.testing.assert_allclose(matrices(back), matrices(particles), atol=1e-5)   # the STAR text: %12.6f, or %12.5f if negative (RELION)
    sets = read_star("Copick/optimisation_set.star").list("optimisation_set")
    assert sets["rlnTomoTomogramsFile"] == "synthetic/tomograms.star"


def test_agrees_with_copicks_own_relion_export(project):
    _, _, tomograms = project
    assert copick_to_relion() == 0
    ours = read_star("Copick/particles.star").loop("particles")
    root = copick.from_file("copick.json")
    for name, rows in ours.groupby("rlnTomoName", sort=True):
        picks = root.get_run(name).get_picks(OBJECT)[0]
        theirs = picks_to_df_relion(picks, tomogram_center=centres(tomograms)[name], coordinates="centered")
        for axis in "XYZ":
            label = f"rlnCenteredCoordinate{axis}Angst"
            np.testing.assert_allclose(rows[label].to_numpy(float), theirs[label].to_numpy(float), atol=1e-5)   # the STAR text: %12.6f, or %12.5f if negative (RELION)
        np.testing.assert_allclose(matrices(rows), matrices(theirs), atol=1e-5)   # the STAR text: %12.6f, or %12.5f if negative (RELION)


def test_extraction_equals_the_relion_projects(project):
    tmp, _, _ = project
    assert extract_main(["--t", "synthetic/tomograms.star", "--p", "synthetic/particles.star", "--o", "Direct/"]
                        + EXTRACT) == 0
    assert copick_to_relion(["--", "--o", "Extract/"] + EXTRACT) == 0
    stacks = sorted(p.relative_to(tmp / "Direct") for p in (tmp / "Direct").rglob("*.mrcs"))
    assert stacks and stacks == sorted(p.relative_to(tmp / "Extract") for p in (tmp / "Extract").rglob("*.mrcs"))
    # the same images within compare.py's tolerances (the angles went through copick's matrices and back)
    assert relion_compare.main([str(tmp / "Direct/Subtomograms"), str(tmp / "Extract/Subtomograms"), "-q"]) == 0


def test_selection_errors_are_one_line(project, capsys):
    for extra, message in ((["--user_id", "nobody"], "no copick picks of 'particle', user nobody"),
                           (["--run_names", "TS_09"], "no copick run named TS_09")):
        assert copick_to_relion(extra) == 1
        assert message in capsys.readouterr().err
    assert portal_main(["--copick", "copick.json", "--object", "ribosome", "--tomograms",
                        "synthetic/tomograms.star", "--o", "X/"]) == 1
    assert "no pickable object 'ribosome'" in capsys.readouterr().err
    shutil.rmtree("X", ignore_errors=True)


def test_portal_runs_give_relion_py_portals_project(tmp_path):
    """A copick project whose runs are portal runs (named by their ids, as copick's portal backend names them),
    with the portal's ground-truth points as picks converted as copick's portal backend converts them (location
    = voxel × voxel spacing, rotation = xyz_rotation_matrix): the project relion-py-portal writes for that
    annotation, tilt series from the (loopback) portal."""
    import json

    from portal_server import PortalServer

    from relion_py.tools.simulate import OBJECT_NAME, SimulationParams, simulate, write_portal
    os.chdir(tmp_path)
    server = PortalServer(str(tmp_path / "portal"))
    try:
        write_portal(simulate(SimulationParams(n_tomograms=2, seed=7, n_particles=6, image_size="128,112",
                                               tomo_size="128,112,40")), str(tmp_path / "portal"), server.url)
        tables = json.loads((tmp_path / "portal" / "portal.json").read_text())
        spacing = {v["id"]: v["voxelSpacing"] for v in tables["tomogramVoxelSpacings"]}
        truth = {a["id"] for a in tables["annotations"] if a["groundTruthStatus"]}
        root = new_config("copick.json", str(tmp_path / "overlay"),
                          pickable_objects=[PickableObject(name="ribosome", is_particle=True, label=1, radius=60.)])
        for f in tables["annotationFiles"]:
            if f["annotationShapeId"] not in truth:
                continue
            run_id = next(a["runId"] for a in tables["annotations"] if a["id"] == f["annotationShapeId"])
            lines = (tmp_path / "portal" / f["s3Path"][len("s3://"):]).read_text().splitlines()
            points = [json.loads(line) for line in lines if line.strip()]
            vs = spacing[f["tomogramVoxelSpacingId"]]
            transforms = np.tile(np.eye(4), (len(points), 1, 1))
            transforms[:, :3, :3] = [p["xyz_rotation_matrix"] for p in points]
            picks = root.new_run(str(run_id)).new_picks("ribosome", session_id="0", user_id="portal")
            picks.from_numpy(np.array([[p["location"][k] * vs for k in "xyz"] for p in points]), transforms)
            picks.store()
        common = ["--url", server.graphql_url]
        assert portal_main(common + ["--run_ids", "100,200", "--object", OBJECT_NAME, "--ground_truth",
                                     "--o", "Portal/"]) == 0
        assert portal_main(common + ["--copick", "copick.json", "--object", "ribosome", "--o", "Copick/"]) == 0
    finally:
        server.close()
    portal, ours = (read_star(f"{d}/particles.star").loop("particles") for d in ("Portal", "Copick"))
    assert list(portal["rlnTomoParticleName"]) == list(ours["rlnTomoParticleName"])
    for axis in "XYZ":
        label = f"rlnCenteredCoordinate{axis}Angst"
        np.testing.assert_allclose(ours[label], portal[label], atol=1e-5)
    np.testing.assert_allclose(matrices(ours), matrices(portal), atol=1e-6)
    for name in ["tomograms.star"] + [f"tilt_series/{n}" for n in os.listdir("Portal/tilt_series")]:
        expected = (tmp_path / "Portal" / name).read_bytes().replace(b"Portal/", b"Copick/")   # paths in STAR files
        assert (tmp_path / "Copick" / name).read_bytes() == expected, name


def test_zarr_formats_next_to_zarr_2():
    """The one tilt series that the main environment wrote with zarr-python 3 as zarr format 2, format 3 with
    every codec and sharded format 3 (tests/zarr_copies.py) reads to its pixels here, next to zarr-python 2
    and numcodecs < 0.16: relion_py's reader depends on neither zarr-python's version nor its format."""
    from relion_py.io.zarr_images import ZarrTiltImages
    from relion_py.kernels.tomography.windows import gather_clamped_windows
    root = Path(os.environ["RELION_PY_ZARR_COPIES"])
    stack = np.load(root / "stack.npy")
    rng = np.random.default_rng(0)
    frames = rng.integers(0, len(stack), 40)
    origins = np.stack([rng.integers(-40, stack.shape[2], 40), rng.integers(-40, stack.shape[1], 40)], axis=1)
    expected = np.empty((40, 40, 40), np.float32)
    gather_clamped_windows(stack, frames, origins, expected)
    copies = sorted(p for p in root.iterdir() if p.suffix == ".zarr")
    assert {p.stem for p in copies} == {"v2", "v3", "v3-codecs", "v3-sharded"}
    for path in copies:
        with ZarrTiltImages([(str(path), z) for z in range(len(stack))]) as images:
            out = np.empty_like(expected)
            images.read_windows(frames, origins, out)
        np.testing.assert_array_equal(out, expected, err_msg=path.stem)
