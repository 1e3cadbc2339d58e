"""Where each particle lies in each tilt image, and the Fourier-space tilt images cut around it.

Shared by extraction (relion_tomo_subtomo) and reconstruction from tilt series
(relion_tomo_reconstruct_particle). Mirrors ``TomoExtraction::extractAt3D_Fourier`` /
``extractAt2D_Fourier`` (src/jaz/tomography/extraction.h), ``ParticleSet::getTrajectoryInPixels``,
``Tomogram::getVisibilityMinFramesMaxDose`` and the depth-dependent defocus of ``Tomogram::getCtf``.
"""
from dataclasses import dataclass

import numpy as np

from .geometry import project, visible_frames
from ..runtime.errors import RelionPyError
from ..kernels.tomography.extraction import (NON_FINITE_PIXELS, NON_FINITE_WEIGHTS, extract_weighted_spectra,
                                             stack2d_images)


def c_round(v):
    """C ``round``: half away from zero (not numpy's half-to-even)."""
    return np.sign(v) * np.floor(np.abs(v) + 0.5)


@dataclass
class ParticleGeometry:
    """Geometry of n particles of one tomogram over its fc frames (ts px)."""

    rows: np.ndarray        # (n,) rows of the particle table
    positions: np.ndarray   # (n, 3) particle positions (offsets applied as requested), no motion
    centres: np.ndarray     # (n, fc, 2) projected centres of the trajectory, image px
    depth: np.ndarray       # (n, fc) depth of the particle relative to the tomogram centre along the beam
    visible: np.ndarray     # (n, fc) bool


def particle_geometry(particles, rows, tomogram, apply_offsets, radius, max_dose=-1.0, trajectories=None):
    """Positions, projected centres, depths and visibility of the particles ``rows`` of ``tomogram``.

    radius: visibility radius in ts px (binning · crop / 2). Frames with pre-exposure above
    ``max_dose`` are invisible when max_dose > 0.
    """
    p0 = particles.positions(rows, tomogram, apply_offsets)
    proj = tomogram.projections
    traj = np.repeat(p0[:, None, :], tomogram.n_frames, axis=1)
    if trajectories is not None:
        names = particles.table["rlnTomoParticleName"].to_numpy()[rows]
        for j, name in enumerate(names):
            traj[j] += trajectories.shifts(str(name), tomogram.n_frames) / tomogram.pixel_size
    centres = np.einsum("fij,nfj->nfi", proj[:, :2, :3], traj) + proj[None, :, :2, 3]
    depth = project(proj, p0)[..., 2] - project(proj, tomogram.centre[None])[..., 2]
    visible = visible_frames(centres, radius, tomogram.images.image_size)
    if max_dose > 0:
        visible &= (tomogram.dose <= max_dose)[None, :]
    return ParticleGeometry(rows=np.asarray(rows), positions=p0, centres=centres, depth=depth, visible=visible)


@dataclass
class TiltItems:
    """The (particle, frame) pairs to extract, with their integer windows and sub-pixel shifts."""

    particle: np.ndarray    # (m,) index into the ParticleGeometry arrays
    frame: np.ndarray       # (m,) frame index
    origins: np.ndarray     # (m, 2) int64 (x0, y0) of the unbinned square in the tilt image
    shifts: np.ndarray      # (m, 2) float64 binned-px shift t moving the particle to the box centre

    def __getitem__(self, index):
        """The items selected by a slice or an index array."""
        return TiltItems(particle=self.particle[index], frame=self.frame[index], origins=self.origins[index],
                         shifts=self.shifts[index])


