"""Tomogram sets: tomograms.star (global table) and the per-tilt-series STAR files.

Mirrors ``TomogramSet::read`` and ``TomogramSet::loadTomogram`` (src/jaz/tomography/tomogram_set.cpp).
Frame f of a tilt series is row f of its tilt-series STAR file, everywhere (never sorted).
"""
from dataclasses import dataclass, field

import numpy as np

from ..runtime.errors import RelionPyError
from ..tomography.geometry import tilt_projection_matrices
from ..io.star import read_star
from ..io.open_tilt_images import is_one_mrc_stack, open_tilt_images
from .tables import column, first_non_finite, first_not_positive, require_columns

GLOBAL_REQUIRED = ("rlnTomoName", "rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast",
                   "rlnTomoTiltSeriesPixelSize", "rlnTomoHand", "rlnTomoSizeX", "rlnTomoSizeY", "rlnTomoSizeZ")
ANGLE_LABELS = ("rlnTomoYTilt", "rlnTomoZRot", "rlnTomoXShiftAngst", "rlnTomoYShiftAngst")
MATRIX_LABELS = ("rlnTomoProjX", "rlnTomoProjY", "rlnTomoProjZ", "rlnTomoProjW")
# relion_py's own tilt-series column (RELION ignores and keeps unknown labels): where the pixels of the
# frames are read (``N@<OME-Zarr URL>``) when rlnMicrographName names a header-only MRC stack, the
# geometry RELION needs (relion-py-portal without --download)
REMOTE_IMAGES_LABEL = "rlnTomoRelionPyTiltSeriesUrl"


@dataclass
class Tomogram:
    """One tilt series with its geometry and CTF, all per frame (= tilt-series STAR row).

    Lengths in tilt-series pixels unless stated; defocus in Å; angles in degrees.
    """

    name: str
    row: dict                      # the tomograms.star row (all columns)
    voltage: float                 # kV
    cs: float                      # mm
    q0: float                      # amplitude contrast
    pixel_size: float              # Å / ts px
    hand: float
    size: tuple                    # (w0, h0, d0) ints
    defocus_slope: float
    bfactor_per_dose: float
    micrograph_names: list         # where the pixels of each frame are read
    dose: np.ndarray               # (fc,) rlnMicrographPreExposure, e/Å²
    defocus_u: np.ndarray          # (fc,)
    defocus_v: np.ndarray          # (fc,)
    defocus_angle: np.ndarray      # (fc,)
    ctf_scale: np.ndarray          # (fc,)
    ctf_bfactor: np.ndarray        # (fc,) Å²
    phase_shift: np.ndarray        # (fc,) degrees
    frames: object = field(repr=False)      # the tilt-series table (DataFrame)
    _images: object = field(default=None, repr=False)
    _proj: object = field(default=None, repr=False)

    @property
    def n_frames(self):
        return len(self.dose)

    @property
    def centre(self):
        """Float centre (w0/2.0, ...), the origin of centred coordinates and depth (QUIRK, docs/relion_quirks.md #2: the
        projection matrices use the integer-divided centre)."""
        return np.array(self.size, dtype=np.float64) / 2.0

    @property
    def images(self):
        """The tilt images (opened on first use, memory-mapped or remote)."""
        if self._images is None:
            self._images = open_tilt_images(self.micrograph_names)
            if self._images.n_frames != self.n_frames:
                raise RelionPyError(f"tomogram {self.name}: {self._images.n_frames} tilt images for {self.n_frames} rows")
        return self._images

    @property
    def projections(self):
        """(fc, 4, 4) affine projection matrices (``Tomogram::setProjectionMatrix``)."""
        if self._proj is None:
            self._proj = self._projection_matrices()
        return self._proj

    def _projection_matrices(self):
        where = f"tilt series of {self.name}"
        t = self.frames
        if all(label in t.columns for label in MATRIX_LABELS):  # RELION-4 matrices take priority
            rows = [_parse_vectors(t[label], where, label) for label in MATRIX_LABELS]
            for label, values in zip(MATRIX_LABELS, rows):
                _require_finite_frames(values, label, where)
            return np.stack(rows, axis=1)
        if not all(label in t.columns for label in ANGLE_LABELS):
            raise RelionPyError(f"{where}: no projection geometry (needs {', '.join(ANGLE_LABELS)} "
                                f"or {', '.join(MATRIX_LABELS)})")
        values = {label: column(t, label, where, default=0.0 if label == "rlnTomoXTilt" else None)
                  for label in ("rlnTomoXTilt",) + ANGLE_LABELS}
        for label, v in values.items():
            _require_finite_frames(v, label, where)
        x_tilt, y_tilt, z_rot, x_shift, y_shift = values.values()
        return tilt_projection_matrices(x_tilt, y_tilt, z_rot, x_shift / self.pixel_size, y_shift / self.pixel_size,
                                        self.size, self.images.image_size)

    def close(self):
        if self._images is not None:
            self._images.close()
            self._images = None


