"""relion_py.tools.simulate: deterministic, RELION-readable, particles where RELION's geometry puts them."""
import numpy as np

from relion_py.tomography.geometry import tilt_projection_matrices
from relion_py.io.mrc import read_mrc
from relion_py.io.star import read_star
from relion_py.project.optimisation_set import OptimisationSet
from relion_py.project.particles import ParticleSet
from relion_py.project.tomograms import TomogramSet
from relion_py.tools.simulate import SimulationParams, main, simulate, write_relion_project

SMALL = dict(n_particles=3, image_size="96,80", tomo_size="96,80,40", tilt_range="-30,30,15",
             particle_diameter=40.0)


def test_deterministic():
    a, b = simulate(SimulationParams(**SMALL)), simulate(SimulationParams(**SMALL))
    c = simulate(SimulationParams(seed=2, **SMALL))
    np.testing.assert_array_equal(a.tilt_series[0].stack, b.tilt_series[0].stack)
    np.testing.assert_array_equal(a.tilt_series[0].coords, b.tilt_series[0].coords)
    assert not np.array_equal(a.tilt_series[0].stack, c.tilt_series[0].stack)


def test_project_reads_back_exactly(tmp_path, monkeypatch):
    sim = simulate(SimulationParams(n_tomograms=2, **SMALL))
    optimisation_set = write_relion_project(sim, str(tmp_path))
    assert optimisation_set == "project/optimisation_set.star"
    ts = sim.tilt_series[1]
    table = read_star(tmp_path / "project/tilt_series/TS_02.star")["TS_02"]
    for label, values in [("rlnTomoYTilt", ts.ytilt), ("rlnTomoZRot", ts.zrot),
                          ("rlnTomoXShiftAngst", ts.shift_x), ("rlnDefocusU", ts.defocus_u),
                          ("rlnMicrographPreExposure", ts.pre_exposure)]:
        np.testing.assert_array_equal(table[label].to_numpy(), values)  # values are what RELION reads
    assert list(table["rlnMicrographName"]) == [f"{z}@project/tilt_series/TS_02.mrcs" for z in range(1, 6)]
    np.testing.assert_array_equal(read_mrc(str(tmp_path / "project/tilt_series/TS_02.mrcs"))[0], ts.stack)
    particles = read_star(tmp_path / "project/particles.star")
    assert list(particles["optics"]["rlnOpticsGroupName"]) == ["TS_01", "TS_02"]
    p2 = particles["particles"][particles["particles"]["rlnTomoName"] == "TS_02"]
    np.testing.assert_array_equal(p2[["rlnCenteredCoordinateXAngst", "rlnCenteredCoordinateYAngst",
                                      "rlnCenteredCoordinateZAngst"]].to_numpy(), ts.coords)
    assert set(p2["rlnOpticsGroup"]) == {2}

    # relion_py's own project readers (RELION's rules) accept it, from the project folder
    monkeypatch.chdir(tmp_path)
    files = OptimisationSet.read(optimisation_set)
    tomograms = TomogramSet(files.tomograms)
    assert [t.name for t in tomograms] == ["TS_01", "TS_02"]
    assert tomograms.by_name["TS_02"].size == (96, 80, 40) and tomograms.by_name["TS_02"].q0 == 0.07
    assert len(ParticleSet(files.particles, tomograms)) == 6


def test_particles_are_dark_where_relion_projects_them():
    sim = simulate(SimulationParams(noise=0.0, seed=3))
    p, ts = sim.params, sim.tilt_series[0]
    proj = tilt_projection_matrices(ts.xtilt, ts.ytilt, ts.zrot, ts.shift_x / p.pixel_size,
                                    ts.shift_y / p.pixel_size, ts.size, (200, 180))
    positions = ts.coords / p.pixel_size + np.array(ts.size) / 2.0
    seen = 0
    for f, image in enumerate(ts.stack):
        for q in positions:
            x, y = np.rint((proj[f, :3, :3] @ q + proj[f, :3, 3])[:2]).astype(int)
            if 3 <= x < 197 and 3 <= y < 177:
                assert image[y - 3:y + 4, x - 3:x + 4].mean() < np.median(image) - 2 * image.std()
                seen += 1
    assert seen > 0.8 * len(ts.stack) * len(positions)


def test_command_line(tmp_path):
    assert main(["--root", str(tmp_path), "--n_particles", "2", "--image_size", "64,64",
                 "--tomo_size", "64,64,32", "--tilt_range=-15,15,15", "--particle_diameter", "30"]) == 0
    assert (tmp_path / "project/optimisation_set.star").is_file()
    assert (tmp_path / "portal/portal.json").is_file()
    zarr = tmp_path / "portal/cryoet-data-portal-public/10000/TS_01/TiltSeries/TS_01.zarr"
    assert (zarr / "0/.zarray").is_file()
