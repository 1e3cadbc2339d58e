"""relion_tomo_reconstruct_particle: reconstruct a particle directly from the tilt series.

Mirrors ``ReconstructParticleProgram`` (src/jaz/tomography/programs/reconstruct_particle.cpp):
``readBasicParameters``, ``run``, ``processTomograms`` (per tomogram: dose weights and their x ranges,
noise weights, per particle the re-extraction of every visible tilt, CTF × dose premultiplication,
backward Fourier insertion into private accumulators, per-tomogram checkpoints), ``finalise``,
``symmetrise``, ``reconstruct`` and ``writeOutput``. How it works: docs/reconstruction.md, part A.

Numerics: the 2-D images are processed in float32 as in RELION (``relion_py.tomography.particle_tilts``,
``relion_py.kernels.tomography.extraction``), accumulated in float64 (``relion_py.kernels.tomography.insertion_backward``),
finalised in float64 (``relion_py.kernels.tomography.map_finalisation``).
"""
import glob
import os
import time
from dataclasses import dataclass, fields

import numba
import numpy as np

from ..tomography.aberrations import aberration_tables
from ..runtime.errors import RelionPyError
from ..io.atomic import remove_stale_temporaries
from ..io.output_folder import check_writable_folder, refuse_overwriting_inputs, tidy_on_failure
from ..runtime.fftw_plans import RealFFT
from ..tomography.half_grid import half_to_centred_full
from ..io.mrc import read_mrc, write_map, write_mrc
from ..kernels.tomography import map_finalisation as fin
from ..kernels.tomography import insertion_backward
from ..kernels.tomography.extraction import CIRCLE_TABLE_BYTES
from ..kernels.tomography.insertion_backward import insert_slices_backward, slice_matrices
from ..runtime.job_control import check_abort, count_finished
from ..runtime.log import info, warn
from ..runtime.memory import check_memory, half_spectrum_bytes, real_fft_bytes
from ..runtime.cluster_options import ClusterOptions
from ..runtime.options import ProjectInputs, check_supported, option, round_single_precision_flags
from ..runtime.parallel import PerThread, numba_threads
from ..runtime.partition import OrderedReduction, batch_bounds, group_bounds
from ..runtime.progress import Progress, summary
from ..project.optimisation_set import OptimisationSet
from ..project.particles import ParticleSet, Trajectories
from ..project.tomograms import TomogramSet
from ..tomography.helical_symmetry import tomo_symmetry_matrices
from ..tomography.symmetry import is_c1, point_group_operators
from ..tomography.particle_tilts import NonFiniteFrame, extract_spectra, particle_geometry, particle_tilt_items
from ..tomography.box_sizes import box_sizes
from ..tomography.tilt_weighting import tilt_weighting

REC = "Reconstruction options"
SYM = "Symmetry"
RUN = "Running"


