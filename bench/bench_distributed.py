"""The cluster flags on the bench project: one process --j 1, one Dask worker (--workers 1 --j 1), two workers
(--workers 2 --j 1) and one process with two threads (--j 2), for 2-D stacks (a), 3-D pseudo-subtomograms (b)
and relion_tomo_reconstruct_particle (d). Prints wall times, the speed-up of 2 workers over 1, 2 workers next
to --j 2, the scheduler's overhead per task ((1 worker − one process --j 1) / tasks), the peak RSS of the
client and of the largest worker, and checks that the cluster's files are the single-process run's bytes.

    RELION_PY_BENCH_ROOT=/path/to/bench_root pytest bench/bench_distributed.py --benchmark-enable -s

Goal on a 2-core machine: 2 workers ≥ 1.8 × 1 worker, and within 10 % of --j 2.
"""
import hashlib
import re
import shutil
from pathlib import Path

import pytest

from conftest import bench_root, cli, report, run_sampled

CASES = {
    "a_stack2d": ("relion-py-extract", ["--b", "128", "--crop", "96", "--stack2d"]),
    "b_subtomo3d": ("relion-py-extract", ["--b", "128", "--crop", "96"]),
    "d_reconstruct_particle": ("relion-py-reconstruct", ["--b", "128", "--crop", "96", "--j_out", "1",
                                                         "--j_in", "1"]),
}
RUNS = {"j1": ["--j", "1"], "workers1": ["--workers", "1", "--j", "1"], "workers2": ["--workers", "2", "--j", "1"],
        "j2": ["--j", "2"]}
TASKS = re.compile(r"(?:Extracting (\d+) batches|backproject: (\d+) tasks)")


def digest(folder):
    """SHA-256 of every file's bytes (MRC files without RELION's time stamp, which differs between runs)."""
    out = {}
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file():
            h = hashlib.sha256()
            with open(path, "rb") as fh:
                head = bytearray(fh.read(1024))
                if path.suffix in (".mrc", ".mrcs") and head[224:234] == b"Relion    ":
                    head[234:254] = bytes(20)
                h.update(head)
                for block in iter(lambda: fh.read(1 << 22), b""):
                    h.update(block)
            out[str(path.relative_to(folder))] = h.hexdigest()
    return out


@pytest.mark.parametrize("case", sorted(CASES))
def test_workers_vs_threads(benchmark, case):
    root = bench_root()
    program, args = CASES[case]
    base = [cli(program), "--t", "project/tomograms.star", "--p", "project/particles.star", *args]
    figures, digests, tasks = {"case": case}, {}, 0

    def run_all():
        nonlocal tasks
        for name, flags in RUNS.items():
            out = root / f"dist_{case}_{name}"
            shutil.rmtree(out, ignore_errors=True)
            wall, own, child, output = run_sampled(base + flags + ["--o", "dist_out/"], root)
            found = TASKS.search(output)
            if found:
                tasks = int(found.group(1) or found.group(2))
            figures[f"{name}_s"] = wall
            figures[f"{name}_rss_client_mib"] = own
            if child:
                figures[f"{name}_rss_worker_mib"] = child
            digests[name] = digest(root / "dist_out")
            shutil.rmtree(root / "dist_out")

    benchmark.pedantic(run_all, rounds=1, iterations=1)
    figures["tasks"] = tasks
    figures["speedup_2w_over_1w"] = figures["workers1_s"] / figures["workers2_s"]
    figures["2w_over_j2"] = figures["workers2_s"] / figures["j2_s"]
    figures["overhead_per_task_ms"] = 1e3 * (figures["workers1_s"] - figures["j1_s"]) / max(tasks, 1)
    report(benchmark, **figures)
    # the cluster runs' files are the one-process --j 1 run's, note.txt included (it records the command without
    # the cluster flags); --j 2's note.txt records --j 2
    for name in ("workers1", "workers2", "j2"):
        different = sorted(f for f in digests["j1"] if digests[name].get(f) != digests["j1"][f])
        assert different == (["note.txt"] if name == "j2" else []), (name, different[:5])
