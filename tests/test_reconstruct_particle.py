"""relion-py-reconstruct's tilt-series mode (relion_tomo_reconstruct_particle) against RELION 5.0.1's own
output, file by file (compare.py's default tolerances); ground-truth quality; resume; bad input; kernels."""
import math
import os

import numpy as np
import pytest

import relion_compare
from conftest import FIXTURES, compare_with_relion, mirror_fixtures, working_directory
from relion_py.cli.reconstruct import main
from relion_py.runtime.errors import RelionPyError
from relion_py.io.mrc import read_mrc
from relion_py.io.star import read_star, write_star
from relion_py.kernels.tomography import insertion_backward
from relion_py.kernels.tomography.insertion_backward import insert_slices_backward, slice_matrices
from relion_py.kernels.tomography.map_finalisation import symmetrise
from relion_py.programs.reconstruct_particle import ReconstructParticleOptions, reconstruct_particle
from relion_py.tomography.helical_symmetry import tomo_symmetry_matrices

CASES = [
    "f1_reconstruct_particle_c1",
    "f2_reconstruct_particle_c1_snr",
    "f3_reconstruct_particle_c4",
    "i1_reconstruct_particle_whiten",
    "i2_reconstruct_particle_no_ctf",
    "i3_reconstruct_particle_d3",
    "i4_reconstruct_particle_o",
    "i5_reconstruct_particle_i1",
    "i6_reconstruct_particle_helical",
    "i7_reconstruct_particle_bin2",
    "i8_reconstruct_particle_subtomo_origins",
    "i9_reconstruct_particle_aberrations",
    "i10_reconstruct_particle_motion",
]
SMALL = ["--t", "synthetic/tomograms.star", "--p", "synthetic/particles.star", "--b", "28", "--crop", "20",
         "--j", "2", "--j_out", "2", "--j_in", "1"]


@pytest.mark.parametrize("case", CASES)
def test_matches_relion(case, relion_case):
    relion_case(case, main)


def test_merged_map_matches_ground_truth_as_well_as_relion(relion_case):
    """Science check: masked correlation and FSC with the true particle, at least as good as RELION's."""
    out = relion_case("f1_reconstruct_particle_c1", main)

    def load(path):
        return relion_compare.read_mrc(str(path))[0].astype(np.float64)
    truth = load(FIXTURES / "synthetic/ground_truth/particle_box48.mrc")
    ours = load(out / "merged.mrc")
    theirs = load(FIXTURES / "f1_reconstruct_particle_c1/merged.mrc")
    ours_corr = relion_compare.masked_corr(truth, ours)
    theirs_corr = relion_compare.masked_corr(truth, theirs)
    assert ours_corr >= theirs_corr - 1e-4
    assert ours_corr > 0.9                              # README: RELION's masked corr 0.9074
    assert ours_corr > relion_compare.masked_corr(truth[:, :, ::-1], ours) + 0.1   # the right hand
    fsc = relion_compare.fsc_curve(truth, ours)
    res = relion_compare.fsc_resolution(fsc, 48, 5.0, 0.5)
    assert res <= 17.14 + 0.5                           # README: RELION's FSC=0.5 at 17.14 Å


def _run(tmp_path, args, case="out"):
    work = mirror_fixtures(tmp_path / "project", case)
    with working_directory(work):
        status = main(args + ["--o", f"{case}/"])
    return status, work / case


def test_resume_from_checkpoint(tmp_path):
    """--no_recon leaves the per-tomogram checkpoint; --only_do_unfinished reconstructs from it (float32
    accumulators, still within the tolerances)."""
    case = "i2_reconstruct_particle_no_ctf"
    args = SMALL + ["--no_ctf"]
    status, out = _run(tmp_path, args + ["--no_recon"], case)
    assert status == 0
    assert sorted(os.listdir(out / "temp")) == ["sum_0_ctf_half0.mrc", "sum_0_ctf_half1.mrc",
                                                "sum_0_data_half0.mrc", "sum_0_data_half1.mrc"]
    assert not list(out.glob("*.mrc"))
    with working_directory(out.parent):
        assert main(args + ["--o", f"{case}/", "--only_do_unfinished"]) == 0
    ok, report = compare_with_relion(FIXTURES / case, out)
    assert ok, report[-3000:]
    assert os.listdir(out / "temp") == []


