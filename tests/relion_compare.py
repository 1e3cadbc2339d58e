#!/usr/bin/env python3
# Copy of the workplace judge shared/tools/compare.py (same default tolerances), kept here so the
# test suite runs on a fresh clone without ../shared.
"""Compare a candidate output with a reference (RELION) output.

Usage
  compare.py REFERENCE CANDIDATE [options]

REFERENCE / CANDIDATE may be
  * two MRC files (.mrc .mrcs .map .st, any mode incl. float16)
  * two STAR files (.star)
  * two directories: every .mrc/.mrcs/.star file below REFERENCE is compared with
    the file at the same relative path below CANDIDATE (missing files fail).

MRC report: shape, dtype, voxel size, max |diff|, max |diff| / max |ref|,
RMS(diff) / RMS(ref) and the Pearson correlation. --fsc additionally prints the
FSC (and a masked real-space correlation) of two cubic 3-D maps.

STAR report: for every data block present in the reference, columns missing /
extra, row count, and per common column: numeric max |diff| (and relative) for
numbers and number vectors ([1,0,1]), exact mismatches for strings.

Exit status: 0 if everything is within the tolerances, 1 otherwise, 2 on usage
errors.  Default tolerances are strict-ish float32 level; loosen with flags.
"""

import argparse
import fnmatch
import math
import os
import re
import struct
import sys

import numpy as np

MRC_EXT = ('.mrc', '.mrcs', '.map', '.st', '.rec')


# ----------------------------------------------------------------------------
# MRC reading (mrcfile if available, minimal fallback otherwise)
# ----------------------------------------------------------------------------

_MODES = {0: np.int8, 1: np.int16, 2: np.float32, 6: np.uint16, 12: np.float16}


def read_mrc(path):
    """Return (data [z,y,x] or [n,y,x], voxel_size (x,y,z), mode)."""
    try:
        import mrcfile
        with mrcfile.open(path, permissive=True) as m:
            data = np.array(m.data)
            vs = (float(m.voxel_size.x), float(m.voxel_size.y), float(m.voxel_size.z))
            mode = int(m.header.mode)
        return data, vs, mode
    except ImportError:
        pass
    with open(path, 'rb') as fh:
        hdr = fh.read(1024)
        nx, ny, nz, mode = struct.unpack('<4i', hdr[:16])
        mx, my, mz = struct.unpack('<3i', hdr[28:40])
        cx, cy, cz = struct.unpack('<3f', hdr[40:52])
        nsymbt = struct.unpack('<i', hdr[92:96])[0]
        fh.seek(1024 + nsymbt)
        dt = np.dtype(_MODES[mode]).newbyteorder('<')
        data = np.frombuffer(fh.read(nx * ny * nz * dt.itemsize), dtype=dt).reshape(nz, ny, nx)
    vs = (cx / mx if mx else 0.0, cy / my if my else 0.0, cz / mz if mz else 0.0)
    return data, vs, mode


