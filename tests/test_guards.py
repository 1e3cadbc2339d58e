"""Issue 14's guards: resume trusts only complete particles, SIGTERM and RELION's pipeline-control files,
outputs never overwrite inputs, user mistakes get one line and exit 1, failed runs leave no leftovers."""
import os
import re
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import FIXTURES, set_star_value, working_directory
from relion_py.cli import extract, reconstruct
from relion_py.cli.common import run_cli
from relion_py.io.open_tilt_images import is_one_mrc_stack
from relion_py.project.tomograms import TomogramSet
from relion_py.runtime import memory
from relion_py.runtime.errors import RelionPyError

T = ["--t", "synthetic/tomograms.star", "--p", "synthetic/particles.star"]
SMALL = ["--b", "32", "--crop", "24", "--j", "1"]


@pytest.fixture
def project(tmp_path):
    """A writable copy of the fixture project's inputs."""
    dest = tmp_path / "project" / "synthetic"
    shutil.copytree(FIXTURES / "synthetic", dest, ignore=shutil.ignore_patterns("ground_truth", "spa2d"))
    return dest.parent


def run(project, main, argv, capsys):
    with working_directory(project):
        status = main(argv)
    return status, capsys.readouterr().err.strip().splitlines()


def run_quiet(project, main, argv, capsys):
    """Like :func:`run`, without the progress lines (" ■ ...") and warnings (" ! ...")."""
    status, err = run(project, main, argv, capsys)
    return status, [line for line in err if not line.lstrip().startswith(("■", "!"))]


def temporaries(root):
    return [p for p in Path(root).rglob("*") if ".tmp-" in p.name]


def test_resume_redoes_a_particle_missing_its_weights(project, capsys):
    argv = T + SMALL + ["--o", "r/"]
    assert run(project, extract.main, argv, capsys)[0] == 0
    folder = project / "r" / "Subtomograms" / "TS_01"
    weights = sorted(folder.glob("*_weights.mrc"))[0]
    expected = weights.read_bytes()
    weights.unlink()
    stale = folder / ".5_data.mrc.tmp-999999999"            # a killed run's temporary (no such process)
    stale.write_bytes(b"partial")
    status, err = run(project, extract.main, argv + ["--only_do_unfinished"], capsys)
    assert status == 0, err
    redone = weights.read_bytes()
    assert redone[:224] + redone[304:] == expected[:224] + expected[304:]     # all but the MRC date label
    assert not temporaries(project / "r")


def test_resume_2d_trusts_existing_stacks(project, capsys):
    argv = T + SMALL + ["--stack2d", "--o", "r/"]
    assert run(project, extract.main, argv, capsys)[0] == 0
    stacks = sorted((project / "r" / "Subtomograms").rglob("*_stack2d.mrcs"))
    stacks[0].unlink()
    status, err = run(project, extract.main, argv + ["--only_do_unfinished"], capsys)
    assert status == 0 and stacks[0].exists()
    assert any(f"skipping {len(stacks) - 1} particles" in line for line in err), err


def _terminate_self():
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(10)                       # never reached: the handler raises at once
    raise AssertionError("SIGTERM was not handled")


@pytest.mark.parametrize("func, status, exit_file", [
    (lambda: None, 0, "RELION_JOB_EXIT_SUCCESS"),
    (lambda: (_ for _ in ()).throw(RelionPyError("bad")), 1, "RELION_JOB_EXIT_FAILURE"),
    (_terminate_self, 143, "RELION_JOB_EXIT_ABORTED"),
])
def test_exit_status_and_pipeline_control_file(tmp_path, capsys, func, status, exit_file):
    control = str(tmp_path) + "/"
    assert run_cli("prog", func, control) == status
    assert [p.name for p in tmp_path.iterdir()] == [exit_file]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) <= 1
    if status == 143:
        assert "stopped by SIGTERM" in err[0] and "finished" in err[0]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_extract_writes_the_success_file(project, capsys):
    control = project / "job"
    control.mkdir()
    status, err = run(project, extract.main, T + SMALL + ["--stack2d", "--o", "r/", "--pipeline_control", "job/"],
                      capsys)
    assert status == 0, err
    assert [p.name for p in control.iterdir()] == ["RELION_JOB_EXIT_SUCCESS"]


