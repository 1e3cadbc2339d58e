"""Particle sets: particles.star (general, optics and particle tables) and motion trajectories.

Mirrors ``ParticleSet::read``, ``getPosition``, ``getSubtomogramMatrix``, ``getParticleMatrix`` and
``getTrajectoryInPixels`` (src/jaz/tomography/particle_set.cpp) and ``Trajectory::read``.
"""
import numpy as np
import pandas as pd

from ..runtime.errors import RelionPyError
from ..tomography.geometry import euler_to_matrix
from ..io.star import read_star
from ..runtime.log import warn
from .tables import column, first_non_finite, first_not_positive, require_columns

CENTRED = ("rlnCenteredCoordinateXAngst", "rlnCenteredCoordinateYAngst", "rlnCenteredCoordinateZAngst")
UNCENTRED = ("rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ")
ORIGIN = ("rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst")
ANGLES = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")
SUBTOMOGRAM_ANGLES = ("rlnTomoSubtomogramRot", "rlnTomoSubtomogramTilt", "rlnTomoSubtomogramPsi")
SYNTHESISED_OPTICS = ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast", "rlnTomoTiltSeriesPixelSize")


class ParticleSet:
    """Particles grouped by tomogram (tomograms.star order, then file order), as RELION processes them.

    ``table``: the particle rows kept (particles of unknown tomograms dropped), in that order, with
    any generated rlnOpticsGroup / rlnTomoParticleName columns; ``optics``: the optics table (read or
    synthesised); ``general``: the general list table.
    """

    def __init__(self, path, tomograms):
        self.path = path
        blocks = read_star(path)
        table = blocks.loop("particles").copy()
        require_columns(table, ("rlnTomoName",), path)
        if blocks.is_list("general"):
            self.general = dict(blocks.list("general"))
            if "rlnTomoSubTomosAre2DStacks" not in self.general:
                raise RelionPyError(f"{path}: data_general lacks rlnTomoSubTomosAre2DStacks")
        else:
            self.general = {"rlnTomoSubTomosAre2DStacks": 0}
        table["rlnTomoName"] = table["rlnTomoName"].astype(str)
        if "optics" in blocks:
            self.optics = blocks.loop("optics").copy()
            require_columns(self.optics, ("rlnOpticsGroup", "rlnTomoTiltSeriesPixelSize"), f"{path} (optics)")
            require_columns(table, ("rlnOpticsGroup",), path)
        else:
            self.optics = _synthesise_optics(table, tomograms)
        if "rlnTomoParticleName" not in table.columns:
            warn(f"The particles in {path} do not have names (rlnTomoParticleName). They are being added now.")
            counter = table.groupby("rlnTomoName", sort=False).cumcount() + 1
            table["rlnTomoParticleName"] = table["rlnTomoName"] + "/" + counter.astype(str)
        if not (all(c in table.columns for c in CENTRED) or all(c in table.columns for c in UNCENTRED)):
            raise RelionPyError(f"{path}: particles need rlnCenteredCoordinateX/Y/ZAngst "
                                "(or RELION-4 rlnCoordinateX/Y/Z)")
        table = self._group_by_tomogram(table, tomograms)
        self.table = table.reset_index(drop=True)
        group_ids = self.optics["rlnOpticsGroup"].to_numpy(dtype=np.int64)
        index = {g: i for i, g in enumerate(group_ids)}
        groups = column(self.table, "rlnOpticsGroup", path, dtype=np.int64)
        unknown = sorted(set(groups) - set(index))
        if unknown:
            raise RelionPyError(f"{path}: particles refer to optics group {unknown[0]}, which the optics table lacks")
        self.optics_index = np.array([index[g] for g in groups], dtype=np.int64)   # (n,) 0-based row of optics
        self.optics_pixel_size = column(self.optics, "rlnTomoTiltSeriesPixelSize", f"{path} (optics)")
        bad = first_not_positive(self.optics_pixel_size[np.unique(self.optics_index)])   # Å coordinates → pixels
        if bad is not None:
            raise RelionPyError(f"{path}: rlnTomoTiltSeriesPixelSize {bad} of an optics group must be a positive number")
        self._validate_optics(tomograms)
        self._check_finite_geometry()

    def _group_by_tomogram(self, table, tomograms):
        known = table["rlnTomoName"].isin(tomograms.by_name)
        n_unknown = int((~known).sum())
        if n_unknown:
            warn(f"{n_unknown} particle(s) in {self.path} belong to tomograms not in {tomograms.path}; they are ignored.")
        order = {t.name: i for i, t in enumerate(tomograms)}
        table = table[known]
        if len(table) == 0:
            raise RelionPyError(f"{self.path}: no particle belongs to a tomogram of {tomograms.path}")
        rank = table["rlnTomoName"].map(order).to_numpy()
        return table.iloc[np.argsort(rank, kind="stable")]

    def _validate_optics(self, tomograms):
        """``Tomogram::validateParticleOptics``: optics values must agree with the tomogram within 1e-3."""
        for label, attr in (("rlnVoltage", "voltage"), ("rlnSphericalAberration", "cs"),
                            ("rlnAmplitudeContrast", "q0")):
            if label not in self.optics.columns:
                continue
            values = self.optics[label].to_numpy(dtype=np.float64)[self.optics_index]
            for name, value in zip(self.table["rlnTomoName"], values):
                expected = getattr(tomograms.by_name[name], attr)
                if not abs(value - expected) <= 1e-3:         # NaN differs too
                    raise RelionPyError(f"{self.path}: {label} {value} of the optics group differs from "
                                        f"{expected} of tomogram {name}")

    def _check_finite_geometry(self):
        """A NaN or infinite coordinate, origin or angle is refused: RELION would give that particle no place and no
        orientation, so that it contributes nothing (or NaN) without a word, while being counted and written."""
        for label in CENTRED + UNCENTRED + ORIGIN + ANGLES + SUBTOMOGRAM_ANGLES:
            if label in self.table.columns:
                values = column(self.table, label, self.path)
                bad = first_non_finite(values)
                if bad is not None:
                    name = self.table["rlnTomoParticleName"].iloc[bad[0]]
                    raise RelionPyError(f"{self.path}: {label} of particle {name} is {values[bad]}; coordinates, "
                                        "origins and angles must be finite numbers")

    def __len__(self):
        return len(self.table)

    def rows_of(self, tomogram_name):
        """Indices (into ``table``) of the particles of one tomogram, in order."""
        return np.flatnonzero(self.table["rlnTomoName"].to_numpy() == tomogram_name)

    def subtomogram_matrices(self, rows):
        """A_sub (n, 3, 3): rlnTomoSubtomogramRot/Tilt/Psi, identity if absent (``getSubtomogramMatrix``)."""
        return self._euler(rows, SUBTOMOGRAM_ANGLES)

    def particle_matrices(self, rows):
        """A_part (n, 3, 3): rlnAngleRot/Tilt/Psi, identity if absent (``getParticleMatrix``)."""
        return self._euler(rows, ANGLES)

    def _euler(self, rows, labels):
        if labels[0] not in self.table.columns:  # RELION keys on the first angle only
            return np.broadcast_to(np.eye(3), (len(rows), 3, 3)).copy()
        sub = self.table.iloc[rows]
        return euler_to_matrix(*(column(sub, label, self.path, default=0.0) for label in labels))

    def positions(self, rows, tomogram, apply_offsets):
        """Particle positions (n, 3) in ts px (``ParticleSet::getPosition``).

        Centred coordinates: C/ps_g + centre (float tomogram centre); RELION-4: rlnCoordinateX/Y/Z as is.
        With ``apply_offsets`` the origin (Å) rotated by A_sub is subtracted.
        """
        sub = self.table.iloc[rows]
        ps = self.optics_pixel_size[self.optics_index[rows]][:, None]
        if all(c in sub.columns for c in CENTRED):
            p = np.stack([column(sub, c, self.path) for c in CENTRED], axis=1) / ps + tomogram.centre
        else:
            p = np.stack([column(sub, c, self.path) for c in UNCENTRED], axis=1)
        if apply_offsets:
            origin = np.stack([column(sub, c, self.path, default=0.0) for c in ORIGIN], axis=1) / ps
            p = p - np.einsum("nij,nj->ni", self.subtomogram_matrices(rows), origin)
        return p

    def particle_pixel_sizes(self, rows):
        """rlnTomoTiltSeriesPixelSize of each particle's optics group, (n,)."""
        return self.optics_pixel_size[self.optics_index[rows]]


