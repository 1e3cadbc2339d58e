"""relion_reconstruct: reconstruct a map from particle images (2-D projections or 3-D subtomograms) with
known orientations.

Mirrors ``Reconstructor`` (src/reconstructor.cpp: ``read``, ``initialise``, ``backprojectOneParticle``,
``reconstruct``) on top of RELION's classic ``BackProjector`` (``relion_py.kernels.classic``).
This module holds the options and the run; the particle file is read by
:mod:`relion_py.project.observation_model`, the images by :mod:`relion_py.io.particle_images`, and the
insertion and reconstruction are driven by :mod:`relion_py.kernels.classic.reconstruct_grid`.
How it works: docs/reconstruction.md, part B.

Inputs it reads: RELION 3.1+ particle STAR files (optics + particles tables, ``N@stack.mrcs`` 2-D images,
per-image CTF and rlnOriginX/YAngst), RELION 5 pseudo-subtomograms (``relion_tomo_subtomo`` 3-D output,
rlnCtfImage weight volumes), STAR files from other tools with 3-D boxes (pyTME, with an optics table;
Warp 3-D exports without one, converted as RELION's ``StarConverter`` does).
"""
import math
import os
import time
from dataclasses import dataclass

import numpy as np

from ..io.mrc import write_map
from ..io.output_folder import refuse_overwriting_inputs
from ..io.particle_images import ImageReader, image_path
from ..io.star import read_star
from ..kernels.classic import insertion
from ..kernels.classic.reconstruct_grid import Grid, GridInsertion, reconstruct_grid
from ..project.observation_model import load_particles
from ..runtime.errors import RelionPyError
from ..runtime.log import info
from ..runtime.memory import check_memory
from ..runtime.cluster_options import ClusterOptions
from ..runtime.options import check_supported, option, round_single_precision_flags
from ..runtime.parallel import numba_threads
from ..runtime.partition import BATCH_SIZE, batch_bounds
from ..runtime.progress import Progress, summary
from ..tomography.helical_symmetry import helical_rotations
from ..tomography.symmetry import point_group_operators

GEN = "General options"
CTF = "CTF options"
EWALD = "Ewald-sphere correction options"
HELIX = "Helical options"
SUBTOMO = "Subtomogram averaging"
EXPERT = "Expert options"
NOT_YET = "not implemented in relion_py yet"
#: Most groups of particles (``ImageReconstruction.groups``): each costs one pass over the padded grid (zeroing
#: its accumulator, adding it to the total), and each is one task on a cluster.
IMAGE_GROUPS = 16
DEBUG = "a RELION developer/debugging option, not ported"


