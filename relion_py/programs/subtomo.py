"""relion_tomo_subtomo: extract particles from tilt series as 2-D tilt stacks or 3-D pseudo-subtomograms.

Mirrors ``SubtomoProgram`` (src/jaz/tomography/programs/subtomo.cpp): options, the visibility pass and
particles.star (``initialise``, ``writeParticleSet``), then per tomogram the per-particle extraction
(``processTomograms``). How it works: docs/extraction.md.
"""
import ctypes
import os
import time
from dataclasses import dataclass, fields

import numba
import numpy as np

from ..tomography.aberrations import aberration_tables
from ..runtime.errors import RelionPyError
from ..runtime.fftw_plans import RealFFT
from ..tomography.geometry import matrix_to_euler
from ..io.mrc import write_mrc
from ..io.star import write_star
from ..kernels.tomography import extraction
from ..kernels.tomography.extraction import CIRCLE_TABLE_BYTES, crop_circle
from ..kernels.tomography.insertion_forward import InsertionWorkspace, insert_slices_forward
from ..kernels.tomography.volume_filters import cone_weight
from ..runtime.job_control import check_abort, count_finished
from ..runtime.log import info, warn
from ..io.atomic import remove_stale_temporaries
from ..io.output_folder import check_writable_folder, refuse_overwriting_inputs, tidy_on_failure
from ..runtime.cluster_options import ClusterOptions, wants_cluster
from ..runtime.options import INPUT_GROUP, ProjectInputs, check_supported, option
from ..runtime.memory import check_memory, half_spectrum_bytes, real_fft_bytes
from ..runtime.parallel import AHEAD, BackgroundWriter, PerThread, map_in_order
from ..runtime.progress import Progress, summary
from ..project.optimisation_set import OptimisationSet
from ..project.particles import ORIGIN, UNCENTRED, ParticleSet, Trajectories
from ..project.tomograms import TomogramSet
from ..tomography.subtomo_files import Sums, output_suffixes, write_volume_outputs
from ..tomography.particle_tilts import (NonFiniteFrame, extract_spectra, extract_stack2d, particle_geometry,
                                         particle_tilt_items)
from ..tomography.box_sizes import box_sizes
from ..tomography.tilt_weighting import tilt_weighting

IO = INPUT_GROUP
BOX = "Box and binning"
PROC = "Image processing"
SEL = "Particle and frame selection"
OUT3D = "Extra 3-D outputs"
RUN = "Running"
NO_EFFECT = "accepted for compatibility: RELION parses it but it has no effect on extraction"


