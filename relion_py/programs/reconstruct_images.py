"""relion_reconstruct: reconstruct a map from particle images (2-D projections or 3-D subtomograms) with
known orientations.

Mirrors ``Reconstructor`` (src/reconstructor.cpp: ``read``, ``initialise``, ``backprojectOneParticle``,
``reconstruct``) on top of RELION's classic ``BackProjector`` (``relion_py.kernels.classic.backproject``).
Spec: reconstruction.md, part B.

Inputs it reads: RELION 3.1+ particle STAR files (optics + particles tables, ``N@stack.mrcs`` 2-D images,
per-image CTF and rlnOriginX/YAngst), RELION 5 pseudo-subtomograms (``relion_tomo_subtomo`` 3-D output,
rlnCtfImage weight volumes), STAR files from other tools with 3-D boxes (pyTME, with an optics table;
Warp 3-D exports without one, converted as RELION's ``StarConverter`` does).
"""
import math
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numba
import numpy as np
import scipy.fft

from ..runtime.errors import RelionPyError
from ..io.output_folder import refuse_overwriting_inputs
from ..tomography.geometry import euler_to_matrix
from ..io.mrc import mmap_mrc, relion_float16_to_float32, write_mrc
from ..io.star import read_star
from ..io.tilt_images import split_image_name
from ..kernels.classic import backproject as bp
from ..kernels.ctf import astigmatism_form, ctf_constants
from ..runtime.log import info, warn
from ..runtime.options import check_supported, option
from ..runtime.progress import Progress
from ..tomography.symmetry import point_group_operators

GEN = "General options"
CTF = "CTF options"
EWALD = "Ewald-sphere correction options"
HELIX = "Helical options"
SUBTOMO = "Subtomogram averaging"
EXPERT = "Expert options"
NOT_YET = "not implemented in relion_py yet"
DEBUG = "a RELION developer/debugging option, not ported"

#: Optics columns whose effect (phase demodulation, MTF division, magnification, symmetric aberrations) is
#: not ported; a particle file that uses them is refused instead of giving a different map.
UNSUPPORTED_OPTICS = {
    "rlnOddZernike": "antisymmetric aberrations (phase demodulation)",
    "rlnEvenZernike": "symmetric aberrations in the CTF",
    "rlnBeamTiltX": "beam tilt (phase demodulation)",
    "rlnBeamTiltY": "beam tilt (phase demodulation)",
    "rlnMtfFileName": "division by the detector MTF",
    "rlnMagMat00": "anisotropic magnification",
    "rlnMagMat01": "anisotropic magnification",
    "rlnMagMat10": "anisotropic magnification",
    "rlnMagMat11": "anisotropic magnification",
}


@dataclass
class ReconstructImagesOptions:
    """Options of relion_reconstruct (same names; ``class_`` is --class, ``three_d_rot`` is --3d_rot)."""

    i: str = option("", "Input STAR file with the projection images and their orientations", GEN)
    o: str = option("relion.mrc", "Name for output reconstruction (its folder must exist, as for RELION)",
                    GEN)
    sym: str = option("c1", "Symmetry group", GEN)
    maxres: float = option(-1.0, "Maximum resolution (in Angstrom) to consider in Fourier space "
                           "(-1: Nyquist)", GEN)
    pad: float = option(2.0, "Padding factor (oversampling of the Fourier grid, >= 1)", GEN)
    img: str = option("", "Optional: image path prefix (replaces the folder of every rlnImageName)", GEN)
    subset: int = option(-1, "Subset of images to consider (1: only half1; 2: only half2; other: all)", GEN)
    class_: int = option(-1, "Consider only this class (-1: use all classes)", GEN, metavar="CLASS", flag="class")
    angpix: float = option(-1.0, "Pixel size in the reconstruction (-1: take it from the first optics group)",
                           GEN)
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
    helical_rise: float = option(0.0, "Helical rise (in Angstroms)", HELIX)
    helical_twist: float = option(0.0, "Helical twist (in degrees, + for right-handedness)", HELIX)
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
    blob_r: float = option(1.9, "Radius of blob for gridding interpolation", EXPERT)
    blob_m: int = option(0, "Order of blob for gridding interpolation", EXPERT)
    blob_a: float = option(15.0, "Alpha-value of blob for gridding interpolation", EXPERT)
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


@dataclass
class ReconstructResult:
    """What a reconstruction run produced."""

    output: str
    n_particles: int      # particles inserted
    box: int
    pixel_size: float
    volume: np.ndarray    # (box, box, box) float64, as written (in float32)


# --------------------------------------------------------------------------------------------------------
# Reading the particle file
# --------------------------------------------------------------------------------------------------------

_CTF_LABELS = (("rlnVoltage", 200.0), ("rlnDefocusU", 0.0), ("rlnDefocusV", None), ("rlnDefocusAngle", 0.0),
               ("rlnSphericalAberration", 0.0), ("rlnCtfBfactor", 0.0), ("rlnCtfScalefactor", 1.0),
               ("rlnAmplitudeContrast", 0.0), ("rlnPhaseShift", 0.0))


