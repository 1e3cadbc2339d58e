"""Write a RELION 5 project for runs of the CryoET Data Portal (the ``relion-py-portal`` program).

Output, in ``--o``: ``tomograms.star`` (one row per tilt series + alignment), ``tilt_series/<name>.star``
(one per tilt series; images named ``N@tilt_series/<name>.mrcs``, a header-only stack whose pixels relion_py
reads from ``N@<OME-Zarr URL>`` in ``rlnTomoRelionPyTiltSeriesUrl``, or with ``--download`` the downloaded
stack: :mod:`relion_py.portal.download`), ``particles.star`` (one optics group per tilt
series), ``optimisation_set.star`` and ``note.txt``. Paths inside the STAR files are relative to the working
directory, the RELION project folder, as RELION writes them. The column ↔ portal field mapping is in
:mod:`relion_py.portal.mapping`.
"""
import os
import re
from dataclasses import dataclass, field

import cryoet_data_portal as cdp
import numpy as np
import pandas as pd

from ..runtime.errors import RelionPyError
from ..io.atomic import atomic_output
from ..io.mrc import stack_header
from ..io.star import write_star
from ..runtime.log import warn
from ..runtime.options import option
from .download import download_stack
from .mapping import IncompleteRun, read_points, stack_shape, tilt_series_table, tomogram_size
from .query import select

SEL = "Selection"
REL = "Values the portal does not hold"
IO = "Input and output"
COPICK = "copick projects as the source of particles"
HEADER_ONLY_WARNING = (
    "WARNING: tilt_series/*.mrcs are HEADER-ONLY MRC files (1024 bytes: the portal stack's size and pixel "
    "size, no pixels). RELION programs that read only geometry (relion_refine, "
    "relion_tomo_reconstruct_particle up to its pixel reads) accept them; relion_py reads the pixels from "
    "the OME-Zarr URLs in rlnTomoRelionPyTiltSeriesUrl. RELION programs that read tilt-series pixels "
    "(relion_tomo_subtomo, relion_tomo_reconstruct_particle, ctf refinement, ...) must run on a project "
    "written with --download.")


@dataclass
class PortalOptions:
    """Options of relion-py-portal."""

    run_ids: str = option("", "Run ids, comma-separated", SEL)
    dataset_ids: str = option("", "Dataset ids, comma-separated (all their runs)", SEL)
    object: str = option(None, "Annotation object name, e.g. 'cytosolic ribosome' (with --copick: the copick "
                         "pickable object)", SEL, required=True)
    inexact_match: bool = option(False, "Match object names containing --object, ignoring case", SEL)
    ground_truth: bool = option(False, "Only annotations marked as ground truth", SEL)
    automated_only: bool = option(False, "Only automated annotations (method type 'automated')", SEL)
    run_names: str = option("", "Run names, comma-separated", SEL)
    deposition_ids: str = option("", "Only annotations of these depositions, comma-separated (with no run "
                                 "given: their runs)", SEL)
    annotation_ids: str = option("", "Only these annotations, comma-separated", SEL)
    tomogram_ids: str = option("", "Only annotation files on these tomograms' alignments and voxel "
                               "spacings, comma-separated", SEL)
    tiltseries_id: int = option(None, "Only this tilt series", SEL)
    alignment_id: int = option(None, "Only annotation files on this alignment", SEL)
    voxel_spacing: float = option(None, "Only annotation files of tomograms at this voxel spacing (Å)", SEL)
    copick: str = option("", "Particles from the picks of this copick project (configuration file) instead of "
                         "the portal's annotations: a local project with --tomograms, or one backed by the "
                         "portal (its runs' tilt series come from the portal)", COPICK, metavar="CONFIG")
    user_id: str = option("", "copick picks of this user only", COPICK)
    session_id: str = option("", "copick picks of this session only", COPICK)
    tomograms: str = option("", "With a local copick project: the RELION tomograms.star of its tilt series "
                            "(rlnTomoName = copick run name)", COPICK)
    amplitude_contrast: float = option(0.07, "rlnAmplitudeContrast of every tilt series", REL)
    hand: float = option(-1.0, "rlnTomoHand of every tilt series (+1 or -1)", REL)
    s3: bool = option(False, "Name tilt images by their s3:// URL (anonymous S3) instead of https://", IO)
    download: bool = option(False, "Write the selected tilt series as local MRC stacks (tilt_series/*.mrcs, "
                            "chunk by chunk, resumable) that every RELION program reads; without it, "
                            "tilt_series/*.mrcs are header-only and relion_py reads the pixels remotely", IO)
    o: str = option(None, "Output directory", IO, required=True)
    url: str = option("", "GraphQL endpoint of the portal (default: the client's, the public portal)", IO)
    dry_run: bool = option(False, "Print the runs, particles per run and bytes of the tilt series (what "
                           "--download fetches) without writing anything", IO)
    average: bool = option(False, "After the extraction (its options after '--'), reconstruct the particles "
                           "(merged and half maps in <o>/Average/) and write a one-page summary.md with the "
                           "map's central slices", IO)


