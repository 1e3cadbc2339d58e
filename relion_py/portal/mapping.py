"""CryoET Data Portal metadata → RELION 5 values: every RELION column and the portal field it comes from.

Tilt-series STAR file, one row per aligned section, in ``z_index`` order (RELION's frame f = row f):

======================================  ===========================================================
``rlnMicrographName``                   ``<z_index + 1>@tilt_series/<name>.mrcs``: the section's slice of a
                                        local MRC stack, downloaded (``--download``) or header-only
                                        (the portal stack's size and pixel size, no pixels: what RELION
                                        needs to read geometry)
``rlnTomoRelionPyTiltSeriesUrl``        without ``--download``: ``<z_index + 1>@<TiltSeries.https_omezarr_dir>``
                                        (or ``s3_omezarr_dir``), where relion_py reads the pixels; RELION
                                        ignores (and keeps) the unknown label
``rlnTomoNominalStageTiltAngle``        ``PerSectionParameters.raw_angle``
``rlnMicrographPreExposure``            ``Frame.accumulated_dose``: the dose *before* the frame (backend
                                        ``ingestion_tools/scripts/importers/frame.py``, ``get_frame_metadata``
                                        stores it before adding the frame's own exposure)
``rlnDefocusU`` / ``rlnDefocusV``       ``major_defocus`` / ``minor_defocus`` (Å, underfocus positive;
                                        CTFFIND's defocus 1 / 2: ``common/ctf_converter.py``,
                                        ``importers/tiltseries.py``)
``rlnDefocusAngle``                     ``astigmatic_angle`` (degrees)
``rlnCtfMaxResolution``                 ``max_resolution`` (Å; omitted if a section has none)
``rlnPhaseShift``                       ``degrees(phase_shift)`` (radians in the portal: ``CTFInfo``)
``rlnTomoXTilt``                        ``PerSectionAlignmentParameters.volume_x_rotation``
``rlnTomoYTilt``                        ``tilt_angle``
``rlnTomoZRot``                         ``atan2(R[1][0], R[0][0])`` of ``in_plane_rotation``
``rlnTomoXShiftAngst`` / ``Y``          ``x_offset`` / ``y_offset`` × ``TiltSeries.pixel_spacing``
======================================  ===========================================================

The alignment columns are RELION's own reading of an AreTomo alignment (relion
``src/align_tiltseries_runner.cpp``, ``readAreTomoResults``: YTilt = TILT, ZRot = ROT, shifts = TX/TY × pixel
size, XTilt = 0), and the portal stores AreTomo's convention (uermel/cryoet-alignment
``io/cryoet_data_portal/alignment.py``, ``from_aretomo3``: ``tilt_angle`` = TILT, ``in_plane_rotation`` =
``ang2mat(ROT)``, ``x/y_offset`` = TX/TY in tilt-series pixels — not Å as the client's docstring says;
``from_imod`` converts IMOD ``.xf`` files to the same convention, with the ``.xtilt`` angles as
``volume_x_rotation``). Sections are joined on ``z_index`` (``PerSectionParameters.z_index`` =
``PerSectionAlignmentParameters.z_index``, the 0-based stack index); sections without alignment are
excluded tilts and get no row.

tomograms.star: ``rlnVoltage`` = ``TiltSeries.acceleration_voltage`` / 1000 (volts in the portal),
``rlnSphericalAberration`` = ``spherical_aberration_constant`` (mm), ``rlnTomoTiltSeriesPixelSize`` =
``pixel_spacing``, ``rlnMicrographOriginalPixelSize`` = ``pixel_spacing / binning_from_frames`` (the
movies' pixel size), ``rlnTomoNominalTiltAxisAngle`` = ``TiltSeries.tilt_axis``, ``rlnTomoSizeX/Y/Z`` = ``Alignment.volume_{x,y,z}_dimension`` (Å) / pixel size. Not in the
portal, so options: ``rlnAmplitudeContrast`` and ``rlnTomoHand``.

particles.star: ``rlnCenteredCoordinate{X,Y,Z}Angst`` = (location − N/2) × voxel spacing, with N the size
(voxels) of the annotation file's tomogram (its alignment at its voxel spacing): the portal's point
locations are voxels of that tomogram (backend ``common/point_converter.py``: RELION coordinates are
divided by the binning), and RELION centres coordinates on size/2.0. ``rlnAngleRot/Tilt/Psi`` = RELION's
Euler angles of ``xyz_rotation_matrix``: the backend stores
``Rotation.from_euler("ZYZ", (rot, tilt, psi)).inv().as_matrix()`` (``_from_relion4_star``), which is
RELION's Euler matrix of (rot, tilt, psi), so ``Euler::matrixToAngles`` inverts it (equivalently: the ZYZ
Euler angles of the inverse matrix).
"""
import json
import math