@dataclass
class ReconstructImagesOptions(ClusterOptions):
    """Options of relion_reconstruct (same names; ``class_`` is --class, ``three_d_rot`` is --3d_rot)."""

    i: str = option("", "Input STAR file with the projection images and their orientations", GEN)
    o: str = option("relion.mrc", "Name for output reconstruction (its folder must exist, as for RELION)",
                    GEN)
    sym: str = option("c1", "Symmetry group", GEN)
    maxres: float = option(-1.0, "Maximum resolution (in Angstrom) to consider in Fourier space "
                           "(-1: Nyquist)", GEN, single=True)
    pad: float = option(2.0, "Padding factor (oversampling of the Fourier grid, >= 1)", GEN, single=True)
    img: str = option("", "Optional: image path prefix (replaces the folder of every rlnImageName)", GEN)
    subset: int = option(-1, "Subset of images to consider (1: only half1; 2: only half2; other: all)", GEN)
    class_: int = option(-1, "Consider only this class (-1: use all classes)", GEN, metavar="CLASS", flag="class")
    angpix: float = option(-1.0, "Pixel size in the reconstruction (-1: take it from the first optics group)",
                           GEN, single=True)
    ctf: bool = option(False, "Apply CTF correction (multiply the data by the CTF unless premultiplied; CTF² "
                       "or the rlnCtfImage volume as weights)", CTF)
    ctf_intact_first_peak: bool = option(False, "Leave CTFs intact until first peak", CTF)
    ctf_phase_flipped: bool = option(False, "Images have been phase flipped (use |CTF|)", CTF)
    only_flip_phases: bool = option(False, "Do not correct CTF-amplitudes, only flip phases", CTF)
    ewald: bool = option(False, "Correct for Ewald-sphere curvature (developmental)", EWALD,
                         unsupported=NOT_YET)
    mask_diameter: float = option(-1.0, "Diameter (in A) of mask for Ewald-sphere curvature correction",
                                  EWALD, unsupported="only used with --ewald, which is " + NOT_YET)
    width_mask_edge: int = option(3, "Width (in pixels) of the soft edge on the mask", EWALD,
                                  unsupported="only used with --ewald, which is " + NOT_YET)
    reverse_curvature: bool = option(False, "Try curvature the other way around", EWALD,
                                     unsupported="only used with --ewald, which is " + NOT_YET)
    newbox: int = option(-1, "Box size of the reconstruction (-1: that of the first image; needs an optics "
                         "table)", EWALD)
    sectors: int = option(2, "Number of sectors for Ewald sphere correction", EWALD,
                          unsupported="only used with --ewald, which is " + NOT_YET)
    skip_mask: bool = option(False, "Do not apply real space mask during Ewald sphere correction", EWALD,
                             unsupported="only used with --ewald, which is " + NOT_YET)
    skip_weighting: bool = option(False, "Do not apply weighting during Ewald sphere correction", EWALD,
                                  unsupported="only used with --ewald, which is " + NOT_YET)
    nr_helical_asu: int = option(1, "Number of helical asymmetrical units", HELIX)
    helical_rise: float = option(0.0, "Helical rise (in Angstroms)", HELIX, single=True)
    helical_twist: float = option(0.0, "Helical twist (in degrees, + for right-handedness)", HELIX, single=True)
    normalised_subtomo: bool = option(False, "Have subtomograms been multiplicity normalised? (uses the "
                                      "multiplicity half of the rlnCtfImage volumes)", SUBTOMO)
    skip_subtomo_multi: bool = option(False, "Skip subtomo multiplicity correction (for normalised "
                                      "subtomos only)", SUBTOMO)
    ctf3d_not_squared: bool = option(False, "CTF3D files contain sqrt(CTF^2) patterns (they are squared)",
                                     SUBTOMO)
    subtract: str = option("", "Subtract projections of this map from the images used for reconstruction",
                           EXPERT, unsupported=NOT_YET)
    NN: bool = option(False, "Use nearest-neighbour instead of linear interpolation before gridding "
                      "correction (beyond --r_min_nn)", EXPERT)
    blob_r: float = option(1.9, "Radius of blob for gridding interpolation", EXPERT, single=True)
    blob_m: int = option(0, "Order of blob for gridding interpolation", EXPERT)
    blob_a: float = option(15.0, "Alpha-value of blob for gridding interpolation", EXPERT, single=True)
    iter: int = option(10, "Number of gridding-correction iterations (only with --dont_skip_gridding)",
                       EXPERT)
    refdim: int = option(3, "Dimension of the reconstruction (2D or 3D)", EXPERT,
                         unsupported="2-D reconstructions (--refdim 2) are " + NOT_YET)
    angular_error: float = option(0.0, "Apply random deviations with this standard deviation (in degrees) to "
                                  "each of the 3 Euler angles", EXPERT,
                                  unsupported="RELION's random-number stream cannot be reproduced")
    shift_error: float = option(0.0, "Apply random deviations with this standard deviation (in Angstrom) to "
                                "each of the 2 translations", EXPERT,
                                unsupported="RELION's random-number stream cannot be reproduced")
    fom_weighting: bool = option(False, "Weight particles according to their figure-of-merit "
                                 "(_rlnParticleFigureOfMerit)", EXPERT)
    fsc: str = option("", "FSC-curve for regularized reconstruction (STAR with rlnSpectralIndex and "
                      "rlnGoldStandardFsc)", EXPERT)
    three_d_rot: bool = option(False, "Perform 3D rotations instead of backprojections from 2D images "
                               "(3-D subtomograms)", EXPERT, flag="3d_rot")
    reconstruct_ctf: int = option(-1, "Perform a 3D reconstruction from 2D CTF-images, with the given size "
                                  "in pixels", EXPERT, unsupported=NOT_YET)
    ctf2: bool = option(False, "Reconstruct CTF^2 and then take the sqrt of that", EXPERT,
                        unsupported="only used with --reconstruct_ctf, which is " + NOT_YET)
    dont_skip_gridding: bool = option(False, "Perform gridding in the reconstruction (--iter iterations of "
                                      "Pipe-Menon weights)", EXPERT)
    debug: str = option("", "Rootname for debug reconstruction files", EXPERT, unsupported=DEBUG)
    debug_ori_size: int = option(1, "Rootname for debug reconstruction files", EXPERT, unsupported=DEBUG)
    debug_size: int = option(1, "Rootname for debug reconstruction files", EXPERT, unsupported=DEBUG)
    reconstruct_noise: str = option("", "Reconstruct noise using sigma2 values in this model STAR file",
                                    EXPERT, unsupported="random noise cannot reproduce RELION's")
    read_weights: bool = option(False, "Developmental: read freq. weight files", EXPERT, unsupported=DEBUG)
    write_debug_output: bool = option(False, "Write out arrays with data and weight terms prior to "
                                      "reconstruct", EXPERT, unsupported=DEBUG)
    external_reconstruct: bool = option(False, "Write out BP denominator and numerator for "
                                        "external_reconstruct program", EXPERT, unsupported=NOT_YET)
    verb: int = option(1, "Verbosity", EXPERT)
    r_min_nn: int = option(10, "Radius (output px) below which --NN still inserts trilinearly (hidden in "
                           "RELION)", EXPERT)
    j: int = option(1, "Number of threads (relion_py only: RELION's relion_reconstruct runs on one)", EXPERT)

    def __post_init__(self):
        round_single_precision_flags(self)