@dataclass
class ExtractOptions(ClusterOptions, ProjectInputs):
    """Options of relion_tomo_subtomo (same names; booleans are its switches)."""

    b: int = option(None, "Box size of the extracted 2-D images, in binned pixels", BOX, required=True)
    crop: int = option(-1, "Output box size in binned pixels (-1: same as --b)", BOX)
    bin: float = option(1.0, "Binning factor (may be non-integer)", BOX)
    stack2d: bool = option(False, "Write 2-D tilt stacks (<name>_stack2d.mrcs) instead of 3-D pseudo-subtomograms",
                           IO)
    float16: bool = option(False, "Write MRC mode 12 (half precision) instead of mode 2 (float32)", IO)
    no_ctf: bool = option(False, "Do not premultiply by the CTF (this also disables dose weighting)", PROC)
    no_ic: bool = option(False, "Do not invert the contrast (RELION inverts by default)", PROC)
    no_circle_crop: bool = option(False, "Do not mask the 2-D images with a soft circle of diameter --crop", PROC)
    circle_precrop: bool = option(False, "Mask the unbinned square with a soft circle before the Fourier transform",
                                  PROC)
    grid_precorr: bool = option(False, "Apply the 2-D gridding pre-correction", PROC)
    whiten: bool = option(False, "Whiten the noise using the tilt images' power spectra", PROC)
    min_frames: int = option(1, "Keep only particles visible in at least this many frames", SEL)
    max_dose: float = option(-1.0, "Frames with a pre-exposure above this (e/Å²) are left out (if > 0)", SEL)
    cutoff_fract: float = option(0.01, "Dose-weight threshold below which frequencies are not backprojected (3-D)",
                                 SEL)
    dont_apply_offsets: bool = option(False, "Do not apply rlnOriginX/Y/ZAngst to the particle positions", SEL)
    apply_orientations: bool = option(False, "Rotate the pseudo-subtomograms by the particle orientations "
                                      "(implies applying offsets)", SEL)
    only_do_unfinished: bool = option(False, "Skip particles whose output file already exists", RUN)
    j: int = option(6, "Number of threads", RUN)
    SNR: float = option(-1.0, "Wiener SNR for the --div output (3-D)", OUT3D)
    ctf: bool = option(False, "Also write <name>_CTF2.mrc (3-D)", OUT3D)
    div: bool = option(False, "Also write the CTF-divided <name>_div.mrc (3-D)", OUT3D)
    nrm: bool = option(False, "Also write multiplicity-normalised <name>_data_nrm.mrc and _CTF2_nrm.mrc (3-D)",
                       OUT3D)
    multi: bool = option(False, "Also write the multiplicity volume <name>_multi.mrc (3-D)", OUT3D)
    no_comb: bool = option(False, "Do not write the combined <name>_weights.mrc (3-D)", OUT3D)
    cone_weight: bool = option(False, "Down-weight a cone in Fourier space (3-D)", OUT3D)
    cone_angle: float = option(10.0, "Opening angle of the --cone_weight cone (degrees)", OUT3D)
    cone_sig0: float = option(2.0, "Width of the --cone_weight cone at the origin (px)", OUT3D)
    taper: float = option(5.0, "Taper width (px) of the --div output (3-D)", OUT3D)
    no_center: bool = option(False, "Do not subtract the mean in the --div output's taper (3-D)", OUT3D)
    env: float = option(-1.0, "Envelope sigma (" + NO_EFFECT + ")", OUT3D)
    real_subtomo: bool = option(False, "Extract from reconstructed tomograms and re-project", PROC,
                                unsupported="RELION's classic Projector path is not ported")
    sum: bool = option(False, "Also write the sum of all pseudo-subtomograms: sum_data.mrc, sum_weight.mrc and the "
                       "CTF-divided sum_div.mrc (3-D; debugging)", RUN)
    no_writing: bool = option(False, "Do not write the per-particle 3-D files (debugging, with --sum)", RUN)
    diag: bool = option(False, "Diagnostic output (" + NO_EFFECT + ")", RUN)
    pipeline_control: str = option("", "RELION pipeline control directory (RELION_JOB_EXIT_SUCCESS is written there)",
                                   RUN, metavar="DIR")


#: the files an extraction writes into its output folder (besides Subtomograms/)
OUTPUT_FILES = ("note.txt", "particles.star", "optimisation_set.star", "motion.star")


def derive_sizes(opts):
    """Check the options of extraction and derive the box sizes (:func:`box_sizes`)."""
    sizes = box_sizes(opts.b, None if opts.crop == -1 else opts.crop, opts.bin)
    if not 0.0 <= opts.cutoff_fract < 1.0:
        raise RelionPyError(f"--cutoff_fract must be in [0, 1) (got {opts.cutoff_fract})")
    for name in ("taper", "cone_angle", "cone_sig0"):
        if getattr(opts, name) < 0:
            raise RelionPyError(f"--{name} must not be negative (got {getattr(opts, name)})")
    if opts.min_frames < 0:
        raise RelionPyError("--min_frames must not be negative")
    if opts.j < 1:
        raise RelionPyError("--j must be at least 1")
    return sizes


@dataclass
class ExtractResult:
    """What an extraction run wrote."""

    particles_star: str
    optimisation_set: str
    n_particles: int
    n_removed: int
    n_tilt_images: int


def command_line(opts, prog="relion-py-extract"):
    """The argv words of ``opts`` (for note.txt when called from Python)."""
    words = [prog]
    for f in fields(opts):
        value = getattr(opts, f.name)
        if value == f.default:
            continue
        words += [f"--{f.name}"] if isinstance(value, bool) else [f"--{f.name}", str(value)]
    return words


