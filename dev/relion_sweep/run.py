"""Differential sweep against a RELION 5.0.1 build: make a project, run RELION on every case of a spec, and lay
the outputs out as an oracle corpus, to be judged with the workplace oracle:

    python dev/relion_sweep/run.py dev/relion_sweep/generated_a.json --root /tmp/sweep/a \\
        --relion_bin /path/to/relion/build/bin --generator ../shared/tools/make_synthetic.py
    python ../shared/tools/oracle.py --corpus /tmp/sweep/a --bin .venv/bin

A spec names its project (``generate``: make_synthetic.py flags, written to <root>/synthetic; or ``copy``: a
project folder of tests/data/projects, copied to <root>/input), the ``variants`` to derive from it, and its
cases ([name, RELION program, arguments...], ``{case}`` standing for the case's folder). Cases RELION refuses
are reported and left out of the corpus.
"""
import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import mrcfile
import numpy as np
import starfile

REPO = Path(__file__).resolve().parents[2]


def motion(root):
    """input/motion.star: a random-walk trajectory (rlnOriginX/Y/ZAngst per tilt-series row) per particle."""
    rng = np.random.default_rng(5)
    particles = starfile.read(root / "input" / "particles.star")["particles"]
    lines = ["", "# version 50001", "", "data_general", "", f"_rlnParticleNumber {len(particles)}", "", ""]
    rows_of = {tomo: len(starfile.read(root / "input" / "tilt_series" / f"{tomo}.star"))
               for tomo in set(particles["rlnTomoName"])}
    for tomo, name in zip(particles["rlnTomoName"], particles["rlnTomoParticleName"]):
        rows = rows_of[tomo]
        lines += ["# version 50001", "", f"data_{name}", "", "loop_", "_rlnOriginXAngst #1", "_rlnOriginYAngst #2",
                  "_rlnOriginZAngst #3"]
        lines += [" ".join(f"{v:12.6f}" for v in row) for row in np.cumsum(rng.normal(0, 0.8, (rows, 3)), axis=0)]
        lines += ["", ""]
    (root / "input" / "motion.star").write_text("\n".join(lines))


def zernike(root):
    """input/particles_zernike.star: rlnEvenZernike / rlnOddZernike, different in each optics group."""
    values = ["[0.05,30.0,0.1,-20.0,800.0] [2.0,-3.0,150.0,1.5,-1.0,200.0]",
              "[-0.03,12.0,0.2,40.0,-500.0] [0.5,1.0,-80.0,2.5,3.0,-120.0]",
              "[0.0,0.0,0.0,0.0,0.0] [0.0,0.0,0.0,0.0,0.0,0.0]"]
    text = (root / "input" / "particles.star").read_text()
    last = text.index("_rlnAmplitudeContrast #6 \n") + len("_rlnAmplitudeContrast #6 \n")
    text = text[:last] + "_rlnEvenZernike #7 \n_rlnOddZernike #8 \n" + text[last:]
    out = []
    for line in text.split("\n"):
        words = line.split()
        if len(words) == 6 and words[1].startswith("opticsGroup"):
            line = line.rstrip() + " " + values[(int(words[0]) - 1) % len(values)]
        out.append(line)
    (root / "input" / "particles_zernike.star").write_text("\n".join(out))


def integer_stacks(root):
    """input/tomograms_i16.star and _u16.star: the tilt series as int16 stacks with a 1024-byte extended header
    (as IMOD and SerialEM write them) and as uint16 stacks."""
    tomograms = (root / "input" / "tomograms.star").read_text()
    for kind in ("i16", "u16"):
        renamed = tomograms
        for star in sorted((root / "input" / "tilt_series").glob("TS_??.star")):
            stack = star.with_suffix(".mrcs")
            with mrcfile.open(stack) as m:
                data, voxel = m.data.copy(), m.voxel_size
            q = np.round(data / np.abs(data).max() * 12000).astype(np.int16)
            with mrcfile.new(stack.with_name(f"{stack.stem}_{kind}.mrcs"), overwrite=True) as m:
                m.set_data(q if kind == "i16" else (q.astype(np.int32) + 20000).astype(np.uint16))
                m.voxel_size = voxel
                if kind == "i16":
                    m.set_extended_header(np.zeros(1024, np.uint8))
                    m.header.exttyp = b"FEI1"
            rel = f"input/tilt_series/{stack.name}"
            star.with_name(f"{star.stem}_{kind}.star").write_text(
                star.read_text().replace(rel, rel.replace(".mrcs", f"_{kind}.mrcs")))
            renamed = renamed.replace(f"input/tilt_series/{star.name}", f"input/tilt_series/{star.stem}_{kind}.star")
        (root / "input" / f"tomograms_{kind}.star").write_text(renamed)


VARIANTS = {"motion": motion, "zernike": zernike, "integer_stacks": integer_stacks}


def make_project(spec, root, generator):
    project = spec["project"]
    if "copy" in project and not (root / "input").exists():
        shutil.copytree(REPO / project["copy"] / "input", root / "input")
    elif "generate" in project and not (root / "synthetic").exists():
        subprocess.run([sys.executable, str(generator), "--root", str(root), "--name", "synthetic"]
                       + project["generate"], check=True)
    for name in spec.get("variants", []):
        VARIANTS[name](root)


def run_relion(spec, root, relion_bin):
    kept = []
    for name, program, *args in spec["cases"]:
        case = {"name": name, "program": program, "args": args}
        out = root / name
        if program == "relion_reconstruct":
            case["mkdir"] = True            # relion_reconstruct wants its output folder to exist
            out.mkdir(exist_ok=True)
        t0 = time.time()
        r = subprocess.run([str(Path(relion_bin) / program)] + [a.replace("{case}", name) for a in args], cwd=root,
                           capture_output=True, text=True)
        (root / f"{name}.relion.log").write_text(r.stdout + r.stderr)
        ok = r.returncode == 0 and out.is_dir() and any(out.iterdir())
        print(f"{name:40s} RELION exit {r.returncode}, {time.time() - t0:.1f} s"
              + ("" if ok else "  (left out: " + (r.stderr or r.stdout).strip().splitlines()[-1][:200] + ")"),
              flush=True)
        if ok:
            kept.append(case)
        else:
            shutil.rmtree(out, ignore_errors=True)
    (root / "corpus_spec.json").write_text(json.dumps({"corpus": root.name, "cases": kept}, indent=1))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("spec")
    p.add_argument("--root", required=True, help="the corpus folder to make (RELION runs from here)")
    p.add_argument("--relion_bin", required=True, help="folder of relion_tomo_subtomo & co.")
    p.add_argument("--generator", default=str(REPO.parent / "shared" / "tools" / "make_synthetic.py"))
    a = p.parse_args()
    spec = json.loads(Path(a.spec).read_text())
    root = Path(a.root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    make_project(spec, root, a.generator)
    run_relion(spec, root, a.relion_bin)


if __name__ == "__main__":
    main()