@dataclass
class ReconstructParticleOptions(ClusterOptions, ProjectInputs):
    """Options of relion_tomo_reconstruct_particle (same names; booleans are its switches)."""

    b: int = option(None, "Box size of the reconstruction, in binned pixels", REC, required=True)
    crop: int = option(-1, "Size of the (additionally written) cropped map (-1: no crop)", REC)
    bin: float = option(1.0, "Binning factor (may be non-integer)", REC)
    taper: float = option(10.0, "Taper the final map against the sphere by this number of pixels", REC)
    SNR: float = option(-1.0, "Assumed signal-to-noise ratio for a Wiener filter (negative: RELION's "
                        "heuristic)", REC)
    whiten: bool = option(False, "Whiten the noise by flattening the power spectrum", REC)
    no_ctf: bool = option(False, "Do not apply CTFs (nor dose weights)", REC)
    no_circle_crop: bool = option(False, "Do not crop the 2-D images to a circle before the Fourier "
                                  "transform", REC)
    cutoff_fract: float = option(0.01, "Ignore shells for which the dose weight falls below this value", REC)
    sym: str = option("C1", "Symmetry group", SYM)
    nr_helical_asu: int = option(1, "Number of helical asymmetrical units", SYM)
    helical_rise: float = option(0.0, "Helical rise (in Angstroms)", SYM, single=True)
    helical_twist: float = option(0.0, "Helical twist (in degrees, + for right-handedness)", SYM, single=True)
    mem: int = option(-1, "Max. amount of memory (in GB) for the accumulators (--j_out will be reduced)", RUN)
    j: int = option(6, "Number of threads (symmetrisation, FFTs, 2-D image processing)", RUN)
    j_in: int = option(3, "Inner threads (RELION: threads per particle); here the thread count is the larger of "
                       "--j and --j_out x --j_in, and every thread processes whole batches of particles", RUN)
    j_out: int = option(2, "Outer threads: number of private accumulators (batches of particles in flight; the "
                        "result does not depend on it)", RUN)
    only_do_unfinished: bool = option(False, "Resume from the per-tomogram checkpoints in <o>/temp/", RUN)
    no_backup: bool = option(False, "Do not write per-tomogram checkpoints (makes --only_do_unfinished "
                             "impossible)", RUN)
    no_recon: bool = option(False, "Only backproject, do not reconstruct (for benchmarking)", RUN)
    pipeline_control: str = option("", "RELION pipeline control directory (RELION_JOB_EXIT_SUCCESS is "
                                   "written there)", RUN, metavar="DIR")

    def __post_init__(self):
        round_single_precision_flags(self)


@dataclass
class ReconstructParticleResult:
    """What a run wrote."""

    output_dir: str
    maps: list          # paths of the maps written (empty with --no_recon)
    n_particles: int    # particles visible in at least one tilt
    n_slices: int       # tilt images backprojected
    pixel_size: float   # of the output maps (Å)


def command_line(opts, prog="relion-py-reconstruct"):
    """The argv words of ``opts`` (for note.txt when called from Python)."""
    words = [prog]
    for f in fields(opts):
        value = getattr(opts, f.name)
        if value == f.default:
            continue
        if f.metadata.get("single"):
            value = np.float32(value)           # as typed: 7.3, not the float32 value's 7.300000190734863
        words += [f"--{f.name}"] if isinstance(value, bool) else [f"--{f.name}", str(value)]
    return words


def _validate(opts):
    """Refuse bad options before anything is read or written."""
    check_supported(opts)
    square = box_sizes(opts.b, opts.crop if opts.crop > 0 else None, opts.bin).square
    for name in ("j", "j_in", "j_out"):
        if getattr(opts, name) < 1:
            raise RelionPyError(f"--{name} must be at least 1")
    if not 0.0 <= opts.cutoff_fract < 1.0:
        raise RelionPyError(f"--cutoff_fract must be in [0, 1) (got {opts.cutoff_fract})")
    if opts.taper < 0:
        raise RelionPyError(f"--taper must not be negative (got {opts.taper})")
    if opts.nr_helical_asu < 1:
        raise RelionPyError(f"--nr_helical_asu must be at least 1 (got {opts.nr_helical_asu})")
    if opts.whiten and opts.no_ctf:
        raise RelionPyError("--whiten with --no_ctf is not supported: RELION 5.0.1 multiplies the weights of "
                            "every particle once more by the noise weights (its result depends on --j_out)")
    if not is_c1(opts.sym):
        point_group_operators(opts.sym)          # raises a clear error for unknown groups
    return square


