"""A small, deterministic simulator of cryo-ET tilt series with RELION 5's geometry, CTF and dose model.

It makes test and example data that relion_py and RELION read alike: copies of a chiral particle made
of Gaussian blobs, at random positions and orientations in one or more tomograms, projected with the
tilt-series geometry of ``Tomogram::setProjectionMatrix``
(:func:`relion_py.tomography.geometry.tilt_projection_matrices`), multiplied by the CTF of ``CTF::getCTF``
(:mod:`relion_py.kernels.ctf`) at each particle's depth-dependent defocus (``Tomogram::getCtf``) and by
the dose filter of ``Damage::weightImage`` (:func:`relion_py.tomography.dose.dose_weights`) for the tilt's
pre-exposure; particles are dark (RELION inverts contrast at extraction), plus Gaussian noise. Every number
that goes into a file is rounded to the precision RELION prints before it is used, so the files describe
the data exactly.

It writes the same data two ways:

* :func:`write_relion_project`: a RELION 5 project (tomograms.star, one tilt-series STAR file and one
  float32 MRC stack per tilt series, particles.star with one optics group per tilt series,
  optimisation_set.star);
* :func:`write_portal`: a CryoET Data Portal mirror: per run, the tilt series as portal-shaped OME-Zarr
  (zarr v2, Blosc-lz4, ``z/y/x`` keys, three levels), the particles as point annotations (ndjson), and
  ``portal.json``, the portal's metadata as rows of its GraphQL types (what the API returns), from
  which ``relion-py-portal`` rebuilds the same RELION project.

Conventions (as RELION): a particle with Euler matrix A at tomogram position p (tilt-series px)
occupies p + A·u for reference offsets u; centred coordinates are (p − size/2.0)·pixel size.
"""
import json
import math
import os
import sys
from dataclasses import dataclass, fields

import numcodecs
import numpy as np
import pandas as pd

from ..tomography.dose import dose_weights
from ..tomography.half_grid import half_grid
from ..tomography.geometry import euler_to_matrix, tilt_projection_matrices
from ..io.atomic import atomic_output
from ..io.mrc import write_mrc
from ..io.star import format_value, write_star
from ..kernels._jit import njit
from ..kernels.ctf import astigmatism_form, ctf_constants, ctf_value
from ..runtime.options import option, parse_options

# The particle: (x, y, z) offset in units of the particle radius, sigma (radius units), amplitude.
# A core, a right-handed 4-blob helix and a tag blob: no symmetry, chiral.
BLOBS = ((0.0, 0.0, 0.0, 0.32, 1.0), (0.6, 0.0, -0.45, 0.16, 0.8), (0.0, 0.6, -0.15, 0.17, 0.8),
         (-0.6, 0.0, 0.15, 0.18, 0.8), (0.0, -0.6, 0.45, 0.19, 0.8), (0.25, -0.7, 0.55, 0.14, 1.3))


@dataclass
class SimulationParams:
    """What to simulate (lengths in Å unless stated)."""

    seed: int = option(1, "Random seed (the output is a function of all parameters)")
    n_tomograms: int = option(1, "Number of tilt series (TS_01, TS_02, ...)")
    n_particles: int = option(8, "Particles per tomogram")
    pixel_size: float = option(4.0, "Tilt-series pixel size (Å/px)")
    image_size: str = option("200,180", "Tilt image width,height (px)")
    tomo_size: str = option("200,180,60", "Tomogram size x,y,z (tilt-series px)")
    tilt_range: str = option("-45,45,7.5", "Nominal tilts min,max,step (degrees)")
    dose_per_tilt: float = option(3.0, "Electron dose per tilt (e/Å²), dose-symmetric scheme")
    voltage: float = option(300.0, "Acceleration voltage (kV)")
    cs: float = option(2.7, "Spherical aberration (mm)")
    amplitude_contrast: float = option(0.07, "Amplitude contrast")
    hand: float = option(-1.0, "rlnTomoHand")
    defocus: float = option(25000.0, "Mean defocus (Å, underfocus positive)")
    tilt_axis: float = option(85.0, "Mean in-plane rotation of the tilt axis, rlnTomoZRot (degrees)")
    particle_diameter: float = option(60.0, "Particle diameter (Å)")
    noise: float = option(0.5, "Gaussian noise sd, relative to the sd of the noise-free images")