def _reuse_freed_memory():
    """Ask glibc to serve allocations below 32 MiB from the heap and to keep freed heap memory: the arrays of
    each particle then reuse the previous particle's pages instead of mapping and zero-filling new ones (which
    otherwise costs about a fifth of the run time in the kernel). One heap (arena) for all threads: with one per
    thread (workers and writers) each keeps its own freed pages, and the resident memory grew with the
    particles (bench case b: 27 MiB more over each tomogram, peak 542–563 MiB against 517 with one; a 441 against
    414, c 412 against 400, the same times within the machine's noise). No effect without glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 * 2**20)    # M_MMAP_THRESHOLD (also turns off its dynamic adjustment)
        libc.mallopt(-1, 2**30)         # M_TRIM_THRESHOLD
        libc.mallopt(-2, 64 * 2**20)    # M_TOP_PAD
        libc.mallopt(-8, 1)             # M_ARENA_MAX
    except (OSError, AttributeError):
        pass


def _release_freed_memory():
    """Return the freed heap memory of a finished tomogram to the system (``malloc_trim``): the next
    tomogram's arrays do not fit exactly into its holes, and the heap is otherwise never trimmed."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def extract_subtomograms(opts, command=None, run_batches=None):
    """Run relion_tomo_subtomo with ``opts`` (an :class:`ExtractOptions`); returns an :class:`ExtractResult`.

    ``run_batches``: None extracts every tomogram here, on --j threads; otherwise a callable that receives the
    :class:`ExtractionRun` and the list of :meth:`ExtractionRun.batches`, has them extracted (e.g. on a Dask
    cluster, relion_py.distributed) and returns the number of tilt images extracted. particles.star and
    optimisation_set.star are then written after the particle files, as the last step."""
    check_supported(opts)
    if wants_cluster(opts):
        raise RelionPyError("the cluster flags need relion_py.distributed.extract.extract_on_cluster")
    for name in ("env", "diag"):
        if getattr(opts, name) != ExtractOptions.__dataclass_fields__[name].default:
            warn(f"--{name} has no effect (as in RELION 5, which parses but never uses it)")
    if opts.stack2d:
        ignored = [f"--{n}" for n in ("ctf", "div", "nrm", "multi", "no_comb", "cone_weight", "sum", "no_writing")
                   if getattr(opts, n)]
        if ignored:
            warn(f"{', '.join(ignored)} only affect 3-D pseudo-subtomograms; ignored with --stack2d (as in RELION)")
    run = ExtractionRun(opts)
    try:
        out_dir = run.out_dir
        refuse_overwriting_inputs([out_dir + n for n in OUTPUT_FILES], run.tomograms.files() + [
            run.files.particles, run.files.trajectories, run.files.manifolds, run.files.tomograms, opts.i])
        with tidy_on_failure(out_dir):
            check_writable_folder(out_dir)
            return _extract_all(run, command, run_batches)
    finally:
        run.close()