def _synthesise_optics(table, tomograms):
    """Optics table for a particle file straight from picking (``ParticleSet::read``): one group per
    distinct rlnOpticsGroupName of the tomograms (or per tomogram if absent), numbered in order of first
    appearance in the particle table; sets rlnOpticsGroup on every particle."""
    known = [n for n in table["rlnTomoName"] if n in tomograms.by_name]
    group_names, group_of_tomo, first_tomo = [], {}, []
    for name in dict.fromkeys(known):
        row = tomograms.by_name[name].row
        gname = str(row.get("rlnOpticsGroupName", name))
        if gname not in group_names:
            group_names.append(gname)
            first_tomo.append(name)
        group_of_tomo[name] = group_names.index(gname) + 1
    optics = pd.DataFrame({label: [tomograms.by_name[t].row[label] for t in first_tomo] for label in SYNTHESISED_OPTICS})
    optics["rlnOpticsGroup"] = np.arange(1, len(group_names) + 1)
    optics["rlnOpticsGroupName"] = group_names
    table["rlnOpticsGroup"] = [group_of_tomo.get(n, 0) for n in table["rlnTomoName"]]
    return optics


class Trajectories:
    """Per-particle, per-frame shifts (Å) from a motion file (``Trajectory::read``)."""

    def __init__(self, path):
        self.path = path
        self.blocks = read_star(path)
        if not self.blocks.is_list("general") or "rlnParticleNumber" not in self.blocks["general"]:
            raise RelionPyError(f"{path}: motion file lacks data_general / rlnParticleNumber")

    def shifts(self, particle_name, n_frames):
        """(fc, 3) shifts in Å of one particle."""
        if not self.blocks.is_loop(particle_name):
            raise RelionPyError(f"{self.path}: no trajectory for particle {particle_name}")
        t = self.blocks[particle_name]
        if len(t) != n_frames:
            raise RelionPyError(f"{self.path}: trajectory of {particle_name} has {len(t)} rows, "
                                f"the tilt series has {n_frames} frames")
        shifts = np.stack([column(t, c, self.path) for c in ORIGIN], axis=1)
        bad = first_non_finite(shifts)
        if bad is not None:     # the frame's position would be NaN: the frame dropped as invisible, without a word
            frame, axis = bad
            raise RelionPyError(f"{self.path}: {ORIGIN[axis]} of frame {frame} (row {frame + 1}) of the trajectory "
                                f"of {particle_name} is {shifts[frame, axis]}; it must be a finite number")
        return shifts

    def table(self, particle_name):
        return self.blocks[particle_name]