def _ints(text, n):
    values = [int(v) for v in str(text).split(",")]
    if len(values) != n:
        raise ValueError(f"expected {n} comma-separated integers, got '{text}'")
    return values


def _printed(v):
    """Each value as RELION prints and reads it back (``%12.6f``, ``%12.5f`` if negative, ...)."""
    return np.vectorize(lambda x: float(format_value("rlnDefocusU", x)), otypes=[np.float64])(v)


@njit
def _ctf_grid(fx, fy, voltage, cs, q0, defocus_u, defocus_v, angle, phase_shift):
    """CTF (``CTF::getCTF``, scale 1, no B-factor) at spatial frequencies fx, fy (1/Å), same shape."""
    k1, k2, k3, k4, k5 = ctf_constants(voltage, cs, q0, 0.0, phase_shift)
    axx, axy, ayy = astigmatism_form(defocus_u, defocus_v, angle)
    out = np.empty(fx.shape)
    for i in range(fx.shape[0]):
        for j in range(fx.shape[1]):
            out[i, j] = ctf_value(fx[i, j], fy[i, j], k1, k2, k3, k4, k5, axx, axy, ayy, 1.0, 0.0)
    return out


@dataclass
class TiltSeries:
    """One simulated tilt series. Per-tilt arrays are in stack order (z = stack index, sorted by tilt)."""

    name: str
    size: tuple                 # (w0, h0, d0) tomogram size, tilt-series px
    stack: np.ndarray           # (fc, H, W) float32
    nominal: np.ndarray         # stage tilt angle
    xtilt: np.ndarray           # rlnTomoXTilt
    ytilt: np.ndarray           # rlnTomoYTilt
    zrot: np.ndarray            # rlnTomoZRot
    shift_x: np.ndarray         # rlnTomoXShiftAngst
    shift_y: np.ndarray         # rlnTomoYShiftAngst
    defocus_u: np.ndarray
    defocus_v: np.ndarray
    defocus_angle: np.ndarray
    pre_exposure: np.ndarray    # rlnMicrographPreExposure
    acquisition: np.ndarray     # 0-based acquisition order of each tilt
    coords: np.ndarray          # (n, 3) rlnCenteredCoordinateX/Y/ZAngst
    angles: np.ndarray          # (n, 3) rlnAngleRot/Tilt/Psi


@dataclass
class Simulation:
    params: SimulationParams
    tilt_series: list


def simulate(params=None):
    """Simulate ``params.n_tomograms`` tilt series (deterministic in ``params``)."""
    p = params or SimulationParams()
    rng = np.random.default_rng(p.seed)
    width, height = _ints(p.image_size, 2)
    tomo_size = tuple(_ints(p.tomo_size, 3))
    lo, hi, step = (float(v) for v in p.tilt_range.split(","))
    nominal = _printed(lo + step * np.arange(int(round((hi - lo) / step)) + 1))
    # dose-symmetric acquisition (0, +1, -1, +2, -2, ...), stack sorted by tilt angle
    acquisition = np.argsort(np.argsort(np.abs(nominal) + 1e-3 * (nominal < 0), kind="stable"), kind="stable")
    radius_px = p.particle_diameter / 2.0 / p.pixel_size
    blobs = np.array(BLOBS, dtype=np.float64)
    patch = 2 * int(math.ceil(radius_px * 1.6 + 24))
    return Simulation(p, [_tilt_series(p, rng, f"TS_{t + 1:02d}", tomo_size, (width, height), nominal,
                                       acquisition, radius_px, blobs, patch) for t in range(p.n_tomograms)])