@dataclass
class ParticleData:
    """Everything per particle that the insertion needs (selected particles only, in STAR order)."""

    names: list            # image names (N@path or path)
    ctf_names: list        # rlnCtfImage per particle (or None)
    angles: np.ndarray     # (n, 3) rot, tilt, psi (deg)
    groups: np.ndarray     # (n,) optics group index
    shifts_px: np.ndarray  # (n, 3) translation in pixels of the particle's own group
    ctf: np.ndarray        # (n, 9) CTF parameters in _CTF_LABELS order (2-D data)
    fom: np.ndarray        # (n,) figure of merit (1 without --fom_weighting)
    box: np.ndarray        # (n_groups,) box size of each group
    pixel: np.ndarray      # (n_groups,) pixel size of each group
    premultiplied: np.ndarray  # (n_groups,) bool


def _column(df, label, default=None):
    return df[label].to_numpy() if label in df.columns else default


def _star_version(path):
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096).decode("utf-8", "replace")
    except OSError:
        return None
    m = re.search(r"^\s*#\s*version\s+(\d+)", head, re.M)
    return int(m.group(1)) if m else None


def _tables(path):
    """(general dict, optics DataFrame or None, particles DataFrame) as ``ObservationModel::loadSafely``."""
    blocks = read_star(path)
    general = blocks.get("general") if isinstance(blocks.get("general"), dict) else {}
    optics = blocks.get("optics")
    if optics is not None and (not hasattr(optics, "columns") or len(optics) == 0):
        optics = None
    particles = blocks.get("particles")
    if optics is None:
        # a RELION 3.0-style (or other tools') file: the first table holds the particles
        particles = next((b for k, b in blocks.items() if hasattr(b, "columns") and k != "optics"), None)
    if particles is None or not hasattr(particles, "columns"):
        raise RelionPyError(f"{path} has no particles table (data_particles)")
    return general, optics, particles


def image_path(name, img_dir=""):
    """(file, 0-based slice or None) of an rlnImageName; ``img_dir`` replaces its folder (--img)."""
    path, index = split_image_name(name)
    if img_dir:
        path = os.path.join(img_dir, os.path.basename(path))
    return path, (index if "@" in str(name) else None)


class ImageReader:
    """Reads particle images as float64 (RELION's ``Image<RFLOAT>::read``): ``N@stack.mrcs`` slices through
    a per-file memory map (kept open), plain files whole. Safe to call from several threads."""

    def __init__(self, img_dir=""):
        self.img_dir = img_dir
        self._maps = {}
        self._lock = threading.Lock()

    #: Stack files kept memory-mapped at a time (each holds a file descriptor; particles usually come
    #: grouped by stack, so the most recently opened ones are kept).
    MAX_OPEN = 64

    def _map(self, path):
        with self._lock:
            m = self._maps.pop(path, None)
            if m is None:
                m = _mmap(path)
                while len(self._maps) >= self.MAX_OPEN:
                    self._maps.pop(next(iter(self._maps)))
            self._maps[path] = m            # most recently used last
        return m

    def shape(self, name):
        """(ndim, size) of an image from its header."""
        path, index = image_path(name, self.img_dir)
        m = self._map(path) if index is not None else _mmap(path)
        return (2, m.shape[1:]) if index is not None or m.shape[0] == 1 else (3, m.shape)

    def read(self, name):
        path, index = image_path(name, self.img_dir)
        if index is not None:
            m = self._map(path)
            if index >= m.shape[0]:
                raise RelionPyError(f"image {name}: {path} holds only {m.shape[0]} images")
            data = m[index]
        else:
            data = _mmap(path)
            if data.shape[0] == 1:
                data = data[0]
        if data.dtype == np.float16:
            data = relion_float16_to_float32(data)
        return data.astype(np.float64)

    def read_raw(self, name):
        """A whole file (a CTF volume) as float32 or float64, unconverted when possible."""
        path, _ = image_path(name)
        data = _mmap(path)
        if data.dtype == np.float16:
            data = relion_float16_to_float32(data)
        return data


def _mmap(path):
    if not os.path.exists(path):
        raise RelionPyError(f"image file {path} does not exist (paths in the STAR file are relative to the "
                            "folder you run from)")
    return mmap_mrc(path)


