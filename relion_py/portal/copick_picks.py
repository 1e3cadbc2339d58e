"""copick picks → RELION 5 particles, read through the ``copick`` package (copick 1.x: ``pip install
'relion_py[copick]'``, imported only when ``relion-py-portal --copick`` is given).

A copick pick is a ``location`` (Å, in the tomogram's frame: origin at the tomogram's corner) and a 4 × 4
``transformation`` whose rotation turns the particle's reference frame into the tomogram's and whose
translation is an extra shift (Å) of the particle's centre. copick's portal backend makes them from the
portal's point annotations exactly as :func:`relion_py.portal.mapping.read_points` reads those: location =
voxel × voxel spacing, rotation = ``xyz_rotation_matrix`` (RELION's Euler matrix of the particle's angles).
So, for the tomogram of size (X, Y, Z) tilt-series pixels of pixel size p:

* ``rlnCenteredCoordinate{X,Y,Z}Angst`` = location + translation − (X, Y, Z) · p / 2 (RELION centres on size / 2);
* ``rlnAngleRot/Tilt/Psi`` = RELION's Euler angles of the rotation (``Euler::matrixToAngles``).

copick's own ``copick.util.relion.picks_to_df_relion`` computes the same from the same picks (the tests compare
the two), and its ``relion_df_to_picks`` writes picks that this mapping reads back to the original particles.
"""
import numpy as np

from ..runtime.errors import RelionPyError
from ..tomography.geometry import matrix_to_euler


def open_project(config):
    """The copick root of a configuration file (a local project, or one backed by the CryoET Data Portal)."""
    try:
        import copick
    except ImportError:
        raise RelionPyError("--copick needs the copick package: pip install 'relion_py[copick]'") from None
    try:
        return copick.from_file(config)
    except FileNotFoundError:
        raise RelionPyError(f"--copick {config}: no such file") from None
    except Exception as exc:  # noqa: BLE001 - pydantic / json / fsspec raise many types
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise RelionPyError(f"--copick {config}: not a copick configuration ({type(exc).__name__}: {reason})") \
            from None


def selected_picks(root, object_name, user_id="", session_id="", run_names=()):
    """[(copick run, [copick picks])] of ``object_name`` (optionally of one user / session), for the runs named in
    ``run_names`` (default: every run of the project), in run-name order; runs without such picks are left out."""
    if object_name not in {o.name for o in root.pickable_objects}:
        names = ", ".join(sorted(o.name for o in root.pickable_objects)) or "none"
        raise RelionPyError(f"the copick project has no pickable object '{object_name}' (objects: {names})")
    runs = {r.name: r for r in root.runs}
    missing = sorted(set(run_names) - set(runs))
    if missing:
        raise RelionPyError(f"no copick run named {', '.join(missing)}")
    chosen = []
    for name in sorted(run_names or runs):
        picks = runs[name].get_picks(object_name=object_name, user_id=user_id or None,
                                     session_id=session_id or None)
        picks = [p for p in picks if p.points]
        if picks:
            chosen.append((runs[name], sorted(picks, key=lambda p: (p.user_id, p.session_id))))
    if not chosen:
        who = "".join(f", {k} {v}" for k, v in (("user", user_id), ("session", session_id)) if v)
        raise RelionPyError(f"no copick picks of '{object_name}'{who} in the selected runs")
    return chosen


def centred_particles(picks, size, pixel_size):
    """(centred coordinates (n, 3) Å, RELION angles (n, 3) degrees) of one copick picks set, in its point
    order. size: the tomogram's (X, Y, Z) in tilt-series pixels; pixel_size: Å."""
    points, transforms = picks.numpy()
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    transforms = np.asarray(transforms, dtype=np.float64).reshape(-1, 4, 4)
    if not np.allclose(transforms[:, 3], [0.0, 0.0, 0.0, 1.0]):
        raise RelionPyError(f"copick picks {picks.pickable_object_name} / {picks.user_id} / {picks.session_id} "
                            f"of run {picks.run.name}: a transformation is not affine (bottom row != 0 0 0 1)")
    centred = points + transforms[:, :3, 3] - np.asarray(size, dtype=np.float64) * pixel_size / 2.0
    rot, tilt, psi = matrix_to_euler(transforms[:, :3, :3])
    return centred, np.stack([rot, tilt, psi], axis=1)
