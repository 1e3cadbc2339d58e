"""Independent plain-numpy reference of RELION 5's ``relion_tomo_subtomo --stack2d``.

Written only from the algorithm description (RELION's SubtomoProgram and extraction.h, as docs/extraction.md
summarises them), *not* from relion_py's implementation: it only borrows relion_py's STAR/MRC readers.  Everything is done per particle and per
frame, in double precision, in the order the spec describes; clarity over speed.

Main entry point: ``reference_stack2d(project_dir, tomograms_star, particles_star, box, crop, ...)``
returns a ``Reference2D`` with

* ``stacks``: ``{rlnTomoParticleName: float32 array (k, crop, crop)}`` (visible frames, row order),
* ``particles``: list of dicts for the kept particles in output order (tomograms.star order, then input
  order) with the predicted particles.star values (rlnTomoVisibleFrames, rlnCenteredCoordinate*Angst,
  rlnImageName relative to the output folder, ...),
* ``removed``: names of the particles dropped by the visibility test,
* ``pixel_size``: binned pixel size per tomogram (MRC header).

Not supported (not needed by the stack2d tests): motion trajectories, 2-D deformations, --real_subtomo.
"""
import math
import os
from dataclasses import dataclass, field

import numpy as np

from relion_py.io.mrc import read_mrc
from relion_py.io.star import read_star

PI = 3.14159265358979323846


# --------------------------------------------------------------------------------------------------
# small helpers (§0, §14.1, §14.2)

def cround(v):
    """C std::round: half away from zero."""
    return np.sign(v) * np.floor(np.abs(v) + 0.5)


def ctrunc_half(v):
    """(int)(v + 0.5) for v >= 0."""
    return int(math.floor(v + 0.5))


