"""relion-py-portal --average: from portal runs to a first average in one command.

Portal runs + object → RELION project (relion_py.portal) → extraction (relion-py-extract's options after
'--') → relion_tomo_reconstruct_particle on the extracted particles (merged map and half maps, RELION's
default SNR and symmetry C1) → a one-page summary: particles per run, bytes fetched, time per stage, and the
map's central slices as a PNG.
"""
import os
import time

import numpy as np

from ..io.atomic import atomic_output
from ..io.mrc import read_mrc
from ..io.remote import bytes_fetched
from ..io.star import read_star, write_star
from ..project.optimisation_set import OptimisationSet
from .reconstruct_particle import ReconstructParticleOptions, reconstruct_particle


def central_slices_png(volume, path):
    """The three central slices (xy, xz, yz) of ``volume`` side by side, each scaled to its own 0-255 range,
    as an 8-bit greyscale PNG."""
    from PIL import Image        # only --average needs it
    n = volume.shape[0] // 2
    tiles = [volume[n], volume[:, n], volume[:, :, n]]
    tiles = [np.uint8(np.round(255 * (t - t.min()) / max(float(t.max() - t.min()), 1e-30))) for t in tiles]
    gap = np.zeros((tiles[0].shape[0], 4), np.uint8)
    with atomic_output(path) as tmp:
        Image.fromarray(np.hstack([tiles[0], gap, tiles[1], gap, tiles[2]])).save(tmp, format="PNG")


def _with_half_sets(extract_dir, out_dir):
    """The optimisation set to reconstruct from: the extraction's, or, if its particles have no half sets
    (portal annotations have none), a copy of it in ``out_dir`` whose particles alternate between half 1 and
    half 2 in STAR order (rlnRandomSubset 1, 2, 1, …), so that the half maps and their FSC mean something."""
    extracted = os.path.join(extract_dir, "optimisation_set.star")
    particles_star = os.path.join(extract_dir, "particles.star")
    blocks = read_star(particles_star)
    table = blocks.loop("particles")
    if "rlnRandomSubset" in table.columns:
        return extracted
    table = table.copy()
    table["rlnRandomSubset"] = 1 + np.arange(len(table)) % 2
    halves = os.path.join(out_dir, "particles_halves.star")
    write_star(halves, {**blocks, "particles": table})
    files = OptimisationSet.from_arguments(extracted)
    files.particles = halves
    path = os.path.join(out_dir, "optimisation_set.star")
    write_star(path, {"": files.to_star_block()})
    return path


def average(extract_opts, out_dir, stage_seconds):
    """Reconstruct the particles extracted by ``extract_opts`` (box, crop, binning, threads as extracted) into
    ``out_dir`` and write ``out_dir/summary.md`` and ``central_slices.png``. ``stage_seconds``: {stage: s} of the
    earlier stages, completed here."""
    start = time.monotonic()
    os.makedirs(out_dir, exist_ok=True)
    rec = ReconstructParticleOptions(i=_with_half_sets(extract_opts.o, out_dir), o=out_dir, b=extract_opts.b,
                                     crop=extract_opts.crop, bin=extract_opts.bin, j=extract_opts.j, j_out=2,
                                     j_in=1)
    result = reconstruct_particle(rec, command=["relion-py-portal", "--average"])
    stage_seconds["reconstruction"] = time.monotonic() - start
    merged = os.path.join(out_dir, "merged.mrc")
    central_slices_png(np.asarray(read_mrc(merged)[0], np.float64), os.path.join(out_dir, "central_slices.png"))
    particles = read_star(os.path.join(extract_opts.o, "particles.star")).loop("particles")
    per_run = particles["rlnTomoName"].astype(str).value_counts().sort_index()
    lines = ["# relion-py-portal --average", "",
             f"Map: `{merged}` (half maps `half1.mrc`, `half2.mrc`), {result.pixel_size:g} Å/px, "
             f"{result.n_particles} particles, {result.n_slices} tilt images.", "",
             "| run (rlnTomoName) | particles extracted |", "|---|---|"]
    lines += [f"| {name} | {count} |" for name, count in per_run.items()]
    lines += ["", f"Bytes fetched (annotations, tilt-series chunks): {bytes_fetched():,}", "",
              "| stage | seconds |", "|---|---|"]
    lines += [f"| {stage} | {seconds:.1f} |" for stage, seconds in stage_seconds.items()]
    lines += ["", "![central slices (xy, xz, yz)](central_slices.png)", ""]
    with atomic_output(os.path.join(out_dir, "summary.md")) as tmp, open(tmp, "w") as fh:
        fh.write("\n".join(lines))
    return result