def _tree(root):
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None for p in Path(root).rglob("*")}


def test_output_folder_holding_the_inputs_is_refused(project, capsys):
    before = _tree(project)
    (project / "link").symlink_to(project / "synthetic")
    status, err = run_quiet(project, extract.main, T + SMALL + ["--stack2d", "--o", "link/"], capsys)
    assert status == 1 and len(err) == 1 and "would overwrite the input" in err[0], err
    (project / "link").unlink()
    assert _tree(project) == before


def test_reconstruction_output_naming_an_input_is_refused(project, capsys):
    (project / "out").mkdir()
    shutil.copy(project / "synthetic" / "tomograms.star", project / "out" / "note.txt")
    before = _tree(project)
    argv = ["--t", "out/note.txt", "--p", "synthetic/particles.star"] + SMALL + ["--o", "out/"]
    status, err = run_quiet(project, reconstruct.main, argv, capsys)
    assert status == 1 and len(err) == 1 and "would overwrite the input out/note.txt" in err[0], err
    assert _tree(project) == before


def test_image_mode_output_naming_the_input_stack_is_refused(tmp_path, capsys):
    shutil.copytree(FIXTURES / "synthetic" / "spa2d", tmp_path / "synthetic" / "spa2d")
    before = _tree(tmp_path)
    argv = ["--i", "synthetic/spa2d/particles.star", "--o", "synthetic/spa2d/particles.mrcs"]
    status, err = run_quiet(tmp_path, reconstruct.main, argv, capsys)
    assert status == 1 and len(err) == 1 and "would overwrite the input" in err[0], err
    assert _tree(tmp_path) == before


@pytest.mark.parametrize("main, extra", [(extract.main, SMALL + ["--stack2d"]), (reconstruct.main, SMALL)])
def test_output_naming_an_existing_file(project, capsys, main, extra):
    (project / "taken").write_text("x")
    for target in ("taken", "taken/sub/"):
        status, err = run_quiet(project, main, T + extra + ["--o", target], capsys)
        assert status == 1 and len(err) == 1 and "existing file" in err[0], err
    assert (project / "taken").read_text() == "x"


def test_unwritable_output_folder(project, capsys):
    (project / "ro").mkdir()
    (project / "ro").chmod(0o500)
    # root writes into read-only folders: sysfs refuses new folders to everyone
    target = "ro/out/" if os.geteuid() != 0 else "/sys/relion_py_out/"
    try:
        status, err = run_quiet(project, extract.main, T + SMALL + ["--stack2d", "--o", target], capsys)
    finally:
        (project / "ro").chmod(0o700)
    assert status == 1 and len(err) == 1 and "cannot create the folder" in err[0], err


@pytest.mark.parametrize("main, flag", [(extract.main, "--bin"), (extract.main, "--cutoff_fract"),
                                        (extract.main, "--max_dose"), (reconstruct.main, "--bin"),
                                        (reconstruct.main, "--SNR")])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_numbers_are_refused(project, capsys, main, flag, value):
    status, err = run_quiet(project, main, T + SMALL + [f"{flag}={value}", "--o", "r/"], capsys)
    assert status == 1 and len(err) == 1 and f"{flag} must be a finite number" in err[0], err
    assert not (project / "r").exists()


@pytest.mark.parametrize("main", [extract.main, reconstruct.main])
def test_absurd_binning_is_refused(project, capsys, main):
    status, err = run_quiet(project, main, T + SMALL + ["--bin", "1e300", "--o", "r/"], capsys)
    assert status == 1 and len(err) == 1, err
    assert "--bin 1e+300 x --b 32 gives an extraction square of 3.2e+301 px, more than any tilt image" in err[0], err


