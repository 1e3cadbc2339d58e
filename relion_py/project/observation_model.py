"""The particle file of relion_reconstruct: optics groups, orientations, translations and CTF parameters of
the selected particles, read as RELION's ``ObservationModel::loadSafely``
(src/jaz/single_particle/obs_model.cpp) and ``Reconstructor::initialise`` (src/reconstructor.cpp) do.

Reads RELION 3.1+ files (optics + particles tables), RELION 5 pseudo-subtomogram files, and particle tables
without optics table (RELION 3.0 or other tools), converted as ``StarConverter::convert_3p0_particlesTo_3p1``
does, or read as they are when RELION would not convert them (``do_ignore_optics``).
"""
import re
from dataclasses import dataclass

import numpy as np

from ..io.star import read_star
from ..runtime.errors import RelionPyError
from ..runtime.log import warn
from ..tomography.geometry import euler_to_matrix
from .tables import column, first_non_finite, first_not_positive

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


_CTF_LABELS = (("rlnVoltage", 200.0), ("rlnDefocusU", 0.0), ("rlnDefocusV", None), ("rlnDefocusAngle", 0.0),
               ("rlnSphericalAberration", 0.0), ("rlnCtfBfactor", 0.0), ("rlnCtfScalefactor", 1.0),
               ("rlnAmplitudeContrast", 0.0), ("rlnPhaseShift", 0.0))


@dataclass
class ParticleData:
    """Everything per particle that the insertion needs (selected particles only, in STAR order)."""

    names: list            # image names (N@path or path)
    ctf_names: list        # rlnCtfImage per particle (or None)
    rotations: np.ndarray  # (n, 3, 3) matrices of the Euler angles rot, tilt, psi (Euler_angles2matrix)
    groups: np.ndarray     # (n,) optics group index
    shifts_px: np.ndarray  # (n, 3) translation in pixels of the particle's own group
    ctf: np.ndarray        # (n, 9) CTF parameters in _CTF_LABELS order (2-D data)
    fom: np.ndarray        # (n,) figure of merit (1 without --fom_weighting)
    box: np.ndarray        # (n_groups,) box size of each group
    pixel: np.ndarray      # (n_groups,) pixel size of each group
    premultiplied: np.ndarray  # (n_groups,) bool


def _star_version(path):
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096).decode("utf-8", "replace")
    except OSError:
        return None
    m = re.search(r"^\s*#\s*version\s+(\d+)", head, re.M)
    return int(m.group(1)) if m else None


def _read_tables(path):
    """(general dict, optics DataFrame or None, particles DataFrame) as ``ObservationModel::loadSafely``."""
    blocks = read_star(path)
    general = blocks.list("general") if blocks.is_list("general") else {}
    optics = blocks["optics"] if blocks.is_loop("optics") and len(blocks["optics"]) else None
    if optics is not None:
        particles = blocks["particles"] if blocks.is_loop("particles") else None
    else:
        # a RELION 3.0-style (or other tools') file: the first table holds the particles
        particles = next((b for k, b in blocks.loops() if k != "optics"), None)
    if particles is None:
        raise RelionPyError(f"{path} has no particles table (data_particles)")
    return general, optics, particles


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
    if "rlnOpticsGroup" in optics.columns:
        numbers = column(optics, "rlnOpticsGroup", path, dtype=np.int64)
    else:
        numbers = np.arange(1, len(optics) + 1)
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
    box = column(optics, "rlnImageSize", path, dtype=np.int64) if "rlnImageSize" in optics.columns else None
    premult = column(optics, "rlnCtfDataAreCtfPremultiplied", path, default=0, dtype=bool)
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