def _tilt_series(p, rng, name, tomo_size, image_size, nominal, acquisition, radius_px, blobs, patch):
    fc = len(nominal)
    width, height = image_size
    ps = p.pixel_size
    ytilt = _printed(nominal + 0.4 + rng.normal(0, 0.1, fc))
    xtilt = _printed(np.full(fc, 0.5) + rng.normal(0, 0.05, fc))
    zrot = _printed(p.tilt_axis + rng.normal(0, 0.2, fc))
    shift_x, shift_y = (_printed(rng.normal(0, 3.0, fc) * ps) for _ in range(2))
    pre = _printed(acquisition * p.dose_per_tilt)
    mean = p.defocus + rng.normal(0, 400.0, fc)
    astig = rng.uniform(100.0, 500.0)
    defocus_u, defocus_v = _printed(mean + astig / 2), _printed(mean - astig / 2)
    defocus_angle = _printed(rng.uniform(0, 180) + rng.normal(0, 3.0, fc))

    centre = np.array(tomo_size, dtype=np.float64) / 2.0
    margin = np.array([radius_px * 0.5, radius_px * 0.5, radius_px + 2])  # x/y windows may leave the image
    positions = []
    while len(positions) < p.n_particles:
        q = rng.uniform(margin, np.array(tomo_size) - margin)
        if all(np.linalg.norm(q - r) > 2.2 * radius_px for r in positions):
            positions.append(q)
    coords = _printed((np.array(positions) - centre) * ps)
    rot, tilt, psi = rng.uniform(-180, 180, p.n_particles), rng.uniform(10, 170, p.n_particles), \
        rng.uniform(-180, 180, p.n_particles)
    angles = _printed(np.stack([rot, tilt, psi], axis=1))

    proj = tilt_projection_matrices(xtilt, ytilt, zrot, shift_x / ps, shift_y / ps, tomo_size, image_size)
    pos = coords / ps + centre                      # what RELION computes from the printed coordinates
    matrices = euler_to_matrix(angles[:, 0], angles[:, 1], angles[:, 2])
    offsets = blobs[:, :3] * radius_px              # reference offsets u, px
    kx, ky = half_grid(patch)
    fx, fy = kx / (patch * ps), ky / (patch * ps)
    k2 = (kx * kx + ky * ky) / float(patch * patch)  # cycles/px squared
    dose = dose_weights(pre, patch, ps).astype(np.float64)
    clean = np.zeros((fc, height, width))
    for f in range(fc):
        r, t = proj[f, :3, :3], proj[f, :3, 3]
        depth_centre = (r @ centre + t)[2]
        for n in range(p.n_particles):
            centre_2d = r @ pos[n] + t
            origin = np.floor(centre_2d[:2]).astype(np.int64) - patch // 2
            ft = np.zeros(kx.shape, np.complex128)
            for (bx, by, bz), (sigma, amp) in zip(offsets, blobs[:, 3:] * [radius_px, 1.0]):
                q = r @ (pos[n] + matrices[n] @ (bx, by, bz)) + t - [origin[0], origin[1], 0.0]
                mass = amp * 2 * math.pi * sigma ** 2
                ft += mass * np.exp(-2 * math.pi ** 2 * sigma ** 2 * k2
                                    - 2j * math.pi * (kx * q[0] + ky * q[1]) / patch)
            dz = p.hand * ps * (centre_2d[2] - depth_centre)   # Tomogram::getCtf, defocus slope 1
            ctf = _ctf_grid(fx, fy, p.voltage, p.cs, p.amplitude_contrast,
                            defocus_u[f] + dz, defocus_v[f] + dz, defocus_angle[f], 0.0)
            img = -np.fft.irfft2(ft * ctf * dose[f], s=(patch, patch))
            x0, y0 = origin
            xs, ys, xe, ye = max(x0, 0), max(y0, 0), min(x0 + patch, width), min(y0 + patch, height)
            if xs < xe and ys < ye:
                clean[f, ys:ye, xs:xe] += img[ys - y0:ye - y0, xs - x0:xe - x0]
    stack = (clean + rng.normal(0, p.noise * clean.std(), clean.shape)).astype(np.float32)
    return TiltSeries(name, tomo_size, stack, nominal, xtilt, ytilt, zrot, shift_x, shift_y, defocus_u,
                      defocus_v, defocus_angle, pre, acquisition, coords, angles)


# ----------------------------------------------------------------------------------------------------
# RELION project
# ----------------------------------------------------------------------------------------------------

