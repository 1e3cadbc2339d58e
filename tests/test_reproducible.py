"""Every program writes the same bytes on every run and for every thread count: each is run twice with
--j 2 and once on one thread (same project, same output name), and every output file is compared byte for
byte — except the date label RELION stamps into each MRC header, and the thread flags in note.txt."""
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import mirror_fixtures, working_directory
from relion_py.cli.extract import main as extract_main
from relion_py.cli.reconstruct import main as reconstruct_main

#: bytes 224..: the first header label, "Relion    " + a time stamp (``writeMRC``)
MRC_LABEL = slice(224, 224 + 80)
THREAD_FLAGS = re.compile(rb"--j(_in|_out)? \d+ ")
TS = ["--t", "synthetic/tomograms.star", "--p", "synthetic/particles.star"]

PROGRAMS = {
    "extract_2d": (extract_main, [*TS, "--stack2d", "--b", "64", "--crop", "48", "--o", "out/"]),
    "extract_3d": (extract_main, [*TS, "--b", "32", "--crop", "24", "--bin", "2", "--o", "out/"]),
    "reconstruct_tilt_series": (reconstruct_main, [*TS, "--b", "48", "--crop", "32", "--o", "out/"]),
    "reconstruct_tilt_series_c4": (reconstruct_main, [*TS, "--b", "28", "--sym", "C4", "--SNR", "0.5",
                                                      "--o", "out/"]),
    "reconstruct_images_3d": (reconstruct_main, ["--i", "e_subtomo_3d/particles.star", "--3d_rot", "--ctf",
                                                 "--o", "out/rec.mrc"]),
    "reconstruct_images_2d": (reconstruct_main, ["--i", "synthetic/spa2d/particles.star", "--ctf",
                                                 "--o", "out/rec.mrc"]),
}


def comparable_bytes(path):
    data = bytearray(path.read_bytes())
    if path.suffix in (".mrc", ".mrcs") and data[208:212] == b"MAP ":
        data[MRC_LABEL] = bytes(len(data[MRC_LABEL]))
    if path.name == "note.txt":
        data = bytearray(THREAD_FLAGS.sub(b"", bytes(data)))
    return bytes(data)


def outputs(folder):
    return {p.relative_to(folder).as_posix(): comparable_bytes(p)
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


@pytest.mark.parametrize("program", PROGRAMS)
def test_same_bytes_for_every_run_and_thread_count(program, tmp_path):
    main, args = PROGRAMS[program]
    work = mirror_fixtures(tmp_path / "project", "none")
    runs = []
    with working_directory(work):
        # the tilt-series reconstruction's thread count is the larger of --j and --j_out x --j_in
        one_thread = ["--j", "1"] + (["--j_out", "1", "--j_in", "1"] if "--b" in args and main is reconstruct_main
                                     else [])
        for n, threads in enumerate((["--j", "2"], ["--j", "2"], one_thread)):
            if args[-1] == "out/rec.mrc":
                Path("out").mkdir()
            assert main([*args, *threads]) == 0
            shutil.move("out", f"run{n}")
            runs.append(outputs(work / f"run{n}"))
    assert runs[0], "nothing was written"
    assert any(name.endswith((".mrc", ".mrcs")) for name in runs[0])
    for other in runs[1:]:
        assert sorted(other) == sorted(runs[0])
        differing = [name for name in runs[0] if other[name] != runs[0][name]]
        assert not differing, f"{program}: files differ between runs: {differing}"


SCRIPTS = {extract_main: "relion-py-extract", reconstruct_main: "relion-py-reconstruct"}


@pytest.mark.parametrize("program", PROGRAMS)
def test_console_script_without_pyarrow_writes_the_same_bytes(program, tmp_path):
    """The console scripts hide pyarrow from pandas (relion_py/cli/__init__.py: 59 MiB less in every run);
    pandas then keeps string columns in Python objects instead of pyarrow arrays. The bytes must not change:
    each program is run as its console script and in this process, where pandas has pyarrow."""
    import pandas  # noqa: F401 - loaded before anything of relion_py.cli could hide pyarrow
    assert sys.modules.get("pyarrow") is not None
    main, args = PROGRAMS[program]
    work = mirror_fixtures(tmp_path / "project", "none")
    with working_directory(work):
        for n in range(2):
            if args[-1] == "out/rec.mrc":
                Path("out").mkdir()
            if n == 0:
                assert main(args) == 0
            else:
                subprocess.run([str(Path(sys.executable).parent / SCRIPTS[main]), *args], check=True,
                               capture_output=True)
            shutil.move("out", f"run{n}")
    in_process, script = outputs(work / "run0"), outputs(work / "run1")
    assert in_process and sorted(script) == sorted(in_process)
    assert not [name for name in in_process if script[name] != in_process[name]]


@pytest.mark.parametrize("argv0, hidden", [("/venv/bin/relion-py-extract", True), ("-m", True),
                                           ("/venv/bin/ipython", False)])
def test_pyarrow_is_hidden_only_when_a_program_starts(argv0, hidden):
    code = (f"import sys; sys.argv[0] = {argv0!r}; import relion_py.cli.extract; "
            "print(sys.modules.get('pyarrow', 'absent'))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.strip()
    assert (out == "None") == hidden, out