def _optics_from_table(optics, particles, path):
    """Per-group box, pixel size, premultiplied flag and the row of each particle's group."""
    for label, what in UNSUPPORTED_OPTICS.items():
        for table in (optics, particles):
            if label in table.columns:
                values = table[label]
                if label.startswith("rlnBeamTilt") and not np.any(np.asarray(values, float) != 0):
                    continue
                raise RelionPyError(f"{path}: _{label} ({what}) is not supported by relion_py yet")
    for label in ("rlnVoltage", "rlnSphericalAberration"):
        if label not in optics.columns:
            raise RelionPyError(f"{path}: the optics table lacks _{label} (RELION needs rlnVoltage, "
                                "rlnSphericalAberration and a pixel size)")
    px = None
    for label in ("rlnImagePixelSize", "rlnMicrographPixelSize", "rlnMicrographOriginalPixelSize",
                  "rlnTomoTiltSeriesPixelSize"):
        if label in optics.columns:
            px = optics[label].to_numpy(np.float64)
            break
    if px is None:
        raise RelionPyError(f"{path}: the optics table has no pixel size (rlnImagePixelSize)")
    numbers = _column(optics, "rlnOpticsGroup")
    numbers = np.arange(1, len(optics) + 1) if numbers is None else numbers.astype(np.int64)
    if "rlnOpticsGroup" in particles.columns:
        og = particles["rlnOpticsGroup"].to_numpy(np.int64)
    elif len(optics) == 1:
        og = np.full(len(particles), numbers[0])
    else:
        raise RelionPyError(f"{path}: the particles table has no _rlnOpticsGroup column")
    lookup = {int(g): r for r, g in enumerate(numbers)}
    missing = sorted({int(g) for g in og} - set(lookup))
    if missing:
        raise RelionPyError(f"The following optics groups were not defined in {path}: "
                            + ", ".join(map(str, missing)))
    rows = np.array([lookup[int(g)] for g in og], np.int64)
    box = _column(optics, "rlnImageSize")
    box = None if box is None else box.astype(np.int64)
    premult = _column(optics, "rlnCtfDataAreCtfPremultiplied")
    premult = np.zeros(len(optics), bool) if premult is None else premult.astype(bool)
    return rows, px, box, premult


def _convert_legacy(particles, path, reader):
    """Optics groups of a particle table without optics table, as RELION's
    ``StarConverter::convert_3p0_particlesTo_3p1`` builds them (one group per distinct combination of the
    per-particle optics values), or None when RELION would not convert it (then it reads the table as is:
    ``do_ignore_optics``)."""
    needed = ("rlnVoltage", "rlnSphericalAberration", "rlnDetectorPixelSize", "rlnMagnification")
    if not all(label in particles.columns for label in needed) or _star_version(path) == 50001:
        return None
    labels = ("rlnAmplitudeContrast", "rlnBeamTiltX", "rlnBeamTiltY", "rlnSphericalAberration", "rlnVoltage",
              "rlnDetectorPixelSize", "rlnMagnification")
    labels = [lab for lab in labels if lab in particles.columns]
    values = np.stack([particles[lab].to_numpy(np.float64) for lab in labels], axis=1)
    combos, rows = [], np.empty(len(particles), np.int64)
    for p, v in enumerate(map(tuple, values)):
        if v not in combos:
            combos.append(v)
        rows[p] = combos.index(v)
    combos = np.array(combos)
    for lab in ("rlnBeamTiltX", "rlnBeamTiltY"):
        if lab in labels and np.any(combos[:, labels.index(lab)] != 0):
            raise RelionPyError(f"{path}: _{lab} (beam tilt, phase demodulation) is not supported by "
                                "relion_py yet")
    dstep = combos[:, labels.index("rlnDetectorPixelSize")]
    mag = combos[:, labels.index("rlnMagnification")]
    px = 10000 * dstep / mag
    names = particles["rlnImageName"].to_numpy()
    box = np.zeros(len(combos), np.int64)
    for g in range(len(combos)):
        first = int(np.argmax(rows == g))
        box[g] = reader.shape(names[first])[1][-1]
    return rows, px, box, np.zeros(len(combos), bool)