@dataclass
class PortalProject:
    optimisation_set: str       # path of optimisation_set.star
    tomograms: list             # rlnTomoName of each tilt series
    n_particles: int
    skipped: list = field(default_factory=list)     # tomograms left out: their run's metadata is incomplete


def _ids(text, what):
    try:
        return sorted({int(v) for v in str(text).replace(" ", "").split(",") if v})
    except ValueError:
        raise RelionPyError(f"--{what} '{text}': expected comma-separated integer ids") from None


def tomogram_names(sources):
    """rlnTomoName per source: the run name, or ``<run name>_<alignment id>`` where one run has several
    alignments in the selection or two runs share a name; characters other than letters, digits, '.',
    '_' and '-' become '_' (the name is used in file names)."""
    names = [re.sub(r"[^A-Za-z0-9._-]", "_", s.run.name) for s in sources]
    return [n if names.count(n) == 1 else f"{n}_{s.alignment.id}" for n, s in zip(names, sources)]


def make_portal_project(opts, command=None):
    """Query the portal (or read the copick project of --copick), write the project (see the module doc) and
    return a :class:`PortalProject`.

    ``command``: the command line, recorded in ``note.txt``.
    """
    if not 0.0 <= opts.amplitude_contrast < 1.0:
        raise RelionPyError(f"--amplitude_contrast {opts.amplitude_contrast}: must be in [0, 1)")
    if opts.hand not in (1.0, -1.0):
        raise RelionPyError(f"--hand {opts.hand}: must be 1 or -1")
    if opts.copick:
        from .copick_project import make_copick_project      # copick only when asked for
        return make_copick_project(opts, command)
    client = cdp.Client(url=opts.url or None)
    sources = select(client, _ids(opts.run_ids, "run_ids"), _ids(opts.dataset_ids, "dataset_ids"), opts.object,
                     opts.inexact_match, opts.ground_truth, opts.automated_only, opts.tiltseries_id,
                     opts.alignment_id, opts.voxel_spacing,
                     [n for n in opts.run_names.split(",") if n.strip()] if opts.run_names else [],
                     _ids(opts.deposition_ids, "deposition_ids"), _ids(opts.annotation_ids, "annotation_ids"),
                     _ids(opts.tomogram_ids, "tomogram_ids"))

    def annotated_points(source, size, pixel_size):
        return [read_points(text, vox, spacing, f"annotation file {f.https_path}")
                for f, text, vox, spacing in source.annotation_files]
    return write_portal_project(opts, sources, annotated_points, command)