import numpy as np
import pandas as pd

from ..runtime.errors import RelionPyError
from ..project.tomograms import REMOTE_IMAGES_LABEL
from ..tomography.geometry import matrix_to_euler


class IncompleteRun(RelionPyError):
    """A run's metadata lacks what RELION needs (CTF, doses, alignment parameters, sizes): the run is left out
    of the project with a warning, the others are written."""


def tilt_axis_rotation(in_plane_rotation):
    """rlnTomoZRot (degrees) of a 2×2 ``in_plane_rotation`` (cryoet_alignment ``mat2ang``)."""
    m = np.asarray(in_plane_rotation, dtype=np.float64)
    if m.shape != (2, 2):
        raise RelionPyError(f"in_plane_rotation {in_plane_rotation} is not a 2x2 matrix")
    return math.degrees(math.atan2(m[1, 0], m[0, 0]))


def tilt_series_table(source, stack, zarr_location=None):
    """The tilt-series STAR table of one :class:`~relion_py.portal.query.TomogramSource`: images named
    ``N@stack``, and ``N@zarr_location`` in :data:`REMOTE_IMAGES_LABEL` if given."""
    ts, where = source.tiltseries, f"tilt series {source.tiltseries.id}"
    if not ts.pixel_spacing:
        raise IncompleteRun(f"{where} has no pixel spacing")
    ctf = {s.z_index: s for s in source.sections}
    aligned = sorted(source.section_alignments, key=lambda a: a.z_index)
    if not aligned:
        raise IncompleteRun(f"alignment {source.alignment.id} of {where} has no per-section parameters")
    rows = []
    for a in aligned:
        s = ctf.get(a.z_index)
        at = f"{where}, section z_index {a.z_index}"
        if s is None or s.major_defocus is None or s.minor_defocus is None or s.astigmatic_angle is None:
            raise IncompleteRun(f"{at} has no CTF estimate (PerSectionParameters) in the portal")
        frame = source.frames.get(s.frame_id)
        if frame is None or frame.accumulated_dose is None:
            raise IncompleteRun(f"{at} has no frame with an accumulated dose in the portal "
                                "(RELION needs rlnMicrographPreExposure)")
        if None in (a.tilt_angle, a.volume_x_rotation, a.in_plane_rotation, a.x_offset, a.y_offset):
            raise IncompleteRun(f"{at}: incomplete alignment parameters (alignment {source.alignment.id})")
        row = {"rlnMicrographName": f"{a.z_index + 1}@{stack}"}
        if zarr_location is not None:
            row[REMOTE_IMAGES_LABEL] = f"{a.z_index + 1}@{zarr_location}"
        rows.append(dict(row, **{
            "rlnTomoNominalStageTiltAngle": s.raw_angle,
            "rlnMicrographPreExposure": frame.accumulated_dose,
            "rlnDefocusU": s.major_defocus,
            "rlnDefocusV": s.minor_defocus,
            "rlnDefocusAngle": s.astigmatic_angle,
            "rlnCtfMaxResolution": s.max_resolution,
            "rlnPhaseShift": None if s.phase_shift is None else math.degrees(s.phase_shift),
            "rlnTomoXTilt": a.volume_x_rotation,
            "rlnTomoYTilt": a.tilt_angle,
            "rlnTomoZRot": tilt_axis_rotation(a.in_plane_rotation),
            "rlnTomoXShiftAngst": a.x_offset * ts.pixel_spacing,
            "rlnTomoYShiftAngst": a.y_offset * ts.pixel_spacing,
        }))
    table = pd.DataFrame(rows)
    if table["rlnCtfMaxResolution"].isna().any():
        table = table.drop(columns="rlnCtfMaxResolution")  # an estimate's quality: optional in RELION
    phase = table["rlnPhaseShift"]
    if phase.isna().all():
        table = table.drop(columns="rlnPhaseShift")  # RELION's default: no phase shift
    elif phase.isna().any():
        raise RelionPyError(f"{where}: a phase shift is given for some sections only")
    return table


