"""relion-py-portal against a loopback CryoET Data Portal: the real cryoet-data-portal client and
relion_py's OME-Zarr reader talk to tests/portal_server.py, which serves data made by relion_py.tools.simulate.

The simulator also writes the same data as a RELION project on local disk; the portal path must give the
same STAR files and the same extraction output (compare.py), reading only the chunks under the particle
windows."""
import contextlib
import json
import math
import os
import re
import shutil
import time

import numpy as np
import pandas as pd
import pytest
from cluster_helpers import assert_same_files
from conftest import compare_with_relion, working_directory
from conftest_portal import CHUNKS
from portal_server import PortalServer
from zarr_copies import LAYOUTS, write_copies
from scipy.spatial.transform import Rotation

from relion_py.cli.extract import main as extract_main
from relion_py.cli.portal import main as portal_main
from relion_py.io.mrc import read_mrc
from relion_py.runtime.errors import RelionPyError
from relion_py.io import zarr_images
from relion_py.io.mrc import mmap_mrc
from relion_py.io.star import read_star
from relion_py.project.tomograms import REMOTE_IMAGES_LABEL
from relion_py.portal import PortalOptions, make_portal_project
from relion_py.portal.mapping import read_points, tilt_axis_rotation
from relion_py.tools.simulate import OBJECT_NAME

EXTRACT_2D = ["--b", "64", "--crop", "48", "--stack2d"]
EXTRACT_3D = ["--b", "48", "--crop", "32"]


def _options(portal, **kw):
    kw = dict(dict(run_ids="100,200", object=OBJECT_NAME, ground_truth=True, o="Portal/",
                   url=portal.server.graphql_url), **kw)
    return PortalOptions(**kw)


def _project(portal, tmp_path, **kw):
    tmp_path.mkdir(parents=True, exist_ok=True)
    with working_directory(tmp_path):
        project = make_portal_project(_options(portal, **kw))
        return project, read_star(project.optimisation_set.replace("optimisation_set", "particles"))


# ---------------------------------------------------------------------------------------------------
# Mapping (pure functions)
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("angle", [0.0, 85.3, 179.9, -95.0, -179.5])
def test_tilt_axis_rotation(angle):
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    assert tilt_axis_rotation([[c, -s], [s, c]]) == pytest.approx(angle, abs=1e-12)


def test_points_invert_the_portal_ingestion_of_relion_star_files():
    """The backend stores Rotation.from_euler('ZYZ', (rot, tilt, psi)).inv() (point_converter.py,
    _from_relion4_star) and locations in tomogram voxels; read_points gives back RELION's values."""
    angles = np.array([[10.0, 20.0, 30.0], [-170.5, 95.25, 3.125], [45.0, 150.0, -60.0]])
    centred = np.array([[120.0, -80.0, 12.5], [0.0, 0.0, 0.0], [-300.25, 44.0, -8.0]])
    size, spacing = (250, 230, 90), 10.0
    lines = [json.dumps({"type": "orientedPoint",
                         "location": dict(zip("xyz", (c / spacing + np.array(size) / 2.0).tolist())),
                         "xyz_rotation_matrix": Rotation.from_euler("ZYZ", a, degrees=True).inv().as_matrix()
                         .tolist()})
             for c, a in zip(centred, angles)]
    coords, eulers = read_points("\n".join(lines) + "\n", size, spacing, "test")
    np.testing.assert_allclose(coords, centred, atol=1e-9)
    np.testing.assert_allclose(eulers, angles, atol=1e-9)
    point = '{"type": "point", "location": {"x": 1, "y": 2, "z": 3}}\n'
    coords, eulers = read_points(point, size, spacing, "t")
    assert eulers is None and coords.tolist() == [[-1240.0, -1130.0, -420.0]]
    with pytest.raises(RelionPyError, match="only some points have an xyz_rotation_matrix"):
        read_points(lines[0] + '\n{"location": {"x": 1, "y": 2, "z": 3}}\n', size, spacing, "t")
    with pytest.raises(RelionPyError, match="t, line 1: not a point annotation"):
        read_points('{"x": 1}\n', size, spacing, "t")


# ---------------------------------------------------------------------------------------------------
# The project written from the portal
# ---------------------------------------------------------------------------------------------------