def _parse_vectors(values, where, label):
    """Cells of a 4-vector column (read as lists) → (fc, 4) array."""
    try:
        rows = np.array([np.asarray(v, dtype=np.float64) for v in values])
    except (TypeError, ValueError):
        rows = None
    if rows is None or rows.ndim != 2 or rows.shape[1] != 4:
        raise RelionPyError(f"{where}: {label} must hold 4-vectors [a,b,c,d]")
    return rows


def _images_label(frames):
    """The column naming where the pixels are: :data:`REMOTE_IMAGES_LABEL` if present."""
    return REMOTE_IMAGES_LABEL if REMOTE_IMAGES_LABEL in frames.columns else "rlnMicrographName"


#: The numbers of tomograms.star and of the tilt-series STAR files that enter the geometry, CTF or dose weights
#: (label, Tomogram attribute): NaN or infinite, RELION would let them spread NaN over the outputs.
TOMOGRAM_NUMBERS = (("rlnVoltage", "voltage"), ("rlnSphericalAberration", "cs"), ("rlnTomoHand", "hand"),
                    ("rlnTomoDefocusSlope", "defocus_slope"), ("rlnCtfBfactorPerElectronDose", "bfactor_per_dose"))
FRAME_NUMBERS = (("rlnMicrographPreExposure", "dose"), ("rlnDefocusU", "defocus_u"), ("rlnDefocusV", "defocus_v"),
                 ("rlnDefocusAngle", "defocus_angle"), ("rlnCtfScalefactor", "ctf_scale"),
                 ("rlnCtfBfactor", "ctf_bfactor"), ("rlnPhaseShift", "phase_shift"))


def _require_finite_frames(values, label, where):
    """One clear error for the first frame whose ``label`` value (of ``values``, (fc, ...)) is NaN or infinite."""
    bad = first_non_finite(values)
    if bad is not None:
        raise RelionPyError(f"{where}: {label} of frame {bad[0]} (row {bad[0] + 1}) is not a finite number")


def _require_finite_numbers(tomo, where, ts_where):
    for label, attr in TOMOGRAM_NUMBERS:
        if not np.isfinite(getattr(tomo, attr)):
            raise RelionPyError(f"{where}: {label} of {tomo.name} is {getattr(tomo, attr)}; it must be a finite number")
    for label, attr in FRAME_NUMBERS:
        _require_finite_frames(getattr(tomo, attr), label, ts_where)