def write_portal_project(opts, sources, points_of, command):
    """Write the project of ``sources`` (:class:`relion_py.portal.query.TomogramSource`, one per tomogram);
    ``points_of(source, size, pixel_size)`` gives the tomogram's particles as [(centred coordinates (n, 3) Å,
    angles (n, 3) degrees or None)], ``size`` being rlnTomoSizeX/Y/Z and ``pixel_size`` the tilt series'."""
    out = opts.o.rstrip("/") or "."
    names = tomogram_names(sources)
    tilt_series, headers, downloads, tomograms, optics, particles, skipped = {}, {}, {}, [], [], [], []
    for name, source in zip(names, sources):
        try:
            mapped = _map_tomogram(opts, out, name, source, points_of)
        except IncompleteRun as e:
            warn(f"run {source.run.name} ({name}) left out: {e}")
            skipped.append(name)
            continue
        star, table, stack, fetch, header, tomogram, points = mapped
        tilt_series[star] = {name: table}
        if fetch:
            downloads[stack] = fetch
        if header:
            headers[stack] = header
        tomograms.append(tomogram)
        optics.append(optics_row(len(tomograms), tomogram))
        particles.append((name, len(tomograms), points))
    if not tomograms:
        raise RelionPyError(f"every selected run lacks metadata RELION needs ({len(skipped)} left out, see the "
                            "warnings)")
    sources = [s for n, s in zip(names, sources) if n not in skipped]
    names = [n for n in names if n not in skipped]
    table = particle_table(particles)
    if not len(table):
        raise RelionPyError("the selected annotation files hold no points")
    if opts.dry_run:
        _print_plan(names, sources, table)
        return PortalProject(None, names, len(table), skipped)
    # everything is checked: write
    os.makedirs(os.path.join(out, "tilt_series"), exist_ok=True)
    for stack, (location, pixel_size) in downloads.items():    # first: the STAR files name complete stacks
        download_stack(location, stack, pixel_size, f"relion_py: downloaded from {location}")
    for star, blocks in tilt_series.items():
        write_star(star, blocks)
    for stack, header in headers.items():
        with atomic_output(stack) as tmp, open(tmp, "wb") as fh:
            fh.write(header)
    write_star(f"{out}/tomograms.star", {"global": pd.DataFrame(tomograms)})
    optimisation_set = write_particles(out, optics, table, f"{out}/tomograms.star", command,
                                       HEADER_ONLY_WARNING if headers else "")
    return PortalProject(optimisation_set, names, len(table), skipped)


def _map_tomogram(opts, out, name, source, points_of):
    """One tomogram's files and rows: (tilt-series STAR path, its table, stack path, (location, pixel size) to
    download or None, header-only stack bytes or None, tomograms.star row, particles). IncompleteRun if the
    portal lacks what RELION needs for it."""
    if source.alignment.alignment_type == "LOCAL":
        raise RelionPyError(f"alignment {source.alignment.id} (run {source.run.name}) is a LOCAL alignment: "
                            "RELION's tilt-series model has no local deformations; choose a GLOBAL one with "
                            "--alignment_id")
    ts = source.tiltseries
    if ts.is_aligned:
        raise RelionPyError(f"tilt series {ts.id} (run {source.run.name}) is stored aligned: its "
                            "alignment describes the raw stack; choose another with --tiltseries_id")
    location = ts.s3_omezarr_dir if opts.s3 else ts.https_omezarr_dir
    if not location:
        raise RelionPyError(f"tilt series {ts.id} (run {source.run.name}) has no OME-Zarr "
                            f"{'s3' if opts.s3 else 'https'} location in the portal")
    offset = [v or 0.0 for v in (source.alignment.volume_x_offset, source.alignment.volume_y_offset,
                                 source.alignment.volume_z_offset)]
    if any(offset):
        warn(f"alignment {source.alignment.id} ({name}) has a reconstruction volume offset of {offset} "
             "Å, which RELION's geometry has no place for: it is ignored")
    star, stack = f"{out}/tilt_series/{name}.star", f"{out}/tilt_series/{name}.mrcs"
    table = tilt_series_table(source, stack, None if opts.download else location.rstrip("/"))
    fetch = (location.rstrip("/"), ts.pixel_spacing) if opts.download else None
    header = None if opts.download else stack_header(
        stack_shape(source), ts.pixel_spacing, f"relion_py: HEADER ONLY, no pixels; they are at {location}")
    size = tomogram_size(source)
    voltage = ts.acceleration_voltage / 1000.0          # volts in the portal
    tomogram = dict(
        rlnTomoName=name, rlnVoltage=voltage, rlnSphericalAberration=ts.spherical_aberration_constant,
        rlnAmplitudeContrast=opts.amplitude_contrast, rlnTomoHand=opts.hand, rlnOpticsGroupName=name,
        rlnMicrographOriginalPixelSize=ts.pixel_spacing / (ts.binning_from_frames or 1.0),
        rlnTomoTiltSeriesPixelSize=ts.pixel_spacing, rlnTomoTiltSeriesStarFile=star,
        rlnTomoSizeX=size[0], rlnTomoSizeY=size[1], rlnTomoSizeZ=size[2],
        **({} if ts.tilt_axis is None else {"rlnTomoNominalTiltAxisAngle": ts.tilt_axis}))
    return star, table, stack, fetch, header, tomogram, points_of(source, size, ts.pixel_spacing)