class ExtractionRun:
    """The inputs of one extraction run and its visibility pass: what the single-process path, a distributed
    run's client and each of its workers share. Work is cut into batches (tomogram, particles start:stop of
    that tomogram's kept particles, in STAR order); every particle's files depend on that particle only, so
    any cut and any order of batches write the same bytes."""

    def __init__(self, opts):
        self.start_time = time.monotonic()
        self.opts = opts
        self.sizes = derive_sizes(opts)
        _reuse_freed_memory()
        self.threads = min(opts.j, numba.config.NUMBA_NUM_THREADS)
        self.out_dir = opts.o if opts.o.endswith("/") else opts.o + "/"
        self.files = OptimisationSet.from_arguments(opts.i, opts.p, opts.t, opts.mot)
        self.tomograms = TomogramSet(self.files.tomograms)
        try:
            _check_memory(opts, self.sizes, self.tomograms, self.threads)
            self.particles = ParticleSet(self.files.particles, self.tomograms)
            self.trajectories = Trajectories(self.files.trajectories) if self.files.trajectories else None
        except BaseException:
            self.tomograms.close()
            raise
        self.kept = self.roots = self.aberrations = self.dropped = None
        self.n_skipped = 0          # particles whose files a --only_do_unfinished run found complete

    def select(self):
        """The visibility pass, the output file roots and the aberration tables."""
        opts, sizes, particles = self.opts, self.sizes, self.particles
        self.kept, self.dropped = _select_particles(opts, sizes, self.tomograms, particles, self.trajectories)
        self.roots = _output_roots(self.out_dir, particles, self.kept)
        # QUIRK: aberrations are evaluated once, at binning × the pixel size of the first optics group
        self.aberrations = aberration_tables(particles.optics, sizes.box, opts.bin * particles.optics_pixel_size[0])

    def batches(self, size):
        """(tomogram name, start, stop) of every batch of at most ``size`` kept particles, in STAR order."""
        return [(name, start, min(start + size, len(geom.rows))) for name, geom in self.kept.items()
                for start in range(0, len(geom.rows), size)]

    def extract(self, name, start, stop, threads, sums=None):
        """Extract kept particles start:stop of tomogram ``name`` on ``threads`` threads and write their files;
        returns the number of tilt images extracted."""
        numba.set_num_threads(threads)
        n_images, n_skipped = _extract_tomogram(self.opts, self.sizes, threads, self.tomograms.by_name[name],
                                                self.particles, self.kept[name], slice(start, stop), self.roots,
                                                self.aberrations, sums)
        self.n_skipped += n_skipped
        return n_images

    def write_particle_set(self, n_removed):
        return _write_particle_set(self.opts, self.out_dir, self.sizes, self.files, self.tomograms, self.particles,
                                   self.trajectories, self.kept, self.roots, n_removed)

    def close(self):
        self.tomograms.close()


def _extract_all(run, command, run_batches):
    """Everything an extraction writes into its output folder (which exists)."""
    opts = run.opts
    _write_note(run.out_dir, command or command_line(opts))
    run.select()
    if opts.only_do_unfinished:
        # once, here, before any particle is written: a batch running on a cluster worker must not take another
        # worker's (or another host's) temporaries for those of a killed run
        for folder in sorted({run.out_dir} | {os.path.dirname(root) for root in run.roots.values()}):
            remove_stale_temporaries(folder)
    kept = run.kept
    n_removed = len(run.particles) - sum(len(g.rows) for g in kept.values())
    if run_batches is None:
        files_out = run.write_particle_set(n_removed)
        sums = Sums(run.sizes.crop) if opts.sum and not opts.stack2d else None
        n_images = 0
        for name, geom in kept.items():
            if len(geom.rows):
                n_images += run.extract(name, 0, len(geom.rows), run.threads, sums)
                # one tilt series mapped at a time, as RELION holds one: its pages count in the RSS while mapped
                run.tomograms.by_name[name].close()
                _release_freed_memory()
        if sums is not None:
            sums.write(opts, run.out_dir, opts.bin * run.tomograms.tomograms[0].pixel_size)
    else:
        n_images = run_batches(run)
        files_out = run.write_particle_set(n_removed)
    n_kept = sum(len(g.rows) for g in kept.values())
    dropped = "".join(f", {n} dropped ({why})" for why, n in run.dropped.items() if n)
    skipped = f", {run.n_skipped} skipped (finished earlier)" if run.n_skipped else ""
    done = "written" if run_batches is None else "written or found complete (on the cluster)"
    summary(f"{n_kept - run.n_skipped} particles {done} ({n_images} tilt images){skipped}{dropped}",
            n_kept - run.n_skipped, "particles", run.start_time)
    return ExtractResult(particles_star=files_out[0], optimisation_set=files_out[1],
                         n_particles=n_kept, n_removed=n_removed, n_tilt_images=n_images)


def _write_note(out_dir, words):
    with open(out_dir + "note.txt", "w") as fh:
        fh.write("Command:\n\n" + "".join(w + " " for w in words) + "\n")