@pytest.mark.parametrize("half_sets", [True, False])
def test_stop_line_offers_a_resume_only_from_half_set_checkpoints(tmp_path, monkeypatch, half_sets):
    """A stopped run offers --only_do_unfinished for its finished tomograms only when their checkpoints can be
    resumed from: RELION's resume looks for the half2 checkpoint, which runs without half sets do not write."""
    from relion_py.runtime import job_control
    monkeypatch.setattr(job_control._Finished, "count", 0)
    monkeypatch.setattr(job_control._Finished, "what", None)
    work = mirror_fixtures(tmp_path / "project", "none")
    args = list(SMALL)
    if not half_sets:
        blocks = read_star(work / "synthetic" / "particles.star")
        blocks["particles"] = blocks["particles"].drop(columns="rlnRandomSubset")
        write_star(tmp_path / "particles.star", blocks)
        args[args.index("synthetic/particles.star")] = str(tmp_path / "particles.star")
    with working_directory(work):
        assert main(args + ["--no_ctf", "--no_recon", "--o", "out/"]) == 0
    assert sorted(os.listdir(work / "out" / "temp")) == sorted(
        f"sum_0_{kind}_half{h}.mrc" for kind in ("ctf", "data") for h in ((0, 1) if half_sets else (0,)))
    if half_sets:
        assert job_control.finished_summary().startswith("1 tomograms (checkpoints in temp/) were finished")
    else:
        assert job_control.finished_summary() == "no work was kept: run it again"


def test_python_api_and_thread_layouts_agree(tmp_path):
    """The Python API; the thread layout (--j_out accumulators, --j_in) does not change a bit of the maps."""
    work = mirror_fixtures(tmp_path / "project", "none")
    maps = {}
    with working_directory(work):
        for j_out, j_in in ((1, 1), (3, 2)):
            opts = ReconstructParticleOptions(t="synthetic/tomograms.star", p="synthetic/particles.star",
                                              o=f"out_{j_out}_{j_in}", b=24, crop=16, j=2, j_out=j_out,
                                              j_in=j_in, no_backup=True)
            result = reconstruct_particle(opts)
            assert result.n_particles == 20 and result.pixel_size == 5.0
            maps[j_out] = {os.path.basename(p): read_mrc(p)[0] for p in result.maps}
    expected = [name.format(tag) for tag in ("half1", "half2", "merged")
                for name in ("data_{}.mrc", "weight_{}.mrc", "{}_full.mrc", "{}.mrc")]
    assert sorted(maps[1]) == sorted(expected)
    for name, a in maps[1].items():
        np.testing.assert_array_equal(a, maps[3][name], err_msg=name)


@pytest.mark.parametrize("extra,message", [
    (["--sym", "X7"], "unknown symmetry group"),
    (["--crop", "40"], "--crop (40) must not exceed --b"),
    (["--b", "27"], "--b must be a positive even number"),
    (["--crop", "19"], "--crop must be a positive even number"),
    (["--b", "26", "--bin", "1.5"], "odd extraction square"),
    (["--nr_helical_asu", "0"], "--nr_helical_asu must be at least 1"),
    (["--whiten", "--no_ctf"], "--whiten with --no_ctf is not supported"),
    (["--b", "1000", "--crop", "-1", "--mem", "1"], "--mem 1 GB is less than one accumulator needs"),
])
def test_bad_options_are_refused_before_any_output(tmp_path, capsys, extra, message):
    status, out = _run(tmp_path, SMALL + extra)
    assert status == 1
    assert message in capsys.readouterr().err
    assert not out.exists()


def _write_particles(path, source, edit):
    from relion_py.io.star import read_star, write_star
    blocks = read_star(source)
    edit(blocks["particles"])
    write_star(path, blocks)


def test_no_visible_particle_is_an_error(tmp_path, capsys):
    work = mirror_fixtures(tmp_path / "project", "out")
    _write_particles(work / "far.star", FIXTURES / "synthetic/particles.star",
                     lambda t: t.__setitem__("rlnCenteredCoordinateXAngst", 5000.0))
    with working_directory(work):
        status = main(["--t", "synthetic/tomograms.star", "--p", "far.star", "--b", "28", "--o", "out/"])
    assert status == 1
    assert "no particle is visible in any tilt image" in capsys.readouterr().err
    assert not (work / "out").exists()