def tilt_items(geom, selection, square, binning, box):
    """Items of the particles ``selection`` (indices into ``geom``), visible frames only, particle-major.

    Mirrors the offsets of ``extractSquares`` (o = round(c) - s0/2) and ``shiftStack`` (t = (c - o)/bin - s/2).
    """
    sel_particle, sel_frame = np.nonzero(geom.visible[selection])
    # nonzero's index arrays are strided views: a contiguous copy keeps the kernels' array types (and so their
    # compiled specialisations) the same for every particle, one visible tilt included
    sel_frame = np.ascontiguousarray(sel_frame)
    particle = np.asarray(selection)[sel_particle]
    c = geom.centres[particle, sel_frame]
    origins = (c_round(c) - square // 2).astype(np.int64)
    shifts = (c - origins) / binning - box // 2
    return TiltItems(particle=particle, frame=sel_frame, origins=origins, shifts=shifts)


def particle_tilt_items(tomogram, particles, geom, selection, square, binning, box):
    """The items of the particles ``selection`` (indices into ``geom``) with what weighting needs per item.

    Returns (bounds, items, ctf_params, groups): particle k's items are ``bounds[k]:bounds[k + 1]``
    ((len(selection)+1,) int64), ``ctf_params`` as :func:`defocus_per_item`, ``groups`` (m,) the optics
    group row of each item.
    """
    bounds = np.concatenate([[0], np.cumsum(geom.visible[selection].sum(axis=1))]).astype(np.int64)
    items = tilt_items(geom, selection, square, binning, box)
    return bounds, items, defocus_per_item(tomogram, geom, items), particles.optics_index[geom.rows][items.particle]


def _window_source(images, items, square):
    """(source, slices, gathered) for the compiled kernels: the tilt series' own pixel stack where it is one array
    (MRC stacks), so that compiled code cuts the windows itself; else (zarr, one file per tilt) the windows cut by
    the reader into ``square``'s real buffer (gathered)."""
    pixels = images.pixel_stack(items.frame)
    if pixels is not None:
        return pixels + (False,)
    n = len(items.frame)
    images.read_windows(items.frame, items.origins, square.real[:n])
    return square.real, np.zeros(n, np.int64), True


def extract_spectra(images, items, weighting, groups, ctf_params, square, circle_precrop, decentre, out, out_weights):
    """:func:`~relion_py.kernels.tomography.extraction.extract_weighted_spectra` for ``items`` of the tilt series
    ``images``: the weighted spectra ``out``, ``out_weights`` ((m, s, s//2+1) complex64 / float32, returned), made
    with the calling thread's :class:`~relion_py.runtime.fftw_plans.RealFFT` ``square`` of the unbinned squares
    (capacity >= m). ``circle_precrop`` applies RELION's circle mask (radius s0/2, fall-off 5) to the squares
    first (relion_tomo_subtomo's --circle_precrop; relion_tomo_reconstruct_particle's cropCircle unless
    --no_circle_crop). weighting, groups, ctf_params, decentre: as for
    :func:`~relion_py.kernels.tomography.extraction.weight_spectra`. Raises :class:`NonFiniteFrame` for an item whose
    pixels or weights are not finite."""
    source, slices, gathered = _window_source(images, items, square)
    _check_finite(extract_weighted_spectra(source, slices, items.origins, gathered, weighting, items.shifts,
                                           items.frame, groups, ctf_params, square.kernel_args(), circle_precrop,
                                           decentre, out, out_weights), items)
    return out, out_weights


def extract_stack2d(images, items, weighting, groups, ctf_params, square, box, out, circle_precrop, boundary, do_crop,
                    grid_precorrect):
    """:func:`~relion_py.kernels.tomography.extraction.stack2d_images` for ``items`` of the tilt series ``images``
    (weighting: the tomogram's ``TiltWeighting``; groups, ctf_params: per item, as :func:`particle_tilt_items`).
    square, box: the thread's :class:`~relion_py.runtime.fftw_plans.RealFFT`."""
    source, slices, gathered = _window_source(images, items, square)
    _check_finite(stack2d_images(source, slices, items.origins, gathered, weighting, items.shifts, items.frame, groups,
                                 ctf_params, square.kernel_args(), box.kernel_args(), out, circle_precrop, boundary,
                                 do_crop, grid_precorrect), items)
    return out


def defocus_per_item(tomogram, geom, items):
    """(m, 6) CTF parameters per item: defocus U, V shifted by the particle's depth
    (hand · ps · slope · depth, ``Tomogram::getCtf``), angle, B-factor, phase shift, scale."""
    f = items.frame
    d_f = tomogram.hand * tomogram.pixel_size * tomogram.defocus_slope * geom.depth[items.particle, f]
    return np.stack([tomogram.defocus_u[f] + d_f, tomogram.defocus_v[f] + d_f, tomogram.defocus_angle[f],
                     tomogram.ctf_bfactor[f], tomogram.phase_shift[f], tomogram.ctf_scale[f]], axis=1)


class NonFiniteFrame(RelionPyError):
    """A particle's item of one tilt image gives NaN or Inf values (RELION passes them silently into its output):
    ``what`` says which."""

    def __init__(self, frame, what):
        super().__init__(f"frame {frame}: {what}")
        self.frame, self.what = frame, what

    def naming(self, tomogram):
        """The error line, naming the tilt series and the frame's image."""
        return RelionPyError(f"tilt series {tomogram.name}, frame {self.frame} (row {self.frame + 1}, "
                             f"{tomogram.micrograph_names[self.frame]}): {self.what}")


_NON_FINITE = {
    NON_FINITE_PIXELS: "NaN or Inf pixels where a particle is cut out (or pixel values so large that its Fourier "
                       "transform overflows)",
    NON_FINITE_WEIGHTS: "a particle's CTF x dose weights are NaN or infinite: check the frame's rlnDefocusU/V, "
                        "rlnCtfScalefactor, rlnCtfBfactor and rlnMicrographPreExposure, and the tomogram's "
                        "rlnTomoHand and rlnTomoDefocusSlope",
}


def _check_finite(found, items):
    """Raise :class:`NonFiniteFrame` for what a kernel found not finite: (item, what) or (-1, 0)."""
    item, what = found
    if item >= 0:
        raise NonFiniteFrame(int(items.frame[item]), _NON_FINITE[what])
