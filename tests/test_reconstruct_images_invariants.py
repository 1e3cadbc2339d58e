"""relion_reconstruct options without a RELION fixture, each checked against an invariant it must satisfy
(a symmetry of the map, a factor that cancels, a limit in which it becomes the plain reconstruction), and
relion_py's own maps against the ground truth of the synthetic project."""
import numpy as np
import pytest

import relion_compare
from conftest import FIXTURES, working_directory
from relion_py.cli.reconstruct import main
from relion_py.io.mrc import read_mrc

SPA2D = FIXTURES / "synthetic" / "spa2d" / "particles.star"
GROUND_TRUTH = FIXTURES / "synthetic" / "ground_truth"


def reconstruct(tmp_path, name, argv, star=SPA2D):
    out = tmp_path / f"{name}.mrc"
    with working_directory(FIXTURES):
        assert main(["--i", str(star), "--o", str(out), "--verb", "0"] + argv) == 0
    vol, pixel_size = read_mrc(out)[:2]
    return np.asarray(vol, np.float64), pixel_size


def relative_difference(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("case,argv,box,relion_corr", [
    ("g1_reconstruct_3drot", ["--i", "e_subtomo_3d/particles.star", "--3d_rot", "--ctf"], 32, 0.9759),
    ("g2_reconstruct_spa2d", ["--i", "synthetic/spa2d/particles.star", "--ctf"], 48, 0.9565)])
def test_maps_match_the_ground_truth_as_relions_do(case, argv, box, relion_corr, tmp_path):
    """The masked correlation of relion_py's map with the particle that made the data equals RELION's
    (fixture README) to the 4th decimal."""
    out = tmp_path / "rec.mrc"
    with working_directory(FIXTURES):
        assert main(argv + ["--o", str(out), "--verb", "0"]) == 0
    truth = read_mrc(GROUND_TRUTH / f"particle_box{box}.mrc")[0].astype(np.float64)
    ours = read_mrc(out)[0].astype(np.float64)
    assert relion_compare.masked_corr(truth, ours) == pytest.approx(relion_corr, abs=5e-5)


def test_point_group_symmetry_holds_in_the_map(tmp_path):
    """--sym D2: inside the soft mask, the map is unchanged by D2's two-fold rotations, which map grid points
    onto grid points (about the box centre n/2: index i → n − i); the C1 map of the same data is not."""
    vol, _ = reconstruct(tmp_path, "d2", ["--ctf", "--sym", "D2", "--NN", "--r_min_nn", "0"])
    plain, _ = reconstruct(tmp_path, "c1", ["--ctf", "--NN", "--r_min_nn", "0"])
    n = vol.shape[0]
    flip = (n - np.arange(n)) % n
    for axes in ((0, 1), (0, 2), (1, 2)):                                # 180° about x, y, z
        index = np.ix_(*(flip if k in axes else np.arange(n) for k in range(3)))
        assert relion_compare.masked_corr(vol[index], vol) > 1 - 1e-9
        assert relion_compare.masked_corr(plain[index], plain) < 0.6


def test_helical_symmetry_limit_and_effect(tmp_path):
    """--nr_helical_asu 3 with no twist and no rise adds three identical copies to data and weights: the
    plain map exactly; with a twist and a rise it is a different map."""
    plain, _ = reconstruct(tmp_path, "c1", ["--ctf"])
    still, _ = reconstruct(tmp_path, "still", ["--ctf", "--nr_helical_asu", "3", "--helical_twist", "0",
                                               "--helical_rise", "0"])
    np.testing.assert_array_equal(still, plain)
    helix, _ = reconstruct(tmp_path, "helix", ["--ctf", "--nr_helical_asu", "3", "--helical_twist", "20",
                                               "--helical_rise", "4"])
    assert relion_compare.masked_corr(helix, plain) < 0.99


def test_iterative_gridding_converges_to_the_fixture(tmp_path):
    """--dont_skip_gridding: 2 iterations with blob order 2 are already close to RELION's 10-iteration map."""
    vol, _ = reconstruct(tmp_path, "grid", ["--ctf", "--dont_skip_gridding", "--iter", "2", "--blob_m", "2"])
    relion_10 = read_mrc(FIXTURES / "j3_reconstruct_spa2d_gridding_iter" / "rec.mrc")[0].astype(np.float64)
    assert relion_compare.masked_corr(vol, relion_10) > 0.99


def _fsc_file(tmp_path, values):
    fsc = tmp_path / "fsc.star"
    fsc.write_text("\ndata_fsc\n\nloop_\n_rlnSpectralIndex\n_rlnGoldStandardFsc\n"
                   + "".join(f"{i} {v:.6f}\n" for i, v in enumerate(values)))
    return str(fsc)


def _shell_power(vol):
    n = vol.shape[0]
    power = np.abs(np.fft.fftn(vol)) ** 2
    k = np.sqrt(sum(np.fft.fftfreq(n)[idx] ** 2 for idx in np.ix_(*(np.arange(n),) * 3)))
    return power[k > 0.3].sum(), power[k < 0.1].sum()


def test_fsc_regularisation(tmp_path):
    """--fsc: an FSC of 1 everywhere (τ² → ∞) leaves the map as without --fsc; an FSC of 1 up to shell 10
    that falls to 0 at shell 20 keeps the low frequencies and damps the high ones."""
    plain, _ = reconstruct(tmp_path, "plain", ["--ctf"])
    perfect, _ = reconstruct(tmp_path, "perfect", ["--ctf", "--fsc", _fsc_file(tmp_path, [0.999999] * 25)])
    assert relion_compare.masked_corr(perfect, plain) > 0.999
    falling, _ = reconstruct(tmp_path, "falling", ["--ctf", "--fsc",
                                                   _fsc_file(tmp_path, [min(0.999999, max(0.0, 2 - i / 10)) for i in range(25)])])
    high_plain, low_plain = _shell_power(plain)
    high, low = _shell_power(falling)
    assert high < 0.5 * high_plain and low == pytest.approx(low_plain, rel=0.2)


def test_newbox_is_a_smaller_window(tmp_path):
    """--newbox 40: the same pixel size in a smaller box (RELION's ``applyScaleDifference``): the central
    40³ of the full-box map."""
    small, px = reconstruct(tmp_path, "small", ["--ctf", "--newbox", "40", "--pad", "1.5"])
    assert small.shape == (40,) * 3 and px == 5.0
    full, _ = reconstruct(tmp_path, "full", ["--ctf", "--pad", "1.5"])
    assert relion_compare.masked_corr(small, full[4:44, 4:44, 4:44]) > 0.995


def test_uniform_figure_of_merit_cancels(tmp_path):
    """--fom_weighting multiplies each image and its weight by rlnParticleFigureOfMerit: with the same FOM for
    every particle, the direct division cancels it."""
    text = SPA2D.read_text().replace("_rlnRandomSubset #11", "_rlnRandomSubset #11\n_rlnParticleFigureOfMerit #12")
    star = tmp_path / "fom.star"
    star.write_text("\n".join(ln + " 0.5" if "@" in ln else ln for ln in text.splitlines()) + "\n")
    weighted, _ = reconstruct(tmp_path, "fom", ["--ctf", "--only_flip_phases", "--fom_weighting"], star)
    plain, _ = reconstruct(tmp_path, "nofom", ["--ctf", "--only_flip_phases"], star)
    assert relative_difference(weighted, plain) < 1e-5
