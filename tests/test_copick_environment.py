"""copick 1.x pins zarr < 3 and numcodecs < 0.16, so it cannot live in the test environment (zarr 3 writes the
v3 test data): this test makes a second environment with ``relion_py[copick]`` (copick, zarr 2.18) as a copick user
has it, and runs tests/copick_env/check_copick.py there (relion-py-portal --copick on a copick project written
by copick itself, against copick's own RELION conversion; relion_py reading zarr formats 2, 3 and sharded 3
next to zarr 2)."""
import os
import subprocess
import sys
import venv
from pathlib import Path

import numpy as np
from zarr_copies import write_copies

REPO = Path(__file__).resolve().parents[1]


def test_copick_environment(tmp_path):
    env_dir = tmp_path / "copick-env"
    venv.create(env_dir, with_pip=True)
    python = str(env_dir / "bin" / "python")
    quiet = dict(capture_output=True, text=True, timeout=1800)
    # as a copick user's environment grows: copick first, then relion_py into it (asked for together, pip's
    # resolver spends many minutes backtracking over the botocore pins of copick's s3fs and relion_py's boto3)
    for packages in (["copick>=1.31", "pytest"], ["-e", f"{REPO}[copick]"]):
        done = subprocess.run([python, "-m", "pip", "install", "--quiet", *packages], **quiet)
        assert done.returncode == 0, done.stderr[-3000:]
    # zarr format 2, 3 and sharded 3 copies of one tilt series, written here by zarr-python 3
    stack = np.random.default_rng(11).normal(size=(5, 150, 170)).astype(np.float32)
    write_copies(stack, str(tmp_path / "formats"))
    np.save(tmp_path / "formats" / "stack.npy", stack)
    done = subprocess.run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
                           "--noconftest", str(REPO / "tests" / "copick_env" / "check_copick.py")],
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": "",
                                             "RELION_PY_ZARR_COPIES": str(tmp_path / "formats")}, **quiet)
    print(done.stdout[-3000:])
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "skipped" not in done.stdout
    assert sys.executable != python