def _open_particle_table(path):
    """(optics table or None, particles table) after RELION's checks of the file as a whole."""
    if not path:
        raise RelionPyError("no input particles: give --i particles.star")
    general, optics, particles = _read_tables(path)
    if bool(int(general.get("rlnTomoSubTomosAre2DStacks", 0) or 0)):
        raise RelionPyError("reconstruct does not yet work with 2D subtomogram stacks "
                            f"({path} holds relion_tomo_subtomo --stack2d output; reconstruct it with "
                            "relion-py-reconstruct --i <optimisation_set> (tilt-series mode), or extract "
                            "3-D pseudo-subtomograms)")
    if "rlnImageName" not in particles.columns:
        raise RelionPyError(f"{path}: the particles table has no _rlnImageName column")
    if len(particles) == 0:
        raise RelionPyError(f"{path} contains no particles")
    return optics, particles


def _group_optics(optics, particles, path, reader):
    """(group row of each particle, per-group pixel size, box or None, premultiplied flag), or None when the
    file's optics are ignored (``do_ignore_optics``: no optics table and not convertible)."""
    if optics is not None:
        return _optics_from_table(optics, particles, path)
    warn(f"{path} has no optics table (a file from RELION 3.0 or another program): reading it as "
         "RELION 5 does")
    return _convert_legacy(particles, path, reader)


def _box_and_dimensionality(opts, reader, first_name, optics, ignore_optics, path):
    """Output box N and data dimensionality, from the first image's header (as RELION reads it)."""
    ndim0, shape0 = reader.shape(first_name)
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
    return n_box, data_dim


def _pixel_size(opts, particles, px_g, ignore_optics):
    """Pixel size of the reconstruction: --angpix, else the first optics group's (or, ignoring optics, the
    first particle's detector pixel / magnification)."""
    if opts.angpix > 0:
        return float(opts.angpix)
    if not ignore_optics:
        return float(px_g[0])
    if "rlnMagnification" in particles.columns and "rlnDetectorPixelSize" in particles.columns:
        return 10000. * float(particles["rlnDetectorPixelSize"].iloc[0]) / \
            float(particles["rlnMagnification"].iloc[0])
    raise RelionPyError("cannot find pixel size in input STAR file, provide it using --angpix")


def _group_boxes(reader, names, rows, n_groups):
    """Box of each group from its first image (an optics table without rlnImageSize: RELION errors, the
    images tell)."""
    box_g = np.zeros(n_groups, np.int64)
    for g in range(n_groups):
        if np.any(rows == g):
            box_g[g] = reader.shape(names[int(np.argmax(rows == g))])[1][-1]
    return box_g


def _selection(opts, particles, path):
    """Indices of the particles of --subset and --class."""
    keep = np.ones(len(particles), bool)
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
    return sel


def _angles(particles, path):
    """(n, 3) rot, tilt, psi in degrees (psi 0 when absent)."""
    for label in ("rlnAngleRot", "rlnAngleTilt"):
        if label not in particles.columns:
            raise RelionPyError(f"{path}: the particles table has no _{label} column (orientations are "
                                "needed)")
    return np.stack([particles["rlnAngleRot"].to_numpy(np.float64),
                     particles["rlnAngleTilt"].to_numpy(np.float64),
                     column(particles, "rlnAnglePsi", path, default=0.0)], axis=1)


def _shifts_px(particles, legacy_px, ignore_optics, rows, px_g, data_dim):
    """(n, 3) translations in pixels of each particle's group: rlnOrigin*Angst, or the 3.0-style pixel
    rlnOrigin* of a converted file (``legacy_px``); a file whose optics are ignored keeps none."""
    shifts = np.zeros((len(particles), 3))
    with np.errstate(over="ignore"):           # a huge origin or an extreme pixel size: refused as non-finite
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
    return shifts


def _ctf_parameters(particles, optics, rows):
    """(n, 9) CTF parameters in _CTF_LABELS order: particle row, else optics row, else RELION's default
    (``CTF::readByGroup``)."""
    ctf = np.empty((len(particles), len(_CTF_LABELS)))
    for c, (label, default) in enumerate(_CTF_LABELS):
        if label in particles.columns:
            ctf[:, c] = particles[label].to_numpy(np.float64)
        elif optics is not None and label in optics.columns:
            ctf[:, c] = optics[label].to_numpy(np.float64)[rows]
        elif default is None:         # DefocusV defaults to DefocusU
            ctf[:, c] = ctf[:, 1]
        else:
            ctf[:, c] = default
    return ctf