def signed_index(n):
    """Signed frequency index of the y (or z) axis of a length-n grid: Nyquist negative (§0)."""
    y = np.arange(n)
    return np.where(y < n // 2, y, y - n)


def deg2rad(d):
    return d * PI / 180.0


def rot_x(a):
    a = deg2rad(a)
    c, s = math.cos(a), math.sin(a)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def rot_y(a):
    a = deg2rad(a)
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def rot_z(a):
    a = deg2rad(a)
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def euler_matrix(rot, tilt, psi):
    """RELION ZYZ Euler matrix (§3.6)."""
    f, t, p = deg2rad(rot), deg2rad(tilt), deg2rad(psi)
    cf, sf, ct, st, cp, sp = math.cos(f), math.sin(f), math.cos(t), math.sin(t), math.cos(p), math.sin(p)
    return np.array([
        [cp * ct * cf - sp * sf, cp * ct * sf + sp * cf, -cp * st],
        [-sp * ct * cf - cp * sf, -sp * ct * sf + cp * cf, sp * st],
        [st * cf, st * sf, ct],
    ])


def float32_to_relion_half(a):
    """RELION's float2half (§11.5), returned as the float32 values of the stored halves."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    bits = a.view(np.uint32).astype(np.int64)
    sign = (bits >> 31) & 1
    mag = bits & 0x7FFFFFFF
    special = (mag >> 23) == 0xFF
    rounded = mag + 0x1000                       # add 1 to bit 12, then truncate 13 bits
    exp = (rounded >> 23) - 127 + 15
    mant = (rounded >> 13) & 0x3FF
    half = np.where(exp <= 0, 0, (exp << 10) | mant)
    half = np.where(exp >= 31, 0x7BFF, half)     # >= 2^16 -> 65504, no inf
    half = np.where(special, (31 << 10) | ((mag >> 13) & 0x3FF), half)
    half = (sign << 15) | half
    return half.astype(np.uint16).view(np.float16).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# inputs (§2)

@dataclass
class Tomogram:
    name: str
    kV: float
    Cs: float
    Q0: float
    ps: float
    hand: float
    size: tuple                  # (w0, h0, d0)
    slope: float
    bfac_per_dose: float
    frames: list                 # per-tilt rows (dicts), row order
    images: np.ndarray = None    # (fc, H, W) float32
    row: dict = field(default_factory=dict)

    @property
    def centre(self):
        w0, h0, d0 = self.size
        return np.array([w0 / 2.0, h0 / 2.0, d0 / 2.0])

    def projection(self, f):
        """(R_f, 4x4 P_f) of frame f (§3.1)."""
        fr = self.frames[f]
        w0, h0, d0 = self.size
        H, W = self.images.shape[1:]
        if all(k in fr for k in ("rlnTomoProjX", "rlnTomoProjY", "rlnTomoProjZ", "rlnTomoProjW")):
            labels = ("rlnTomoProjX", "rlnTomoProjY", "rlnTomoProjZ", "rlnTomoProjW")
            P = np.array([list(fr[k]) for k in labels], dtype=float)
            return P[:3, :3], P
        R = rot_z(fr["rlnTomoZRot"]) @ rot_y(fr["rlnTomoYTilt"]) @ rot_x(fr.get("rlnTomoXTilt", 0.0))
        c_spec = np.array([w0 // 2, h0 // 2, d0 // 2], dtype=float)
        c_img = np.array([W // 2, H // 2, 0], dtype=float)
        t_px = np.array([fr["rlnTomoXShiftAngst"] / self.ps, fr["rlnTomoYShiftAngst"] / self.ps, 0.0])
        P = np.eye(4)
        P[:3, :3] = R
        P[:3, 3] = -R @ c_spec + c_img + t_px
        return R, P


def _rows(df):
    return [dict(r) for _, r in df.iterrows()]


def _load_image(project_dir, name, cache):
    if "@" in name:
        idx, path = name.split("@", 1)
        idx = int(idx) - 1
    else:
        idx, path = 0, name
    if path not in cache:
        cache[path] = read_mrc(os.path.join(project_dir, path))[0]
    return cache[path][idx]


def read_tomograms(project_dir, tomograms_star):
    blocks = read_star(os.path.join(project_dir, tomograms_star))
    out = []
    cache = {}
    for row in _rows(blocks["global"]):
        name = str(row["rlnTomoName"])
        ts_blocks = read_star(os.path.join(project_dir, row["rlnTomoTiltSeriesStarFile"]))
        frames = _rows(ts_blocks[name])
        t = Tomogram(
            name=name, kV=float(row["rlnVoltage"]), Cs=float(row["rlnSphericalAberration"]),
            Q0=float(row["rlnAmplitudeContrast"]), ps=float(row["rlnTomoTiltSeriesPixelSize"]),
            hand=float(row["rlnTomoHand"]),
            size=(int(row["rlnTomoSizeX"]), int(row["rlnTomoSizeY"]), int(row["rlnTomoSizeZ"])),
            slope=float(row.get("rlnTomoDefocusSlope", 1.0)),
            bfac_per_dose=float(row.get("rlnCtfBfactorPerElectronDose", 0.0)),
            frames=frames, row=row)
        t.images = np.stack([_load_image(project_dir, fr["rlnMicrographName"], cache) for fr in frames]
                            ).astype(np.float32)
        out.append(t)
    return out


def read_particles(project_dir, particles_star, tomograms):
    """(optics rows, particle rows) with the optics table synthesised and names generated as RELION does."""
    blocks = read_star(os.path.join(project_dir, particles_star))
    particles = _rows(blocks["particles"])
    if "optics" in blocks:
        optics = _rows(blocks["optics"])
    else:
        by_name = {t.name: t for t in tomograms}
        optics, group_of = [], {}
        for p in particles:
            t = by_name.get(str(p["rlnTomoName"]))
            if t is None:
                continue
            key = t.row.get("rlnOpticsGroupName", t.name)
            if key not in group_of:
                group_of[key] = len(optics) + 1
                optics.append({"rlnVoltage": t.kV, "rlnSphericalAberration": t.Cs,
                               "rlnAmplitudeContrast": t.Q0, "rlnTomoTiltSeriesPixelSize": t.ps,
                               "rlnOpticsGroup": group_of[key], "rlnOpticsGroupName": key})
        for p in particles:
            t = by_name.get(str(p["rlnTomoName"]))
            if t is not None:
                p["rlnOpticsGroup"] = group_of[t.row.get("rlnOpticsGroupName", t.name)]
    counters = {}
    for p in particles:
        tomo = str(p["rlnTomoName"])
        counters[tomo] = counters.get(tomo, 0) + 1
        if "rlnTomoParticleName" not in p:
            p["rlnTomoParticleName"] = f"{tomo}/{counters[tomo]}"
    return optics, particles


# --------------------------------------------------------------------------------------------------
# per-tomogram tables (§5, §6, §7, §9.6)

def dose_weights(tomo, s2D, binning):
    """DW_f on the s2D half grid, float32, shape (fc, s2D, s2D//2+1) (§5)."""
    pxb = tomo.ps * binning
    x = np.arange(s2D // 2 + 1)[None, :]
    ky = signed_index(s2D)[:, None]
    k = np.sqrt(x * x + ky * ky) / (s2D * pxb)
    out = []
    for fr in tomo.frames:
        dose = float(fr["rlnMicrographPreExposure"])
        if tomo.bfac_per_dose > 0:
            w = np.exp(-tomo.bfac_per_dose * dose / 4.0 * k * k)
        else:
            with np.errstate(divide="ignore"):
                ne = 0.245 * k ** (-1.665) + 2.81
            w = np.exp(-0.5 * dose / ne)
        out.append(w.astype(np.float32))
    return np.array(out)


def zernike_radial(n, m, rho):
    if (n - m) % 2:
        return np.zeros_like(rho)
    out = np.zeros_like(rho)
    for k in range((n - m) // 2 + 1):
        c = (-1) ** k * math.factorial(n - k) / (
            math.factorial(k) * math.factorial((n + m) // 2 - k) * math.factorial((n - m) // 2 - k))
        out = out + c * rho ** (n - 2 * k)
    return out


def zernike(m, n, X, Y):
    rho = np.sqrt(X * X + Y * Y)
    theta = np.arctan2(Y, X)
    r = zernike_radial(n, abs(m), rho)
    return r * np.cos(m * theta) if m >= 0 else r * np.sin(-m * theta)


def aberration_sum(coeffs, s2D, binned_pixel_size, odd):
    """Σ c_i Z_i on the s2D half grid (§7)."""
    a_s = binned_pixel_size * s2D
    X = (np.arange(s2D // 2 + 1)[None, :] / a_s) * np.ones((s2D, 1))
    Y = (signed_index(s2D)[:, None] / a_s) * np.ones((1, s2D // 2 + 1))
    g = np.zeros((s2D, s2D // 2 + 1))
    for i, c in enumerate(coeffs):
        if odd:
            k = int(math.floor((math.sqrt(1 + 4 * i) - 1) / 2))
            n = 2 * k + 1
            m = 2 * (i - k * k - k) - n
        else:
            k = int(math.floor(math.sqrt(i)))
            m = 2 * (i - k * k - k)
            n = 2 * k
        g += c * zernike(m, n, X, Y)
    return g


def noise_weights(tomo, s2D, binning):
    """NW_f on the s2D half grid (§9.6)."""
    b0 = ctrunc_half(binning * s2D)
    st = int(b0 / 2.0)
    fc, H, W = tomo.images.shape
    nb = b0 // 2 + 1
    # radial bin geometry on the b0 half grid
    xb = np.arange(b0 // 2 + 1)[None, :]
    yb = signed_index(b0)[:, None]
    rb = np.sqrt(xb * xb + yb * yb) * np.ones((b0, 1))
    r0 = np.floor(rb).astype(int)
    frac = rb - r0
    # mapping onto the s2D half grid
    x = np.arange(s2D // 2 + 1)[None, :]
    y = np.arange(s2D)
    ky = np.where(y < s2D / 2.0, y, y - s2D)[:, None]
    rd = binning * np.sqrt(x * x + ky * ky) * np.ones((s2D, 1))
    out = []
    for f in range(fc):
        img = tomo.images[f].astype(np.float64)
        acc = np.zeros((b0, b0 // 2 + 1))
        count = 0
        for by in range((H - b0) // st + 1):
            for bx in range((W - b0) // st + 1):
                block = img[by * st: by * st + b0, bx * st: bx * st + b0]
                acc += np.abs(np.fft.rfft2(block, norm="ortho")) ** 2
                count += 1
        P = acc / count
        s = np.zeros(nb)
        wsum = np.zeros(nb)
        lo, hi = r0 < nb, r0 + 1 < nb                # bins beyond b0/2 are dropped
        np.add.at(s, r0[lo], ((1 - frac) * P)[lo])
        np.add.at(wsum, r0[lo], (1 - frac)[lo])
        np.add.at(s, r0[hi] + 1, (frac * P)[hi])
        np.add.at(wsum, r0[hi] + 1, frac[hi])
        avg = np.where(wsum > 0, s / np.where(wsum > 0, wsum, 1), 0.0)
        w1d = np.where(avg > 0, 1.0 / np.sqrt(np.where(avg > 0, avg, 1)), 0.0)
        w1d = w1d.astype(np.float32).astype(np.float64)
        ri = np.floor(rd).astype(int)
        fr = rd - ri
        nw = np.empty_like(rd)
        last = ri + 1 >= nb
        nw[last] = w1d[-1]
        ok = ~last
        nw[ok] = (1 - fr[ok]) * w1d[ri[ok]] + fr[ok] * w1d[ri[ok] + 1]
        out.append(nw.astype(np.float32))
    return np.array(out)


def ctf_half_grid(tomo, f, defocus_shift, s2D, pxb, gamma_offset=None):
    """CTF_f on the s2D half grid for frame f with defocus shifted by ``defocus_shift`` Å (§6), float32."""
    fr = tomo.frames[f]
    V = tomo.kV * 1e3
    lam = 12.2643247 / math.sqrt(V * (1 + V * 0.978466e-6))
    Cs_A = tomo.Cs * 1e7
    Q0 = tomo.Q0
    K1 = PI * lam
    K2 = PI / 2 * Cs_A * lam ** 3
    K3 = math.atan(Q0 / math.sqrt(1 - Q0 * Q0))
    K4 = -float(fr.get("rlnCtfBfactor", 0.0)) / 4.0
    K5 = deg2rad(float(fr.get("rlnPhaseShift", 0.0)))
    scale = float(fr.get("rlnCtfScalefactor", 1.0))
    phi = deg2rad(float(fr["rlnDefocusAngle"]))
    U = float(fr["rlnDefocusU"]) + defocus_shift
    Vd = float(fr["rlnDefocusV"]) + defocus_shift
    Axx = -(U * math.cos(phi) ** 2 + Vd * math.sin(phi) ** 2)
    Axy = (Vd - U) * math.sin(phi) * math.cos(phi)
    Ayy = -(U * math.sin(phi) ** 2 + Vd * math.cos(phi) ** 2)
    X = np.arange(s2D // 2 + 1)[None, :] / (s2D * pxb)
    Y = signed_index(s2D)[:, None] / (s2D * pxb)
    u2 = X * X + Y * Y
    gamma = K1 * (Axx * X * X + 2 * Axy * X * Y + Ayy * Y * Y) + K2 * u2 * u2 - K5 - K3
    if gamma_offset is not None:
        gamma = gamma + gamma_offset
    ctf = -np.sin(gamma) * np.exp(K4 * u2) * scale
    small = np.abs(ctf) < 1e-8
    ctf = np.where(small, np.where(ctf >= 0, 1e-8, -1e-8), ctf)
    return ctf.astype(np.float32)


# --------------------------------------------------------------------------------------------------
# 2-D steps (§8, §9.2)

def crop_circle(img, boundary, falloff):
    """cropCircle of one slice (§8.6)."""
    h, w = img.shape
    mx, my = w // 2, h // 2
    R = mx - boundary
    y, x = np.mgrid[0:h, 0:w]
    r = np.sqrt((x - mx) ** 2.0 + (y - my) ** 2.0)
    outside = r > R
    mean_out = img[outside].mean() if outside.any() else 0.0
    mask = np.where(r < R - falloff, 1.0,
                    np.where(r < R, 0.5 - 0.5 * np.cos(PI * (R - r) / falloff), 0.0))
    return mask * (img - mean_out)


def grid_precorrection(img, boundary):
    h, w = img.shape
    R = w / 2 - boundary
    mx = w // 2
    y, x = np.mgrid[0:h, 0:w]
    r = np.sqrt((x - mx) ** 2.0 + (y - mx) ** 2.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        c = np.where(r < 1, 1.0, np.where(r < R - 1, r / np.sin(PI * r / R), 0.0))
    return img * c


def decentred_irfft2(D, s):
    """(-1)^(x+y) modulation, then ortho c2r of size (s, s) (§0)."""
    y, x = np.mgrid[0:D.shape[0], 0:D.shape[1]]
    return np.fft.irfft2(D * np.where((x + y) % 2, -1.0, 1.0), s=(s, s), norm="ortho")


def extract_frame(image, c, s02D, s2D, binning, circle_precrop):
    """§8.1-§8.5 for one visible frame: complex (s2D, s2D//2+1) spectrum centred on c (ts px)."""
    H, W = image.shape
    o = cround(np.asarray(c, dtype=float)) - s02D // 2               # (ox, oy)
    ys = np.clip(np.arange(s02D) + int(o[1]), 0, H - 1)
    xs = np.clip(np.arange(s02D) + int(o[0]), 0, W - 1)
    sq = image[np.ix_(ys, xs)].astype(np.float64)
    if circle_precrop:
        sq = crop_circle(sq, 0, 5)
    F = np.fft.rfft2(np.fft.ifftshift(sq), norm="ortho")
    if binning != 1.0:
        w0, h0 = 2 * (s02D // 2), s02D
        w1 = ctrunc_half(w0 / binning)
        wh1 = w1 // 2 + 1
        h1 = ctrunc_half(h0 / binning)
        rows = [y if y < h1 // 2 else y - h1 + h0 for y in range(h1)]
        G = F[rows, :wh1] / binning
    else:
        G, wh1, h1 = F, F.shape[1], F.shape[0]
    pos = (np.asarray(c, dtype=float) - o) / binning
    w, h = 2 * (wh1 - 1), h1
    t = (pos[0] - w // 2, pos[1] - h // 2)
    x = np.arange(wh1)[None, :]
    ky = signed_index(h)[:, None]
    D = np.zeros((s2D, s2D // 2 + 1), dtype=np.complex128)
    D[:h1, :wh1] = G * np.exp(2j * PI * (t[0] * x / w + t[1] * ky / h))
    return D


# --------------------------------------------------------------------------------------------------
# the program (§3, §4, §9, §11)

@dataclass
class Reference2D:
    stacks: dict
    particles: list
    removed: list
    pixel_size: dict
    optics: list


def reference_stack2d(project_dir, tomograms_star, particles_star, box, crop=None, binning=1.0, *,
                      out_dir="out/", ctf=True, invert=True, circle_crop=True, circle_precrop=False,
                      grid_precorr=False, whiten=False, min_frames=1, max_dose=-1.0, apply_offsets=True,
                      float16=False):
    """Predict the stack2d output of ``relion_tomo_subtomo`` (see module docstring)."""
    project_dir = str(project_dir)
    s2D = box
    crop = box if crop is None or crop < 0 else crop
    binning = float(binning)
    s02D = ctrunc_half(binning * s2D)
    boundary = (box - crop) // 2
    radius = binning * crop / 2.0
    sign = -1.0 if invert else 1.0
    if not out_dir.endswith("/"):
        out_dir += "/"

    tomograms = read_tomograms(project_dir, tomograms_star)
    optics, particles = read_particles(project_dir, particles_star, tomograms)
    optics_by_id = {int(o["rlnOpticsGroup"]): o for o in optics}

    # aberrations: built once, with optics group 0's pixel size (§7)
    aber_px = binning * float(optics[0]["rlnTomoTiltSeriesPixelSize"])
    even_g, odd_p = {}, {}
    for o in optics:
        gid = int(o["rlnOpticsGroup"])
        if "rlnEvenZernike" in o and o["rlnEvenZernike"] is not None and len(o["rlnEvenZernike"]):
            even_g[gid] = aberration_sum(list(o["rlnEvenZernike"]), s2D, aber_px, odd=False)
        if "rlnOddZernike" in o and o["rlnOddZernike"] is not None and len(o["rlnOddZernike"]):
            g = aberration_sum(list(o["rlnOddZernike"]), s2D, aber_px, odd=True)
            odd_p[gid] = (np.cos(g) + 1j * np.sin(g)).astype(np.complex64).astype(np.complex128)

    has_centred = all(f"rlnCenteredCoordinate{a}Angst" in particles[0] for a in "XYZ") if particles else True
    first_name = None
    for t in tomograms:
        for p in particles:
            if str(p["rlnTomoName"]) == t.name:
                first_name = str(p["rlnTomoParticleName"])
                break
        if first_name is not None:
            break
    per_tomo_dirs = first_name is not None and "/" not in first_name

    stacks, kept, removed, pixel_size = {}, [], [], {}
    for tomo in tomograms:
        mine = [p for p in particles if str(p["rlnTomoName"]) == tomo.name]
        if not mine:
            continue
        fc, H, W = tomo.images.shape
        pxb = tomo.ps * binning
        pixel_size[tomo.name] = pxb
        DW = dose_weights(tomo, s2D, binning) if ctf else None
        NW = noise_weights(tomo, s2D, binning) if whiten else None
        projections = [tomo.projection(f) for f in range(fc)]
        for p in mine:
            og = int(p["rlnOpticsGroup"])
            ps_g = float(optics_by_id[og]["rlnTomoTiltSeriesPixelSize"])
            if "rlnTomoSubtomogramRot" in p:
                A_sub = euler_matrix(float(p["rlnTomoSubtomogramRot"]),
                                     float(p.get("rlnTomoSubtomogramTilt", 0.0)),
                                     float(p.get("rlnTomoSubtomogramPsi", 0.0)))
            else:
                A_sub = np.eye(3)
            if has_centred:
                centred = np.array([float(p[f"rlnCenteredCoordinate{a}Angst"]) for a in "XYZ"])
                pos = centred / ps_g + tomo.centre
            else:
                pos = np.array([float(p[f"rlnCoordinate{a}"]) for a in "XYZ"])
            if apply_offsets:
                origin = np.array([float(p.get(f"rlnOrigin{a}Angst", 0.0)) for a in "XYZ"])
                pos = pos - A_sub @ origin / ps_g
            # visibility (§4)
            centres, visible = [], []
            for f in range(fc):
                q = (projections[f][1] @ np.append(pos, 1.0))[:2]
                centres.append(q)
                vis = radius < q[0] < W - radius and radius < q[1] < H - radius
                if max_dose > 0:
                    vis = vis and float(tomo.frames[f]["rlnMicrographPreExposure"]) <= max_dose
                visible.append(vis)
            name = str(p["rlnTomoParticleName"])
            if sum(visible) < min_frames:
                removed.append(name)
                continue
            root = (f"{out_dir}Subtomograms/{tomo.name}/{name}" if per_tomo_dirs
                    else f"{out_dir}Subtomograms/{name}")
            row = dict(p)
            row["rlnTomoVisibleFrames"] = [int(v) for v in visible]
            row["rlnImageName"] = root + "_stack2d.mrcs"
            if apply_offsets:
                for i, a in enumerate("XYZ"):
                    row[f"rlnOrigin{a}Angst"] = 0.0
                    row[f"rlnCenteredCoordinate{a}Angst"] = (pos[i] - tomo.centre[i]) * ps_g
            for a in "XYZ":
                row.pop(f"rlnCoordinate{a}", None)
            kept.append(row)

            frames_out = []
            for f in range(fc):
                if not visible[f]:
                    continue
                D = extract_frame(tomo.images[f], centres[f], s02D, s2D, binning, circle_precrop)
                if ctf:
                    R = projections[f][0]
                    dz = (R @ (pos - tomo.centre))[2]
                    dF = tomo.hand * tomo.ps * tomo.slope * dz
                    C = ctf_half_grid(tomo, f, dF, s2D, pxb, even_g.get(og))
                    c = C.astype(np.float64) * DW[f].astype(np.float64)
                    D = D * (sign * c)
                else:
                    D = D * sign
                if og in odd_p:
                    D = D * np.conj(odd_p[og])
                if whiten:
                    D = D * NW[f]
                D = D / binning
                img = decentred_irfft2(D, s2D)
                if circle_crop:
                    img = crop_circle(img, boundary, 5)
                if grid_precorr:
                    img = grid_precorrection(img, boundary)
                frames_out.append(img[boundary:s2D - boundary, boundary:s2D - boundary])
            stack = np.array(frames_out, dtype=np.float32).reshape(-1, s2D - 2 * boundary, s2D - 2 * boundary)
            if float16:
                stack = float32_to_relion_half(stack)
            stacks[name] = stack

    out_optics = []
    for o in optics:
        o = dict(o)
        o["rlnCtfDataAreCtfPremultiplied"] = int(bool(ctf))
        o["rlnImageDimensionality"] = 2
        o["rlnTomoSubtomogramBinning"] = binning
        o["rlnImagePixelSize"] = binning * float(o["rlnTomoTiltSeriesPixelSize"])
        o["rlnImageSize"] = crop
        out_optics.append(o)
    return Reference2D(stacks=stacks, particles=kept, removed=removed, pixel_size=pixel_size,
                       optics=out_optics)


def write_reference(ref, dest, project_out_dir="out/"):
    """Write the reference stacks as MRC files laid out like the CLI's output folder ``dest``
    (``dest`` corresponds to ``project_out_dir``). Float32 (the values already carry any float16 rounding)."""
    import mrcfile
    for row in ref.particles:
        rel = row["rlnImageName"][len(project_out_dir):]
        path = os.path.join(str(dest), rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with mrcfile.new(path, overwrite=True) as m:
            stack = ref.stacks[row["rlnTomoParticleName"]]
            m.set_data(stack[0] if len(stack) == 1 else stack)   # one image: nz = 1, as RELION writes it
            px = ref.pixel_size[str(row["rlnTomoName"])]
            m.voxel_size = (px, px, 1.0)
