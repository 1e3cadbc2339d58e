"""The whole benchmark table in one command: every case of RELION's anchors (bench/relion_anchors.json) run by
relion_py and, when RELION's programs are on PATH, by RELION alternately in the same session; next to each, the
floor set by the disk (output bytes / write speed, plus for relion_reconstruct input bytes / the speed at which its
input files are read, all measured on the spot) and the peak RSS. Every run starts from the same page cache
(``same_start``): the project's inputs in it, case e's inputs (17 GB) not, so that relion_py and RELION both read
those from the disk; each program deletes its previous output right before its run (on ext4, files created
soon after a deletion are slower to create, so both pay alike); relion_py also runs e with ``--j 2``
(RELION's relion_reconstruct has one thread).

    python bench/table.py /path/to/bench_root [--cases a,c,d] [--rounds 3]

The bench root holds ``project/`` (bench/make_project.py). Case e reads case b's output, so b runs first and its
17 GB are removed after e. Prints a Markdown table: medians of --rounds runs and, with RELION run here, the range
of the ratios of each round's pair of runs (the machine's speed drifts by 10–15 % within the hour). Numba's cache
must be warm: after installing or changing kernels, run the table once on a small project first
(``make_project.py --n_particles 50``), or the first round of each case includes the compilation.
"""
import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from conftest import ANCHORS, cli, relion_binary, run_sampled  # noqa: E402

PROGRAMS = {"relion_tomo_subtomo": "relion-py-extract", "relion_tomo_reconstruct_particle": "relion-py-reconstruct",
            "relion_reconstruct": "relion-py-reconstruct"}
ORDER = ["a_subtomo_stack2d", "c_subtomo_stack2d_bin2", "b_subtomo_3d", "e_reconstruct_3drot",
         "d_reconstruct_particle"]