def load_particles(opts, reader):
    """Read the particle file as ``Reconstructor::initialise`` does. Returns (ParticleData of the selected
    particles, output box N, pixel size, data dimensionality, number of particles in the file)."""
    path = opts.i
    if not path:
        raise RelionPyError("no input particles: give --i particles.star")
    general, optics, particles = _tables(path)
    if bool(int(general.get("rlnTomoSubTomosAre2DStacks", 0) or 0)):
        raise RelionPyError("reconstruct does not yet work with 2D subtomogram stacks "
                            f"({path} holds relion_tomo_subtomo --stack2d output; reconstruct it with "
                            "relion-py-reconstruct --i <optimisation_set> (tilt-series mode), or extract "
                            "3-D pseudo-subtomograms)")
    if "rlnImageName" not in particles.columns:
        raise RelionPyError(f"{path}: the particles table has no _rlnImageName column")
    n_all = len(particles)
    if n_all == 0:
        raise RelionPyError(f"{path} contains no particles")
    names = [str(v) for v in particles["rlnImageName"]]

    ignore_optics = False
    if optics is not None:
        rows, px_g, box_g, premult = _optics_from_table(optics, particles, path)
    else:
        warn(f"{path} has no optics table (a file from RELION 3.0 or another program): reading it as "
             "RELION 5 does")
        converted = _convert_legacy(particles, path, reader)
        if converted is None:
            ignore_optics = True
        else:
            rows, px_g, box_g, premult = converted

    # output box and data dimensionality from the first image (RELION reads its header)
    ndim0, shape0 = reader.shape(names[0])
    n_box = int(shape0[-1])
    if opts.newbox > 0 and not ignore_optics:
        n_box = opts.newbox
    if opts.three_d_rot:
        data_dim = 3
    elif ignore_optics or optics is None:
        data_dim = ndim0
    elif "rlnImageDimensionality" in optics.columns:
        data_dim = int(optics["rlnImageDimensionality"].iloc[0])
    else:
        data_dim = ndim0          # RELION would use 2; the images tell
    if data_dim not in (2, 3):
        raise RelionPyError(f"{path}: image dimensionality {data_dim} (expected 2 or 3)")

    # pixel size
    if opts.angpix > 0:
        angpix = float(opts.angpix)
    elif ignore_optics:
        if "rlnMagnification" in particles.columns and "rlnDetectorPixelSize" in particles.columns:
            angpix = 10000. * float(particles["rlnDetectorPixelSize"].iloc[0]) / \
                float(particles["rlnMagnification"].iloc[0])
        else:
            raise RelionPyError("cannot find pixel size in input STAR file, provide it using --angpix")
    else:
        angpix = float(px_g[0])
    if ignore_optics:
        rows = np.zeros(n_all, np.int64)
        px_g = np.array([angpix])
        box_g = np.array([n_box], np.int64)
        premult = np.zeros(1, bool)
    if box_g is None:             # optics table without rlnImageSize: RELION errors, the images tell
        box_g = np.zeros(len(px_g), np.int64)
        for g in range(len(px_g)):
            if np.any(rows == g):
                box_g[g] = reader.shape(names[int(np.argmax(rows == g))])[1][-1]

    # selection
    keep = np.ones(n_all, bool)
    if opts.subset in (1, 2):
        if "rlnRandomSubset" not in particles.columns:
            raise RelionPyError("The rlnRandomSubset column is missing in the input STAR file.")
        keep &= particles["rlnRandomSubset"].to_numpy(np.int64) == opts.subset
    if opts.class_ >= 0:
        if "rlnClassNumber" not in particles.columns:
            raise RelionPyError("The rlnClassNumber column is missing in the input STAR file.")
        keep &= particles["rlnClassNumber"].to_numpy(np.int64) == opts.class_
    sel = np.flatnonzero(keep)
    if len(sel) == 0:
        raise RelionPyError(f"no particle of {path} is selected (--subset {opts.subset}, "
                            f"--class {opts.class_})")

    for label in ("rlnAngleRot", "rlnAngleTilt"):
        if label not in particles.columns:
            raise RelionPyError(f"{path}: the particles table has no _{label} column (orientations are "
                                "needed)")
    angles = np.stack([particles["rlnAngleRot"].to_numpy(np.float64),
                       particles["rlnAngleTilt"].to_numpy(np.float64),
                       _column(particles, "rlnAnglePsi", np.zeros(n_all)).astype(np.float64)], axis=1)

    # translations (Å → px of the particle's group)
    shifts = np.zeros((n_all, 3))
    legacy_px = optics is None and not ignore_optics
    for a, axis in enumerate("XYZ"):
        if a == 2 and data_dim != 3:
            continue
        if legacy_px and f"rlnOrigin{axis}" in particles.columns:
            shifts[:, a] = particles[f"rlnOrigin{axis}"].to_numpy(np.float64) * px_g[rows]
        elif f"rlnOrigin{axis}Angst" in particles.columns:
            shifts[:, a] = particles[f"rlnOrigin{axis}Angst"].to_numpy(np.float64)
    shifts /= px_g[rows][:, None]
    if ignore_optics and any(f"rlnOrigin{a}" in particles.columns for a in "XYZ"):
        pix = np.concatenate([particles[f"rlnOrigin{a}"].to_numpy(np.float64) for a in "XYZ"
                              if f"rlnOrigin{a}" in particles.columns])
        if np.any(pix != 0):
            warn("rlnOriginX/Y/Z (pixels) are ignored, as RELION ignores them in a STAR file without optics "
                 "table that it cannot convert; convert the file (relion_convert_star) to apply them")

    # CTF parameters: particle row, else optics row, else RELION's default (CTF::readByGroup)
    ctf = np.empty((n_all, len(_CTF_LABELS)))
    for c, (label, default) in enumerate(_CTF_LABELS):
        if label in particles.columns:
            ctf[:, c] = particles[label].to_numpy(np.float64)
        elif optics is not None and label in optics.columns:
            ctf[:, c] = optics[label].to_numpy(np.float64)[rows]
        elif default is None:         # DefocusV defaults to DefocusU
            ctf[:, c] = ctf[:, 1]
        else:
            ctf[:, c] = default
    fom = np.ones(n_all)
    if opts.fom_weighting:
        if "rlnParticleFigureOfMerit" not in particles.columns:
            raise RelionPyError("--fom_weighting needs the _rlnParticleFigureOfMerit column")
        fom = particles["rlnParticleFigureOfMerit"].to_numpy(np.float64)
    ctf_names = [str(v) for v in particles["rlnCtfImage"]] if "rlnCtfImage" in particles.columns else None
    if opts.ctf and data_dim == 3 and ctf_names is None:
        raise RelionPyError("cannot find rlnCtfImage for 3D CTF correction! (give the weight volumes, or "
                            "leave out --ctf)")
    data = ParticleData(names=[names[p] for p in sel],
                        ctf_names=[ctf_names[p] for p in sel] if ctf_names is not None else None,
                        angles=angles[sel], groups=rows[sel], shifts_px=shifts[sel], ctf=ctf[sel],
                        fom=fom[sel],
                        box=np.asarray(box_g, np.int64), pixel=np.asarray(px_g, np.float64),
                        premultiplied=np.asarray(premult, bool))
    return data, n_box, angpix, data_dim, n_all