def _read_tomogram(row, frames, where):
    name = str(row["rlnTomoName"])
    q0 = float(row["rlnAmplitudeContrast"])
    if not 0.0 <= q0 <= 1.0:
        raise RelionPyError(f"{where}: rlnAmplitudeContrast of {name} is {q0}, outside [0, 1]")
    pixel_size = float(row["rlnTomoTiltSeriesPixelSize"])
    if first_not_positive([pixel_size]) is not None:
        raise RelionPyError(f"{where}: rlnTomoTiltSeriesPixelSize of {name} must be a positive number")
    ts_where = f"tilt series STAR of {name}"
    require_columns(frames, ("rlnMicrographName", "rlnMicrographPreExposure", "rlnDefocusU",
                             "rlnDefocusV", "rlnDefocusAngle"), ts_where)
    if len(frames) == 0:
        raise RelionPyError(f"{ts_where}: no tilt images")
    tomo = Tomogram(
        name=name, row=dict(row), voltage=float(row["rlnVoltage"]),
        cs=float(row["rlnSphericalAberration"]), q0=q0, pixel_size=pixel_size,
        hand=float(row["rlnTomoHand"]),
        size=tuple(int(row[k]) for k in ("rlnTomoSizeX", "rlnTomoSizeY", "rlnTomoSizeZ")),
        defocus_slope=float(row.get("rlnTomoDefocusSlope", 1.0)),
        bfactor_per_dose=float(row.get("rlnCtfBfactorPerElectronDose", 0.0)),
        micrograph_names=[str(n) for n in frames[_images_label(frames)]],
        dose=column(frames, "rlnMicrographPreExposure", ts_where),
        defocus_u=column(frames, "rlnDefocusU", ts_where),
        defocus_v=column(frames, "rlnDefocusV", ts_where),
        defocus_angle=column(frames, "rlnDefocusAngle", ts_where),
        ctf_scale=column(frames, "rlnCtfScalefactor", ts_where, default=1.0),
        ctf_bfactor=column(frames, "rlnCtfBfactor", ts_where, default=0.0),
        phase_shift=column(frames, "rlnPhaseShift", ts_where, default=0.0),
        frames=frames)
    _require_finite_numbers(tomo, where, ts_where)
    return tomo


class TomogramSet:
    """The tomograms of a project, in tomograms.star order."""

    def __init__(self, path):
        self.path = path
        blocks = read_star(path)
        table = blocks.loop("global")
        require_columns(table, GLOBAL_REQUIRED, path)
        if "rlnTomoDeformationGridSizeX" in table.columns:
            raise RelionPyError(f"{path}: 2-D image deformations (rlnTomoDeformation*) are not supported")
        names = [str(n) for n in table["rlnTomoName"]]
        if len(set(names)) != len(names):
            raise RelionPyError(f"{path}: duplicate rlnTomoName values")
        self.tomograms = []
        for (_, row), name in zip(table.iterrows(), names):
            if "rlnTomoTiltSeriesStarFile" in table.columns:
                ts_path = str(row["rlnTomoTiltSeriesStarFile"])
                frames = read_star(ts_path).loop(name)
            else:  # RELION-4 layout: the per-tilt tables follow data_global in the same file
                frames = blocks.loop(name)
            self.tomograms.append(_read_tomogram(row, frames, path))
        self.by_name = {t.name: t for t in self.tomograms}

    def files(self):
        """Every file this set was read from: tomograms.star, the tilt-series STAR files, the tilt images."""
        paths = {self.path}
        for t in self.tomograms:
            paths.add(str(t.row.get("rlnTomoTiltSeriesStarFile", self.path)))
            paths.update(str(name).split("@")[-1] for name in t.micrograph_names)
        return sorted(paths)

    def square_buffers(self):
        """(the most frames of any tomogram, how many of a worker's unbinned-square buffers one particle fills:
        1 if every tilt series is one MRC stack, else one per frame, :func:`~relion_py.io.open_tilt_images.
        is_one_mrc_stack`), for the programs' memory checks."""
        frames = max((t.n_frames for t in self.tomograms), default=0)
        return frames, 1 if all(is_one_mrc_stack(t.micrograph_names) for t in self.tomograms) else frames

    def __iter__(self):
        return iter(self.tomograms)

    def __len__(self):
        return len(self.tomograms)

    def close(self):
        for t in self.tomograms:
            t.close()