def disk_speeds(folder, size=1 << 30):
    """(write, read) MB/s of ``folder``'s disk: ``size`` bytes written and fsync'ed, evicted from the page cache,
    read back."""
    path = Path(folder) / ".disk_speed"
    block = os.urandom(1 << 22)
    t0 = time.perf_counter()
    with open(path, "wb") as fh:
        for _ in range(size // len(block)):
            fh.write(block)
        fh.flush()
        os.fsync(fh.fileno())
    write = size / (time.perf_counter() - t0) / 1e6
    fd = os.open(path, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    t0 = time.perf_counter()
    while os.read(fd, 1 << 22):
        pass
    read = size / (time.perf_counter() - t0) / 1e6
    os.close(fd)
    path.unlink()
    return write, read


def evict(files):
    """Drop the files' pages from the page cache: their next read comes from the disk."""
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)


def same_start(root, cold):
    """The same page cache for every run: the project's input files read into it (as in RELION's anchors), the
    files ``cold`` (e's 17 GB of input) evicted, so that the run reads them from the disk and the next run does
    not have to reclaim their pages."""
    for path in files_in(root / "project"):
        path.read_bytes()
    evict(cold)


def files_read_speed(folder, size=1 << 30):
    """MB/s at which the files of ``folder`` (the first ``size`` bytes of them, in name order) come from the
    disk, read whole one after the other as relion_reconstruct reads its pseudo-subtomograms; evicted from the
    page cache before and after."""
    files, total = [], 0
    for path in sorted(files_in(folder)):
        if total >= size:
            break
        files.append(path)
        total += path.stat().st_size
    evict(files)
    t0 = time.perf_counter()
    for path in files:
        path.read_bytes()
    speed = total / (time.perf_counter() - t0) / 1e6
    evict(files)
    return speed


def files_in(folder):
    return [p for p in Path(folder).rglob("*") if p.is_file()]


def folder_bytes(path):
    path = Path(path)
    return sum(p.stat().st_size for p in ([path] if path.is_file() else files_in(path)))


def output_folder(words, root, prefix):
    """(renamed --o value, the folder holding the output) of an anchor command run with ``prefix``."""
    out = prefix + words[words.index("--o") + 1]
    return out, (root / out if out.endswith("/") else (root / out).parent)


def run_case(words, root, prefix):
    """Run an anchor command (its output renamed with ``prefix``); (wall s, peak RSS MiB, output bytes)."""
    words = list(words)
    out, folder = output_folder(words, root, prefix)
    words[words.index("--o") + 1] = out
    shutil.rmtree(folder, ignore_errors=True)
    if not out.endswith("/"):
        folder.mkdir(parents=True)      # relion_reconstruct writes into an existing folder
    wall, own, child, _ = run_sampled(words, root)
    return wall, max(own, child), folder_bytes(root / out)


def remove_output(words, root, prefix):
    shutil.rmtree(output_folder(words, root, prefix)[1], ignore_errors=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--cases", default="", help="comma-separated case letters (default: all)")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args(argv)
    anchors = json.loads(ANCHORS.read_text())["cases"]
    chosen = [c for c in ORDER if not args.cases or c[0] in args.cases.split(",")]
    write, read = disk_speeds(args.root)
    print(f"disk: write {write:.0f} MB/s, read {read:.0f} MB/s (page cache evicted)\n")
    rows = []
    for case in chosen:
        words = anchors[case]["command"].split()
        inputs = args.root / "py_b_subtomo3d"
        is_e = case == "e_reconstruct_3drot"
        variants = {case: []}                           # relion_py's runs: extra words
        cold = []
        if is_e:                                        # its input: relion_py's b output, read from the disk
            words[words.index("--i") + 1] = "py_b_subtomo3d/particles.star"
            variants[f"{case} --j 2"] = ["--j", "2"]
            cold = files_in(inputs)
        runs = {name: [] for name in variants}
        runs["RELION"] = []
        relion = relion_binary(words[0])
        for _ in range(args.rounds):
            for name, extra in variants.items():
                same_start(args.root, cold)
                runs[name].append(run_case([cli(PROGRAMS[words[0]])] + words[1:] + extra, args.root, "py_"))
            if relion:
                same_start(args.root, cold)
                runs["RELION"].append(run_case([relion] + words[1:], args.root, "relion_"))
            evict(cold)
        floor = runs[case][0][2] / 1e6 / write
        if is_e:                                  # its input files, read whole one after the other
            speed = files_read_speed(inputs)
            floor += folder_bytes(inputs) / 1e6 / speed
            print(f"e's input files come from the disk at {speed:.0f} MB/s", flush=True)
        here = statistics.median(r[0] for r in runs["RELION"]) if runs["RELION"] else None
        relion_wall = here or anchors[case]["median_wall_s"]
        relion_rss = max(r[1] for r in runs["RELION"]) if runs["RELION"] else anchors[case]["max_rss_mb"]
        for name in variants:
            wall = statistics.median(r[0] for r in runs[name])
            rss = max(r[1] for r in runs[name])
            # each round's RELION run and relion_py run are minutes apart: their ratios show how far the
            # machine's drift moves the median's
            rounds = sorted(theirs[0] / ours[0] for theirs, ours in zip(runs["RELION"], runs[name]))
            spread = f"{rounds[0]:.2f}–{rounds[-1]:.2f}×" if rounds else "—"
            rows.append(f"| {name} | {relion_wall:.1f} s{'' if here else ' (anchor)'} | {wall:.1f} s | "
                        f"{relion_wall / wall:.2f}× | {spread} | {floor:.1f} s | {rss:.0f} / {relion_rss:.0f} MiB |")
            print(rows[-1], flush=True)
        if case == "b_subtomo_3d":          # 17 GB in the page cache, which RELION's e would have to reclaim
            remove_output(words, args.root, "relion_")
        if is_e or (case == "b_subtomo_3d" and "e_reconstruct_3drot" not in chosen):
            shutil.rmtree(args.root / "py_b_subtomo3d", ignore_errors=True)
    print("\n| case | RELION | relion_py | ratio | ratio per round | disk floor | peak RSS relion_py / RELION |\n"
          "|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
