"""Cold start of every program: the first run after installation (empty Numba cache: the kernels the command
uses are compiled) next to a cached run of the same command, on the shipped fixtures; and the import time.

    pytest bench/bench_cold_start.py --benchmark-enable -s
"""
import os
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import cli, report, timed_run

FIXTURES = Path(__file__).parent.parent / "tests" / "data" / "fixtures"
TOMO = ["--t", "synthetic/tomograms.star", "--p", "synthetic/particles.star"]
COMMANDS = {   # the fixture cases a, e, f1, g1 and g2
    "extract_stack2d": ("relion-py-extract", TOMO + ["--stack2d", "--b", "64", "--crop", "48", "--j", "2"], "/"),
    "extract_3d": ("relion-py-extract", TOMO + ["--b", "64", "--crop", "48", "--j", "2"], "/"),
    "reconstruct_particle": ("relion-py-reconstruct", TOMO + ["--b", "64", "--crop", "48", "--j", "2"], "/"),
    "reconstruct_3drot": ("relion-py-reconstruct", ["--i", "e_subtomo_3d/particles.star", "--3d_rot", "--ctf"],
                          "/rec.mrc"),
    "reconstruct_spa2d": ("relion-py-reconstruct", ["--i", "synthetic/spa2d/particles.star", "--ctf"], "/rec.mrc"),
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_cold_start(benchmark, command):
    program, args, output = COMMANDS[command]
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, NUMBA_CACHE_DIR=str(Path(tmp) / "numba_cache"))
        project = Path(tmp) / "project"
        project.mkdir()
        for name in ("synthetic", "e_subtomo_3d"):
            (project / name).symlink_to(FIXTURES / name)

        def run(tag):
            (project / f"out_{tag}").mkdir()           # relion_reconstruct writes into an existing folder
            return timed_run([cli(program), *args, "--o", f"out_{tag}{output}"], cwd=project, env=env)[0]

        cold = benchmark.pedantic(run, args=("cold",), rounds=1, iterations=1)
        cached = run("cached")
        module = "subtomo" if program == "relion-py-extract" else "reconstruct"
        startup = timed_run([sys.executable, "-c", f"import relion_py.programs.{module}"], cwd=project, env=env)[0]
        report(benchmark, command=command, cold_run_s=cold, cached_run_s=cached, jit_compile_s=cold - cached,
               import_s=startup)