# --------------------------------------------------------------------------------------------------------
# Grid set-up (float32 padding factor, as RELION's Projector stores it)
# --------------------------------------------------------------------------------------------------------

@dataclass
class Grid:
    """Sizes of the padded Fourier grid (``Projector::initialiseData``) and RELION's derived integers."""

    ori_size: int
    pf32: np.float32
    r_max: int
    P: int
    pad: int
    max_r2: int
    min_r2_nn: int          # 2-D insertion
    r_max_ref_2: int        # 3-D insertion
    r_min_nn_ref_2: int     # 3-D insertion
    round_max_r2: int

    @property
    def pf(self):
        return float(self.pf32)

    @classmethod
    def create(cls, ori_size, pad, r_max, r_min_nn):
        pf32 = np.float32(pad)
        f = np.float32
        P = bp.relion_round(float(f(r_max) * pf32))
        r_max_ref = int(float(f(r_max) * pf32))
        return cls(ori_size=ori_size, pf32=pf32, r_max=r_max, P=P, pad=2 * (P + 1) + 1, max_r2=P * P,
                   min_r2_nn=bp.relion_round(float(f(r_min_nn) * pf32)) ** 2,
                   r_max_ref_2=r_max_ref * r_max_ref,
                   r_min_nn_ref_2=int(float(f(r_min_nn * r_min_nn) * pf32 * pf32)),
                   round_max_r2=bp.relion_round(float(f(r_max) * pf32 * f(r_max) * pf32)))

    def accumulator(self):
        return bp.new_accumulator(self.pad)


# --------------------------------------------------------------------------------------------------------
# Insertion of all particles
# --------------------------------------------------------------------------------------------------------