def tilt_series_table(ts, micrograph_names):
    """The tilt-series STAR table (rows in stack order) with the columns the portal can fill."""
    return pd.DataFrame({
        "rlnMicrographName": micrograph_names, "rlnTomoNominalStageTiltAngle": ts.nominal,
        "rlnMicrographPreExposure": ts.pre_exposure, "rlnDefocusU": ts.defocus_u, "rlnDefocusV": ts.defocus_v,
        "rlnDefocusAngle": ts.defocus_angle, "rlnPhaseShift": np.zeros(len(ts.nominal)),
        "rlnTomoXTilt": ts.xtilt, "rlnTomoYTilt": ts.ytilt, "rlnTomoZRot": ts.zrot,
        "rlnTomoXShiftAngst": ts.shift_x, "rlnTomoYShiftAngst": ts.shift_y})


def write_relion_project(sim, root, name="project"):
    """Write a RELION 5 project into ``root/name`` (paths in STAR files relative to ``root``, the folder
    RELION is run from). Returns the optimisation set's path relative to ``root``."""
    p = sim.params
    os.makedirs(os.path.join(root, name, "tilt_series"), exist_ok=True)
    tomos, optics, particles = [], [], []
    for k, ts in enumerate(sim.tilt_series, 1):
        stack = f"{name}/tilt_series/{ts.name}.mrcs"
        star = f"{name}/tilt_series/{ts.name}.star"
        write_mrc(os.path.join(root, stack), ts.stack, p.pixel_size, stack=True)
        names = [f"{z + 1}@{stack}" for z in range(len(ts.nominal))]
        write_star(os.path.join(root, star), {ts.name: tilt_series_table(ts, names)})
        tomos.append(dict(rlnTomoName=ts.name, rlnVoltage=p.voltage, rlnSphericalAberration=p.cs,
                          rlnAmplitudeContrast=p.amplitude_contrast, rlnTomoHand=p.hand,
                          rlnOpticsGroupName=ts.name, rlnTomoTiltSeriesPixelSize=p.pixel_size,
                          rlnTomoTiltSeriesStarFile=star,
                          rlnTomoSizeX=ts.size[0], rlnTomoSizeY=ts.size[1], rlnTomoSizeZ=ts.size[2]))
        optics.append(dict(rlnOpticsGroup=k, rlnOpticsGroupName=ts.name, rlnSphericalAberration=p.cs,
                           rlnVoltage=p.voltage, rlnTomoTiltSeriesPixelSize=p.pixel_size,
                           rlnAmplitudeContrast=p.amplitude_contrast))
        particles.append(pd.DataFrame({
            "rlnTomoName": ts.name,
            "rlnTomoParticleName": [f"{ts.name}/{i + 1}" for i in range(len(ts.coords))],
            "rlnCenteredCoordinateXAngst": ts.coords[:, 0], "rlnCenteredCoordinateYAngst": ts.coords[:, 1],
            "rlnCenteredCoordinateZAngst": ts.coords[:, 2], "rlnAngleRot": ts.angles[:, 0],
            "rlnAngleTilt": ts.angles[:, 1], "rlnAnglePsi": ts.angles[:, 2], "rlnOpticsGroup": k}))
    write_star(os.path.join(root, name, "tomograms.star"), {"global": pd.DataFrame(tomos)})
    write_star(os.path.join(root, name, "particles.star"),
               {"optics": pd.DataFrame(optics), "particles": pd.concat(particles, ignore_index=True)})
    optimisation_set = f"{name}/optimisation_set.star"
    write_star(os.path.join(root, optimisation_set), {"optimisation_set": {
        "rlnTomoParticlesFile": f"{name}/particles.star", "rlnTomoTomogramsFile": f"{name}/tomograms.star"}})
    return optimisation_set


# ----------------------------------------------------------------------------------------------------
# CryoET Data Portal mirror
# ----------------------------------------------------------------------------------------------------

BUCKET = "cryoet-data-portal-public"
DATASET_ID = 10000
OBJECT_NAME = "cytosolic ribosome"
PORTAL_CHUNKS = (1, 1024, 1024)   # ingestion_tools/scripts/importers/tiltseries.py (chunk_size)
_DATE = "2025-01-01T00:00:00+00:00"
_TILTSERIES_DEFAULTS = dict(
    microscopeManufacturer="TFS", microscopeModel="Krios", microscopeEnergyFilter="none",
    cameraManufacturer="Gatan", cameraModel="K3", tiltingScheme="dose-symmetric",
    dataAcquisitionSoftware="relion_py.tools.simulate", tiltSeriesQuality=5, binningFromFrames=1.0)