def _select_particles(opts, sizes, tomograms, particles, trajectories):
    """The visibility pass of ``writeParticleSet``: per tomogram, the geometry of the particles that are
    visible in at least --min_frames frames (radius bin·crop/2, --max_dose); and the number dropped by each
    rule."""
    radius = opts.bin * sizes.crop / 2.0
    kept, n_nowhere, n_few = {}, 0, 0
    for tomo in tomograms:
        rows = particles.rows_of(tomo.name)
        if not len(rows):
            continue
        geom = particle_geometry(particles, rows, tomo, not opts.dont_apply_offsets or opts.apply_orientations,
                                 radius, opts.max_dose, trajectories)
        n_visible = geom.visible.sum(axis=1)
        keep = n_visible >= max(opts.min_frames, 1)
        n_nowhere += int((n_visible == 0).sum())
        n_few += int(((n_visible > 0) & ~keep).sum())
        for name in ("rows", "positions", "centres", "depth", "visible"):
            setattr(geom, name, getattr(geom, name)[keep])
        kept[tomo.name] = geom
    if n_nowhere:
        warn("One particle was removed because it was too close to the edge in all images." if n_nowhere == 1
             else f"{n_nowhere} particles were removed because they were too close to the edge in all images.")
    if n_few:
        limit = " with a pre-exposure up to --max_dose" if opts.max_dose > 0 else ""
        warn(f"{n_few} particle(s) were removed because they are visible in fewer than --min_frames "
             f"{opts.min_frames} images{limit}.")
    return kept, {"too close to the edge in all images": n_nowhere, "visible in fewer than --min_frames images": n_few}


def _output_roots(out_dir, particles, kept):
    """Output file root of every kept particle (``getOutputFilename``): per-tomogram folders only if the
    first particle's name has no '/'."""
    names = particles.table["rlnTomoParticleName"].astype(str).to_numpy()
    tomo_names = particles.table["rlnTomoName"].to_numpy()
    per_tomogram = "/" not in names[0]
    if not per_tomogram:
        info("Slash found in first particle name: not creating subdirectories for each tomogram")
    roots = {}
    for geom in kept.values():
        for r in geom.rows:
            roots[r] = out_dir + "Subtomograms/" + (f"{tomo_names[r]}/{names[r]}" if per_tomogram else names[r])
    return roots