def optics_row(group, tomogram):
    """particles.star's optics group ``group`` for a tomograms.star row (one group per tilt series)."""
    return dict(rlnOpticsGroup=group, rlnOpticsGroupName=tomogram["rlnTomoName"],
                rlnSphericalAberration=tomogram["rlnSphericalAberration"], rlnVoltage=tomogram["rlnVoltage"],
                rlnTomoTiltSeriesPixelSize=tomogram["rlnTomoTiltSeriesPixelSize"],
                rlnAmplitudeContrast=tomogram["rlnAmplitudeContrast"])


def write_particles(out, optics, table, tomograms_file, command, warning=""):
    """particles.star, optimisation_set.star (naming ``tomograms_file``) and note.txt in ``out``; returns the
    optimisation set's path."""
    write_star(f"{out}/particles.star", {"optics": pd.DataFrame(optics), "particles": table})
    # the command as relion_py's other programs (and RELION's tomography programs) write it
    with atomic_output(os.path.join(out, "note.txt")) as tmp, open(tmp, "w") as fh:
        fh.write("Command:\n\n" + "".join(w + " " for w in command or []) + "\n")
        if warning:
            fh.write("\n" + warning + "\n")
    optimisation_set = f"{out}/optimisation_set.star"
    write_star(optimisation_set, {"optimisation_set": {"rlnTomoParticlesFile": f"{out}/particles.star",
                                                       "rlnTomoTomogramsFile": tomograms_file}})
    return optimisation_set


def _print_plan(names, sources, table):
    """--dry_run: one line per tomogram (run, tilt series, particles, tilt-series bytes) and the totals."""
    total = 0
    for name, source in zip(names, sources):
        ts = source.tiltseries
        nbytes = int(ts.file_size_omezarr or 0) or 4 * int(np.prod(stack_shape(source)))
        total += nbytes
        print(f"{name}: run {source.run.id} ({source.run.name}), tilt series {ts.id}, alignment "
              f"{source.alignment.id}, {int((table['rlnTomoName'] == name).sum())} particles, tilt series "
              f"{nbytes} bytes")
    print(f"dry run: {len(names)} tilt series, {len(table)} particles, {total} bytes of tilt series "
          "(fetched whole by --download; extraction fetches only the chunks under particle windows); "
          "nothing written")


def particle_table(particles):
    """particles.star's particle table from [(tomogram name, optics group, [(coords, angles | None)])]:
    angle columns if any file has orientations (the points of the other files get (0, 0, 0), the identity,
    as RELION gives particles without angles)."""
    oriented = any(a is not None for *_, files in particles for _, a in files)
    tables = []
    for name, group, files in particles:
        coords = np.concatenate([c for c, _ in files])
        t = pd.DataFrame({"rlnTomoName": [name] * len(coords),
                          "rlnTomoParticleName": [f"{name}/{i}" for i in range(1, len(coords) + 1)],
                          "rlnCenteredCoordinateXAngst": coords[:, 0],
                          "rlnCenteredCoordinateYAngst": coords[:, 1],
                          "rlnCenteredCoordinateZAngst": coords[:, 2]})
        if oriented:
            eulers = np.concatenate([np.zeros((len(c), 3)) if a is None else a for c, a in files])
            t["rlnAngleRot"], t["rlnAngleTilt"], t["rlnAnglePsi"] = eulers[:, 0], eulers[:, 1], eulers[:, 2]
        t["rlnOpticsGroup"] = group
        tables.append(t)
    return pd.concat(tables, ignore_index=True)