_TOMOGRAM_DEFAULTS = dict(
    fiducialAlignmentStatus="NON_FIDUCIAL", reconstructionMethod="WBP", processing="raw",
    reconstructionSoftware="relion_py.tools.simulate", offsetX=0, offsetY=0, offsetZ=0, isPortalStandard=True,
    ctfCorrected=False)


def write_zarr(path, stack, pixel_size, chunks=PORTAL_CHUNKS, levels=3):
    """Write ``stack`` (z, y, x) as the portal writes tilt series (common/image.py: ``ZarrWriter``): a
    zarr v2 group with OME-NGFF 0.4 ``multiscales``; level i is binned 2^i in y and x (block mean), z kept;
    zarr 2's default compressor ``Blosc(lz4, 5, shuffle)``; chunk keys ``z/y/x``."""
    compressor = numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE)
    os.makedirs(path, exist_ok=True)
    data = np.asarray(stack, np.float32)
    datasets = []
    for level in range(levels):
        if level:
            h, w = data.shape[1] // 2 * 2, data.shape[2] // 2 * 2
            blocks = data[:, :h, :w].reshape(data.shape[0], h // 2, 2, w // 2, 2)
            data = blocks.mean(axis=(2, 4), dtype=np.float32)
        array_dir = os.path.join(path, str(level))
        os.makedirs(array_dir, exist_ok=True)
        _write_json(os.path.join(array_dir, ".zarray"), {
            "zarr_format": 2, "shape": list(data.shape), "chunks": list(chunks), "dtype": "<f4",
            "compressor": compressor.get_config(), "fill_value": 0, "order": "C", "filters": None,
            "dimension_separator": "/"})
        grid = [range(0, n, c) for n, c in zip(data.shape, chunks)]
        for z in grid[0]:
            for y in grid[1]:
                for x in grid[2]:
                    block = np.zeros(chunks, np.float32)  # edge chunks are stored at full size
                    part = data[z:z + chunks[0], y:y + chunks[1], x:x + chunks[2]]
                    block[:part.shape[0], :part.shape[1], :part.shape[2]] = part
                    key = os.path.join(array_dir, str(z // chunks[0]), str(y // chunks[1]))
                    os.makedirs(key, exist_ok=True)
                    with open(os.path.join(key, str(x // chunks[2])), "wb") as fh:
                        fh.write(compressor.encode(block))
        spacing = pixel_size * 2 ** level
        datasets.append({"path": str(level), "coordinateTransformations": [
            {"scale": [pixel_size, spacing, spacing], "type": "scale"}]})
    _write_json(os.path.join(path, ".zgroup"), {"zarr_format": 2})
    _write_json(os.path.join(path, ".zattrs"), {"multiscales": [{
        "axes": [{"name": a, "type": "space", "unit": "angstrom"} for a in "zyx"],
        "datasets": datasets, "name": "/", "version": "0.4"}]})


def _write_json(path, obj):
    with atomic_output(path) as tmp:
        with open(tmp, "w") as fh:
            json.dump(obj, fh, indent=1)


def write_portal(sim, root, base_url, chunks=PORTAL_CHUNKS, voxel_binning=2):
    """Write the simulation as the CryoET Data Portal would serve it, below ``root``: the files at
    ``<BUCKET>/<dataset>/<run>/...`` (URLs ``base_url/<BUCKET>/...`` and ``s3://<BUCKET>/...``) and
    ``root/portal.json``: ``{GraphQL root field: [rows]}``, rows keyed by GraphQL field name.

    Field meanings follow the portal (cryoet_data_portal/_models.py, and the backend's ingestion):
    one dataset, one run per tilt series (named like it), one alignment per run, one tomogram at a voxel
    spacing of ``voxel_binning`` × pixel size, one ground-truth OrientedPoint annotation of
    ``OBJECT_NAME`` (ndjson, locations in that tomogram's voxels), one automated Point annotation of the
    first half of the particles, and a segmentation mask annotation (not points).
    """
    p = sim.params
    base_url = base_url.rstrip("/")
    tables = {k: [] for k in ("datasets", "runs", "tiltseries", "alignments", "perSectionAlignmentParameters",
                              "perSectionParameters", "frames", "tomogramVoxelSpacings", "tomograms",
                              "annotations", "annotationShapes", "annotationFiles")}
    prefix = f"{BUCKET}/{DATASET_ID}"
    tables["datasets"].append(dict(
        id=DATASET_ID, depositionId=DATASET_ID, title="relion_py simulation", description="synthetic",
        depositionDate=_DATE, releaseDate=_DATE, lastModifiedDate=_DATE,
        s3Prefix=f"s3://{prefix}/", httpsPrefix=f"{base_url}/{prefix}/"))
    vs = p.pixel_size * voxel_binning
    for k, ts in enumerate(sim.tilt_series, 1):
        ids = dict(run=100 * k, ts=200 * k, al=300 * k, vs=400 * k, tomo=500 * k)
        run_dir = f"{prefix}/{ts.name}"
        fc = len(ts.nominal)
        tables["runs"].append(dict(id=ids["run"], datasetId=DATASET_ID, name=ts.name,
                                   s3Prefix=f"s3://{run_dir}/", httpsPrefix=f"{base_url}/{run_dir}/"))
        zarr_dir = f"{run_dir}/TiltSeries/{ts.name}.zarr"
        write_zarr(os.path.join(root, *zarr_dir.split("/")), ts.stack, p.pixel_size, chunks)
        tables["tiltseries"].append(dict(
            _TILTSERIES_DEFAULTS, id=ids["ts"], runId=ids["run"], depositionId=DATASET_ID,
            s3OmezarrDir=f"s3://{zarr_dir}", httpsOmezarrDir=f"{base_url}/{zarr_dir}",
            accelerationVoltage=int(round(p.voltage * 1000)), sphericalAberrationConstant=p.cs,
            tiltMin=float(ts.nominal.min()), tiltMax=float(ts.nominal.max()),
            tiltRange=float(ts.nominal.max() - ts.nominal.min()),
            tiltStep=float(ts.nominal[1] - ts.nominal[0]),
            tiltAxis=p.tilt_axis, totalFlux=float(p.dose_per_tilt * fc), isAligned=False,
            pixelSpacing=p.pixel_size, sizeX=ts.stack.shape[2], sizeY=ts.stack.shape[1], sizeZ=fc))
        tables["alignments"].append(dict(
            id=ids["al"], runId=ids["run"], tiltseriesId=ids["ts"], depositionId=DATASET_ID,
            alignmentType="GLOBAL", alignmentMethod="projection_matching", isPortalStandard=True,
            volumeXDimension=ts.size[0] * p.pixel_size, volumeYDimension=ts.size[1] * p.pixel_size,
            volumeZDimension=ts.size[2] * p.pixel_size, volumeXOffset=0.0, volumeYOffset=0.0,
            volumeZOffset=0.0, xRotationOffset=0.0, tiltOffset=0.0))
        for z in range(fc):
            c, s = math.cos(math.radians(ts.zrot[z])), math.sin(math.radians(ts.zrot[z]))
            frame_id = 10000 * k + z
            tables["frames"].append(dict(id=frame_id, runId=ids["run"], depositionId=DATASET_ID,
                                         acquisitionOrder=int(ts.acquisition[z]),
                                         accumulatedDose=float(ts.pre_exposure[z]),
                                         exposureDose=p.dose_per_tilt,
                                         isGainCorrected=True))
            tables["perSectionParameters"].append(dict(
                id=20000 * k + z, zIndex=z, frameId=frame_id, runId=ids["run"], tiltseriesId=ids["ts"],
                rawAngle=float(ts.nominal[z]), majorDefocus=float(ts.defocus_u[z]),
                minorDefocus=float(ts.defocus_v[z]), astigmaticAngle=float(ts.defocus_angle[z]),
                phaseShift=0.0, maxResolution=8.0))
            tables["perSectionAlignmentParameters"].append(dict(
                id=30000 * k + z, alignmentId=ids["al"], zIndex=z, tiltAngle=float(ts.ytilt[z]),
                volumeXRotation=float(ts.xtilt[z]), inPlaneRotation=[[c, -s], [s, c]],
                xOffset=float(ts.shift_x[z] / p.pixel_size), yOffset=float(ts.shift_y[z] / p.pixel_size)))
        vs_dir = f"{run_dir}/Reconstructions/VoxelSpacing{vs:.3f}"
        tables["tomogramVoxelSpacings"].append(dict(id=ids["vs"], runId=ids["run"], voxelSpacing=vs,
                                                    s3Prefix=f"s3://{vs_dir}/",
                                                    httpsPrefix=f"{base_url}/{vs_dir}/"))
        n = [s // voxel_binning for s in ts.size]
        tables["tomograms"].append(dict(
            _TOMOGRAM_DEFAULTS, id=ids["tomo"], alignmentId=ids["al"], runId=ids["run"],
            depositionId=DATASET_ID, tomogramVoxelSpacingId=ids["vs"], name=ts.name, sizeX=n[0], sizeY=n[1],
            sizeZ=n[2], voxelSpacing=vs))
        # portal locations: voxels of that tomogram, (location - N/2)·vs = centred coordinate
        location = ts.coords / vs + np.array(n) / 2.0
        matrices = euler_to_matrix(ts.angles[:, 0], ts.angles[:, 1], ts.angles[:, 2])
        oriented = [{"type": "orientedPoint", "location": dict(zip("xyz", map(float, loc))),
                     "xyz_rotation_matrix": m.tolist()} for loc, m in zip(location, matrices)]
        points = [{"type": "point", "location": dict(zip("xyz", map(float, loc)))}
                  for loc in location[:len(location) // 2]]
        for a, (obj, gt, method, shape, fmt, rows) in enumerate([
                (OBJECT_NAME, True, "manual", "OrientedPoint", "ndjson", oriented),
                (OBJECT_NAME, False, "automated", "Point", "ndjson", points),
                ("membrane", False, "automated", "SegmentationMask", "mrc", None)], 1):
            ann_id = 1000 * k + a
            ann_dir = f"{vs_dir}/Annotations/{ann_id}"
            path = f"{ann_dir}/{obj.replace(' ', '_')}-1.0_{shape.lower()}.{fmt}"
            if rows is not None:
                full = os.path.join(root, *path.split("/"))
                os.makedirs(os.path.dirname(full), exist_ok=True)
                with open(full, "w") as fh:
                    fh.write("".join(json.dumps(r) + "\n" for r in rows))
            tables["annotations"].append(dict(
                id=ann_id, runId=ids["run"], tomogramVoxelSpacingId=ids["vs"], depositionId=DATASET_ID,
                s3MetadataPath=f"s3://{ann_dir}/meta.json",
                httpsMetadataPath=f"{base_url}/{ann_dir}/meta.json", annotationMethod=method,
                annotationIngestId=str(ann_id), objectId="GO:0022626", objectName=obj,
                groundTruthStatus=gt, methodType=method, objectCount=len(rows or []),
                depositionDate=_DATE, releaseDate=_DATE, lastModifiedDate=_DATE))
            tables["annotationShapes"].append(dict(id=ann_id, annotationId=ann_id, shapeType=shape))
            tables["annotationFiles"].append(dict(
                id=ann_id, annotationShapeId=ann_id, alignmentId=ids["al"], tomogramVoxelSpacingId=ids["vs"],
                format=fmt, s3Path=f"s3://{path}", httpsPath=f"{base_url}/{path}", source="dataset_author",
                isVisualizationDefault=a == 1))
    _write_json(os.path.join(root, "portal.json"), tables)
    return tables


@dataclass
class _Command(SimulationParams):
    root: str = option(None, "Output folder: <root>/project (RELION project), <root>/portal (portal mirror)",
                       required=True)
    base_url: str = option("http://127.0.0.1:8000", "URL at which <root>/portal will be served")


def main(argv=None):
    """``python -m relion_py.tools.simulate --root DIR [options]``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    cmd = parse_options(_Command, argv, "python -m relion_py.tools.simulate", __doc__.splitlines()[0])
    sim = simulate(SimulationParams(**{f.name: getattr(cmd, f.name) for f in fields(SimulationParams)}))
    write_relion_project(sim, cmd.root)
    write_portal(sim, os.path.join(cmd.root, "portal"), cmd.base_url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