def fsc_curve(a, b):
    s = a.shape[0]
    fa, fb = np.fft.fftn(a), np.fft.fftn(b)
    f = np.fft.fftfreq(s)
    kz, ky, kx = np.meshgrid(f, f, f, indexing='ij')
    shell = np.round(np.sqrt(kx ** 2 + ky ** 2 + kz ** 2) * s).astype(int)
    out = []
    for i in range(1, s // 2 + 1):
        sel = shell == i
        num = np.real(np.sum(fa[sel] * np.conj(fb[sel])))
        den = math.sqrt(np.sum(np.abs(fa[sel]) ** 2) * np.sum(np.abs(fb[sel]) ** 2))
        out.append(num / den if den > 0 else 0.0)
    return out


def masked_corr(a, b, radius_frac=0.4):
    s = a.shape[0]
    z, y, x = np.mgrid[:s, :s, :s]
    r = np.sqrt((x - s // 2) ** 2 + (y - s // 2) ** 2 + (z - s // 2) ** 2)
    m = r < radius_frac * s
    u, v = a[m] - a[m].mean(), b[m] - b[m].mean()
    return float(np.sum(u * v) / math.sqrt(np.sum(u * u) * np.sum(v * v)))


def fsc_resolution(curve, box, px, thr):
    for i, v in enumerate(curve):
        if v < thr:
            return (box * px / i) if i > 0 else float('inf')
    return 2 * px


def compare_mrc(ref, cand, a, out):
    ok = True
    try:
        r, rvs, rmode = read_mrc(ref)
        c, cvs, cmode = read_mrc(cand)
    except Exception as e:  # noqa
        out(f"FAIL  cannot read: {e}")
        return False
    out(f"  shape      ref {r.shape} cand {c.shape}")
    out(f"  dtype      ref {r.dtype} (mode {rmode}) cand {c.dtype} (mode {cmode})")
    out(f"  voxel size ref {tuple(round(v, 5) for v in rvs)} cand {tuple(round(v, 5) for v in cvs)}")
    if r.shape != c.shape:
        out("FAIL  shape mismatch")
        return False
    if a.strict_dtype and r.dtype != c.dtype:
        out("FAIL  dtype mismatch")
        ok = False
    if not a.ignore_header:
        nvs = 3 if os.path.splitext(ref)[1].lower() != '.mrcs' else 2
        for k in range(nvs):
            if abs(rvs[k] - cvs[k]) > 1e-3 * max(abs(rvs[k]), 1e-6):
                out(f"FAIL  voxel size mismatch (axis {'xyz'[k]}); use --ignore-header to skip")
                ok = False
                break
    r64, c64 = r.astype(np.float64), c.astype(np.float64)
    if not (np.all(np.isfinite(c64))):
        out("FAIL  candidate contains NaN/Inf")
        return False
    d = c64 - r64
    maxabs = float(np.max(np.abs(d))) if d.size else 0.0
    refmax = float(np.max(np.abs(r64))) if r64.size else 0.0
    refrms = float(np.sqrt(np.mean(r64 ** 2))) if r64.size else 0.0
    rel_max = maxabs / refmax if refmax > 0 else (0.0 if maxabs == 0 else float('inf'))
    rel_rms = float(np.sqrt(np.mean(d ** 2))) / refrms if refrms > 0 else (0.0 if maxabs == 0 else float('inf'))
    rf, cf = r64.ravel() - r64.mean(), c64.ravel() - c64.mean()
    den = math.sqrt(float(np.sum(rf * rf)) * float(np.sum(cf * cf)))
    corr = float(np.sum(rf * cf)) / den if den > 0 else (1.0 if maxabs == 0 else 0.0)
    out(f"  max|diff|  {maxabs:.6g}")
    out(f"  max|diff|/max|ref|  {rel_max:.6g}   (tol {a.max_rel})")
    out(f"  rms(diff)/rms(ref)  {rel_rms:.6g}   (tol {a.rms_rel})")
    out(f"  pearson    {corr:.8f}   (min {a.min_corr})")
    if rel_max > a.max_rel or rel_rms > a.rms_rel or corr < a.min_corr:
        ok = False
        out("FAIL  outside tolerance")
    if a.fsc and r.ndim == 3 and r.shape[0] == r.shape[1] == r.shape[2]:
        curve = fsc_curve(r64, c64)
        px = rvs[0] if rvs[0] > 0 else 1.0
        out(f"  masked corr (r<0.4 box) {masked_corr(r64, c64):.4f}")
        out(f"  FSC=0.5 at {fsc_resolution(curve, r.shape[0], px, 0.5):.2f} A, "
            f"FSC=0.143 at {fsc_resolution(curve, r.shape[0], px, 0.143):.2f} A")
        out("  FSC " + " ".join(f"{v:.3f}" for v in curve))
    return ok


# ----------------------------------------------------------------------------
# STAR parsing
# ----------------------------------------------------------------------------

def _tokenize(line):
    toks, i, n = [], 0, len(line)
    while i < n:
        ch = line[i]
        if ch.isspace():
            i += 1
            continue
        if ch in ('"', "'"):
            j = line.find(ch, i + 1)
            j = n if j < 0 else j
            toks.append(line[i + 1:j])
            i = j + 1
            continue
        j = i
        while j < n and not line[j].isspace():
            j += 1
        toks.append(line[i:j])
        i = j
    return toks


def read_star(path):
    """Return {block_name: (columns, rows)}; list blocks become one row."""
    blocks = {}
    name, cols, rows, in_loop = None, [], [], False
    listvals = []

    def close():
        if name is None:
            return
        if in_loop:
            blocks[name] = (cols, rows)
        else:
            blocks[name] = (cols, [listvals] if cols else [])

    with open(path) as fh:
        for raw in fh:
            line = raw.strip()
            if not line or line.startswith('#'):
                continue
            if line.startswith('data_'):
                close()
                name, cols, rows, in_loop, listvals = line[5:], [], [], False, []
                continue
            if line.startswith('loop_'):
                in_loop = True
                continue
            if line.startswith('_'):
                toks = _tokenize(line)
                cols.append(toks[0][1:])
                if not in_loop:
                    listvals.append(toks[1] if len(toks) > 1 else '')
                continue
            if in_loop:
                toks = _tokenize(line)
                if len(toks) >= len(cols) and cols:
                    rows.append(toks[:len(cols)])
    close()
    return blocks


_VEC = re.compile(r'^\[.*\]$')
_PATH = re.compile(r'/.*\.(mrcs?|star|map|st|rec|tiff?|eer)$', re.IGNORECASE)


def _num(v):
    if _VEC.match(v):
        body = v[1:-1].strip()
        try:
            return np.array([float(x) for x in body.split(',')] if body else [], dtype=np.float64)
        except ValueError:
            return None
    try:
        return float(v)
    except ValueError:
        return None


def compare_star(ref, cand, a, out):
    ok = True
    try:
        R, C = read_star(ref), read_star(cand)
    except Exception as e:  # noqa
        out(f"FAIL  cannot read: {e}")
        return False
    ignore = set(x for x in (a.ignore_columns or '').split(',') if x)
    for bname, (rcols, rrows) in R.items():
        if bname not in C:
            out(f"FAIL  block data_{bname} missing in candidate")
            ok = False
            continue
        ccols, crows = C[bname]
        missing = [c for c in rcols if c not in ccols and c not in ignore]
        extra = [c for c in ccols if c not in rcols]
        out(f"  data_{bname}: rows ref {len(rrows)} cand {len(crows)}; columns ref {len(rcols)} cand {len(ccols)}")
        if missing:
            out(f"FAIL    missing columns: {missing}")
            ok = False
        if extra:
            out(f"  note    extra columns in candidate: {extra}" + ("" if a.allow_extra_columns else "  (fail; --allow-extra-columns)"))
            if not a.allow_extra_columns:
                ok = False
        if len(rrows) != len(crows):
            out("FAIL    row count mismatch")
            ok = False
            continue
        if a.match_rows_by and a.match_rows_by in rcols and a.match_rows_by in ccols:
            ki, kj = rcols.index(a.match_rows_by), ccols.index(a.match_rows_by)
            cmap = {row[kj]: row for row in crows}
            if len(cmap) != len(crows) or any(row[ki] not in cmap for row in rrows):
                out(f"FAIL    rows cannot be matched by {a.match_rows_by}")
                ok = False
                continue
            crows = [cmap[row[ki]] for row in rrows]
        for col in rcols:
            if col not in ccols or col in ignore:
                continue
            i, j = rcols.index(col), ccols.index(col)
            maxd, maxrel, nstr, nbad = 0.0, 0.0, 0, 0
            first_bad = None
            for rr, cr in zip(rrows, crows):
                rv, cv = rr[i], cr[j]
                for pre_r, pre_c in a.prefix_map:
                    rv = rv.replace('@' + pre_r, '@' + pre_c) if '@' + pre_r in rv else (
                        pre_c + rv[len(pre_r):] if rv.startswith(pre_r) else rv)
                if a.path_basename and _PATH.search(rv) and _PATH.search(cv):
                    rv = re.sub(r'(?<=@)[^@]*/|^[^@]*/', '', rv)
                    cv = re.sub(r'(?<=@)[^@]*/|^[^@]*/', '', cv)
                rn, cn = _num(rv), _num(cv)
                if rn is not None and cn is not None:
                    rn_a, cn_a = np.atleast_1d(rn), np.atleast_1d(cn)
                    if rn_a.shape != cn_a.shape:
                        nbad += 1
                        first_bad = first_bad or (rv, cv)
                        continue
                    if rn_a.size == 0:
                        continue
                    d = np.abs(rn_a - cn_a)
                    md = float(d.max())
                    if col in a.angle_columns_set:
                        dd = np.abs((rn_a - cn_a + 180.0) % 360.0 - 180.0)
                        md = float(dd.max())
                        d = dd
                    maxd = max(maxd, md)
                    scale = np.abs(rn_a)
                    maxrel = max(maxrel, float((d / np.maximum(scale, 1e-30)).max()))
                    if np.any(d > a.atol + a.rtol * scale):
                        nbad += 1
                        first_bad = first_bad or (rv, cv)
                else:
                    nstr += 1
                    if rv != cv:
                        nbad += 1
                        first_bad = first_bad or (rv, cv)
            status = "ok  " if nbad == 0 else "FAIL"
            if nbad:
                ok = False
            kind = "str" if nstr else "num"
            msg = f"  {status}    {col:<34} {kind}"
            if kind == "num":
                msg += f" max|diff| {maxd:.4g} max rel {maxrel:.3g}"
            if nbad:
                msg += f"  {nbad} bad rows, e.g. ref={first_bad[0]!r} cand={first_bad[1]!r}"
            if nbad or a.verbose:
                out(msg)
    for bname in C:
        if bname not in R:
            out(f"  note  extra block data_{bname} in candidate")
    return ok


# ----------------------------------------------------------------------------

def compare_files(ref, cand, a, out):
    ext = os.path.splitext(ref)[1].lower()
    out(f"== {ref}  vs  {cand}")
    if not os.path.exists(cand):
        out("FAIL  candidate missing")
        return False
    if ext == '.star':
        ok = compare_star(ref, cand, a, out)
    elif ext in MRC_EXT:
        ok = compare_mrc(ref, cand, a, out)
    else:
        out("skip  (unknown type)")
        return True
    out("PASS" if ok else "FAIL")
    return ok


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('reference')
    p.add_argument('candidate')
    g = p.add_argument_group('MRC tolerances')
    g.add_argument('--max-rel', type=float, default=1e-3, help='max |diff| / max |ref| (default 1e-3)')
    g.add_argument('--rms-rel', type=float, default=1e-4, help='rms(diff) / rms(ref) (default 1e-4)')
    g.add_argument('--min-corr', type=float, default=0.99999, help='minimum Pearson correlation (default 0.99999)')
    g.add_argument('--strict-dtype', action='store_true', help='fail if dtypes differ')
    g.add_argument('--ignore-header', action='store_true', help='do not compare voxel sizes')
    g.add_argument('--fsc', action='store_true', help='print FSC / masked correlation for cubic 3-D maps')
    g = p.add_argument_group('STAR tolerances')
    g.add_argument('--rtol', type=float, default=1e-5, help='relative tolerance for numeric columns')
    g.add_argument('--atol', type=float, default=1e-4, help='absolute tolerance for numeric columns')
    g.add_argument('--angle-columns', default='rlnAngleRot,rlnAnglePsi,rlnTomoSubtomogramRot,rlnTomoSubtomogramPsi',
                   help='columns compared modulo 360 degrees')
    g.add_argument('--ignore-columns', default='', help='comma-separated columns to skip')
    g.add_argument('--allow-extra-columns', action='store_true', help='extra candidate columns do not fail')
    g.add_argument('--match-rows-by', default='', help='align rows by this column instead of by order')
    g.add_argument('--path-basename', action='store_true', help='compare only basenames of file-name strings')
    g.add_argument('--path-prefix-map', action='append', default=[], metavar='REF=CAND',
                   help='replace the path prefix REF in reference strings by CAND before comparing '
                        '(e.g. a_subtomo_stack2d/=my_run/); repeatable')
    p.add_argument('--exclude', action='append', default=[], metavar='GLOB',
                   help='directory mode: skip files whose name matches GLOB (repeatable)')
    p.add_argument('-q', '--quiet', action='store_true', help='only print failures and the verdict')
    p.add_argument('-v', '--verbose', action='store_true', help='print every STAR column')
    a = p.parse_args(argv)
    a.angle_columns_set = set(x for x in a.angle_columns.split(',') if x)
    a.prefix_map = []
    for m in a.path_prefix_map:
        if '=' not in m:
            print('--path-prefix-map needs REF=CAND', file=sys.stderr)
            return 2
        a.prefix_map.append(tuple(m.split('=', 1)))

    lines = []

    def out(s):
        if not a.quiet or s.startswith('FAIL') or s.startswith('==') or s in ('PASS',):
            print(s)
        lines.append(s)

    if os.path.isdir(a.reference):
        if not os.path.isdir(a.candidate):
            print("candidate is not a directory", file=sys.stderr)
            return 2
        allok, n = True, 0
        for dp, _, fns in sorted(os.walk(a.reference)):
            for fn in sorted(fns):
                ext = os.path.splitext(fn)[1].lower()
                if ext != '.star' and ext not in MRC_EXT:
                    continue
                rp = os.path.join(dp, fn)
                relp = os.path.relpath(rp, a.reference)
                if any(fnmatch.fnmatch(fn, pat) for pat in a.exclude):
                    print(f"skip  {relp} (--exclude)")
                    continue
                n += 1
                allok &= compare_files(rp, os.path.join(a.candidate, relp), a, out)
        print(f"{'ALL PASS' if allok else 'SOME FAILED'} ({n} files)")
        return 0 if allok else 1
    if not os.path.exists(a.reference):
        print(f"no such file: {a.reference}", file=sys.stderr)
        return 2
    return 0 if compare_files(a.reference, a.candidate, a, out) else 1


if __name__ == '__main__':
    sys.exit(main())
