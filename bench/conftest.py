"""Benchmark helpers: the benchmark-scale project, timed subprocess runs with peak memory, RELION anchors;
and the collection of the ``bench_*.py`` files by ``pytest bench/``.

The project has the size of RELION's performance anchors (2 tomograms, 1024² tilt images, 41 tilts, 2400
particles). Point RELION_PY_BENCH_ROOT at the folder holding ``project/`` (how to make it: bench/README.md);
benchmarks needing it are skipped otherwise.
"""
import contextlib
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

HERE = Path(__file__).parent
ANCHORS = HERE / "relion_anchors.json"


def pytest_collect_file(file_path, parent):
    """Collect ``bench_*.py`` (pytest's default is ``test_*.py``), so that ``pytest bench/`` runs them."""
    if file_path.suffix == ".py" and file_path.name.startswith("bench_") and not parent.session.isinitpath(file_path):
        return pytest.Module.from_parent(parent, path=file_path)    # a file named on the command line: pytest's own
    return None


@contextlib.contextmanager
def portal_server(root, latency_ms=0.0, bandwidth_mb=0.0, port=None):
    """tests/portal_server.py serving ``root`` in a child process (so that it does not compete with the
    client for the GIL), optionally ``latency_ms`` before every answer and ``bandwidth_mb`` MB/s shared by
    all answers, on ``port`` (a free one by default); yields its URL."""
    if port is None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    child = subprocess.Popen([sys.executable, str(HERE.parent / "tests" / "portal_server.py"), str(root), str(port),
                              "--latency_ms", str(latency_ms), "--bandwidth_mb", str(bandwidth_mb)],
                             stdout=subprocess.PIPE, text=True)
    try:
        child.stdout.readline()                 # "serving ..." once it listens
        yield f"http://127.0.0.1:{port}"
    finally:
        child.terminate()
        child.wait()


def server_requests(url):
    """The request log of a portal_server: [method, path, status, body bytes] per request."""
    with urllib.request.urlopen(url + "/_requests") as response:
        return json.loads(response.read())


def bench_root():
    root = os.environ.get("RELION_PY_BENCH_ROOT", "")
    if not root or not (Path(root) / "project" / "tomograms.star").exists():
        pytest.skip("set RELION_PY_BENCH_ROOT to a folder holding the benchmark project (see bench/README.md)")
    return Path(root)


def relion_anchor(case):
    """RELION 5.0.1's median wall time (s) and max RSS (MiB) for a bench_anchors case."""
    data = json.loads(ANCHORS.read_text())["cases"][case]
    return data["median_wall_s"], data["max_rss_mb"]


def timed_run(argv, cwd, env=None):
    """Run a command; returns (wall seconds, peak RSS MiB of the child). Raises on failure."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    r = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {r.stderr.strip()[-500:]}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return wall, max(peak, before) / 1024.0


def cli(name):
    """Path of a relion_py console script installed next to this Python."""
    return str(Path(sys.executable).parent / name)


def relion_binary(name):
    return shutil.which(name)


def report(benchmark, **figures):
    """Print the figures and store them in the benchmark's JSON (extra_info)."""
    benchmark.extra_info.update(figures)
    print("\n" + "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items()))


def run_sampled(argv, cwd):
    """Run a command, sampling the RSS of it and its descendants every 50 ms: (wall s, peak RSS MiB of the
    command's own process, peak RSS MiB of its largest descendant, stdout + stderr)."""
    import psutil
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peaks = {"own": 0, "child": 0}

    def sample():
        p = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                peaks["own"] = max(peaks["own"], p.memory_info().rss)
                for c in p.children(recursive=True):
                    peaks["child"] = max(peaks["child"], c.memory_info().rss)
            except psutil.Error:
                pass
            time.sleep(0.05)
    sampler = threading.Thread(target=sample)
    sampler.start()
    output = proc.communicate()[0]
    wall = time.perf_counter() - t0
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {output[-800:]}")
    return wall, peaks["own"] / 2**20, peaks["child"] / 2**20, output