def accumulator_count(opts, s):
    """j_out after RELION's --mem reduction (``run``): GB per outer thread = 2·(s/2+1)·s²·3·8 / 2³⁰. Here
    j_out batch accumulators are in flight besides the total (``relion_py.runtime.partition``)."""
    gb_per_thread = 2.0 * (s // 2 + 1) * s * s * 3.0 * 8 / 2.0 ** 30
    j_out = opts.j_out
    if opts.mem > 0 and opts.mem / gb_per_thread < j_out:
        reduced = int(opts.mem / gb_per_thread)
        if reduced < 1:
            raise RelionPyError(f"--mem {opts.mem} GB is less than one accumulator needs "
                                f"({gb_per_thread:.3g} GB for --b {s})")
        info(f"Outer thread number reduced from {j_out} to {reduced} due to memory constraints (--mem).")
        j_out = reduced
    info(f"Memory required for accumulation: {gb_per_thread * j_out:.6g} GB")
    return j_out


def reconstruct_particle(opts, command=None, sum_groups=None):
    """Run relion_tomo_reconstruct_particle with ``opts`` (a :class:`ReconstructParticleOptions`); returns a
    :class:`ReconstructParticleResult`.

    ``sum_groups``: None sums every group of particles here, on --j threads; otherwise a callable
    ``sum_groups(run, groups)`` that yields the sums of ``groups`` ((tomogram index, first batch, end batch)
    tuples, :meth:`ParticleReconstruction.groups`) in that order — :mod:`relion_py.distributed.reconstruct`
    computes them on a Dask cluster. The output does not depend on who sums the groups."""
    start_time = time.monotonic()
    run = ParticleReconstruction(opts)
    try:
        out_dir = opts.o if opts.o.endswith("/") else opts.o + "/"
        refuse_overwriting_inputs(_output_files(out_dir), run.input_files())
        with tidy_on_failure(out_dir):
            check_writable_folder(out_dir)
            return _reconstruct_into(run, command, out_dir, start_time, sum_groups or _sum_groups_here)
    finally:
        run.close()


class ParticleReconstruction:
    """A run's inputs, read and checked once (tomograms, particles, half sets, visibility, aberrations), and the
    backprojection of any group of its particles (``processTomograms`` without the checkpoints). A distributed
    worker builds one per run and sums the groups its tasks name."""

    def __init__(self, opts):
        self.opts = opts
        self.square = _validate(opts)
        s = opts.b
        self.n_acc = accumulator_count(opts, s)
        self.threads = max(1, min(max(opts.j, opts.j_out * opts.j_in), numba.config.NUMBA_NUM_THREADS))
        numba.set_num_threads(self.threads)
        self.files = OptimisationSet.from_arguments(opts.i, opts.p, opts.t, opts.mot)
        self.tomograms = TomogramSet(self.files.tomograms)
        try:
            self._read(opts, s)
            self._check_memory(s)
        except BaseException:
            self.tomograms.close()
            raise
        self._prepared = None          # (tomogram index, _TomogramBackprojection) of the last tomogram used

    def _read(self, opts, s):
        particles = self.particles = ParticleSet(self.files.particles, self.tomograms)
        trajectories = Trajectories(self.files.trajectories) if self.files.trajectories else None
        self.halves_of = _half_sets(particles)
        self.n_half = 2 if self.halves_of is not None else 1
        self.pixel_size = self.tomograms.tomograms[0].pixel_size * opts.bin      # px_out: the FIRST tomogram's
        self.operators = _symmetry_operators(opts, self.pixel_size)
        self.geoms = {}
        for tomo in self.tomograms:
            rows = particles.rows_of(tomo.name)
            if len(rows):
                self.geoms[tomo.name] = particle_geometry(particles, rows, tomo, True, s / 2.0, -1.0, trajectories)
        self.n_visible = sum(int(g.visible.any(axis=1).sum()) for g in self.geoms.values())
        self.n_slices = sum(int(g.visible.sum()) for g in self.geoms.values())
        if self.n_slices == 0:
            raise RelionPyError("no particle is visible in any tilt image (every particle is closer than "
                                f"--b/2 = {s / 2} px to an image edge): nothing to reconstruct")
        n_hidden = len(particles) - self.n_visible
        if n_hidden:
            warn(f"{n_hidden} particle(s) are not visible in any tilt image and contribute nothing.")
        self.aberrations = aberration_tables(particles.optics, s, self.pixel_size)

    def _check_memory(self, s):
        """Refuse a run whose buffers cannot fit in memory (``runtime.memory``): the total, a group's sum and
        the batch accumulators in flight, per tomogram its dose weights and circle-mask tables, and per thread
        the unbinned squares (one, or gathered, one per frame) and the weighted spectra of a particle's tilt
        images."""
        frames, squares = self.tomograms.square_buffers()
        accumulators = (2 + max(1, min(self.n_acc, self.threads))) * self.n_half * half_spectrum_bytes((s,) * 3, 24)
        shared = frames * half_spectrum_bytes((s, s), 4) + CIRCLE_TABLE_BYTES * self.square ** 2
        per_thread = squares * real_fft_bytes((self.square,) * 2) + frames * half_spectrum_bytes((s, s), 12)
        check_memory(accumulators + shared + self.threads * per_thread,
                     f"the accumulators and buffers of --b {s} (--bin {self.opts.bin:g}), {self.threads} thread(s) "
                     f"and {frames} tilt images", "use a smaller box, fewer threads (--j) or a --mem limit")

    def input_files(self):
        files = self.files
        return self.tomograms.files() + [files.particles, files.trajectories, files.manifolds, files.tomograms,
                                         self.opts.i]

    def close(self):
        self.tomograms.close()

    def accumulator(self):
        """A zeroed accumulator: (H, s, s, s//2+1, 3) float64, [..., (Re D, Im D, W)] per half set."""
        s = self.opts.b
        return np.zeros((self.n_half, s, s, s // 2 + 1, 3))

    def visible_particles(self, tt):
        """Particles of tomogram ``tt`` visible in at least one tilt image."""
        geom = self.geoms.get(self.tomograms.tomograms[tt].name)
        return 0 if geom is None else int(geom.visible.any(axis=1).sum())

    def groups(self, tt):
        """The groups of tomogram ``tt`` (``relion_py.runtime.partition``): [(tt, first batch, end batch)]."""
        n = self.visible_particles(tt)
        if n == 0:
            return []
        bounds = group_bounds(len(batch_bounds(n)) - 1)
        return [(tt, int(bounds[g]), int(bounds[g + 1])) for g in range(len(bounds) - 1)]

    def group_particles(self, tt, first, end):
        """Number of particles in batches first:end of tomogram ``tt``."""
        batches = batch_bounds(self.visible_particles(tt))
        return int(batches[end] - batches[first])

    def sum_group(self, group, out, reduction):
        """Add the sum of ``group``'s batches (each batch summed into its own zeroed accumulator, the batch
        sums added in order) to ``out`` (zeroed by the caller), on ``reduction``'s threads."""
        tt, first, end = group
        if self._prepared is None or self._prepared[0] != tt:
            if self._prepared is not None:         # the previous tomogram's buffers and tilt series go first
                self.tomograms.tomograms[self._prepared[0]].close()
            self._prepared = None
            self._prepared = (tt, _TomogramBackprojection(self, tt))
        tomo = self._prepared[1]
        tomo.prefetch(tomo.batches[first], tomo.batches[end])

        def backproject_batch(b, acc):
            tomo.backproject(tomo.batches[first + b], tomo.batches[first + b + 1], acc)
        try:
            with numba_threads(self.threads):
                reduction.run(out, backproject_batch, end - first, self.threads,
                              done=lambda b: check_abort(self.opts.pipeline_control))
        except NonFiniteFrame as e:
            raise e.naming(self.tomograms.tomograms[tt]) from None
        return out


def _sum_groups_here(run, groups):
    """The group sums, in order, computed in this process on --j threads (--j_out batches in flight)."""
    out = run.accumulator()
    reduction = OrderedReduction(out, min(run.n_acc, run.threads))
    for group in groups:
        out.fill(0.0)
        yield run.sum_group(group, out, reduction)


def _output_files(out_dir):
    """The files a reconstruction writes into its output folder (besides temp/)."""
    tags = ("half1", "half2", "merged")
    return [out_dir + "note.txt"] + [f"{out_dir}{kind}{tag}{end}.mrc" for tag in tags
                                     for kind, end in (("data_", ""), ("weight_", ""), ("", "_full"), ("", ""))]


def _reconstruct_into(run, command, out_dir, start_time, sum_groups):
    """Backprojection with per-tomogram checkpoints, then the maps, into ``out_dir`` (which exists)."""
    opts = run.opts
    os.makedirs(out_dir + "temp", exist_ok=True)
    remove_stale_temporaries(out_dir)
    remove_stale_temporaries(out_dir + "temp")
    if not opts.pipeline_control:                       # RELION skips note.txt under pipeline control
        _write_note(out_dir, command or command_line(opts))
    total = run.accumulator()
    tmp_root = out_dir + "temp/sum_"
    start, previous = 0, -1
    if opts.only_do_unfinished:
        start, previous = _resume(tmp_root, len(run.tomograms), total)
    check_abort(opts.pipeline_control)
    groups = [g for tt in range(start, len(run.tomograms)) for g in run.groups(tt)]
    n_particles = sum(run.group_particles(*g) for g in groups)
    with Progress("Backprojecting", n_particles, kernels=insertion_backward) as bar:
        for (tt, first, end), group_sum in zip(groups, sum_groups(run, groups)):
            total += group_sum
            bar.advance(run.group_particles(tt, first, end))
            check_abort(opts.pipeline_control)
            if end == len(batch_bounds(run.visible_particles(tt))) - 1 and not opts.no_backup:
                _write_checkpoint(tmp_root, tt, total)             # the tomogram's last group is in
                if total.shape[0] == 2:     # QUIRK: --only_do_unfinished resumes from half-set checkpoints only
                    count_finished(1, "tomograms (checkpoints in temp/)")
                if previous > -1:
                    _remove(glob.glob(f"{tmp_root}{previous}*.mrc"))
                previous = tt
    run.tomograms.close()                               # no tilt series held while the maps are made
    maps = []
    if not opts.no_recon:
        data = total[..., 0] + 1j * total[..., 1]
        weight = total[..., 2].copy()
        del total
        maps = _finalise(opts, out_dir, data, weight, run.operators, run.pixel_size, run.threads)
        _remove(glob.glob(tmp_root + "*.mrc"))
    n_hidden = len(run.particles) - run.n_visible
    summary(f"{run.n_visible} particles backprojected ({run.n_slices} tilt images), {n_hidden} not visible in "
            f"any tilt image; {len(maps)} maps written to {out_dir}", run.n_visible, "particles", start_time)
    return ReconstructParticleResult(output_dir=out_dir, maps=maps, n_particles=run.n_visible,
                                     n_slices=run.n_slices, pixel_size=run.pixel_size)


def _write_note(out_dir, words):
    """``ZIO::prepareTomoOutputDirectory``'s note.txt."""
    with open(out_dir + "note.txt", "w") as fh:
        fh.write("Command:\n\n" + "".join(w + " " for w in words) + "\n")


def _half_sets(particles):
    """0-based half set of every particle row (rlnRandomSubset - 1), or None without the column."""
    table = particles.table
    if "rlnRandomSubset" not in table.columns:
        warn(f"The input particles in {particles.path} have no rlnRandomSubset to specify halfsets, "
             "joining all particles in half1")
        return None
    try:
        subsets = table["rlnRandomSubset"].to_numpy(dtype=np.float64)
    except (TypeError, ValueError):
        raise RelionPyError(f"{particles.path}: rlnRandomSubset holds non-numeric values") from None
    bad = ~np.isin(subsets, (1.0, 2.0))
    if bad.any():
        raise RelionPyError(f"{particles.path}: rlnRandomSubset must be 1 or 2 (found {subsets[bad][0]:g})")
    return subsets.astype(np.int64) - 1


def _symmetry_operators(opts, pixel_size):
    """``ReconstructParticleProgram::symmetrise``'s operator list, or None if it does not symmetrise
    (--helical_rise / --helical_twist hold their float32 values: ``single`` flags)."""
    if is_c1(opts.sym) and opts.nr_helical_asu <= 1:
        return None
    return tomo_symmetry_matrices(opts.sym, opts.nr_helical_asu, opts.helical_twist,
                                  opts.helical_rise / pixel_size)


class _TomogramBackprojection:
    """``processTomograms`` for one tomogram: its weights and particle tilt images, and the re-extraction,
    weighting and insertion of any range of its visible particles (``relion_py.runtime.partition``'s
    batches, ``batches[k]:batches[k + 1]``)."""

    def __init__(self, run, tt):
        opts, s = run.opts, run.opts.b
        tomo = self.tomo = run.tomograms.tomograms[tt]
        geom = run.geoms[tomo.name]
        self.opts, self.square = opts, run.square
        # data and weights are zeroed beyond the dose cut-off, and c, c·c formed in float32
        self.weighting = tilt_weighting(tomo, s, opts.bin, run.aberrations, not opts.no_ctf, opts.whiten,
                                        run.threads, cutoff_fraction=opts.cutoff_fract, zero_beyond_x_ranges=True,
                                        float32_ctf=True)
        binned_ps = self.weighting.pixel_size
        self.halves = (run.halves_of[geom.rows] if run.halves_of is not None
                       else np.zeros(len(geom.rows), np.int64))
        pose = run.particles.subtomogram_matrices(geom.rows) @ run.particles.particle_matrices(geom.rows)
        proj = (run.pixel_size / binned_ps) * tomo.projections[:, :3, :3]
        selection = np.flatnonzero(geom.visible.any(axis=1))
        self.bounds, self.items, self.ctf_params, self.groups = particle_tilt_items(
            tomo, run.particles, geom, selection, run.square, opts.bin, s)
        self.q = slice_matrices(proj[self.items.frame] @ pose[self.items.particle])
        self.batches = batch_bounds(len(selection))
        info(f"Tomogram {tt + 1} / {len(run.tomograms)}: {tomo.name}, {len(selection)} particles, "
             f"{int(self.bounds[-1])} tilt images")
        self.workspaces = PerThread(lambda: _Workspace(tomo.n_frames, run.square, s))

    def prefetch(self, first, end):
        """Let the tilt-series reader start fetching the windows of visible particles first:end (remote
        tilt series: requests in flight while the first particles are inserted)."""
        items = self.items[self.bounds[first]:self.bounds[end]]
        self.tomo.images.prefetch(items.frame, items.origins, self.square)

    def backproject(self, first, end, acc):
        """Insert visible particles first:end, in order, into ``acc`` (H, s, s, s//2+1, 3)."""
        for k in range(first, end):
            self._backproject_particle(k, acc)

    def _backproject_particle(self, k, acc):
        part = slice(self.bounds[k], self.bounds[k + 1])
        mine = self.items[part]
        n = len(mine.frame)
        ws = self.workspaces.get()
        # cropCircle of extractAt2D_Fourier (radius S/2, fall-off 5) unless --no_circle_crop
        slices, slice_w = extract_spectra(self.tomo.images, mine, self.weighting, self.groups[part],
                                          self.ctf_params[part], ws.fft, not self.opts.no_circle_crop, False,
                                          ws.slices[:n], ws.weights[:n])
        insert_slices_backward(acc[None], slices, slice_w, self.q[part], self.weighting.x_ranges[mine.frame, 0],
                               self.halves[mine.particle], np.array([0, n]))


class _Workspace:
    """One worker's buffers for the (at most fc) tilt images of one particle."""

    def __init__(self, frames, square, s):
        self.fft = RealFFT(frames, (square, square), columns=s // 2 + 1, inverse=False)
        self.slices = np.empty((frames, s, s // 2 + 1), np.complex64)
        self.weights = np.empty((frames, s, s // 2 + 1), np.float32)


def _write_checkpoint(tmp_root, tt, acc):
    """``temp/sum_<tt>_data_half<h>.mrc`` (real parts in z < s, imaginary in z ≥ s) and
    ``temp/sum_<tt>_ctf_half<h>.mrc``, float32, pixel size 1. acc: (H, s, s, sh, 3)."""
    for h in range(acc.shape[0]):
        write_mrc(f"{tmp_root}{tt}_data_half{h}.mrc", np.concatenate([acc[h, ..., 0], acc[h, ..., 1]]), 1.0)
        write_mrc(f"{tmp_root}{tt}_ctf_half{h}.mrc", acc[h, ..., 2], 1.0)


def _resume(tmp_root, n_tomo, total):
    """--only_do_unfinished: the last tomogram with a ``..._data_half1.mrc`` checkpoint (QUIRK: only written
    with half sets) is loaded into the total; returns (first tomogram to do, checkpoint index)."""
    s = total.shape[1]
    for tt in range(n_tomo - 1, -1, -1):
        if os.path.exists(f"{tmp_root}{tt}_data_half1.mrc"):
            for h in range(total.shape[0]):
                d, _ = read_mrc(f"{tmp_root}{tt}_data_half{h}.mrc")
                w, _ = read_mrc(f"{tmp_root}{tt}_ctf_half{h}.mrc")
                if d.shape != (2 * s, s, s // 2 + 1) or w.shape != (s, s, s // 2 + 1):
                    raise RelionPyError(f"checkpoint {tmp_root}{tt}_*_half{h}.mrc does not match --b {s}")
                total[h, ..., 0] = d[:s]
                total[h, ..., 1] = d[s:]
                total[h, ..., 2] = w
            info(f"Resuming after tomogram {tt + 1} from the checkpoint in {os.path.dirname(tmp_root)}")
            return tt + 1, tt
    return 0, -1


def _remove(paths):
    for path in paths:
        try:
            os.remove(path)
        except OSError:
            pass


def _finalise(opts, out_dir, data, weight, operators, pixel_size, threads):
    """``finalise``: symmetrise, then per half and merged: gridding correction, CTF division, output."""
    if operators is not None:
        for h in range(data.shape[0]):
            data[h], weight[h] = fin.symmetrise(data[h], weight[h], operators)
    maps = []
    if data.shape[0] == 2:
        both_d, both_w = data[0] + data[1], weight[0] + weight[1]
        for h in range(2):
            maps += _reconstruct_and_write(opts, out_dir, data[h], weight[h], weight[h], f"half{h + 1}",
                                           pixel_size, threads)
        # QUIRK: weight_merged.mrc holds half 1's weights (RELION passes ctfImgFS[0])
        maps += _reconstruct_and_write(opts, out_dir, both_d, both_w, weight[0], "merged", pixel_size,
                                       threads)
    else:
        maps += _reconstruct_and_write(opts, out_dir, data[0], weight[0], weight[0], "merged", pixel_size,
                                       threads)
    return maps


def _reconstruct_and_write(opts, out_dir, data, weight, written_weight, tag, pixel_size, threads):
    """``reconstruct`` + ``writeOutput`` of one map."""
    s = opts.b
    corrected = fin.gridding_correct(data, threads)
    divided = fin.ctf_divide(corrected, weight, opts.SNR, threads)
    paths = [f"{out_dir}data_{tag}.mrc", f"{out_dir}weight_{tag}.mrc"]
    write_map(paths[0], corrected, pixel_size)
    write_map(paths[1], half_to_centred_full(written_weight), pixel_size)
    if 0 < opts.crop < s:
        paths.append(f"{out_dir}{tag}_full.mrc")
        write_map(paths[-1], divided, pixel_size)
        divided = fin.crop_centre(divided, opts.crop)
    paths.append(f"{out_dir}{tag}.mrc")
    write_map(paths[-1], fin.taper(divided, opts.taper), pixel_size)
    return paths