def _require_finite(path, values, labels, names):
    """One clear error for the first NaN or infinite value of ``values`` (n, len(labels)): RELION would insert
    such a particle nowhere (a NaN orientation) or spread NaN over the whole map (a NaN shift or CTF value)."""
    bad = first_non_finite(values)
    if bad is not None:
        p, c = bad
        raise RelionPyError(f"{path}: {labels[c]} of particle {names[p]} is {values[p, c]}; orientations, origins, "
                            "CTF parameters and weights must be finite numbers")


def load_particles(opts, reader):
    """Read the particle file ``opts.i`` as ``Reconstructor::initialise`` does (``reader``: an
    :class:`relion_py.io.particle_images.ImageReader`, for the image headers). Returns (ParticleData of the
    selected particles, output box N, pixel size, data dimensionality, number of particles in the file)."""
    path = opts.i
    optics, particles = _open_particle_table(path)
    n_all = len(particles)
    names = [str(v) for v in particles["rlnImageName"]]
    grouped = _group_optics(optics, particles, path, reader)
    ignore_optics = grouped is None
    n_box, data_dim = _box_and_dimensionality(opts, reader, names[0], optics, ignore_optics, path)
    angpix = _pixel_size(opts, particles, None if ignore_optics else grouped[1], ignore_optics)
    if ignore_optics:
        rows, px_g, box_g, premult = (np.zeros(n_all, np.int64), np.array([angpix]),
                                      np.array([n_box], np.int64), np.zeros(1, bool))
    else:
        rows, px_g, box_g, premult = grouped
    if box_g is None:
        box_g = _group_boxes(reader, names, rows, len(px_g))
    sel = _selection(opts, particles, path)
    bad_px = first_not_positive(px_g[np.unique(rows[sel])])
    if bad_px is not None:
        raise RelionPyError(f"{path}: an optics group's pixel size is {bad_px}; it must be a positive number")
    angles = _angles(particles, path)[sel]
    legacy_px = optics is None and not ignore_optics                  # 3.0-style origins, in pixels
    shifts = _shifts_px(particles, legacy_px, ignore_optics, rows, px_g, data_dim)
    ctf = _ctf_parameters(particles, optics, rows)
    fom = np.ones(n_all)
    if opts.fom_weighting:
        if "rlnParticleFigureOfMerit" not in particles.columns:
            raise RelionPyError("--fom_weighting needs the _rlnParticleFigureOfMerit column")
        fom = particles["rlnParticleFigureOfMerit"].to_numpy(np.float64)
    ctf_names = [str(v) for v in particles["rlnCtfImage"]] if "rlnCtfImage" in particles.columns else None
    if opts.ctf and data_dim == 3 and ctf_names is None:
        raise RelionPyError("cannot find rlnCtfImage for 3D CTF correction! (give the weight volumes, or "
                            "leave out --ctf)")
    labels = ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"] + [
        f"rlnOrigin{a}" if legacy_px else f"rlnOrigin{a}Angst / pixel size" for a in "XYZ"]
    checked = [angles, shifts[sel]]
    if opts.ctf:
        labels += [label for label, _ in _CTF_LABELS]
        checked.append(ctf[sel])
    if opts.fom_weighting:
        labels.append("rlnParticleFigureOfMerit")
        checked.append(fom[sel, None])
    _require_finite(path, np.concatenate(checked, axis=1), labels, [names[p] for p in sel])
    data = ParticleData(names=[names[p] for p in sel],
                        ctf_names=[ctf_names[p] for p in sel] if ctf_names is not None else None,
                        rotations=euler_to_matrix(angles[:, 0], angles[:, 1], angles[:, 2]),
                        groups=rows[sel], shifts_px=shifts[sel], ctf=ctf[sel],
                        fom=fom[sel],
                        box=np.asarray(box_g, np.int64), pixel=np.asarray(px_g, np.float64),
                        premultiplied=np.asarray(premult, bool))
    return data, n_box, angpix, data_dim, n_all