def _write_particle_set(opts, out_dir, sizes, files, tomograms, particles, trajectories, kept, roots, n_removed):
    """particles.star, optimisation_set.star and (if particles were dropped) motion.star, as
    ``SubtomoProgram::writeParticleSet`` writes them."""
    order = np.concatenate([g.rows for g in kept.values()]) if kept else np.zeros(0, np.int64)
    table = particles.table.iloc[order].reset_index(drop=True)
    geoms = {name: g for name, g in kept.items()}
    if opts.stack2d:
        visible = np.concatenate([g.visible for g in geoms.values()]) if geoms else np.zeros((0, 0), bool)
        table["rlnTomoVisibleFrames"] = [[int(v) for v in row] for row in visible]
    suffix = "_stack2d.mrcs" if opts.stack2d else "_data.mrc"
    table["rlnImageName"] = [roots[r] + suffix for r in order]
    if not opts.stack2d:
        table["rlnCtfImage"] = [roots[r] + "_weights.mrc" for r in order]
    apply_offsets = not opts.dont_apply_offsets or opts.apply_orientations
    if apply_offsets:
        for label in ORIGIN:
            table[label] = 0.0
        centred = []
        for name, g in geoms.items():
            tomo = tomograms.by_name[name]
            centred.append((g.positions - tomo.centre) * particles.particle_pixel_sizes(g.rows)[:, None])
        centred = np.concatenate(centred) if centred else np.zeros((0, 3))
        for k, axis in enumerate("XYZ"):
            table[f"rlnCenteredCoordinate{axis}Angst"] = centred[:, k]
    if opts.apply_orientations:
        full = np.concatenate([particles.subtomogram_matrices(g.rows) @ particles.particle_matrices(g.rows)
                               for g in geoms.values()])
        rot, tilt, psi = matrix_to_euler(full)
        table["rlnTomoSubtomogramRot"], table["rlnTomoSubtomogramTilt"], table["rlnTomoSubtomogramPsi"] = rot, tilt, psi
        table["rlnAngleRot"], table["rlnAngleTilt"], table["rlnAnglePsi"] = 0.0, 0.0, 0.0
    table = table.drop(columns=[c for c in UNCENTRED if c in table.columns])
    if opts.stack2d and "rlnCtfImage" in table.columns:
        table = table.drop(columns=["rlnCtfImage"])

    optics = particles.optics.copy()
    optics["rlnCtfDataAreCtfPremultiplied"] = int(not opts.no_ctf) if opts.stack2d else 1
    optics["rlnImageDimensionality"] = 2 if opts.stack2d else 3
    optics["rlnTomoSubtomogramBinning"] = float(opts.bin)
    optics["rlnImagePixelSize"] = opts.bin * optics["rlnTomoTiltSeriesPixelSize"].astype(float)
    optics["rlnImageSize"] = sizes.crop
    general = dict(particles.general)
    general["rlnTomoSubTomosAre2DStacks"] = int(opts.stack2d)

    particles_star = out_dir + "particles.star"
    write_star(particles_star, {"general": general, "optics": optics, "particles": table})
    out_files = OptimisationSet(particles=particles_star, tomograms=files.tomograms,
                                trajectories=files.trajectories, manifolds=files.manifolds)
    if trajectories is not None and n_removed:
        motion = out_dir + "motion.star"
        blocks = {"general": {"rlnParticleNumber": len(order)}}
        for name in table["rlnTomoParticleName"]:
            blocks[str(name)] = trajectories.table(str(name))
        write_star(motion, blocks)
        out_files.trajectories = motion
    opt_path = out_dir + "optimisation_set.star"
    write_star(opt_path, {"": out_files.to_star_block()})
    if len(order) == 0:
        warn("No particle is left: nothing to extract.")
    return particles_star, opt_path


def _extract_tomogram(opts, sizes, threads, tomo, particles, geom, part, roots, aberrations, sums=None):
    """``processTomograms`` for the kept particles ``part`` (a slice) of one tomogram: returns the number of
    tilt images extracted and the number of particles skipped as finished (``--only_do_unfinished``)."""
    suffix = "_stack2d.mrcs" if opts.stack2d else "_data.mrc"
    rows = geom.rows[part]
    outputs = output_suffixes(opts)
    folders = sorted({os.path.dirname(roots[r]) for r in rows})
    todo = np.array([not (opts.only_do_unfinished and all(os.path.exists(roots[r] + x) for x in outputs))
                     for r in rows], bool)
    selection = part.start + np.flatnonzero(todo)
    if opts.only_do_unfinished and len(selection) < len(rows):
        info(f"{tomo.name}: skipping {len(rows) - len(selection)} particles whose output files "
             f"({', '.join(outputs)}) all exist")
    for folder in folders:
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as e:
            raise RelionPyError(f"cannot create the output folder {folder}: {e.strerror or e}") from None
    job = _TomogramJob(opts, sizes, threads, tomo, particles, geom, selection, aberrations)
    files = [roots[geom.rows[k]] for k in selection]
    writer = BackgroundWriter()
    try:
        _write_tomogram(opts, sizes, threads, job, selection, files, suffix, sums, writer, tomo.name)
    except NonFiniteFrame as e:
        raise e.naming(tomo) from None
    finally:
        writer.close()
    return int(job.bounds[-1]), len(rows) - len(selection)


def _write_tomogram(opts, sizes, threads, job, selection, files, suffix, sums, writer, name):
    """Extract the selected particles of one tomogram on ``threads`` workers and hand their files to ``writer``."""
    with Progress(f"Extracting {name}", len(selection), kernels=extraction) as bar:
        for k, result in enumerate(map_in_order(job, len(selection), threads)):
            if opts.stack2d:
                writer.submit(write_mrc, files[k] + suffix, result, job.pixel_size, stack=True,
                              float16=opts.float16)
            else:
                if sums is not None:
                    sums.add(*result)
                if not opts.no_writing:
                    writer.submit(write_volume_outputs, opts, files[k], *result, sizes.crop, job.pixel_size)
            bar.advance(1)
            count_finished()
            check_abort(opts.pipeline_control)


