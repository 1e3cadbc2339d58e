"""The driver of RELION's classic ``BackProjector`` for relion_reconstruct: the padded grid's sizes
(``Projector::initialiseData``), the per-particle work of ``Reconstructor::backprojectOneParticle``, the
insertion of all particles, and ``Reconstructor::reconstruct`` → ``BackProjector::symmetrise`` and
``BackProjector::reconstruct`` (src/reconstructor.cpp, src/backprojector.cpp).

The numerical steps themselves are in the other modules of :mod:`relion_py.kernels.classic`; images come through a
reader object (:class:`relion_py.io.particle_images.ImageReader`), so this module does no file I/O.
"""
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import scipy.fft

from ...runtime.errors import RelionPyError
from ..ctf import astigmatism_form, ctf_constants, ctf_image
from .fftw_arrays import center_fft_by_sign, normalise_and_weight, shift_fourier, window_fourier_transform
from .insertion import SlabEntries, backproject_2d_to_3d, backrotate_3d
from .macros import relion_round
from .mask import soft_mask_outside_map
from .matrix2d import inverse_3x3
from .padded_grid import new_accumulator, split_accumulator
from .projector import decenter, gridding_correct
from .reconstruct import add_map_term, blob_multiply, fsc_tau2, ft_blob_table, gridding_update, radial_floor_divide
from .symmetrise import apply_helical_symmetry, apply_point_group_symmetry, enforce_hermitian_symmetry


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
        P = relion_round(float(f(r_max) * pf32))
        r_max_ref = int(float(f(r_max) * pf32))
        return cls(ori_size=ori_size, pf32=pf32, r_max=r_max, P=P, pad=2 * (P + 1) + 1, max_r2=P * P,
                   min_r2_nn=relion_round(float(f(r_min_nn) * pf32)) ** 2,
                   r_max_ref_2=r_max_ref * r_max_ref,
                   r_min_nn_ref_2=int(float(f(r_min_nn * r_min_nn) * pf32 * pf32)),
                   round_max_r2=relion_round(float(f(r_max) * pf32 * f(r_max) * pf32)))

    def accumulator(self):
        return new_accumulator(self.pad)


# --------------------------------------------------------------------------------------------------------
# Insertion of all particles
# --------------------------------------------------------------------------------------------------------

