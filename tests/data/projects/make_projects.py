#!/usr/bin/env python3
"""Re-create the small test projects of this folder (see README.md).

    python make_projects.py [--generator /work/shared/tools/make_synthetic.py]

Each project is written by the workplace generator make_synthetic.py (deterministic) into
``<project>/input/`` (paths inside the STAR files are relative to ``<project>/``, the folder RELION / the CLI
must be run from), then its STAR files are post-edited below for conditions the generator has no option
for. The ground-truth volumes are deleted (not needed, they only cost space).
"""
import argparse
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

PROJECTS = {
    "multi_tomo": [
        "--seed", "7", "--n-tomos", "3", "--n-particles", "5", "--shuffle-particles",
        "--tomo-size", "101", "87", "41", "--tomo-size-step", "4", "2", "2",
        "--image-size", "96", "80", "--pixel-size", "5.0", "--particle-diameter", "60",
        "--margin-x", "2", "--margin-y", "6", "--tilt-range", "-42", "42", "6",
        "--hand", "1", "--optics-per-tomo", "--q0", "0.07", "0.15", "0.22", "--phase-shift", "10", "0.8",
        "--row-order", "tilt", "--stack-order", "acquisition", "--edge-particle", "--gt-boxes", "16",
    ],
    "origins_subtomo": [
        "--seed", "11", "--n-tomos", "2", "--n-particles", "6",
        "--tomo-size", "120", "112", "40", "--tomo-size-step", "8", "0", "4",
        "--image-size", "112", "96", "--pixel-size", "4.2", "--particle-diameter", "55",
        "--margin-x", "2", "--margin-y", "8", "--tilt-range", "-50", "50", "10",
        "--scheme", "bidirectional", "--scheme-start", "-20", "--dose-per-tilt", "4.0",
        "--hand", "-1", "--q0", "0.1", "--origin-offsets", "6", "--subtomo-angles",
        "--row-order", "dose", "--stack-order", "tilt", "--gt-boxes", "16",
    ],
}


# ---- minimal text editing of the generator's STAR files (values never contain whitespace) ----------

def read_blocks(path):
    """[(name, is_loop, labels, rows)] in file order."""
    blocks, cur = [], None
    for line in open(path):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        if s.startswith("data_"):
            cur = [s[5:], False, [], []]
            blocks.append(cur)
        elif s.startswith("loop_"):
            cur[1] = True
        elif s.startswith("_"):
            tok = s.split()
            cur[2].append(tok[0][1:])
            if not cur[1]:
                cur[3] = (cur[3] or [[]])
                cur[3][0].append(tok[1])
        else:
            cur[3].append(s.split())
    return blocks


def write_blocks(path, blocks):
    with open(path, "w") as fh:
        for name, is_loop, labels, rows in blocks:
            fh.write(f"\n# version 50001\n\ndata_{name}\n\n")
            if is_loop:
                fh.write("loop_ \n")
                for i, lab in enumerate(labels):
                    fh.write(f"_{lab} #{i + 1} \n")
                for r in rows:
                    fh.write(" ".join(f"{v:>12}" for v in r) + " \n")
            else:
                for lab, v in zip(labels, rows[0]):
                    fh.write(f"_{lab:<40} {v}\n")
            fh.write(" \n")


def block(blocks, name):
    return next(b for b in blocks if b[0] == name)


def add_column(blk, label, values):
    blk[2].append(label)
    for r, v in zip(blk[3], values):
        r.append(v)


# ---- post-edits --------------------------------------------------------------------------------

def edit_multi_tomo(proj):
    # A "straight from picking" particle file: only rlnTomoName + centred coordinates, particles of the three
    # tomograms interleaved, no optics table, no rlnTomoParticleName (RELION synthesises one optics group per
    # rlnOpticsGroupName of tomograms.star, numbered by first appearance, and names <tomo>/<k>).
    src = read_blocks(os.path.join(proj, "input", "particles.star"))
    parts = block(src, "particles")
    keep = ["rlnTomoName", "rlnCenteredCoordinateXAngst", "rlnCenteredCoordinateYAngst",
            "rlnCenteredCoordinateZAngst"]
    idx = [parts[2].index(k) for k in keep]
    rows = [[r[i] for i in idx] for r in parts[3]]
    write_blocks(os.path.join(proj, "input", "particles_picked.star"), [["particles", True, keep, rows]])


def edit_origins_subtomo(proj):
    # Per-tomogram defocus slope and B-factor-per-dose dose model (only TS_02 uses the B-factor model).
    tpath = os.path.join(proj, "input", "tomograms.star")
    tb = read_blocks(tpath)
    g = block(tb, "global")
    add_column(g, "rlnTomoDefocusSlope", ["1.000000", "1.300000"])
    add_column(g, "rlnCtfBfactorPerElectronDose", ["0.000000", "3.500000"])
    write_blocks(tpath, tb)
    # One particle of a tomogram that is not in tomograms.star: RELION drops it silently (not "removed").
    ppath = os.path.join(proj, "input", "particles.star")
    pb = read_blocks(ppath)
    parts = block(pb, "particles")
    extra = list(parts[3][2])
    extra[parts[2].index("rlnTomoName")] = "TS_99"
    extra[parts[2].index("rlnTomoParticleName")] = "TS_99/1"
    parts[3].insert(3, extra)
    write_blocks(ppath, pb)


EDITS = {"multi_tomo": edit_multi_tomo, "origins_subtomo": edit_origins_subtomo}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--generator", default="/work/shared/tools/make_synthetic.py")
    ap.add_argument("names", nargs="*", default=list(PROJECTS))
    a = ap.parse_args(argv)
    for name in a.names:
        proj = os.path.join(HERE, name)
        shutil.rmtree(proj, ignore_errors=True)
        subprocess.run([sys.executable, a.generator, "--root", name, "--name", "input", *PROJECTS[name]],
                       check=True, cwd=HERE)
        shutil.rmtree(os.path.join(proj, "input", "ground_truth"))
        EDITS[name](proj)


if __name__ == "__main__":
    main()
