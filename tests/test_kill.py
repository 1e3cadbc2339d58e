"""Runs killed at random points (SIGKILL, or SIGTERM as SLURM and RELION's GUI send), then resumed with
--only_do_unfinished (extraction) or simply rerun (reconstruction): every output is byte-identical to an
uninterrupted run's and no temporary file is left (issue 14)."""
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import FIXTURES

T = ["--t", "synthetic/tomograms.star", "--p", "synthetic/particles.star", "--b", "32", "--crop", "24", "--j", "1"]
RUNS = {   # name: (module, extra flags, resume flag, trials)
    "stack2d": ("relion_py.cli.extract", ["--stack2d"], ["--only_do_unfinished"], 7),
    "3d": ("relion_py.cli.extract", ["--no_comb", "--ctf", "--multi"], ["--only_do_unfinished"], 7),
    "reconstruct": ("relion_py.cli.reconstruct", [], [], 6),
}
#: note.txt records the command line, which differs by the resume flag
NOT_COMPARED = {"note.txt"}


def _command(module, extra, out):
    return [sys.executable, "-m", module] + T + extra + ["--o", out]


def _without_date(name, data):
    """MRC files with their header's first label (RELION's "Relion  <date time>") blanked."""
    if name.endswith((".mrc", ".mrcs")):
        return data[:224] + bytes(80) + data[304:]
    return data


def _files(root):
    return {str(p.relative_to(root)): _without_date(p.name, p.read_bytes())
            for p in sorted(Path(root).rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    dest = tmp_path_factory.mktemp("kill") / "synthetic"
    shutil.copytree(FIXTURES / "synthetic", dest, ignore=shutil.ignore_patterns("ground_truth", "spa2d"))
    return dest.parent


@pytest.mark.parametrize("name", ["stack2d", "3d", "reconstruct"])
def test_killed_runs_resume_to_identical_bytes(project, name):
    module, extra, resume, trials = RUNS[name]
    start = time.monotonic()
    out = "out/"              # the same folder every time: particles.star names its files
    subprocess.run(_command(module, extra, out), cwd=project, check=True, capture_output=True)
    duration = time.monotonic() - start          # kill points are drawn over one whole run
    reference = {k: v for k, v in _files(project / out).items() if k not in NOT_COMPARED}
    shutil.rmtree(project / out)
    rng = random.Random(14)
    for trial in range(trials):
        sig = (signal.SIGKILL, signal.SIGTERM)[trial % 2]
        process = subprocess.Popen(_command(module, extra, out), cwd=project, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True)
        try:
            process.wait(timeout=rng.uniform(0.2, 1.0) * duration)
        except subprocess.TimeoutExpired:
            process.send_signal(sig)
        _, err = process.communicate()
        if sig == signal.SIGTERM and process.returncode == 143:
            assert "stopped by SIGTERM" in err.strip().splitlines()[-1], err
        else:
            assert process.returncode in (0, -sig), err
        result = subprocess.run(_command(module, extra + resume, out), cwd=project, capture_output=True,
                                text=True)
        assert result.returncode == 0, result.stderr
        files = _files(project / out)
        assert not [k for k in files if ".tmp-" in k], f"trial {trial}: temporaries left"
        files = {k: v for k, v in files.items() if k not in NOT_COMPARED}
        assert sorted(files) == sorted(reference), f"trial {trial} ({sig.name})"
        different = [k for k in reference if files[k] != reference[k]]
        assert not different, f"trial {trial} ({sig.name}): {different} differ"
        shutil.rmtree(project / out)


def test_stop_line_offers_a_resume_only_when_work_was_kept(monkeypatch):
    """relion_reconstruct keeps nothing of a stopped run and has no --only_do_unfinished: its stop line says to run
    it again; programs that counted finished work say how much and how to resume."""
    from relion_py.runtime import job_control
    monkeypatch.setattr(job_control._Finished, "count", 0)
    monkeypatch.setattr(job_control._Finished, "what", None)
    assert job_control.finished_summary() == "no work was kept: run it again"
    job_control.count_finished(3)
    assert job_control.finished_summary().startswith("3 particles were finished")
    assert "--only_do_unfinished" in job_control.finished_summary()