class _Inserter:
    """Per-particle work of ``backprojectOneParticle``: read, transform, shift, CTF / weights, insert."""

    def __init__(self, opts, parts, grid, n_box, angpix, data_dim, reader):
        self.opts, self.parts, self.grid, self.reader = opts, parts, grid, reader
        self.data_dim = data_dim
        # A · ρ (applyScaleDifference) then pf · A⁻¹, per particle
        mats = euler_to_matrix(parts.angles[:, 0], parts.angles[:, 1], parts.angles[:, 2])
        ratio = (parts.box * parts.pixel) / (n_box * angpix)
        mats = mats * ratio[parts.groups][:, None, None]
        self.ainv = np.array([bp.inverse_3x3(m) * grid.pf for m in mats]).reshape(-1, 3, 3)
        self._ones = {}
        self._ctf_index = {}

    def ones(self, shape):
        o = self._ones.get(shape)
        if o is None:
            o = self._ones[shape] = np.ones(shape)
        return o

    def prepare(self, p):
        """Image transform and weights of particle p, as ``backprojectOneParticle`` makes them before
        ``set2DFourierTransform``: (f, fctf) on the image's half grid (not yet centred, DC not yet zeroed:
        the insertion does both)."""
        parts, opts = self.parts, self.opts
        g = parts.groups[p]
        img = self.reader.read(parts.names[p])
        n = img.shape[-1]
        want = int(parts.box[g])
        if img.ndim != self.data_dim:
            raise RelionPyError(f"image {parts.names[p]} is {img.ndim}-D but the data are {self.data_dim}-D"
                                + (" (give --3d_rot for 3-D subtomograms)" if img.ndim == 3 else ""))
        if any(s != want for s in img.shape):
            size = "x".join(map(str, img.shape))
            raise RelionPyError(f"mixed box sizes: image {parts.names[p]} is {size} px, but its optics group "
                                f"(and the other images) have {want} px boxes")
        f = scipy.fft.rfftn(img)
        f /= float(img.size)
        t = parts.shifts_px[p]
        if abs(t[0]) > 0. or abs(t[1]) > 0. or abs(t[2]) > 0.:
            bp.shift_fourier(f, n, t[:self.data_dim])
        premult = bool(parts.premultiplied[g])
        if self.data_dim == 2:
            if opts.ctf:
                c = parts.ctf[p]
                if not (0. <= c[7] <= 1.):
                    raise RelionPyError(f"particle {parts.names[p]}: amplitude contrast {c[7]} is not in "
                                        "[0, 1]")
                if abs(c[1]) < 1e-6 and abs(c[2]) < 1e-6 and abs(c[7]) < 1e-6 and abs(c[4]) < 1e-6:
                    raise RelionPyError("CTF initialises to all-zero values (no defocus, Cs or amplitude "
                                        f"contrast for {parts.names[p]}). Was a correct STAR file provided?")
                consts = ctf_constants(c[0], c[4], c[7], c[5], c[8])
                astig = astigmatism_form(c[1], c[2], c[3])
                fctf = bp.ctf_image(n, parts.pixel[g], consts, astig, c[6], opts.ctf_phase_flipped,
                                    opts.only_flip_phases, opts.ctf_intact_first_peak)
                if not premult:
                    f *= fctf
                fctf *= fctf
            else:
                fctf = self.ones(f.shape)
        else:
            if opts.ctf:
                fctf, multi = self.ctf_volume(p, f.shape)
                if not premult:
                    f *= fctf
                if multi is not None:
                    f *= multi
                    fctf = fctf * multi if not opts.ctf3d_not_squared else fctf * (fctf * multi)
                elif opts.ctf3d_not_squared:
                    fctf = fctf * fctf
            else:
                fctf = self.ones(f.shape)
        if opts.fom_weighting:
            f *= parts.fom[p]
            fctf = fctf * parts.fom[p]
        return f, fctf

    def count(self, p, f, fctf, buf):
        g, nn = self.grid, self.opts.NN
        if f.ndim == 2:
            return buf.count_2d(f, fctf, self.ainv[p], g.max_r2, g.min_r2_nn, nn)
        return buf.count_3d(f, fctf, self.ainv[p], g.r_max_ref_2, g.r_min_nn_ref_2, nn)

    def fill(self, p, f, fctf, buf, starts):
        g, nn = self.grid, self.opts.NN
        if f.ndim == 2:
            buf.fill_2d(starts, f, fctf, self.ainv[p], g.max_r2, g.min_r2_nn, nn)
        else:
            buf.fill_3d(starts, f, fctf, self.ainv[p], g.r_max_ref_2, g.r_min_nn_ref_2, nn)

    def insert(self, p, f, fctf, acc):
        """Direct insertion of one particle (for an image too large for the entry buffer)."""
        g, nn = self.grid, self.opts.NN
        if f.ndim == 2:
            bp.backproject_2d_to_3d(acc, f, fctf, self.ainv[p], g.max_r2, g.min_r2_nn, nn=nn,
                                    center_sign=True, zero_dc=True)
        else:
            bp.backrotate_3d(acc, f, fctf, self.ainv[p], g.r_max_ref_2, g.r_min_nn_ref_2, nn=nn,
                             center_sign=True, zero_dc=True)

    def ctf_volume(self, p, shape):
        """The 3-D CTF weights (and multiplicities) on the data's half grid, from rlnCtfImage (the three
        layouts of ``backprojectOneParticle``)."""
        name = self.parts.ctf_names[p]
        vol = self.reader.read_raw(name)
        n = shape[0]
        zs, ys, xs = vol.shape
        if xs == ys:                                 # full centred cube: Fctf(k) = Ictf(-k)
            if vol.shape != (n, n, n):
                raise RelionPyError(f"CTF volume {name} is {xs}x{ys}x{zs}, but the data are {n}^3")
            idx = self._ctf_index.get(("cube", n))
            if idx is None:
                q = np.arange(n)
                q = np.where(q < n // 2 + 1, q, q - n)
                c = n // 2
                idx = self._ctf_index[("cube", n)] = ((-q + c)[:, None, None], (-q + c)[None, :, None],
                                                      (-np.arange(n // 2 + 1) + c)[None, None, :])
            return vol[idx].astype(np.float64), None
        if xs != ys // 2 + 1:
            raise RelionPyError(f"3D CTF volume must be either cubical or adhere to FFTW format! ({name} is "
                                f"{xs}x{ys}x{zs})")
        if zs == ys:                                 # half transform: window to the data size
            if ys == n:
                return vol, None
            return bp.window_fourier_transform(np.asarray(vol, np.float64), n), None
        if zs != 2 * ys:
            raise RelionPyError(f"3D CTF volume {name} is {xs}x{ys}x{zs}: neither a half transform nor "
                                "CTF + multiplicity (z = 2y)")
        use_multi = self.opts.normalised_subtomo and not self.opts.skip_subtomo_multi
        key = ("2y", n, ys)
        idx = self._ctf_index.get(key)
        if idx is None:
            q = np.arange(n)
            q = np.where(q < n // 2 + 1, q, q - n)
            jp = np.arange(n // 2 + 1)
            r2 = q[:, None, None] ** 2 + q[None, :, None] ** 2 + jp[None, None, :] ** 2
            # RELION zeroes everything beyond the CTF volume's radius (its corners would be asymmetric)
            inside = r2 <= (xs - 1) ** 2
            kq = np.clip(np.where(q < 0, q + ys, q), 0, ys - 1)
            kz_multi = np.clip(np.where(q < 0, q + zs, q + ys), 0, zs - 1)
            jx = np.minimum(jp, xs - 1)
            idx = self._ctf_index[key] = (inside, kq, kz_multi, jx)
        inside, kq, kz_multi, jx = idx
        if ys == n and xs == n // 2 + 1:
            # the same grid: inside the insertion sphere (radius n/2 = xs - 1) the mask is 1, no copy needed
            return vol[:n], (vol[kz_multi] if use_multi else None)
        ctf = np.where(inside, vol[np.ix_(kq, kq, jx)], 0.)
        multi = np.where(inside, vol[np.ix_(kz_multi, kq, jx)], 0.) if use_multi else None
        return ctf, multi


#: Memory for resolved insertion entries (48 bytes each); ~24 pseudo-subtomograms of 96³ per batch.
ENTRY_BUFFER_BYTES = 256 * 2**20
#: Target size of one slab of the padded grid (its planes should stay in the L2 cache while a batch passes).
SLAB_BYTES = 2**20


def _backproject_all(opts, parts, grid, n_box, angpix, data_dim, reader, threads):
    """Insert every selected particle into one accumulator.

    Particles go through in chunks of ``threads``: read, transform and weigh them in parallel
    (``_Inserter.prepare``), count their entries per slab, reserve buffer room in particle order, resolve
    them in parallel, and when the buffer is full insert the whole batch slab by slab
    (``SlabEntries.insert``). The result does not depend on the number of threads.
    """
    inserter = _Inserter(opts, parts, grid, n_box, angpix, data_dim, reader)
    n = len(parts.names)
    acc = grid.accumulator()
    plane = acc.shape[1] * acc.shape[2] * 24
    buf = bp.SlabEntries(acc.shape[:3], max(2, SLAB_BYTES // plane), ENTRY_BUFFER_BYTES // 48)
    pool = ThreadPoolExecutor(threads) if threads > 1 else None

    def run(func, items):
        if pool is None:
            return [func(*item) for item in items]
        return list(pool.map(lambda item: func(*item), items))

    def prepare(p):
        f, fctf = inserter.prepare(p)
        return p, f, fctf, inserter.count(p, f, fctf, buf)

    try:
        with Progress("Back-projecting", n) as bar:
            for first in range(0, n, threads):
                prepared = run(prepare, [(p,) for p in range(first, min(n, first + threads))])
                todo = []
                for p, f, fctf, counts in prepared:
                    starts = buf.reserve(counts)
                    if starts is None:                       # buffer full: flush the batch
                        run(inserter.fill, todo)
                        todo = []
                        buf.insert(acc)
                        starts = buf.reserve(counts)
                    if starts is None:                       # larger than the whole buffer
                        inserter.insert(p, f, fctf, acc)
                    else:
                        todo.append((p, f, fctf, buf, starts))
                run(inserter.fill, todo)
                bar.advance(len(prepared))
            buf.insert(acc)
    finally:
        if pool is not None:
            pool.shutdown()
    return bp.split_accumulator(acc)


# --------------------------------------------------------------------------------------------------------
# Reconstruction
# --------------------------------------------------------------------------------------------------------

def _read_fsc(path, n_box):
    blocks = read_star(path)
    table = next((b for b in blocks.values() if hasattr(b, "columns") and "rlnSpectralIndex" in b.columns
                  and "rlnGoldStandardFsc" in b.columns), None)
    if table is None:
        raise RelionPyError(f"--fsc {path}: no table with rlnSpectralIndex and rlnGoldStandardFsc")
    fsc = np.zeros(n_box // 2 + 1)
    for idx, val in zip(table["rlnSpectralIndex"].to_numpy(np.int64),
                        table["rlnGoldStandardFsc"].to_numpy(np.float64)):
        if 0 <= idx < len(fsc):
            fsc[idx] = val
    return fsc


def reconstruct_grid(data, weight, grid, opts, data_dim, angpix, workers=1):
    """Symmetrise the padded grid and turn it into the real-space map (``Reconstructor::reconstruct`` →
    ``BackProjector::symmetrise`` and ``BackProjector::reconstruct``). data, weight: the padded grid
    (modified). Returns (N, N, N) float64."""
    n, pf = grid.ori_size, grid.pf
    bp.enforce_hermitian_symmetry(data, weight)
    if opts.nr_helical_asu >= 2:
        bp.apply_helical_symmetry(data, weight, opts.nr_helical_asu, opts.helical_twist,
                                  opts.helical_rise / angpix, grid.max_r2, n, pf)
    ops = point_group_operators(opts.sym)
    if len(ops):
        bp.apply_point_group_symmetry(data, weight, ops, grid.max_r2)
    oversampling = float(grid.pf32 * grid.pf32 * grid.pf32)
    fweight = bp.decenter(weight, grid.max_r2)
    if opts.fsc:
        tau2 = bp.fsc_tau2(weight, _read_fsc(opts.fsc, n), pf, oversampling, grid.max_r2)
        bp.add_map_term(fweight, tau2, pf, oversampling, grid.max_r2)
    pad = grid.pad
    if not opts.dont_skip_gridding or opts.iter <= 0:
        fconv = bp.decenter(data, grid.max_r2)
        bp.radial_floor_divide(fconv, fweight, pf, grid.r_max, grid.round_max_r2)
    else:
        table, sampling = bp.ft_blob_table(opts.blob_r * 2., opts.blob_a, opts.blob_m)
        q = np.arange(pad)
        q = np.where(q < pad // 2 + 1, q, q - pad)
        r2 = q[:, None, None] ** 2 + q[None, :, None] ** 2 + np.arange(pad // 2 + 1)[None, None, :] ** 2
        fnewweight = (r2 < grid.max_r2).astype(np.float64)
        size_pf = float(np.float32(n) * grid.pf32)
        for _ in range(opts.iter):
            fconv = (fnewweight * fweight).astype(np.complex128)
            m = scipy.fft.irfftn(fconv, s=(pad, pad, pad), workers=workers)
            m *= float(pad) ** 3
            bp.blob_multiply(m, table, sampling, size_pf)
            fconv = scipy.fft.rfftn(m, workers=workers)
            fconv /= float(pad) ** 3
            bp.gridding_update(fnewweight, fconv, grid.max_r2)
        fconv = bp.decenter(data, grid.max_r2)
        fconv *= fnewweight
    # windowToOridimRealSpace
    m_size = bp.relion_round(float(grid.pf32 * np.float32(n)))
    m_size += m_size % 2
    g = bp.window_fourier_transform(fconv, m_size)
    bp.center_fft_by_sign(g)
    vol = scipy.fft.irfftn(g, s=(m_size,) * 3, workers=workers)
    vol *= float(m_size) ** 3
    c0 = m_size // 2 - n // 2
    vol = np.ascontiguousarray(vol[c0:c0 + n, c0:c0 + n, c0:c0 + n])
    if data_dim == 3:
        normfft = float(grid.pf32 * grid.pf32 * grid.pf32)
    else:
        normfft = float(grid.pf32 * grid.pf32 * grid.pf32 * np.float32(n))
    vol /= normfft
    bp.soft_mask_outside_map(vol)
    sinc_power = 1 if (opts.NN and opts.r_min_nn == 0) else 2
    bp.gridding_correct(vol, float(np.float32(n) * grid.pf32), sinc_power)
    return vol


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


def reconstruct_images(opts):
    """Run relion_reconstruct with ``opts`` (a :class:`ReconstructImagesOptions`); writes ``opts.o`` and
    returns a :class:`ReconstructResult`."""
    _check_options(opts)
    threads = max(1, int(opts.j))
    reader = ImageReader(opts.img)
    parts, n_box, angpix, data_dim, n_all = load_particles(opts, reader)
    refuse_overwriting_inputs([opts.o], [opts.i, opts.fsc] + sorted(
        {image_path(name, opts.img)[0] for name in parts.names + [c for c in parts.ctf_names or [] if c]}))
    if opts.verb > 0:
        info(f"{len(parts.names)} of {n_all} particles, {data_dim}-D data, box {n_box}, "
             f"pixel size {angpix:g} A")
    r_max = n_box // 2 if opts.maxres < 0 else min(int(math.ceil(n_box * angpix / opts.maxres)), n_box // 2)
    grid = Grid.create(n_box, opts.pad, r_max, opts.r_min_nn)
    old_threads = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        data, weight = _backproject_all(opts, parts, grid, n_box, angpix, data_dim, reader, threads)
        vol = reconstruct_grid(data, weight, grid, opts, data_dim, angpix, workers=threads)
    finally:
        numba.set_num_threads(old_threads)
    write_mrc(opts.o, vol, angpix)
    if opts.verb > 0:
        info(f"Done! Written output map in: {opts.o}")
    return ReconstructResult(output=opts.o, n_particles=len(parts.names), box=n_box, pixel_size=angpix,
                             volume=vol)
