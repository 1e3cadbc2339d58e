"""relion_tomo_subtomo: extract particles from tilt series as 2-D tilt stacks or 3-D pseudo-subtomograms.

Mirrors ``SubtomoProgram`` (src/jaz/tomography/programs/subtomo.cpp): options, the visibility pass and
particles.star (``initialise``, ``writeParticleSet``), then per tomogram the per-particle extraction
(``processTomograms``). Spec: extraction.md.
"""
import os
from dataclasses import dataclass, fields

import numba
import numpy as np
import pandas as pd
import scipy.fft

from ..aberrations import aberration_tables
from ..dose import dose_weights
from ..errors import RelionPyError
from ..geometry import matrix_to_euler
from ..io.mrc import write_mrc
from ..io.star import write_star
from ..kernels.extraction import crop_circle, weight_spectra
from ..log import info, warn
from ..noise import noise_weights
from ..options import check_supported, option
from ..progress import Progress
from ..project.optimisation_set import OptimisationSet
from ..project.particles import ORIGIN, UNCENTRED, ParticleSet, Trajectories
from ..project.tomograms import TomogramSet
from ..tilt_extraction import defocus_per_item, extract_spectra, particle_geometry, tilt_items

IO = "Input and output"
BOX = "Box and binning"
PROC = "Image processing"
SEL = "Particle and frame selection"
OUT3D = "Extra 3-D outputs"
RUN = "Running"
NOT_YET = "not implemented in relion_py yet"
NO_EFFECT = "RELION parses it but it has no effect on extraction"

# Bytes of working memory per extracted tilt image and pixel of the unbinned square (window, spectrum,
# binned spectrum, weights, image); bounds the size of a batch.
BATCH_BYTES = 512 * 2**20


@dataclass
class ExtractOptions:
    """Options of relion_tomo_subtomo (same names; booleans are its switches)."""

    i: str = option("", "Input optimisation set (or a particles STAR file)", IO)
    p: str = option("", "Particles STAR file (overrides the optimisation set's)", IO)
    t: str = option("", "Tomograms STAR file (overrides the optimisation set's)", IO)
    mot: str = option("", "Particle trajectories (motion.star; overrides the optimisation set's)", IO)
    o: str = option(None, "Output directory", IO, required=True)
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
                                      "(implies applying offsets)", SEL, unsupported=NOT_YET)
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
    env: float = option(-1.0, "Envelope sigma", OUT3D, unsupported=NO_EFFECT)
    real_subtomo: bool = option(False, "Extract from reconstructed tomograms and re-project", PROC,
                                unsupported="RELION's classic Projector path is not ported")
    sum: bool = option(False, "Sum all pseudo-subtomograms (debugging)", RUN, unsupported="a RELION debugging option")
    no_writing: bool = option(False, "Do not write per-particle files (debugging, with --sum)", RUN,
                              unsupported="a RELION debugging option")
    diag: bool = option(False, "Diagnostic output", RUN, unsupported=NO_EFFECT)
    pipeline_control: str = option("", "RELION pipeline control directory (RELION_JOB_EXIT_SUCCESS is written there)",
                                   RUN)


@dataclass
class Sizes:
    """Derived box sizes (``SubtomoProgram::run``)."""

    box: int        # s2D
    crop: int       # s3D
    square: int     # s02D, the unbinned extraction square
    boundary: int   # (box - crop) / 2