def test_bad_half_set_is_an_error(tmp_path, capsys):
    work = mirror_fixtures(tmp_path / "project", "out")
    _write_particles(work / "halves.star", FIXTURES / "synthetic/particles.star",
                     lambda t: t.__setitem__("rlnRandomSubset", 3))
    with working_directory(work):
        status = main(["--t", "synthetic/tomograms.star", "--p", "halves.star", "--b", "28", "--o", "out/"])
    assert status == 1
    assert "rlnRandomSubset must be 1 or 2" in capsys.readouterr().err


def test_without_half_sets_only_merged_is_written(tmp_path):
    work = mirror_fixtures(tmp_path / "project", "out")
    _write_particles(work / "nohalves.star", FIXTURES / "synthetic/particles.star",
                     lambda t: t.pop("rlnRandomSubset"))
    with working_directory(work):
        status = main(["--t", "synthetic/tomograms.star", "--p", "nohalves.star", "--b", "24", "--j", "2",
                       "--o", "out/"])
    assert status == 0
    assert sorted(p.name for p in (work / "out").glob("*.mrc")) == ["data_merged.mrc", "merged.mrc",
                                                                    "weight_merged.mrc"]


# ---- kernels against straightforward transcriptions of RELION's loops ------------------------------------

def _bilinear(img, u, v, complex_):
    """``linearXY_*_FftwHalf_clip``."""
    h, wh = img.shape
    if u >= 0:
        xd, yd, conj = u, v, False
    else:
        xd, yd, conj = -u, -v, True
    if yd < 0:
        yd += h
    x0, y0 = int(xd), int(yd)
    fx, fy = xd - x0, yd - y0
    x0 = min(x0, wh - 1)
    x1 = x0 + 1 if x0 + 1 < wh else wh - 2
    y0 = min(max(y0, 0), h - 1)
    y1 = (y0 + 1) % h
    val = ((1 - fy) * ((1 - fx) * img[y0, x0] + fx * img[y0, x1])
           + fy * ((1 - fx) * img[y1, x0] + fx * img[y1, x1]))
    return np.conj(val) if (conj and complex_) else val