@dataclass
class ReconstructResult:
    """What a reconstruction run produced."""

    output: str
    n_particles: int      # particles inserted
    box: int
    pixel_size: float
    volume: np.ndarray    # (box, box, box) float64, as written (in float32)


def _read_fsc(path, n_box):
    """The --fsc curve per Fourier shell of the N-box (0 beyond the file's shells)."""
    blocks = read_star(path)
    table = next((b for _, b in blocks.loops() if "rlnSpectralIndex" in b.columns
                  and "rlnGoldStandardFsc" in b.columns), None)
    if table is None:
        raise RelionPyError(f"--fsc {path}: no table with rlnSpectralIndex and rlnGoldStandardFsc")
    fsc = np.zeros(n_box // 2 + 1)
    for idx, val in zip(table["rlnSpectralIndex"].to_numpy(np.int64),
                        table["rlnGoldStandardFsc"].to_numpy(np.float64)):
        if 0 <= idx < len(fsc):
            fsc[idx] = val
    return fsc


def _check_options(opts):
    check_supported(opts)
    if opts.pad < 1.0:
        raise RelionPyError("Padding factor cannot be less than 1.")
    if opts.maxres == 0:
        raise RelionPyError("--maxres must be positive (or -1 for Nyquist)")
    if opts.angpix == 0:
        raise RelionPyError("--angpix must be positive (or -1: from the optics table)")
    if opts.j < 1:
        raise RelionPyError("--j must be at least 1")
    if opts.dont_skip_gridding and opts.blob_m not in (0, 2):
        raise RelionPyError(f"--blob_m {opts.blob_m}: m out of range in kaiser_Fourier_value() (0 or 2)")
    if opts.nr_helical_asu < 1:
        raise RelionPyError("--nr_helical_asu must be at least 1")
    out_dir = os.path.dirname(opts.o)
    if out_dir and not os.path.isdir(out_dir):
        raise RelionPyError(f"output folder {out_dir}/ does not exist (relion_reconstruct does not create "
                            "it; mkdir it first)")
    if os.path.isdir(opts.o):
        raise RelionPyError(f"--o {opts.o}: is a folder; --o names the output map file")
    if not os.access(out_dir or ".", os.W_OK | os.X_OK):
        raise RelionPyError(f"--o {opts.o}: the folder {out_dir or '.'} is not writable")
    point_group_operators(opts.sym)        # bad symmetry names fail before the long part


def reconstruct_images(opts, sum_groups=None):
    """Run relion_reconstruct with ``opts`` (a :class:`ReconstructImagesOptions`); writes ``opts.o`` and
    returns a :class:`ReconstructResult`.

    The particles are inserted in groups (:meth:`ImageReconstruction.groups`), each into a zeroed accumulator,
    and the group sums are added in order (:mod:`relion_py.runtime.partition`). ``sum_groups``: None sums the
    groups here, on --j threads; otherwise a callable ``sum_groups(run, groups)`` that yields their sums in
    order (:mod:`relion_py.distributed.reconstruct`). The output does not depend on who sums the groups."""
    start = time.monotonic()
    run = ImageReconstruction(opts)
    parts, n_box, angpix, data_dim, n_all = run.parts, run.n_box, run.angpix, run.data_dim, run.n_all
    refuse_overwriting_inputs([opts.o], [opts.i, opts.fsc] + sorted(
        {image_path(name, opts.img)[0] for name in parts.names + [c for c in parts.ctf_names or [] if c]}))
    if opts.verb > 0:
        info(f"{len(parts.names)} of {n_all} particles, {data_dim}-D data, box {n_box}, "
             f"pixel size {angpix:g} A")
    fsc = _read_fsc(opts.fsc, n_box) if opts.fsc else None
    helical = helical_rotations(opts.nr_helical_asu, opts.helical_twist) if opts.nr_helical_asu >= 2 else None
    with numba_threads(run.threads):
        # the accumulator is handed over, not kept here: reconstruct_grid frees it once split
        vol = reconstruct_grid(_backproject(run, sum_groups), run.grid, opts, data_dim, angpix,
                               point_group_operators(opts.sym), helical, fsc=fsc, workers=run.threads)
    write_map(opts.o, vol, angpix)
    if opts.verb > 0:
        info(f"Done! Written output map in: {opts.o}")
        summary(f"{len(parts.names)} of {n_all} particles backprojected ({n_all - len(parts.names)} left out by "
                f"--subset/--class), {data_dim}-D data, box {n_box}; {opts.o} written", len(parts.names),
                "particles", start)
    return ReconstructResult(output=opts.o, n_particles=len(parts.names), box=n_box, pixel_size=angpix,
                             volume=vol)


def _check_grid_memory(pad, r_max):
    """Refuse a --pad whose padded grids (side 2·pad·r_max + 3, data and weight in doubles: the total and a group's
    accumulator) do not fit in memory, before anything is allocated."""
    side = 2.0 * pad * r_max + 3
    check_memory(2 * 24 * side * side * (side / 2 + 1),
                 f"--pad {pad:g}: the padded Fourier grids ({side:.3g} voxels a side, the total and a group's)",
                 "use a smaller --pad")


def _backproject(run, sum_groups):
    """The insertion accumulator of all the run's particles: the group sums added in order; the group
    accumulator and the insertion buffers are freed before it is returned."""
    groups = run.groups()
    total = run.accumulator()
    sums = (sum_groups or _sum_groups_here)(run, groups)
    with Progress("Back-projecting", len(run.parts.names), kernels=insertion) as bar:
        for (first, end), group_sum in zip(groups, sums):
            total += group_sum
            bar.advance(end - first)
            del group_sum
    del sums
    run.close()
    return total


class ImageReconstruction:
    """A run's particles, read and checked once, its padded grid, and the insertion of any group of its
    particles. A distributed worker builds one per run and sums the groups its tasks name."""

    def __init__(self, opts):
        _check_options(opts)
        self.opts = opts
        self.threads = max(1, int(opts.j))
        self.reader = reader = ImageReader(opts.img)
        self.parts, self.n_box, self.angpix, self.data_dim, self.n_all = load_particles(opts, reader)
        n_box, angpix = self.n_box, self.angpix
        r_max = n_box // 2 if opts.maxres < 0 else min(int(math.ceil(n_box * angpix / opts.maxres)), n_box // 2)
        _check_grid_memory(opts.pad, r_max)
        self.grid = Grid.create(n_box, opts.pad, r_max, opts.r_min_nn)
        self.insertion = GridInsertion(opts, self.parts, self.grid, n_box, angpix, self.data_dim, reader,
                                       self.threads)

    def groups(self):
        """[(first particle, end particle)] of the groups: at most IMAGE_GROUPS, of at least BATCH_SIZE
        particles (from the particle count alone)."""
        n = len(self.parts.names)
        bounds = batch_bounds(n, max(BATCH_SIZE, -(-n // IMAGE_GROUPS)))
        return [(int(bounds[g]), int(bounds[g + 1])) for g in range(len(bounds) - 1)]

    def accumulator(self):
        """A zeroed insertion accumulator of the padded grid."""
        return self.grid.accumulator()

    def sum_group(self, group, out):
        """Add the particles of ``group`` to ``out`` (zeroed by the caller)."""
        with numba_threads(self.threads):
            return self.insertion.insert(*group, out)

    def close(self):
        self.reader.close()
        self.insertion = None


def _sum_groups_here(run, groups):
    """The group sums, in order, computed in this process."""
    out = run.accumulator()
    for group in groups:
        out.fill(0.0)
        yield run.sum_group(group, out)
