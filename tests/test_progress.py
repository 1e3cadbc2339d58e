"""Progress in job logs (stdout not a terminal): periodic lines, a closing line per loop and per run, and
the notice that the kernels are being compiled when Numba's cache holds none."""
import io

import pytest

from conftest import mirror_fixtures, working_directory
from relion_py.cli.reconstruct import main as reconstruct_main
from relion_py.runtime import progress


def test_log_gets_progress_lines_and_a_closing_line(monkeypatch):
    monkeypatch.setattr(progress, "LOG_PERIOD", 0.0)          # a line at every step
    monkeypatch.setattr(progress, "_noticed", True)
    log, err = io.StringIO(), io.StringIO()
    with progress.Progress("Extracting TS_01", 4, stream=err, log=log) as bar:
        for _ in range(4):
            bar.advance(1)
    lines = log.getvalue().splitlines()
    assert [line.split("|")[0].split(":")[0] for line in lines[:3]] == [" ■ Extracting TS_01"] * 3
    assert "1/4" in lines[0] and "3/4" in lines[2]
    assert lines[3].startswith(" ■ Extracting TS_01: 4 particles in ") and lines[3].endswith(" particles/s)")
    assert len(lines) == 4 and err.getvalue() == ""           # no terminal bar on a non-terminal


def test_compile_notice_only_with_a_cold_cache(monkeypatch, tmp_path):
    """The cache index of a kernel module (``<module>.<function>-<line>.py3x.nbi``) under NUMBA_CACHE_DIR."""
    import types
    import numba
    monkeypatch.setattr(numba.config, "CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(progress, "_noticed", False)
    module = types.ModuleType("relion_py.kernels.not_compiled_yet")
    module.__file__ = str(tmp_path / "kernels" / "not_compiled_yet.py")
    log = io.StringIO()
    assert not progress.kernels_cached(module)
    progress.notice_compilation(module, log)
    progress.notice_compilation(module, log)                  # once per process
    assert log.getvalue().count("Compiling the numerical kernels") == 1
    (tmp_path / "cache" / "some_site").mkdir(parents=True)
    (tmp_path / "cache" / "some_site" / "not_compiled_yet._kernel-12.py311.nbi").write_bytes(b"")
    assert progress.kernels_cached(module)
    monkeypatch.setattr(progress, "_noticed", False)
    log = io.StringIO()
    progress.notice_compilation(module, log)
    assert log.getvalue() == ""


@pytest.mark.parametrize("program", ["extract", "reconstruct_particle", "reconstruct_images"])
def test_each_program_probes_the_cache_of_its_own_kernels(program, tmp_path, monkeypatch):
    """Once a program has run, the cache holds the kernels it probes, so it announces no compilation again (an
    extraction used to probe the reconstructions' kernels too and announced one on every run until then)."""
    from relion_py.cli.extract import main as extract_main
    from relion_py.kernels.classic import insertion
    from relion_py.kernels.tomography import extraction, insertion_backward
    project = mirror_fixtures(tmp_path / "project", "none")
    tomo = ["--t", "synthetic/tomograms.star", "--p", "synthetic/particles.star"]
    main, args, kernels = {
        "extract": (extract_main, tomo + ["--stack2d", "--b", "32", "--crop", "24", "--o", "out/"], extraction),
        "reconstruct_particle": (reconstruct_main, tomo + ["--b", "24", "--o", "out/"], insertion_backward),
        "reconstruct_images": (reconstruct_main, ["--i", "synthetic/spa2d/particles.star", "--ctf", "--o",
                                                  "rec.mrc"], insertion)}[program]
    probed = []
    probe = progress.kernels_cached
    monkeypatch.setattr(progress, "kernels_cached", lambda module: probed.append(module) or probe(module))
    monkeypatch.setattr(progress, "_noticed", False)
    with working_directory(project):
        assert main(args) == 0
    assert probed == [kernels] and probe(kernels)


def test_reconstruction_run_ends_with_a_summary(tmp_path, capsys):
    work = mirror_fixtures(tmp_path / "project", "none")
    with working_directory(work):
        assert reconstruct_main(["--t", "synthetic/tomograms.star", "--p", "synthetic/particles.star",
                                 "--b", "24", "--o", "out/", "--j", "2"]) == 0
    out = capsys.readouterr().out
    assert " ■ Backprojecting: 20 particles in " in out
    assert " ■ 20 particles backprojected (" in out and "0 not visible in any tilt image; 9 maps written" in out


def test_runs_end_with_a_summary(tmp_path, capsys):
    """Extraction says what it wrote, skipped and dropped (and by which rule); image-mode reconstruction
    what it backprojected; both with seconds and throughput."""
    from relion_py.cli.extract import main as extract_main
    project = mirror_fixtures(tmp_path / "project", "none")
    args = ["--t", "synthetic/tomograms.star", "--p", "synthetic/particles.star", "--o", "out/", "--stack2d",
            "--b", "32", "--crop", "24", "--min_frames", "21", "--max_dose", "60"]
    with working_directory(project):
        assert extract_main(args) == 0
        first = capsys.readouterr().out
        assert extract_main(args + ["--only_do_unfinished"]) == 0
        again = capsys.readouterr().out
        assert reconstruct_main(["--i", "synthetic/spa2d/particles.star", "--o", "rec.mrc", "--ctf"]) == 0
        image_mode = capsys.readouterr().out
    summary = [line for line in first.splitlines() if "particles written" in line]
    assert len(summary) == 1 and "dropped (visible in fewer than --min_frames images)" in summary[0]
    assert summary[0].endswith(" particles/s)")
    kept = int(summary[0].split()[1])
    assert " 0 particles written" in again and f"{kept} skipped (finished earlier)" in again
    assert "240 of 240 particles backprojected" in image_mode