def derive_sizes(opts):
    """Check the box options and derive the sizes; odd sizes are refused (RELION silently mis-shifts)."""
    box, crop, binning = opts.b, (opts.b if opts.crop == -1 else opts.crop), opts.bin
    if binning <= 0:
        raise RelionPyError(f"--bin must be positive (got {binning})")
    if box is None or box <= 0 or box % 2:
        raise RelionPyError(f"--b must be a positive even number (got {box})")
    if crop <= 0 or crop % 2:
        raise RelionPyError(f"--crop must be a positive even number (got {crop})")
    if crop > box:
        raise RelionPyError(f"--crop ({crop}) must not exceed --b ({box})")
    square = int(binning * box + 0.5)
    if square % 2:
        raise RelionPyError(f"--bin {binning} x --b {box} gives an odd extraction square of {square} px; "
                            "choose sizes whose unbinned square is even")
    if binning != 1.0 and int(square / binning + 0.5) != box:
        raise RelionPyError(f"--bin {binning} cannot Fourier-crop a {square}-px square to --b {box}")
    if opts.min_frames < 0:
        raise RelionPyError("--min_frames must not be negative")
    if opts.j < 1:
        raise RelionPyError("--j must be at least 1")
    return Sizes(box=box, crop=crop, square=square, boundary=(box - crop) // 2)


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


def extract_subtomograms(opts, command=None):
    """Run relion_tomo_subtomo with ``opts`` (an :class:`ExtractOptions`); returns an :class:`ExtractResult`."""
    check_supported(opts)
    if not opts.stack2d:
        raise RelionPyError("3-D pseudo-subtomograms (the default without --stack2d) are not implemented yet; "
                            "use --stack2d")
    sizes = derive_sizes(opts)
    threads = min(opts.j, numba.config.NUMBA_NUM_THREADS)
    numba.set_num_threads(threads)
    out_dir = opts.o if opts.o.endswith("/") else opts.o + "/"
    files = OptimisationSet.from_arguments(opts.i, opts.p, opts.t, opts.mot)
    tomograms = TomogramSet(files.tomograms)
    particles = ParticleSet(files.particles, tomograms)
    trajectories = Trajectories(files.trajectories) if files.trajectories else None
    try:
        os.makedirs(out_dir, exist_ok=True)
        _write_note(out_dir, command or command_line(opts))
        kept = _select_particles(opts, sizes, tomograms, particles, trajectories)
        n_removed = len(particles) - sum(len(g.rows) for g in kept.values())
        if n_removed:
            warn("One particle was removed because it was too close to the edge in all images." if n_removed == 1
                 else f"{n_removed} particles were removed because they were too close to the edge in all images.")
        roots = _output_roots(out_dir, particles, kept)
        files_out = _write_particle_set(opts, out_dir, sizes, files, tomograms, particles, trajectories, kept, roots,
                                        n_removed)
        # QUIRK: aberrations are evaluated once, at binning × the pixel size of the first optics group
        aberrations = aberration_tables(particles.optics, sizes.box, opts.bin * particles.optics_pixel_size[0])
        n_images = 0
        for tomo in tomograms:
            if tomo.name in kept and len(kept[tomo.name].rows):
                n_images += _extract_tomogram(opts, sizes, threads, tomo, particles, kept[tomo.name], roots,
                                              aberrations)
        if opts.pipeline_control:
            open(os.path.join(opts.pipeline_control, "RELION_JOB_EXIT_SUCCESS"), "w").close()
        return ExtractResult(particles_star=files_out[0], optimisation_set=files_out[1],
                             n_particles=sum(len(g.rows) for g in kept.values()), n_removed=n_removed,
                             n_tilt_images=n_images)
    finally:
        tomograms.close()


def _write_note(out_dir, words):
    with open(out_dir + "note.txt", "w") as fh:
        fh.write("Command:\n\n" + "".join(w + " " for w in words) + "\n")


def _select_particles(opts, sizes, tomograms, particles, trajectories):
    """The visibility pass of ``writeParticleSet``: per tomogram, the geometry of the particles that are
    visible in at least --min_frames frames (radius bin·crop/2, --max_dose)."""
    radius = opts.bin * sizes.crop / 2.0
    kept = {}
    for tomo in tomograms:
        rows = particles.rows_of(tomo.name)
        if not len(rows):
            continue
        geom = particle_geometry(particles, rows, tomo, not opts.dont_apply_offsets or opts.apply_orientations,
                                 radius, opts.max_dose, trajectories)
        keep = geom.visible.sum(axis=1) >= max(opts.min_frames, 1)
        for name in ("rows", "positions", "centres", "depth", "visible"):
            setattr(geom, name, getattr(geom, name)[keep])
        kept[tomo.name] = geom
    return kept


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


def _batches(counts, max_items):
    """Split particles (with ``counts`` items each) into consecutive batches of at most ``max_items`` items
    (at least one particle each)."""
    start, total = 0, 0
    for k, c in enumerate(counts):
        if total and total + c > max_items:
            yield start, k
            start, total = k, 0
        total += c
    if start < len(counts):
        yield start, len(counts)


def _extract_tomogram(opts, sizes, threads, tomo, particles, geom, roots, aberrations):
    """``processTomograms`` for one tomogram: returns the number of tilt images extracted."""
    pixel_size = tomo.pixel_size * opts.bin         # nominal binned pixel size (CTF, dose, header)
    do_ctf = not opts.no_ctf
    dose_w = dose_weights(tomo.dose, sizes.box, pixel_size, tomo.bfactor_per_dose) if do_ctf else \
        np.zeros((0, 1, 1), np.float32)
    even_gamma, odd_phase = aberrations
    if not do_ctf:   # the even aberrations act through the CTF only
        even_gamma = np.zeros((0, 1, 1))
    noise_w = noise_weights(tomo.images, sizes.box, opts.bin, threads) if opts.whiten else np.zeros((0, 1, 1), np.float32)
    optics = np.array([tomo.voltage, tomo.cs, tomo.q0])
    groups_of_particle = particles.optics_index[geom.rows]
    suffix = "_stack2d.mrcs" if opts.stack2d else "_data.mrc"
    todo = np.array([not (opts.only_do_unfinished and os.path.exists(roots[r] + suffix)) for r in geom.rows])
    selection = np.flatnonzero(todo)
    counts = geom.visible[selection].sum(axis=1)
    per_item = 4 * sizes.square ** 2 * 3 + 16 * sizes.box ** 2
    max_items = max(1, BATCH_BYTES // per_item)
    for folder in {os.path.dirname(roots[r]) for r in geom.rows}:
        os.makedirs(folder, exist_ok=True)
    n_images = 0
    with Progress(f"Extracting {tomo.name}", len(selection)) as bar:
        for a, b in _batches(counts, max_items):
            sel = selection[a:b]
            items = tilt_items(geom, sel, sizes.square, opts.bin, sizes.box)
            spectra = extract_spectra(tomo.images, items, sizes.square, opts.circle_precrop, threads)
            data, _ = weight_spectra(
                spectra, sizes.box, opts.bin, items.shifts, items.frame, groups_of_particle[items.particle],
                defocus_per_item(tomo, geom, items), optics, pixel_size, 1.0 if opts.no_ic else -1.0, do_ctf,
                dose_w, even_gamma, odd_phase, noise_w, opts.bin if opts.stack2d else 1.0, True)
            del spectra
            images = scipy.fft.irfft2(data, s=(sizes.box, sizes.box), norm="ortho", workers=threads)
            del data
            if not opts.no_circle_crop or opts.grid_precorr:
                crop_circle(images, sizes.boundary, 5.0, not opts.no_circle_crop, opts.grid_precorr)
            lo, hi = sizes.boundary, sizes.box - sizes.boundary
            start = 0
            for k, c in zip(sel, counts[a:b]):
                write_mrc(roots[geom.rows[k]] + suffix, images[start:start + c, lo:hi, lo:hi], pixel_size,
                          stack=True, float16=opts.float16)
                start += c
            n_images += start
            bar.advance(len(sel))
    return n_images
