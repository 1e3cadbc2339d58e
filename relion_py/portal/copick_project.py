"""``relion-py-portal --copick CONFIG``: a RELION 5 project whose particles are copick picks
(:mod:`relion_py.portal.copick_picks`), with the tilt series of a local RELION project (``--tomograms``) or,
for a copick project backed by the CryoET Data Portal (or whose run names are portal run ids), of the portal (the
same tomograms.star and tilt-series files as relion-py-portal writes for those runs)."""
import os

import cryoet_data_portal as cdp

from ..io.star import read_star
from ..runtime.errors import RelionPyError
from .copick_picks import centred_particles, open_project, selected_picks
from .project import PortalProject, optics_row, particle_table, write_particles, write_portal_project
from .query import select_tilt_series


def make_copick_project(opts, command):
    root = open_project(opts.copick)
    run_names = [n.strip() for n in opts.run_names.split(",") if n.strip()]
    chosen = selected_picks(root, opts.object, opts.user_id, opts.session_id, run_names)
    if opts.tomograms:
        return _with_local_tilt_series(opts, chosen, command)
    portal_ids = {}
    for run, picks in chosen:
        # a run of copick's portal backend knows its portal id; in other projects a run named by a number is the
        # portal run of that id (copick's convention for portal runs)
        run_id = getattr(run, "portal_run_id", None) or (int(run.name) if run.name.isdigit() else None)
        if run_id is None:
            raise RelionPyError(f"copick run {run.name} is not a CryoET Data Portal run: give the tilt series of "
                                "a local copick project with --tomograms tomograms.star")
        portal_ids[run_id] = picks
    sources = select_tilt_series(cdp.Client(url=opts.url or None), sorted(portal_ids), opts.alignment_id,
                                 opts.tiltseries_id)

    def picked_points(source, size, pixel_size):
        return [centred_particles(p, size, pixel_size) for p in portal_ids[source.run.id]]
    return write_portal_project(opts, sources, picked_points, command)


def _with_local_tilt_series(opts, chosen, command):
    """Particles of the picks of ``chosen`` in the tomograms of --tomograms (a RELION 5 tomograms.star)."""
    table = read_star(opts.tomograms).loop("global")
    rows = {str(row["rlnTomoName"]): row for _, row in table.iterrows()}
    optics, particles = [], []
    for group, (run, picks) in enumerate(chosen, 1):
        row = rows.get(run.name)
        if row is None:
            raise RelionPyError(f"copick run {run.name} has no tomogram of that name (rlnTomoName) in "
                                f"{opts.tomograms}")
        size = [float(row[f"rlnTomoSize{axis}"]) for axis in "XYZ"]
        optics.append(optics_row(group, row))
        particles.append((run.name, group, [centred_particles(p, size, float(row["rlnTomoTiltSeriesPixelSize"]))
                                            for p in picks]))
    out = opts.o.rstrip("/") or "."
    names = [run.name for run, _ in chosen]
    particles_table = particle_table(particles)
    if opts.dry_run:
        for name in names:
            print(f"{name}: {int((particles_table['rlnTomoName'] == name).sum())} particles")
        print(f"dry run: {len(names)} tomograms, {len(particles_table)} particles; nothing written")
        return PortalProject(None, names, len(particles_table))
    os.makedirs(out, exist_ok=True)
    return PortalProject(write_particles(out, optics, particles_table, opts.tomograms, command), names,
                         len(particles_table))