def test_project_equals_the_local_relion_project(portal, tmp_path):
    with working_directory(tmp_path):
        assert portal_main(["--url", portal.server.graphql_url, "--run-ids", "100,200", "--object",
                            OBJECT_NAME, "--ground-truth", "--o", "Portal/"]) == 0
    local, remote = os.path.join(portal.local, "project"), str(tmp_path / "Portal")
    # particles.star: the very same text
    with open(os.path.join(local, "particles.star")) as a, open(os.path.join(remote, "particles.star")) as b:
        assert a.read() == b.read()
    # tomograms.star and the tilt series: equal but for file names
    ref, cand = (read_star(os.path.join(d, "tomograms.star"))["global"] for d in (local, remote))
    assert list(cand["rlnTomoTiltSeriesStarFile"]) == [f"Portal/tilt_series/TS_0{k}.star" for k in (1, 2)]
    # what RELION 5's import writes besides: the movies' pixel size (binning 1 here), the tilt axis
    assert list(cand["rlnMicrographOriginalPixelSize"]) == list(cand["rlnTomoTiltSeriesPixelSize"])
    assert list(cand["rlnTomoNominalTiltAxisAngle"]) == [portal.sim.params.tilt_axis] * 2
    pd.testing.assert_frame_equal(ref.drop(columns="rlnTomoTiltSeriesStarFile"), cand.drop(columns=[
        "rlnTomoTiltSeriesStarFile", "rlnMicrographOriginalPixelSize", "rlnTomoNominalTiltAxisAngle"]))
    for name in ("TS_01", "TS_02"):
        ref, cand = (read_star(os.path.join(d, "tilt_series", f"{name}.star"))[name] for d in (local, remote))
        # RELION reads geometry from a header-only stack; relion_py reads pixels from the URL column
        assert list(cand["rlnMicrographName"]) == [f"{z}@Portal/tilt_series/{name}.mrcs" for z in range(1, 14)]
        assert list(cand[REMOTE_IMAGES_LABEL]) == [f"{z}@{portal.zarr_url(name)}" for z in range(1, 14)]
        assert (cand["rlnCtfMaxResolution"] == 8.0).all()
        pd.testing.assert_frame_equal(ref.drop(columns="rlnMicrographName"), cand.drop(
            columns=["rlnMicrographName", REMOTE_IMAGES_LABEL, "rlnCtfMaxResolution"]))
        _assert_header_only(tmp_path / "Portal" / "tilt_series" / f"{name}.mrcs",
                            os.path.join(local, "tilt_series", f"{name}.mrcs"))
    assert "HEADER-ONLY" in (tmp_path / "Portal" / "note.txt").read_text()
    assert read_star(tmp_path / "Portal/optimisation_set.star")["optimisation_set"] == {
        "rlnTomoParticlesFile": "Portal/particles.star", "rlnTomoTomogramsFile": "Portal/tomograms.star"}
    # nothing but metadata and the annotation files was downloaded
    gets = portal.server.requests()
    assert len(gets) == 2 and all(r.path.endswith(".ndjson") for r in gets)
    assert len(portal.server.requests("/graphql", method="POST")) <= 12


def _assert_header_only(path, reference):
    """``path`` is the 1024-byte header of ``reference`` (size, mode 2, pixel size), without pixels: RELION's
    ``Image::read(name, false)`` gets the stack's geometry, and relion_py refuses it as pixels."""
    header = np.fromfile(path, np.int32)
    expected = np.fromfile(reference, np.int32, count=256)
    assert header.size == 256
    for word in (0, 1, 2, 3, 7, 8, 9, 10, 11):                          # nx ny nz mode mx my mz cell a, b
        assert header[word] == expected[word], word
    assert b"HEADER ONLY" in header.tobytes()[224:304]
    with pytest.raises(RelionPyError, match="is truncated"):
        mmap_mrc(str(path))


def test_alignment_mapping_agrees_with_cryoet_alignment(portal, tmp_path):
    """The portal team's converter (cryoet-alignment's ``Alignment.to_relion``), fed the same portal alignment,
    gives the same per-tilt RELION values; the one disagreement is the tomogram size, where cryoet-alignment
    takes the portal's volume dimensions (Å, per the portal's schema and cryoet-alignment's own ``from_aretomo3``,
    which fills them from an MRC cell in Å) as pixels: ours divides by the pixel size."""
    from cryoet_alignment.io.cryoet_data_portal.alignment import Alignment, PerSectionAlignmentParameters

    _project(portal, tmp_path)
    tables = json.loads(open(os.path.join(portal.root, "portal.json")).read())
    tomograms = read_star(tmp_path / "Portal/tomograms.star").loop("global")
    for a in tables["alignments"]:
        run = next(r for r in tables["runs"] if r["id"] == a["runId"])
        ts = next(t for t in tables["tiltseries"] if t["id"] == a["tiltseriesId"])
        sections = [PerSectionAlignmentParameters(
            z_index=s["zIndex"], tilt_angle=s["tiltAngle"], volume_x_rotation=s["volumeXRotation"],
            in_plane_rotation=s["inPlaneRotation"], x_offset=s["xOffset"], y_offset=s["yOffset"])
            for s in tables["perSectionAlignmentParameters"] if s["alignmentId"] == a["id"]]
        theirs = Alignment(
            affine_transformation_matrix=np.eye(4).tolist(), alignment_type=a["alignmentType"], format="ARETOMO3",
            is_portal_standard=a["isPortalStandard"], tilt_offset=a["tiltOffset"],
            volume_offset={k: a[f"volume{k.upper()}Offset"] for k in "xyz"}, x_rotation_offset=a["xRotationOffset"],
            per_section_alignment_parameters=sections,
            volume_dimension={k: a[f"volume{k.upper()}Dimension"] for k in "xyz"},
        ).to_relion(run["name"], ts["pixelSpacing"])
        ours = read_star(tmp_path / f"Portal/tilt_series/{run['name']}.star").loop(run["name"])
        assert len(ours) == len(theirs.entries)
        for label, field in (("rlnTomoYTilt", "y_tilt"), ("rlnTomoXTilt", "x_tilt"), ("rlnTomoZRot", "z_rot"),
                             ("rlnTomoXShiftAngst", "x_shift_angst"), ("rlnTomoYShiftAngst", "y_shift_angst")):
            np.testing.assert_allclose(ours[label].to_numpy(float), [getattr(e, field) for e in theirs.entries],
                                       atol=1e-5, err_msg=label)    # STAR text: %12.6f (%12.5f if negative)
        row = tomograms[tomograms["rlnTomoName"] == run["name"]].iloc[0]
        dims = [a[f"volume{k}Dimension"] for k in "XYZ"]
        assert [int(row[f"rlnTomoSize{k}"]) for k in "XYZ"] == [round(d / ts["pixelSpacing"]) for d in dims]
        assert list(theirs.volume_size_px) == [round(d) for d in dims]