class _TomogramJob:
    """What every particle of one tomogram shares (weights, geometry of all its tilt items); calling it with
    k extracts the k-th particle of ``selection`` on the calling thread and returns its cropped 2-D stack
    (``--stack2d``) or its (data, CTF² + multiplicity) volumes."""

    def __init__(self, opts, sizes, threads, tomo, particles, geom, selection, aberrations):
        self.opts, self.sizes, self.tomo = opts, sizes, tomo
        # 3-D mode always needs the dose weights: they limit the inserted frequencies (xRanges), even with
        # --no_ctf; the 2-D stacks are divided by bin once more (stack2d's /bin)
        self.weighting = tilt_weighting(tomo, sizes.box, opts.bin, aberrations, not opts.no_ctf, opts.whiten, threads,
                                        cutoff_fraction=None if opts.stack2d else opts.cutoff_fract,
                                        invert_contrast=not opts.no_ic,
                                        post_scale=opts.bin if opts.stack2d else 1.0)
        self.pixel_size = self.weighting.pixel_size         # nominal binned pixel size (CTF, dose, header)
        self.bounds, self.items, self.ctf_params, self.groups = particle_tilt_items(
            tomo, particles, geom, selection, sizes.square, opts.bin, sizes.box)
        # a remote tilt series starts fetching the windows of all these particles, in order
        tomo.images.prefetch(self.items.frame, self.items.origins, sizes.square)
        self.crop = not opts.no_circle_crop or opts.grid_precorr
        if not opts.stack2d:
            a_sub = particles.subtomogram_matrices(geom.rows)
            self.a_full = np.einsum("nij,njk->nik", a_sub, particles.particle_matrices(geom.rows))
            # the frame of the pseudo-subtomograms: A_sub, or A_sub·A_part with --apply_orientations
            self.frame = self.a_full if opts.apply_orientations else a_sub
            nf = np.float32(sizes.box) / (np.float32(sizes.crop) * np.sqrt(np.float32(opts.bin)))
            self.normfft = float(nf) if abs(float(nf) - 1.0) > 1e-4 else 1.0
        self.workspaces = PerThread(lambda: _Workspace(tomo.n_frames, sizes, not opts.stack2d))

    def __call__(self, k):
        opts, sizes = self.opts, self.sizes
        part = slice(self.bounds[k], self.bounds[k + 1])
        items = self.items[part]
        n = len(items.frame)
        ws = self.workspaces.get()
        groups, ctf_params = self.groups[part], self.ctf_params[part]
        if opts.stack2d:
            return extract_stack2d(self.tomo.images, items, self.weighting, groups, ctf_params, ws.square, ws.box,
                                   np.empty((n, sizes.crop, sizes.crop), np.float32), opts.circle_precrop,
                                   sizes.boundary, not opts.no_circle_crop, opts.grid_precorr)
        # the masked images need a decentred inverse FFT; without a mask the insertion wants D itself
        data, weights = extract_spectra(self.tomo.images, items, self.weighting, groups, ctf_params, ws.square,
                                        opts.circle_precrop, self.crop, ws.box.spectra[:n], ws.weights[:n])
        if self.crop:
            images = ws.box.backward(n)
            crop_circle(images, sizes.boundary, 5.0, not opts.no_circle_crop, opts.grid_precorr)
            # RELION re-transforms the masked images (centred FFT: the (-1)^(x+y) is applied at insertion)
            data = ws.box.forward(n)
        return self._volume(items, data, weights, ws)

    def _volume(self, items, data, weights, ws):
        """Forward insertion, decentring, the s2D/(s3D·sqrt(bin)) scale, the inverse 3-D FFT and the optional
        cone weight of one particle: returns (real-space data (s3, s3, s3), ctf_mult (2·s3, s3, s3//2+1))."""
        s3 = self.sizes.crop
        axes = insertion_axes(self.tomo.projections[items.frame, :3, :3], self.frame[items.particle],
                              s3 / float(self.sizes.box))
        _, ctf_mult = insert_slices_forward(data, weights, np.zeros(1, np.int64), np.array([len(items.frame)]),
                                            items.frame, axes, self.weighting.x_ranges, s3, centred_source=self.crop,
                                            decentre=True, scale=self.normfft, workspace=ws.insertion)
        real = ws.volume.backward(1)              # the inserted data volume is the FFT's input buffer
        if self.opts.cone_weight:
            cone_weight(ws.volume.forward(1), ctf_mult, self.a_full[[items.particle[0]]], self.opts.cone_angle,
                        self.opts.cone_sig0)
            real = ws.volume.backward(1)
        # copies: this worker's buffers are reused by its next particle while the writer holds these
        return real[0].copy(), ctf_mult[0].copy()