def test_cutoff_fract_out_of_range(project, capsys):
    status, err = run_quiet(project, extract.main, T + SMALL + ["--cutoff_fract", "1.5", "--o", "r/"], capsys)
    assert status == 1 and "--cutoff_fract must be in [0, 1)" in err[0], err


def _poison_frame(project, frame, value):
    """Write ``value`` over the centre of the image of row ``frame`` of TS_01's tilt-series table."""
    import mrcfile
    from relion_py.io.star import read_star
    name = str(read_star(project / "synthetic" / "tilt_series" / "TS_01.star")["TS_01"]["rlnMicrographName"][frame])
    index, path = name.split("@")
    with mrcfile.open(project / path, "r+") as m:
        h, w = m.data.shape[1:]
        m.data[int(index) - 1, h // 4: 3 * h // 4, w // 4: 3 * w // 4] = value


@pytest.mark.parametrize("main, extra", [(extract.main, SMALL + ["--stack2d"]), (extract.main, SMALL),
                                         (reconstruct.main, SMALL)])
def test_non_finite_pixels_name_the_tilt_series_and_frame(project, capsys, main, extra):
    _poison_frame(project, 3, np.nan)
    status, err = run_quiet(project, main, T + extra + ["--o", "r/"], capsys)
    assert status == 1 and len(err) == 1, err
    assert "tilt series TS_01, frame 3 (row 4, " in err[0] and "NaN or Inf" in err[0], err


@pytest.mark.parametrize("main", [extract.main, reconstruct.main])
@pytest.mark.parametrize("label, row, value, message", [
    ("rlnAngleRot", 5, "nan", "rlnAngleRot of particle TS_01/6 is nan;"),
    ("rlnCenteredCoordinateYAngst", 2, "-inf", "rlnCenteredCoordinateYAngst of particle TS_01/3 is -inf;"),
    ("rlnTomoTiltSeriesPixelSize", 0, "inf", "rlnTomoTiltSeriesPixelSize inf of an optics group must be a positive"),
    ("rlnTomoTiltSeriesPixelSize", 0, "0", "rlnTomoTiltSeriesPixelSize 0.0 of an optics group must be a positive"),
    ("rlnVoltage", 0, "nan", "rlnVoltage nan of the optics group differs from 300.0 of tomogram TS_01"),
])
def test_non_finite_particle_geometry_is_refused(project, capsys, main, label, row, value, message):
    """RELION would give such a particle no place or no orientation (it adds nothing, or NaN, while being counted
    and written), or write NaN coordinates into particles.star."""
    set_star_value(project / "synthetic" / "particles.star", label, row, value)
    status, err = run_quiet(project, main, T + SMALL + ["--o", "r/"], capsys)
    assert status == 1 and len(err) == 1 and message in err[0], err
    assert not (project / "r").exists()


@pytest.mark.parametrize("main, mode", [(extract.main, []), (extract.main, ["--stack2d"]), (reconstruct.main, [])])
@pytest.mark.parametrize("table, label, value, message", [
    ("tomograms.star", "rlnTomoTiltSeriesPixelSize", "nan", "rlnTomoTiltSeriesPixelSize of TS_01 must be a positive"),
    ("tomograms.star", "rlnTomoTiltSeriesPixelSize", "-2", "rlnTomoTiltSeriesPixelSize of TS_01 must be a positive"),
    ("tomograms.star", "rlnTomoHand", "inf", "rlnTomoHand of TS_01 is inf; it must be a finite number"),
    ("tilt_series/TS_01.star", "rlnTomoZRot", "nan", "tilt series of TS_01: rlnTomoZRot of frame 3 (row 4) is not a "
                                                      "finite number"),
    ("tilt_series/TS_01.star", "rlnDefocusV", "inf", "tilt series STAR of TS_01: rlnDefocusV of frame 3 (row 4) is "
                                                     "not a finite number"),
    ("tilt_series/TS_01.star", "rlnMicrographPreExposure", "-inf", "rlnMicrographPreExposure of frame 3 (row 4)"),
    ("tilt_series/TS_01.star", "rlnCtfScalefactor", "1e30", "tilt series TS_01, frame 3 (row 4, "),
    ("tilt_series/TS_01.star", "rlnDefocusU", "1e300", "a particle's CTF x dose weights are NaN or infinite"),
    ("tilt_series/TS_01.star", "rlnMicrographPreExposure", "-1e300", "frame 3 (row 4): its dose weights overflow"),
])
def test_non_finite_tilt_series_numbers_are_refused(project, capsys, main, mode, table, label, value, message):
    """RELION would spread NaN over every output of the tilt series (CTF, dose weights, projections); finite but
    absurd CTF values (a defocus of 1e300 Å) overflow into NaN weights."""
    set_star_value(project / "synthetic" / table, label, 0 if table == "tomograms.star" else 3, value)
    status, err = run_quiet(project, main, T + SMALL + mode + ["--o", "r/"], capsys)
    assert status == 1 and len(err) == 1 and message in err[0], err
    # particles finished before the bad frame was met stay (for --only_do_unfinished), nothing else
    assert not (project / "r" / "note.txt").exists() and not temporaries(project)


@pytest.mark.parametrize("main, extra", [(extract.main, ["--min_frames", "39"]), (reconstruct.main, [])])
def test_non_finite_trajectory_shift_is_refused(project, capsys, main, extra):
    """A NaN shift would put the particle nowhere in that frame, which would then be dropped as invisible."""
    motion = project / "motion.star"
    shutil.copy(FIXTURES / "variants" / "motion.star", motion)
    set_star_value(motion, "rlnOriginYAngst", 5, "nan")
    status, err = run_quiet(project, main, T + SMALL + extra + ["--mot", "motion.star", "--o", "r/"], capsys)
    assert status == 1 and len(err) == 1, err
    assert "rlnOriginYAngst of frame 5 (row 6) of the trajectory of TS_01/1 is nan" in err[0], err


def test_failed_runs_leave_no_note_or_empty_folders(project, capsys):
    _poison_frame(project, 0, np.inf)
    status, _ = run(project, extract.main, T + SMALL + ["--o", "r/"], capsys)
    assert status == 1
    assert not (project / "r" / "note.txt").exists()
    assert not [p for p in (project / "r").rglob("*") if p.is_dir() and not any(p.iterdir())]
    status, _ = run(project, reconstruct.main, T + SMALL + ["--o", "q/"], capsys)
    assert status == 1 and not (project / "q").exists()


def test_min_frames_drop_is_named(project, capsys):
    status, err = run(project, extract.main, T + SMALL + ["--stack2d", "--min_frames", "100", "--o", "r/"], capsys)
    assert status == 0
    assert any("visible in fewer than --min_frames 100 images" in line for line in err), err
    assert not any("too close to the edge" in line for line in err if "fewer" not in line and "1 particle" in line)


@pytest.mark.parametrize("program", ["extract", "reconstruct"])
def test_relion_gui_abort_file_stops_the_run(program, tmp_path):
    """RELION's GUI aborts a job by creating RELION_JOB_ABORT_NOW in its folder: the run stops, exits 2
    (RELION_EXIT_ABORTED) and leaves RELION_JOB_EXIT_ABORTED."""
    job = tmp_path / "Job" / "job001"
    job.mkdir(parents=True)
    (job / "RELION_JOB_ABORT_NOW").touch()
    args = ["--t", "synthetic/tomograms.star", "--p", "synthetic/particles.star", "--o", f"{job}/", "--b", "32",
            "--crop", "24", "--pipeline_control", f"{job}/"]
    with working_directory(FIXTURES):
        main = extract.main if program == "extract" else reconstruct.main
        status = main(args + (["--stack2d"] if program == "extract" else []))
    assert status == 2
    assert (job / "RELION_JOB_EXIT_ABORTED").exists() and not (job / "RELION_JOB_EXIT_SUCCESS").exists()


@pytest.mark.parametrize("main, extra, what", [
    (extract.main, [], "the buffers of --b 32 (--bin 1, --crop 24), 1 thread(s) and 40 tilt images need about"),
    (extract.main, ["--stack2d"], "the buffers of --b 32 (--bin 1, --crop 24), 1 thread(s) and 40 tilt images"),
    (reconstruct.main, ["--j_out", "1", "--j_in", "1"],
     "the accumulators and buffers of --b 32 (--bin 1), 1 thread(s) and 40 tilt images need about"),
])
def test_runs_that_cannot_fit_in_memory_are_refused(project, capsys, monkeypatch, main, extra, what):
    """A box the machine (or the SLURM job's cgroup) cannot hold is refused before anything is allocated or
    written, instead of growing until the OOM killer ends the run: here a limit of 64 KiB above what the
    process holds already."""
    monkeypatch.setattr(memory, "memory_limit", lambda: memory._resident_bytes() + 2**16)
    status, err = run_quiet(project, main, T + SMALL + extra + ["--o", "r/"], capsys)
    assert status == 1 and len(err) == 1 and what in err[0] and "use a smaller box" in err[0], err
    assert not (project / "r").exists()


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_memory_limit_of_a_cgroup(tmp_path):
    """The limits of the process's control group and of its ancestors (SLURM's cgroup task plugin), v2 and v1."""
    _write(tmp_path / "v2" / "slurm" / "memory.max", "max\n")
    _write(tmp_path / "v2" / "slurm" / "job_1" / "memory.max", "1073741824\n")
    _write(tmp_path / "v2" / "slurm" / "job_1" / "step_0" / "memory.max", "max\n")
    _write(tmp_path / "v2.cgroup", "0::/slurm/job_1/step_0\n")
    assert list(memory._cgroup_limits(tmp_path / "v2.cgroup", tmp_path / "v2")) == [2**30]
    _write(tmp_path / "v1" / "memory" / "memory.limit_in_bytes", "9223372036854771712\n")
    _write(tmp_path / "v1" / "memory" / "slurm" / "uid_0" / "job_5" / "memory.limit_in_bytes", "2147483648\n")
    _write(tmp_path / "v1.cgroup", "5:cpu,cpuacct:/slurm/uid_0/job_5\n4:memory:/slurm/uid_0/job_5\n")
    assert sorted(memory._cgroup_limits(tmp_path / "v1.cgroup", tmp_path / "v1")) == [2**31, 9223372036854771712]
    assert 0 < memory.memory_limit() <= os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def test_square_buffers_of_stacks_and_per_tilt_files(project):
    """One MRC stack: compiled code cuts each window into one reused buffer; per-tilt files (and OME-Zarr) are
    gathered first, one buffer per frame: the memory checks count those."""
    assert is_one_mrc_stack(["1@a/TS_01.mrcs", "2@a/TS_01.mrcs"])
    assert not is_one_mrc_stack(["a/TS_01_001.mrc", "a/TS_01_002.mrc"])
    assert not is_one_mrc_stack(["1@https://host/TS_01.zarr", "2@https://host/TS_01.zarr"])
    with working_directory(project):
        assert TomogramSet("synthetic/tomograms.star").square_buffers() == (40, 1)
        star = Path("synthetic/tilt_series/TS_01.star")
        k = iter(range(1000))
        star.write_text(re.sub(r"\d+@(\S+)\.mrcs", lambda m: f"{m.group(1)}_{next(k)}.mrc", star.read_text()))
        assert TomogramSet("synthetic/tomograms.star").square_buffers() == (40, 40)