class ParticleInserter:
    """Per-particle work of ``backprojectOneParticle``: read, transform, shift, CTF / weights, insert."""

    def __init__(self, opts, parts, grid, n_box, angpix, data_dim, reader):
        self.opts, self.parts, self.grid, self.reader = opts, parts, grid, reader
        self.data_dim = data_dim
        # A · ρ (applyScaleDifference) then pf · A⁻¹, per particle
        ratio = (parts.box * parts.pixel) / (n_box * angpix)
        mats = parts.rotations * ratio[parts.groups][:, None, None]
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            self.ainv = np.array([inverse_3x3(m) * grid.pf for m in mats]).reshape(-1, 3, 3)
        if not np.isfinite(self.ainv).all():     # the rescale ratio under- or overflowed: a singular matrix
            raise RelionPyError(f"--angpix {angpix:g} is too far from the particles' pixel sizes "
                                f"({', '.join(f'{v:g}' for v in np.unique(parts.pixel))} A) to rescale them to it")
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
        divisor = float(img.size)      # f /= divisor: with the CTF multiplication when there is no shift
        t = parts.shifts_px[p]
        if abs(t[0]) > 0. or abs(t[1]) > 0. or abs(t[2]) > 0.:
            normalise_and_weight(f, divisor)
            divisor = None
            shift_fourier(f, n, t[:self.data_dim])
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
                fctf = ctf_image(n, parts.pixel[g], consts, astig, c[6], opts.ctf_phase_flipped,
                                    opts.only_flip_phases, opts.ctf_intact_first_peak)
                normalise_and_weight(f, divisor, None if premult else fctf)
                divisor = None
                fctf *= fctf
            else:
                fctf = self.ones(f.shape)
        else:
            if opts.ctf:
                fctf, multi = self.ctf_volume(p, f.shape)
                normalise_and_weight(f, divisor, None if premult else fctf)
                divisor = None
                if multi is not None:
                    f *= multi
                    fctf = fctf * multi if not opts.ctf3d_not_squared else fctf * (fctf * multi)
                elif opts.ctf3d_not_squared:
                    fctf = fctf * fctf
            else:
                fctf = self.ones(f.shape)
        if divisor is not None:
            normalise_and_weight(f, divisor)
        if opts.fom_weighting:
            f *= parts.fom[p]
            fctf = fctf * parts.fom[p]
        return f, fctf

    def resolve(self, p, f, fctf, buf, scratch):
        """Particle p's insertion entries into ``scratch``; returns their counts per slab and total."""
        g, nn = self.grid, self.opts.NN
        if f.ndim == 2:
            return buf.resolve_2d(scratch, f, fctf, self.ainv[p], g.max_r2, g.min_r2_nn, nn)
        return buf.resolve_3d(scratch, f, fctf, self.ainv[p], g.r_max_ref_2, g.r_min_nn_ref_2, nn)

    def insert(self, p, f, fctf, acc):
        """Direct insertion of one particle (for an image too large for the entry buffer)."""
        g, nn = self.grid, self.opts.NN
        if f.ndim == 2:
            backproject_2d_to_3d(acc, f, fctf, self.ainv[p], g.max_r2, g.min_r2_nn, nn=nn,
                                    center_sign=True, zero_dc=True)
        else:
            backrotate_3d(acc, f, fctf, self.ainv[p], g.r_max_ref_2, g.r_min_nn_ref_2, nn=nn,
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
            return window_fourier_transform(np.asarray(vol, np.float64), n), None
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


#: Memory for resolved insertion entries (48 bytes each): about 20 pseudo-subtomograms of 96³ per batch. Only
#: speed and memory depend on it, not the sums: each batch is one more pass over the padded grid (bench e,
#: --j 1 / --j 2: 256 MiB 34.7 / 24.0 s, 740 / 803 MiB peak RSS; 128 MiB 35.7 / 25.6 s, 616 / 684 MiB). No
#: size brings e down to RELION's memory (bench/reconstruct_images.md, "Why e stays above RELION's memory"), so
#: the buffer is sized for speed.
ENTRY_BUFFER_BYTES = 256 * 2**20
#: Target size of one slab of the padded grid: its planes stay in the cache while a batch passes, and a splat
#: that reaches into the next slab is stored twice (in 1 of 9 planes for the 195³ grid of a 96³ box).
SLAB_BYTES = 4 * 2**20


class GridInsertion:
    """Insertion of ranges of particles into an accumulator.

    A pipeline: ``threads`` workers read, transform, weigh and resolve particles (``ParticleInserter.prepare``,
    ``SlabEntries.resolve_*``) into their own scratch arrays, up to ``threads + 1`` particles ahead, while the
    calling thread takes them in particle order: it reserves each one's room in the entry buffer, copies its
    entries there sorted by slab, and when the buffer is full inserts the whole batch slab by slab
    (``SlabEntries.insert``) as the workers go on. The order of the additions depends on the particle order
    alone: the sums are those of RELION's particle-by-particle insertion, bit for bit, whatever the number of
    threads and the buffer's capacity.
    """

    def __init__(self, opts, parts, grid, n_box, angpix, data_dim, reader, threads):
        self.inserter = ParticleInserter(opts, parts, grid, n_box, angpix, data_dim, reader)
        pad = grid.pad
        shape = (pad, pad, pad // 2 + 1)
        self.buf = SlabEntries(shape, max(2, SLAB_BYTES // (shape[1] * shape[2] * 24)), ENTRY_BUFFER_BYTES // 48)
        self.threads = threads
        # one scratch per particle in flight (a worker's, and the one waiting for the calling thread), reused
        self.scratch = [None] * (threads + 1 if threads > 1 else 1)

    def _scratch(self, k, shape):
        if self.scratch[k] is None or len(self.scratch[k]) < np.prod(shape):
            self.scratch[k] = self.buf.scratch(shape)
        return self.scratch[k]

    def insert(self, first, end, acc):
        """Add particles first:end, in order, to ``acc`` (an insertion accumulator of the grid)."""
        inserter, buf, threads = self.inserter, self.buf, self.threads
        parts, slots = inserter.parts, len(self.scratch)
        pool = ThreadPoolExecutor(threads) if threads > 1 else None
        announced = first

        def announce(upto):
            """Have the files of the particles before ``upto`` read in the background (each announced once)."""
            nonlocal announced
            ahead = range(announced, min(end, upto))
            if len(ahead):
                inserter.reader.prefetch([parts.names[p] for p in ahead],
                                         [parts.ctf_names[p] for p in ahead if parts.ctf_names and parts.ctf_names[p]])
                announced = ahead.stop

        def prepare(p):
            f, fctf = inserter.prepare(p)
            scratch = self._scratch((p - first) % slots, f.shape)
            return f, fctf, scratch, inserter.resolve(p, f, fctf, buf, scratch)

        def start(p):
            announce(p + 3 * slots)
            return pool.submit(prepare, p) if pool is not None else p

        pending = []
        try:
            pending.extend(start(p) for p in range(first, min(end, first + slots)))
            for p in range(first, end):
                task = pending.pop(0)
                f, fctf, scratch, counts = task.result() if pool is not None else prepare(task)
                starts = buf.reserve(counts)
                if starts is None:                           # buffer full: insert the batch
                    buf.insert(acc)
                    starts = buf.reserve(counts)
                if starts is None:                           # larger than the whole buffer
                    inserter.insert(p, f, fctf, acc)
                else:
                    buf.place(starts, scratch, counts)
                del f, fctf
                if p + slots < end:                          # its scratch is free again
                    pending.append(start(p + slots))
            buf.insert(acc)
        finally:
            if pool is not None:
                for task in pending:
                    task.cancel()
                pool.shutdown()
        return acc


def reconstruct_grid(acc, grid, opts, data_dim, angpix, symmetry, helical=None, fsc=None, workers=1):
    """Symmetrise the padded grid and turn it into the real-space map (``Reconstructor::reconstruct`` →
    ``BackProjector::symmetrise`` and ``BackProjector::reconstruct``). acc: the insertion accumulator of all
    particles (``padded_grid``), consumed: pass it without keeping a reference, and each array here is freed
    as soon as the next step no longer needs it (the map is made at a fraction of the insertion's memory);
    symmetry: the point group's operators (``point_group_operators``); helical: (hh, rotations) of
    ``helical_rotations`` with --nr_helical_asu ≥ 2, else None; fsc: the FSC curve of --fsc per shell of the
    N-box, or None. Returns (N, N, N) float64."""
    data, weight = split_accumulator(acc)
    del acc
    n, pf = grid.ori_size, grid.pf
    enforce_hermitian_symmetry(data, weight)
    if helical is not None:
        apply_helical_symmetry(data, weight, *helical, opts.helical_rise / angpix, grid.max_r2, n, pf)
    if len(symmetry):
        apply_point_group_symmetry(data, weight, symmetry, grid.max_r2)
    oversampling = float(grid.pf32 * grid.pf32 * grid.pf32)
    fweight = decenter(weight, grid.max_r2)
    if fsc is not None:
        tau2 = fsc_tau2(weight, fsc, pf, oversampling, grid.max_r2)
        add_map_term(fweight, tau2, pf, oversampling, grid.max_r2)
    del weight
    pad = grid.pad
    if not opts.dont_skip_gridding or opts.iter <= 0:
        fconv = decenter(data, grid.max_r2)
        del data
        radial_floor_divide(fconv, fweight, pf, grid.r_max, grid.round_max_r2)
    else:
        table, sampling = ft_blob_table(opts.blob_r * 2., opts.blob_a, opts.blob_m)
        q = np.arange(pad)
        q = np.where(q < pad // 2 + 1, q, q - pad)
        r2 = q[:, None, None] ** 2 + q[None, :, None] ** 2 + np.arange(pad // 2 + 1)[None, None, :] ** 2
        fnewweight = (r2 < grid.max_r2).astype(np.float64)
        del r2
        size_pf = float(np.float32(n) * grid.pf32)
        for _ in range(opts.iter):
            fconv = (fnewweight * fweight).astype(np.complex128)
            m = scipy.fft.irfftn(fconv, s=(pad, pad, pad), workers=workers)
            del fconv
            m *= float(pad) ** 3
            blob_multiply(m, table, sampling, size_pf)
            fconv = scipy.fft.rfftn(m, workers=workers)
            del m
            fconv /= float(pad) ** 3
            gridding_update(fnewweight, fconv, grid.max_r2)
        del fconv
        fconv = decenter(data, grid.max_r2)
        del data
        fconv *= fnewweight
    del fweight
    # windowToOridimRealSpace
    m_size = relion_round(float(grid.pf32 * np.float32(n)))
    m_size += m_size % 2
    g = window_fourier_transform(fconv, m_size)
    del fconv
    center_fft_by_sign(g)
    vol = scipy.fft.irfftn(g, s=(m_size,) * 3, workers=workers)
    del g
    vol *= float(m_size) ** 3
    c0 = m_size // 2 - n // 2
    vol = np.ascontiguousarray(vol[c0:c0 + n, c0:c0 + n, c0:c0 + n])
    if data_dim == 3:
        normfft = float(grid.pf32 * grid.pf32 * grid.pf32)
    else:
        normfft = float(grid.pf32 * grid.pf32 * grid.pf32 * np.float32(n))
    vol /= normfft
    soft_mask_outside_map(vol)
    sinc_power = 1 if (opts.NN and opts.r_min_nn == 0) else 2
    gridding_correct(vol, float(np.float32(n) * grid.pf32), sinc_power)
    return vol