def stack_shape(source):
    """(nz, ny, nx) of the tilt series' stack: ``TiltSeries.size_z/y/x``."""
    ts = source.tiltseries
    shape = (ts.size_z, ts.size_y, ts.size_x)
    if not all(shape):
        raise IncompleteRun(f"tilt series {ts.id} (run {source.run.name}) has no size (size_x/y/z) in the "
                            "portal")
    depth = max(a.z_index for a in source.section_alignments) + 1 if source.section_alignments else 0
    if depth > shape[0]:
        raise RelionPyError(f"tilt series {ts.id} (run {source.run.name}): an alignment names section "
                            f"{depth - 1}, but the stack holds {shape[0]} sections (size_z)")
    return tuple(int(v) for v in shape)


def tomogram_size(source):
    """(rlnTomoSizeX, Y, Z) in tilt-series pixels: the alignment's reconstruction volume (Å) / pixel size;
    if the alignment has no volume (0 or null, e.g. IMOD alignments ingested without a reconstruction),
    the size of the annotations' tomogram (voxels × voxel spacing) / pixel size."""
    a, ps = source.alignment, source.tiltseries.pixel_spacing
    dims = (a.volume_x_dimension, a.volume_y_dimension, a.volume_z_dimension)
    if all(d for d in dims):
        return tuple(int(round(d / ps)) for d in dims)
    if not source.annotation_files:
        raise RelionPyError(f"alignment {a.id} (run {source.run.name}) has no reconstruction volume size: the "
                            "particle coordinates cannot be centred")
    _, _, size, spacing = source.annotation_files[0]
    return tuple(int(round(n * spacing / ps)) for n in size)


def read_points(text, size, voxel_spacing, where):
    """Points of one ndjson annotation file → (centred coordinates (n, 3) Å, angles (n, 3) degrees or
    None when the points have no orientation). ``size``: the tomogram's (x, y, z) voxels."""
    coords, matrices = [], []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            point = json.loads(line)
            location = point["location"]
            coords.append([float(location[k]) for k in "xyz"])
            if "xyz_rotation_matrix" in point:
                matrices.append(np.array(point["xyz_rotation_matrix"], dtype=np.float64).reshape(3, 3))
        except (ValueError, KeyError, TypeError):
            raise RelionPyError(f"{where}, line {number}: not a point annotation (ndjson with a "
                                "location)") from None
    coords = np.array(coords, dtype=np.float64).reshape(-1, 3)
    centred = (coords - np.asarray(size, dtype=np.float64) / 2.0) * voxel_spacing
    if not matrices:
        return centred, None
    if len(matrices) != len(coords):
        raise RelionPyError(f"{where}: only some points have an xyz_rotation_matrix")
    rot, tilt, psi = matrix_to_euler(np.array(matrices))
    return centred, np.stack([rot, tilt, psi], axis=1)