def _check_memory(opts, sizes, tomograms, threads):
    """Refuse a run whose buffers cannot fit in memory (``runtime.memory``): per tomogram its dose (and noise)
    weights and the circle-mask tables, and per thread a :class:`_Workspace` (the touched part: the unbinned
    squares, one or, gathered, all ``frames``; all ``frames`` binned spectra in 3-D) and the results waiting for
    the writer."""
    sq, box, crop = sizes.square, sizes.box, sizes.crop
    frames, squares = tomograms.square_buffers()
    shared = (frames * half_spectrum_bytes((box, box), 4 * (1 + opts.whiten))
              + CIRCLE_TABLE_BYTES * (sq * sq * opts.circle_precrop + box * box))
    square = squares * real_fft_bytes((sq, sq))
    if opts.stack2d:
        per_thread = square + real_fft_bytes((box, box)) + AHEAD * frames * crop * crop * 4
    else:
        # the volume's FFT, its CTF² + multiplicity and the interleaved accumulator; the result copies in flight
        volume = real_fft_bytes((crop,) * 3) + half_spectrum_bytes((crop,) * 3, 8 + 16)
        result = real_fft_bytes((crop,) * 3)
        per_thread = (square + frames * (real_fft_bytes((box, box)) + half_spectrum_bytes((box, box), 4)) + volume
                      + AHEAD * result)
    check_memory(shared + threads * per_thread,
                 f"the buffers of --b {opts.b} (--bin {opts.bin:g}, --crop {crop}), {threads} thread(s) and {frames} "
                 "tilt images",
                 "use a smaller box or fewer threads (--j)")


class _Workspace:
    """One worker's buffers for the (at most fc) tilt images of one particle."""

    def __init__(self, frames, sizes, three_d):
        # unbinned squares → their spectra, of which Fourier cropping keeps s2D//2+1 columns (all frames: a
        # reader that cannot hand over its pixels cuts all the windows first)
        self.square = RealFFT(frames, (sizes.square, sizes.square), columns=sizes.box // 2 + 1, inverse=False)
        # weighted spectra ↔ binned images: the 2-D stacks finish one tilt image at a time
        self.box = RealFFT(frames if three_d else 1, (sizes.box, sizes.box))
        if three_d:                                                    # one pseudo-subtomogram
            self.weights = np.empty((frames, sizes.box, sizes.box // 2 + 1), np.float32)
            self.volume = RealFFT(1, (sizes.crop,) * 3)
            self.insertion = InsertionWorkspace(1, sizes.crop, data=self.volume.spectra)


def insertion_axes(rotations, frames, scale):
    """u, v (rows 0 and 1) of ``(P_f · A) · relative_box_scale`` per item, as RELION's t4Matrix product
    evaluates them (left-to-right sums over k). rotations: (n, 3, 3) R_f; frames: (n, 3, 3) A. → (n, 2, 3)."""
    out = np.empty((len(rotations), 2, 3))
    for i in range(2):
        for j in range(3):
            out[:, i, j] = (rotations[:, i, 0] * frames[:, 0, j] + rotations[:, i, 1] * frames[:, 1, j]
                            + rotations[:, i, 2] * frames[:, 2, j]) * scale
    return out