def test_selection_filters(portal, tmp_path):
    # automated Point annotation: half the particles, no angles
    project, particles = _project(portal, tmp_path / "a", ground_truth=False, automated_only=True)
    table = particles["particles"]
    assert len(table) == 6 and "rlnAngleRot" not in table.columns
    # both annotations of the object: the points get the identity orientation
    project, particles = _project(portal, tmp_path / "b", ground_truth=False)
    table = particles["particles"]
    assert len(table) == 18 and project.n_particles == 18
    assert (table[table["rlnTomoParticleName"] == "TS_01/9"][["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]]
            .to_numpy() == 0).all()
    # substring match, any case; datasets; one tilt series; one alignment
    project, _ = _project(portal, tmp_path / "c", object="RIBOSOME", inexact_match=True, run_ids="",
                          dataset_ids="10000")
    assert project.tomograms == ["TS_01", "TS_02"]
    project, particles = _project(portal, tmp_path / "d", tiltseries_id=400)
    assert project.tomograms == ["TS_02"] and list(particles["optics"]["rlnOpticsGroupName"]) == ["TS_02"]
    project, _ = _project(portal, tmp_path / "e", alignment_id=300, voxel_spacing=8.0)
    assert project.tomograms == ["TS_01"]
    # what the portal does not hold: options written as given
    _project(portal, tmp_path / "f", amplitude_contrast=0.1, hand=1.0, s3=True)
    tomograms = read_star(tmp_path / "f/Portal/tomograms.star")["global"]
    assert list(tomograms["rlnAmplitudeContrast"]) == [0.1, 0.1]
    assert list(tomograms["rlnTomoHand"]) == [1.0, 1.0]
    names = read_star(tmp_path / "f/Portal/tilt_series/TS_01.star")["TS_01"][REMOTE_IMAGES_LABEL]
    assert names[0] == "1@s3://cryoet-data-portal-public/10000/TS_01/TiltSeries/TS_01.zarr"


@pytest.mark.parametrize("kw, message", [
    (dict(object="ribosome"),
     "no annotation of object 'ribosome' matches .*there: cytosolic ribosome, membrane; --inexact_match"),
    (dict(object="membrane", ground_truth=False), "no point shapes"),
    (dict(run_ids="100,999"), "no run with id 999"),
    (dict(run_ids="", dataset_ids="5"), "no run in dataset 5"),
    (dict(run_ids=""), "no run selected"),
    (dict(run_ids="1x"), "--run_ids '1x': expected comma-separated integer ids"),
    (dict(voxel_spacing=3.0), "no point annotation file"),
    (dict(amplitude_contrast=1.5), "must be in"),
    (dict(hand=0.5), "must be 1 or -1"),
])
def test_bad_selections(portal, tmp_path, kw, message):
    with pytest.raises(RelionPyError, match=message):
        _project(portal, tmp_path, **kw)
    assert not (tmp_path / "Portal").exists()


@contextlib.contextmanager
def _edited_portal(portal, tmp_path, edit):
    """A second server answering from an edited copy of portal.json (files still on the first one)."""
    root = tmp_path / "edited"
    root.mkdir()
    with open(os.path.join(portal.root, "portal.json")) as fh:
        tables = json.load(fh)
    edit(tables)
    (root / "portal.json").write_text(json.dumps(tables))
    with PortalServer(root) as server:
        yield server


@pytest.mark.parametrize("edit, message", [
    (lambda t: t["tiltseries"][0].update(isAligned=True), "tilt series 200 .* is stored aligned"),
    (lambda t: t["perSectionParameters"].clear(), r"every selected run lacks metadata RELION needs \(2 left out"),
    (lambda t: t["alignments"][0].update(alignmentType="LOCAL"), "alignment 300 .* is a LOCAL alignment"),
    (lambda t: t["tomograms"].pop(0), "no tomogram for alignment 300 .*cannot be centred"),
    (lambda t: t["annotationFiles"].append(dict(t["annotationFiles"][0], id=77, alignmentId=600)),
     "annotation shape 1001 has several point files"),
])
def test_incomplete_portal_metadata(portal, tmp_path, edit, message):
    with _edited_portal(portal, tmp_path, edit) as server:
        with pytest.raises(RelionPyError, match=message):
            _project(portal, tmp_path, url=server.graphql_url)
    assert not (tmp_path / "Portal").exists()          # nothing written


@pytest.mark.parametrize("edit, message", [
    (lambda t: t["perSectionParameters"].pop(3), r"section z_index 3 has no CTF estimate"),
    (lambda t: t["frames"][0].update(accumulatedDose=None), "has no frame with an accumulated dose"),
])
def test_a_run_with_incomplete_metadata_is_left_out(portal, tmp_path, capsys, edit, message):
    """Missing CTF or doses in one run: that run is left out with a warning, the others are written."""
    with _edited_portal(portal, tmp_path, edit) as server:
        project, particles = _project(portal, tmp_path, url=server.graphql_url)
    assert project.tomograms == ["TS_02"] and project.skipped == ["TS_01"]
    assert set(particles["particles"]["rlnTomoName"]) == {"TS_02"} and project.n_particles == 6
    assert re.search("run TS_01 \\(TS_01\\) left out: .*" + message, capsys.readouterr().err)


def test_graphql_faults(portal, tmp_path):
    portal.server.add_fault("/graphql", "500")        # the client retries server errors
    project, _ = _project(portal, tmp_path / "a")
    assert project.n_particles == 12
    with _edited_portal(portal, tmp_path, lambda t: None) as server:
        url = server.graphql_url
    with pytest.raises(RelionPyError, match=r"^cannot reach the portal at http://127.0.0.1:\d+/graphql: check the "
                                            r"network or --url$"):
        _project(portal, tmp_path / "b", url=url)    # nothing listens there any more
    portal.server.add_fault(".ndjson", "500", times=10)
    with pytest.raises(RelionPyError, match=r"cannot read http://.*\.ndjson: HTTP 500 \(4 attempts\)"):
        _project(portal, tmp_path / "c")


# ---------------------------------------------------------------------------------------------------
# Extraction through the portal path = extraction from local disk
# ---------------------------------------------------------------------------------------------------

class _WindowLog:
    """Records every window request of ZarrTiltImages: (location, slices, origins, size)."""

    def __init__(self, monkeypatch):
        self.calls = []
        original = zarr_images.ZarrTiltImages.read_windows

        def read_windows(images, frames, origins, out):
            location = next(iter(images._arrays))
            self.calls.append((location, images._slice_of_frame[frames], np.array(origins), out.shape[1]))
            return original(images, frames, origins, out)
        monkeypatch.setattr(zarr_images.ZarrTiltImages, "read_windows", read_windows)


def _extract_local(portal, args, out):
    with working_directory(portal.local):
        if not os.path.isdir(out):
            assert extract_main(["--i", "project/optimisation_set.star", "--o", out + "/"] + args) == 0
    return os.path.join(portal.local, out)


def _figures(portal, log):
    """(chunks fetched, chunks under the requested windows, bytes fetched, bytes of the chunks under the
    windows, bytes of the tilt series' level 0), from the server's log and the files it serves."""
    touched = {}
    for location, slices, origins, size in log.calls:
        keys = touched.setdefault(location.split("/", 3)[3], set())
        for z, (x0, y0) in zip(slices, origins):
            ys = np.clip(np.arange(y0, y0 + size), 0, 351) // CHUNKS[1]     # image 384 x 352 px
            xs = np.clip(np.arange(x0, x0 + size), 0, 383) // CHUNKS[2]
            keys.update(f"{z}/{cy}/{cx}" for cy in set(ys) for cx in set(xs))
    under = [f"/{zarr}/0/{key}" for zarr, keys in touched.items() for key in keys]
    fetched = [r for r in portal.server.requests("/TiltSeries/") if "." not in r.path.rsplit("/", 1)[1]]
    level0 = [os.path.join(d, f) for name in ("TS_01", "TS_02")
              for d, _, fs in os.walk(os.path.join(portal.zarr_path(name), "0")) for f in fs]
    return ([r.path for r in fetched], under, sum(r.nbytes for r in portal.server.requests("/TiltSeries/")),
            sum(os.path.getsize(os.path.join(portal.root, *p.split("/"))) for p in under),
            sum(os.path.getsize(p) for p in level0))


@pytest.mark.parametrize("args, out", [(EXTRACT_2D, "Extract2D"), (EXTRACT_3D, "Extract3D")])
def test_one_shot_extraction_equals_local(portal, tmp_path, monkeypatch, args, out):
    reference = _extract_local(portal, args, out)
    log = _WindowLog(monkeypatch)
    with working_directory(tmp_path):
        assert portal_main(["--url", portal.server.graphql_url, "--run_ids", "100,200", "--object",
                            OBJECT_NAME, "--ground_truth", "--o", "project/", "--", "--o", out + "/"]
                           + args) == 0
    ok, report = compare_with_relion(reference, tmp_path / out)
    assert ok, report[-3000:]
    fetched, under, nbytes, under_bytes, whole = _figures(portal, log)
    assert sorted(fetched) == sorted(under)                  # each chunk under a window, once
    assert nbytes <= 2 * under_bytes
    print(f"{out}: fetched {nbytes} B = {nbytes / under_bytes:.3f} x the {under_bytes} B of chunks under the "
          f"particle windows = {nbytes / whole:.1%} of the tilt series ({whole} B)")


def test_one_shot_extraction_on_a_cluster(portal, tmp_path, monkeypatch):
    """relion-py-portal … -- … --workers 2: the workers fetch the zarr chunks themselves (each chunk at most
    once per worker, only chunks the single-process run fetches) and write the single-process files."""
    from collections import Counter

    import relion_py.distributed.extract as distributed_extract
    monkeypatch.setattr(distributed_extract, "BATCH", 2)        # 3 tasks per tilt series, over both workers
    argv = ["--url", portal.server.graphql_url, "--run_ids", "100,200", "--object", OBJECT_NAME, "--ground_truth",
            "--o", "project/", "--", "--o", "Extract/"] + EXTRACT_2D
    chunks = {}
    for run, flags in (("single", []), ("cluster", ["--workers", "2"])):
        portal.server.reset()
        os.makedirs(tmp_path / run)
        with working_directory(tmp_path / run):
            assert portal_main(argv + flags) == 0
        chunks[run] = Counter(r.path for r in portal.server.requests("/TiltSeries/")
                              if "." not in r.path.rsplit("/", 1)[1])
    assert_same_files(tmp_path / "single" / "Extract", tmp_path / "cluster" / "Extract")
    assert set(chunks["cluster"]) == set(chunks["single"]) and max(chunks["single"].values()) == 1
    assert max(chunks["cluster"].values()) <= 2
    print(f"cluster: {sum(chunks['cluster'].values())} chunk requests for {len(chunks['single'])} chunks")


def test_remote_extraction_reads_only_visible_windows(portal, tmp_path, monkeypatch):
    """Few particles (the automated Point annotation: 3 per tilt series): a fraction of the tilt series
    is fetched, exactly the chunks under the windows of the visible frames."""
    log = _WindowLog(monkeypatch)
    with working_directory(tmp_path):
        assert portal_main(["--url", portal.server.graphql_url, "--run_ids", "100,200", "--object",
                            OBJECT_NAME, "--automated_only", "--o", "project/", "--", "--o", "Extract/"]
                           + EXTRACT_2D) == 0
    particles = read_star(tmp_path / "Extract/particles.star")["particles"]
    visible = sum(sum(v) for v in particles["rlnTomoVisibleFrames"])
    assert sum(len(slices) for _, slices, _, _ in log.calls) == visible
    fetched, under, nbytes, under_bytes, whole = _figures(portal, log)
    assert sorted(fetched) == sorted(under)
    assert nbytes <= 2 * under_bytes and nbytes < 0.5 * whole
    print(f"3 particles per tilt series: fetched {nbytes} B = {nbytes / under_bytes:.3f} x the chunks under "
          f"the windows = {nbytes / whole:.1%} of the tilt series")


@pytest.mark.parametrize("layout", ["portal copy", "v3", "v3-codecs", "v3-sharded"])
def test_local_zarr_extraction_equals_local(portal, tmp_path, layout):
    """The same reader on the portal-shaped OME-Zarr copied to local disk, and on the tilt series rewritten
    by zarr-python 3 as zarr format 3 (OME-Zarr 0.5), with every codec, and sharded."""
    reference = _extract_local(portal, EXTRACT_2D, "Extract2D")
    with working_directory(tmp_path):
        make_portal_project(_options(portal, o="project/"))
        for k, name in enumerate(("TS_01", "TS_02")):
            if layout == "portal copy":
                local_zarr = os.path.join("zarr", f"{name}.zarr")
                shutil.copytree(portal.zarr_path(name), local_zarr)
            else:
                local_zarr = write_copies(portal.sim.tilt_series[k].stack, os.path.join("zarr", name),
                                          {layout: LAYOUTS[layout]})[layout]
            path = os.path.join("project", "tilt_series", f"{name}.star")
            with open(path) as fh:
                text = fh.read()
            with open(path, "w") as fh:
                fh.write(text.replace(portal.zarr_url(name), local_zarr))
        portal.server.reset()
        assert extract_main(["--i", "project/optimisation_set.star", "--o", "Extract2D/"] + EXTRACT_2D) == 0
    assert not portal.server.requests()
    ok, report = compare_with_relion(reference, tmp_path / "Extract2D")
    assert ok, report[-3000:]


def test_extraction_through_transient_faults_equals_local(portal, tmp_path, monkeypatch):
    """Over a slow link (20 ms per request, 20 MB/s shared), truncated chunks, server errors, dropped and
    reset connections, stalled answers and trickling bodies during an extraction are retried: the output
    is the local one."""
    reference = _extract_local(portal, EXTRACT_2D, "Extract2D")
    monkeypatch.setenv("RELION_PY_REMOTE_TIMEOUT", "1")
    with working_directory(tmp_path):
        make_portal_project(_options(portal, o="project/"))
        portal.server.latency_s, portal.server.bandwidth, portal.server.stall_s = 0.02, 20e6, 3.0
        # disjoint sets of chunks, at most 3 failures for any one (it is read at the 4th attempt)
        for pattern, mode in [("TS_01.zarr/0/0/", "truncate"), ("TS_02.zarr/0/3/", "500"),
                              ("TS_01.zarr/0/5/", "drop"), ("TS_02.zarr/0/7/", "corrupt"),
                              ("TS_01.zarr/0/8/", "503"), ("TS_02.zarr/0/9/", "reset"),
                              ("TS_01.zarr/0/10/", "timeout"), ("TS_02.zarr/0/11/", "trickle")]:
            portal.server.add_fault(pattern, mode, times=3 if mode not in ("timeout", "trickle") else 1)
        assert extract_main(["--i", "project/optimisation_set.star", "--o", "Extract2D/"] + EXTRACT_2D) == 0
    assert all(fault[2] == 0 for fault in portal.server.faults)      # every fault did happen
    ok, report = compare_with_relion(reference, tmp_path / "Extract2D")
    assert ok, report[-3000:]


@pytest.mark.parametrize("mode", ["500", "timeout"])
def test_extraction_network_failure_is_one_clear_line(portal, tmp_path, capsys, monkeypatch, mode):
    """A tilt series that cannot be read: one error line after a bounded time (4 attempts of at most
    RELION_PY_REMOTE_TIMEOUT each), no output of it, nothing half-written; a rerun completes."""
    monkeypatch.setenv("RELION_PY_REMOTE_TIMEOUT", "0.5")
    portal.server.stall_s = 2.0
    with working_directory(tmp_path):
        make_portal_project(_options(portal, o="project/"))
        portal.server.add_fault("TS_02.zarr/0/", mode, times=1000)
        start = time.monotonic()
        assert extract_main(["--i", "project/optimisation_set.star", "--o", "Extract2D/"] + EXTRACT_2D) == 1
        elapsed = time.monotonic() - start
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith("relion-py-extract: error: cannot read http://127.0.0.1:")
        reason = "HTTP 500" if mode == "500" else "timed out"
        assert "TS_02.zarr/0/" in err and reason in err and err.endswith("(4 attempts)")
        assert elapsed < 30          # bounded; not a timing assertion on speed (4 x 0.5 s + start-up)
        # no stack of the failed tilt series, and no half-written file, was left behind
        out = tmp_path / "Extract2D"
        assert not list(out.rglob("TS_02/*")) and not list(out.rglob(".*tmp*"))
        portal.server.reset()
        assert extract_main(["--i", "project/optimisation_set.star", "--o", "Extract2D/", "--only_do_unfinished"]
                            + EXTRACT_2D) == 0
    ok, report = compare_with_relion(_extract_local(portal, EXTRACT_2D, "Extract2D"), tmp_path / "Extract2D")
    assert ok, report[-3000:]


def test_reconstruct_equals_local(portal, tmp_path):
    from relion_py.cli.reconstruct import main as reconstruct_main
    args = ["--b", "48", "--crop", "32"]
    with working_directory(portal.local):
        assert reconstruct_main(["--i", "project/optimisation_set.star", "--o", "Reconstruct/"] + args) == 0
    with working_directory(tmp_path):
        make_portal_project(_options(portal))
        assert reconstruct_main(["--i", "Portal/optimisation_set.star", "--o", "Reconstruct/"] + args) == 0
    ok, report = compare_with_relion(os.path.join(portal.local, "Reconstruct"), tmp_path / "Reconstruct")
    assert ok, report[-3000:]


# ---------------------------------------------------------------------------------------------------
# --download: local MRC stacks
# ---------------------------------------------------------------------------------------------------

def _same_outputs(a, b):
    """Every output file of ``a`` is in ``b`` with the same bytes (note.txt aside: it holds the command;
    MRC labels aside: they hold RELION's time stamp)."""
    files = sorted(os.path.relpath(os.path.join(d, f), a) for d, _, fs in os.walk(a) for f in fs
                   if f != "note.txt")
    assert files == sorted(os.path.relpath(os.path.join(d, f), b) for d, _, fs in os.walk(b) for f in fs
                           if f != "note.txt")
    assert any(f.endswith((".mrc", ".mrcs")) for f in files)
    for f in files:
        x, y = (open(os.path.join(root, f), "rb").read() for root in (a, b))
        if f.endswith((".mrc", ".mrcs")):
            x, y = x[:224] + x[304:], y[:224] + y[304:]
        assert x == y, f


@pytest.mark.parametrize("args", [EXTRACT_2D, EXTRACT_3D])
def test_download_extraction_equals_remote_extraction(portal, tmp_path, args):
    for folder, download in (("remote", False), ("download", True)):
        (tmp_path / folder).mkdir()
        with working_directory(tmp_path / folder):
            make_portal_project(_options(portal, o="project/", download=download))
            assert extract_main(["--i", "project/optimisation_set.star", "--o", "Extract/"] + args) == 0
    names = read_star(tmp_path / "download/project/tilt_series/TS_01.star")["TS_01"]
    assert REMOTE_IMAGES_LABEL not in names.columns
    assert list(names["rlnMicrographName"]) == [f"{z}@project/tilt_series/TS_01.mrcs" for z in range(1, 14)]
    assert "HEADER-ONLY" not in (tmp_path / "download/project/note.txt").read_text()
    for name in ("TS_01", "TS_02"):       # the stacks hold the simulated pixels
        np.testing.assert_array_equal(
            mmap_mrc(str(tmp_path / f"download/project/tilt_series/{name}.mrcs")),
            mmap_mrc(os.path.join(portal.local, "project", "tilt_series", f"{name}.mrcs")))
    _same_outputs(tmp_path / "remote/Extract", tmp_path / "download/Extract")


def test_download_reconstruct_equals_remote_reconstruct(portal, tmp_path):
    from relion_py.cli.reconstruct import main as reconstruct_main
    for folder, download in (("remote", False), ("download", True)):
        (tmp_path / folder).mkdir()
        with working_directory(tmp_path / folder):
            make_portal_project(_options(portal, o="project/", download=download))
            assert reconstruct_main(["--i", "project/optimisation_set.star", "--o", "Reconstruct/", "--b",
                                     "48", "--crop", "32"]) == 0
    # relion-py-reconstruct does not repeat itself bit for bit even on one input (FFTW plans measured anew
    # until wisdom is stored, thread-dependent double sums: header mean ~1e-17 and, rarely, one ulp of a
    # pixel differ between two runs), so the maps are compared as the fixtures are; the inputs are the
    # same pixels (test_download_extraction_equals_remote_extraction).
    ok, report = compare_with_relion(tmp_path / "remote/Reconstruct", tmp_path / "download/Reconstruct")
    assert ok, report[-3000:]


def _chunk_slices(portal):
    """z of the chunks of TS_02's level 0 fetched (metadata such as .zarray aside)."""
    keys = [r.path.split("TS_02.zarr/0/")[1] for r in portal.server.requests("TS_02.zarr/0/")]
    return {int(k.split("/")[0]) for k in keys if not k.startswith(".")}


def test_download_resumes_and_fetches_only_the_selection(portal, tmp_path, monkeypatch):
    reference = os.path.join(portal.local, "project", "tilt_series", "TS_02.mrcs")
    original = zarr_images.ZarrArray.iter_slabs

    def interrupted(array, pool, first_row=0):       # Ctrl-C once 5 slices are handed out
        for k, slab in enumerate(original(array, pool, first_row)):
            if k == 5:
                raise KeyboardInterrupt
            yield slab
    monkeypatch.setattr(zarr_images.ZarrArray, "iter_slabs", interrupted)
    with working_directory(tmp_path), pytest.raises(KeyboardInterrupt):
        make_portal_project(_options(portal, tiltseries_id=400, download=True))
    part = tmp_path / "Portal/tilt_series/TS_02.mrcs.part"
    assert part.stat().st_size == 1024 + 5 * 384 * 352 * 4
    assert not (tmp_path / "Portal/tilt_series/TS_02.star").exists()    # no STAR file names a partial stack
    # the stack of the run not selected is never read
    assert not portal.server.requests("TS_01.zarr")
    monkeypatch.setattr(zarr_images.ZarrArray, "iter_slabs", original)
    with open(part, "ab") as fh:                                       # half a slice written when cut
        fh.write(b"\0" * 1000)
    portal.server.reset()
    with working_directory(tmp_path):
        make_portal_project(_options(portal, tiltseries_id=400, download=True))
    assert _chunk_slices(portal) == set(range(5, 13))                   # only the slices not written
    stack = str(tmp_path / "Portal/tilt_series/TS_02.mrcs")
    np.testing.assert_array_equal(mmap_mrc(stack), mmap_mrc(reference))
    assert not part.exists()
    portal.server.reset()
    with working_directory(tmp_path):                                  # complete: nothing fetched again
        make_portal_project(_options(portal, tiltseries_id=400, download=True))
    assert not _chunk_slices(portal)


def test_selection_by_names_depositions_annotations_tomograms(portal, tmp_path):
    project, _ = _project(portal, tmp_path / "a", run_ids="", run_names="TS_02")
    assert project.tomograms == ["TS_02"]
    project, _ = _project(portal, tmp_path / "b", run_ids="", deposition_ids="10000")
    assert project.tomograms == ["TS_01", "TS_02"] and project.n_particles == 12
    tables = json.load(open(os.path.join(portal.root, "portal.json")))
    ground_truth = [a["id"] for a in tables["annotations"] if a["groundTruthStatus"]]
    project, _ = _project(portal, tmp_path / "c", annotation_ids=str(ground_truth[0]))
    assert len(project.tomograms) == 1
    tomogram = next(t for t in tables["tomograms"] if t["alignmentId"] == 300)
    project, _ = _project(portal, tmp_path / "d", tomogram_ids=str(tomogram["id"]))
    assert project.tomograms == ["TS_01"]
    for kw, message in [(dict(run_names="TS_09"), "no run named TS_09"),
                        (dict(tomogram_ids="123456"), "no tomogram with id 123456"),
                        (dict(deposition_ids="5"), "no annotation of object")]:
        with pytest.raises(RelionPyError, match=message):
            _project(portal, tmp_path / "e", **kw)


def test_dry_run_writes_nothing(portal, tmp_path, capsys):
    with working_directory(tmp_path):
        assert portal_main(["--url", portal.server.graphql_url, "--run_ids", "100,200", "--object",
                            OBJECT_NAME, "--ground_truth", "--o", "Portal/", "--dry_run", "--download"]) == 0
    out = capsys.readouterr().out
    assert "TS_01: run 100 (TS_01)" in out and "6 particles" in out
    tables = json.load(open(os.path.join(portal.root, "portal.json")))
    expected = sum(int(t.get("fileSizeOmezarr") or 0) or 4 * t["sizeX"] * t["sizeY"] * t["sizeZ"]
                   for t in tables["tiltseries"])
    assert f"2 tilt series, 12 particles, {expected} bytes of tilt series" in out
    assert not list(tmp_path.iterdir())
    assert not portal.server.requests("/TiltSeries/")


def test_average_from_portal_runs(portal, tmp_path):
    """relion-py-portal … --average -- <extraction>: project, extraction, then the tilt-series reconstruction of
    the extracted particles (what relion-py-reconstruct writes for them), and a summary
    with the particles per run, the bytes fetched, the time per stage and the map's central slices."""
    from PIL import Image
    from relion_py.cli.reconstruct import main as reconstruct_main
    with working_directory(tmp_path):
        assert portal_main(["--url", portal.server.graphql_url, "--run_ids", "100,200", "--object", OBJECT_NAME,
                            "--ground_truth", "--o", "project/", "--average", "--", "--o", "Extract/"]
                           + EXTRACT_3D) == 0
        box = EXTRACT_3D[EXTRACT_3D.index("--b") + 1]
        crop = EXTRACT_3D[EXTRACT_3D.index("--crop") + 1]
        os.makedirs("Again")
        # the portal's particles have no half sets: --average alternates them (1, 2, 1, … in STAR order)
        halves = read_star("project/Average/particles_halves.star")["particles"]["rlnRandomSubset"]
        assert list(halves) == [1 + k % 2 for k in range(len(halves))]
        assert reconstruct_main(["--i", "project/Average/optimisation_set.star", "--o", "Again/", "--b", box,
                                 "--crop", crop, "--j_out", "2", "--j_in", "1"]) == 0
    average = tmp_path / "project" / "Average"
    for name in ("merged.mrc", "half1.mrc", "half2.mrc"):
        assert np.array_equal(read_mrc(average / name)[0], read_mrc(tmp_path / "Again" / name)[0])
    summary = (average / "summary.md").read_text()
    particles = read_star(tmp_path / "Extract/particles.star")["particles"]
    for name, count in particles["rlnTomoName"].astype(str).value_counts().items():
        assert f"| {name} | {count} |" in summary
    fetched = int(summary.split("Bytes fetched (annotations, tilt-series chunks): ")[1].split()[0].replace(",", ""))
    assert fetched > 0
    assert all(f"| {stage} |" in summary for stage in ("portal project", "extraction", "reconstruction"))
    n = read_mrc(average / "merged.mrc")[0].shape[0]
    assert Image.open(average / "central_slices.png").size == (3 * n + 8, n)