def _reference_backward(g, v, m, max_freq, s):
    """``backprojectSlice_backward(maxFreq, ...)`` as written: every (z, y) row, slab in x."""
    d = np.zeros((s, s, s // 2 + 1), np.complex128)
    w = np.zeros((s, s, s // 2 + 1))
    q = np.linalg.inv(m).T
    n = q[2]
    for z in range(s):
        for y in range(s):
            yy = y - s if y >= s // 2 else y
            zz = z - s if z >= s // 2 else z
            yz = n[1] * yy + n[2] * zz
            a0, a1 = (-yz - 1) / n[0], (-yz + 1) / n[0]
            x0, x1 = math.ceil(min(a0, a1)), math.floor(max(a0, a1))
            x0, x1 = max(x0, 0), min(x1, s // 2)
            rad = max_freq ** 2 - yy ** 2 - zz ** 2
            if rad < 0:
                continue
            x1 = min(x1, int(math.sqrt(rad)))
            for x in range(x0, x1 + 1):
                pu, pv, pw = q @ np.array([x, yy, zz], float)
                if -1 < pw < 1 and abs(pu) < s // 2 + 1 and abs(pv) < s // 2 + 1:
                    c = 1 - abs(pw)
                    d[z, y, x] += c * _bilinear(g, pu, pv, True)
                    w[z, y, x] += c * _bilinear(v, pu, pv, False)
    return d, w


@pytest.mark.parametrize("seed,block_bytes", [(0, 1 << 20), (1, 1), (2, 3000)])
def test_backward_insertion_matches_relion_loop(seed, block_bytes, monkeypatch):
    """Also with cache blocks of 1 and 2 z planes."""
    monkeypatch.setattr(insertion_backward, "BLOCK_BYTES", block_bytes)
    rng = np.random.default_rng(seed)
    s, n = 12, 4
    shape = (n, s, s // 2 + 1)
    g = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)
    v = rng.random((n, s, s // 2 + 1)).astype(np.float32)
    rot = np.linalg.qr(rng.standard_normal((n, 3, 3)))[0] * rng.uniform(0.8, 1.2, (n, 1, 1))
    radii = np.array([6, 4, 0, 7])
    halves = np.array([0, 1, 1, 0])
    acc = np.zeros((2, 2, s, s, s // 2 + 1, 3))
    insert_slices_backward(acc, g, v, slice_matrices(rot), radii, halves, np.array([0, 1, 4]))
    d_sum, w_sum = acc[..., 0].sum(axis=0) + 1j * acc[..., 1].sum(axis=0), acc[..., 2].sum(axis=0)
    ref_d, ref_w = np.zeros_like(d_sum), np.zeros_like(w_sum)
    for i in range(n):
        d, w = _reference_backward(g[i].astype(np.complex128), v[i].astype(np.float64), rot[i], radii[i], s)
        ref_d[halves[i]] += d
        ref_w[halves[i]] += w
    np.testing.assert_allclose(d_sum, ref_d, rtol=0, atol=1e-9)
    np.testing.assert_allclose(w_sum, ref_w, rtol=0, atol=1e-9)
    assert np.count_nonzero(w_sum) > 100


def test_slice_matrices_invert_and_transpose():
    rng = np.random.default_rng(5)
    m = rng.standard_normal((6, 3, 3))
    np.testing.assert_allclose(slice_matrices(m), np.transpose(np.linalg.inv(m), (0, 2, 1)), rtol=1e-12,
                               atol=1e-12)
    with pytest.raises(RelionPyError):
        slice_matrices(np.zeros((1, 3, 3)))


def _trilinear(img, p, complex_):
    """``linearXYZ_FftwHalf_complex`` / ``_real``."""
    d, h, wh = img.shape
    if p[0] > 0:
        xd, yd, zd, conj = p[0], p[1], p[2], False
    else:
        xd, yd, zd, conj = -p[0], -p[1], -p[2], True
    yd = yd + h if yd < 0 else yd
    zd = zd + d if zd < 0 else zd
    x0, y0, z0 = int(xd), int(yd), int(zd)
    fx, fy, fz = xd - x0, yd - y0, zd - z0
    x0 = min(x0, wh - 1)
    x1 = x0 + 1 if x0 + 1 < wh else wh - 2
    y0, z0 = min(max(y0, 0), h - 1), min(max(z0, 0), d - 1)
    y1, z1 = (y0 + 1) % h, (z0 + 1) % d

    def lx(z, y):
        return (1 - fx) * img[z, y, x0] + fx * img[z, y, x1]
    val = ((1 - fz) * ((1 - fy) * lx(z0, y0) + fy * lx(z0, y1))
           + fz * ((1 - fy) * lx(z1, y0) + fy * lx(z1, y1)))
    return np.conj(val) if (conj and complex_) else val


@pytest.mark.parametrize("sym,helix", [("D3", (1, 0.0, 0.0)), ("C1", (3, 30.0, 2.4)),
                                       ("C2", (2, -20.0, 1.5))])
def test_symmetrise_matches_relion_loop(sym, helix):
    rng = np.random.default_rng(3)
    s = 10
    shape = (s, s, s // 2 + 1)
    data = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
    weight = rng.random(shape)
    ops = tomo_symmetry_matrices(sym, *helix)
    out_d, out_w = symmetrise(data, weight, ops)
    for z in range(s):
        for y in range(s):
            for x in range(s // 2 + 1):
                k = np.array([x, y - s if y >= s // 2 else y, z - s if z >= s // 2 else z], float)
                acc, acc_w = data[z, y, x], weight[z, y, x]
                for r in ops:
                    p = r[:3, :3] @ k
                    phase = 2 * math.pi * np.dot(k / s, r[:3, 3])
                    acc += _trilinear(data, p, True) * complex(math.cos(phase), math.sin(phase))
                    acc_w += _trilinear(weight, p, False)
                assert abs(out_d[z, y, x] - acc / (len(ops) + 1)) < 1e-12
                assert abs(out_w[z, y, x] - acc_w / (len(ops) + 1)) < 1e-12


def test_window_gather_fast_path_matches_clamped_reads():
    """kernels.windows: windows inside the image (plain row copies) and across its edges (clamped reads)."""
    from relion_py.kernels.tomography.windows import gather_clamped_windows
    rng = np.random.default_rng(7)
    stack = rng.standard_normal((3, 40, 50)).astype(np.float32)
    origins = np.array([[5, 7], [-3, 2], [40, 30], [0, 0], [34, 24], [-20, -20]], np.int64)
    slices = np.array([0, 1, 2, 1, 0, 2], np.int64)
    out = np.empty((len(slices), 16, 16), np.float32)
    gather_clamped_windows(stack, slices, origins, out)
    for k, (s, (x0, y0)) in enumerate(zip(slices, origins)):
        ys = np.clip(np.arange(16) + y0, 0, 39)
        xs = np.clip(np.arange(16) + x0, 0, 49)
        np.testing.assert_array_equal(out[k], stack[s][np.ix_(ys, xs)])
