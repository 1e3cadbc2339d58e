"""What a portal → RELION conversion needs, fetched with the cryoet-data-portal client.

Everything is asked for with a handful of batched GraphQL queries (``field._in([...])`` filters), one per
portal type; nothing but metadata and the point-annotation files is downloaded. Field meanings: the
client's models (cryoet_data_portal/_models.py) and the portal backend's importers
(cryoet-data-portal-backend, apiv2/db_import/importers/*.py).
"""
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import cryoet_data_portal as cdp
from gql.transport.exceptions import TransportConnectionFailed

from ..runtime.errors import RelionPyError
from ..io.remote import fetch_file

POINT_SHAPES = ("OrientedPoint", "Point")


@dataclass
class TomogramSource:
    """One tilt series with one alignment: a RELION tomogram."""

    run: object                   # cdp.Run
    tiltseries: object            # cdp.TiltSeries
    alignment: object             # cdp.Alignment
    sections: list                # cdp.PerSectionParameters of the tilt series (CTF, z_index, frame)
    section_alignments: list      # cdp.PerSectionAlignmentParameters of the alignment
    frames: dict                  # frame id → cdp.Frame (accumulated dose)
    # [(cdp.AnnotationFile, ndjson text, its tomogram's (x, y, z) size in voxels, voxel spacing Å)]
    annotation_files: list = field(default_factory=list)


def _find(model, client, *filters):
    """``model.find`` with network and server failures turned into one clear line."""
    try:
        return model.find(client, list(filters))
    except Exception as exc:  # noqa: BLE001 - gql/requests raise many types
        if _unreachable(exc):
            raise RelionPyError(f"cannot reach the portal at {client.url}: check the network or --url") from None
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise RelionPyError(f"CryoET Data Portal query for {model.__name__} at {client.url} failed: "
                            f"{type(exc).__name__}: {reason}") from None


def _unreachable(exc):
    """Whether ``exc`` (or what caused it) says the server could not be connected to: gql's
    TransportConnectionFailed, or an OSError (requests' ConnectionError, refused sockets, DNS failures)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (TransportConnectionFailed, OSError)):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _one_file_per_shape(files, alignments):
    """Keep one point file per annotation shape: a shape with files on several alignments or voxel
    spacings keeps the one on the portal-standard alignment (``Alignment.is_portal_standard``)."""
    by_shape = {}
    for f in files:
        by_shape.setdefault(f.annotation_shape_id, []).append(f)
    kept = []
    for shape_id, group in sorted(by_shape.items()):
        if len(group) > 1:
            standard = [f for f in group if alignments[f.alignment_id].is_portal_standard]
            group = standard if len(standard) == 1 else group
        if len(group) > 1:
            choices = ", ".join(f"file {f.id} (alignment {f.alignment_id}, voxel spacing id "
                                f"{f.tomogram_voxel_spacing_id})" for f in group)
            raise RelionPyError(f"annotation shape {shape_id} has several point files: {choices}; choose "
                                "with --alignment_id or --voxel_spacing")
        kept.append(group[0])
    return kept


def _by_id(model, client, ids):
    """``{id: object}`` of ``model`` for a set of ids (one query)."""
    return {o.id: o for o in _find(model, client, model.id._in(sorted(ids)))} if ids else {}


def select(client, run_ids=(), dataset_ids=(), object_name="", inexact_match=False, ground_truth=False,
           automated_only=False, tiltseries_id=None, alignment_id=None, voxel_spacing=None, run_names=(),
           deposition_ids=(), annotation_ids=(), tomogram_ids=()):
    """The tomograms (tilt series + alignment) and point annotations to convert, in run-id order.

    Annotations: ``Annotation.object_name`` equal to ``object_name`` (case-insensitive substring with
    ``inexact_match``), ``ground_truth_status`` true with ``ground_truth``, ``method_type == 'automated'``
    with ``automated_only``; their OrientedPoint / Point shapes' ndjson files
    (``AnnotationFile.format``), optionally restricted to one alignment, one tilt series or one voxel
    spacing (Å, ±0.001). ``run_names`` add runs by name; ``deposition_ids`` and ``annotation_ids``
    restrict the annotations (with no run given, the runs are those of the annotations of
    ``deposition_ids``); ``tomogram_ids`` keep the files on those tomograms' alignments and voxel spacings.
    """
    runs = _by_id(cdp.Run, client, set(run_ids))
    missing = sorted(set(run_ids) - set(runs))
    if missing:
        raise RelionPyError(f"no run with id {', '.join(map(str, missing))} in the CryoET Data Portal")
    for values, label, what in ((dataset_ids, "dataset_id", "in dataset"), (run_names, "name", "named")):
        if values:           # runs of these datasets / with these names; each value must match a run
            found = _find(cdp.Run, client, getattr(cdp.Run, label)._in(list(values)))
            unmatched = sorted(set(values) - {getattr(r, label) for r in found})
            if unmatched:
                raise RelionPyError(f"no run {what} {', '.join(map(str, unmatched))} in the CryoET Data Portal")
            runs.update((r.id, r) for r in found)
    if not runs and deposition_ids:
        in_depositions = _find(cdp.Annotation, client, cdp.Annotation.deposition_id._in(list(deposition_ids)))
        runs = _by_id(cdp.Run, client, {a.run_id for a in in_depositions})
    if not runs:
        raise RelionPyError("no run selected: give run ids, run names, dataset ids or deposition ids")

    in_runs = cdp.Annotation.run_id._in(sorted(runs))
    filters = [in_runs, cdp.Annotation.object_name.ilike(f"%{object_name}%") if inexact_match
               else cdp.Annotation.object_name == object_name]
    if ground_truth:
        filters.append(cdp.Annotation.ground_truth_status == True)  # noqa: E712 - a GraphQL filter
    if automated_only:
        filters.append(cdp.Annotation.method_type == "automated")
    if deposition_ids:
        filters.append(cdp.Annotation.deposition_id._in(list(deposition_ids)))
    if annotation_ids:
        filters.append(cdp.Annotation.id._in(list(annotation_ids)))
    annotations = _find(cdp.Annotation, client, *filters)
    if not annotations:
        names = sorted({a.object_name for a in _find(cdp.Annotation, client, in_runs)})
        raise RelionPyError(f"no annotation of object '{object_name}' matches in the selected runs (objects "
                            f"there: {', '.join(names) or 'none'}; --inexact_match matches substrings)")
    shapes = _find(cdp.AnnotationShape, client,
                   cdp.AnnotationShape.annotation_id._in([a.id for a in annotations]),
                   cdp.AnnotationShape.shape_type._in(list(POINT_SHAPES)))
    if not shapes:
        raise RelionPyError(f"the {len(annotations)} matching annotation(s) have no point shapes "
                            f"({' or '.join(POINT_SHAPES)})")
    file_filters = [cdp.AnnotationFile.annotation_shape_id._in(sorted(s.id for s in shapes)),
                    cdp.AnnotationFile.format == "ndjson"]
    if alignment_id is not None:
        file_filters.append(cdp.AnnotationFile.alignment_id == alignment_id)
    files = _find(cdp.AnnotationFile, client, *file_filters)
    spacings = _by_id(cdp.TomogramVoxelSpacing, client, {f.tomogram_voxel_spacing_id for f in files})
    if voxel_spacing is not None:
        files = [f for f in files
                 if abs(spacings[f.tomogram_voxel_spacing_id].voxel_spacing - voxel_spacing) < 1e-3]
    alignments = _by_id(cdp.Alignment, client, {f.alignment_id for f in files if f.alignment_id is not None})
    files = [f for f in files if f.alignment_id in alignments
             and tiltseries_id in (None, alignments[f.alignment_id].tiltseries_id)]
    if tomogram_ids:
        tomograms = _by_id(cdp.Tomogram, client, set(tomogram_ids))
        missing = sorted(set(tomogram_ids) - set(tomograms))
        if missing:
            raise RelionPyError(f"no tomogram with id {', '.join(map(str, missing))} in the CryoET Data Portal")
        on = {(t.alignment_id, t.tomogram_voxel_spacing_id) for t in tomograms.values()}
        files = [f for f in files if (f.alignment_id, f.tomogram_voxel_spacing_id) in on]
    if not files:
        raise RelionPyError("no point annotation file (ndjson, with an alignment) matches the selection")
    files = _one_file_per_shape(files, alignments)
    return _tomogram_sources(client, runs, {f.alignment_id: alignments[f.alignment_id] for f in files}, files,
                             spacings)


def select_tilt_series(client, run_ids, alignment_id=None, tiltseries_id=None):
    """One tomogram (tilt series + alignment) per run, without annotations (the particles come from elsewhere,
    e.g. copick picks), in run-id order: the run's alignment ``alignment_id`` (or on ``tiltseries_id``), else its
    only alignment with a tilt series, else its portal-standard one (``Alignment.is_portal_standard``)."""
    runs = _by_id(cdp.Run, client, set(run_ids))
    missing = sorted(set(run_ids) - set(runs))
    if missing:
        raise RelionPyError(f"no run with id {', '.join(map(str, missing))} in the CryoET Data Portal")
    alignments = _find(cdp.Alignment, client, cdp.Alignment.run_id._in(sorted(runs))) if runs else []
    chosen = {}
    for run_id in sorted(runs):
        mine = [a for a in alignments if a.run_id == run_id and a.tiltseries_id is not None
                and alignment_id in (None, a.id) and tiltseries_id in (None, a.tiltseries_id)]
        standard = [a for a in mine if a.is_portal_standard]
        mine = standard if len(mine) > 1 and len(standard) == 1 else mine
        if len(mine) != 1:
            found = ", ".join(str(a.id) for a in mine)
            raise RelionPyError(f"run {run_id} ({runs[run_id].name}) has "
                                f"{'several alignments (' + found + ')' if mine else 'no alignment'} with a tilt "
                                "series" + (" matching the selection" if alignment_id or tiltseries_id else "")
                                + ": choose one with --alignment_id")
        chosen[mine[0].id] = mine[0]
    return _tomogram_sources(client, runs, chosen, [], {})


def _tomogram_sources(client, runs, used, files, spacings):
    """TomogramSources of the alignments ``used`` ({id: cdp.Alignment}), with the annotation ``files`` on them."""
    no_ts = sorted(a.id for a in used.values() if a.tiltseries_id is None)
    if no_ts:
        raise RelionPyError(f"alignment {', '.join(map(str, no_ts))} has no tilt series")
    tiltseries = _by_id(cdp.TiltSeries, client, {a.tiltseries_id for a in used.values()})
    sections = _find(cdp.PerSectionParameters, client,
                     cdp.PerSectionParameters.tiltseries_id._in(sorted(tiltseries)))
    section_alignments = _find(cdp.PerSectionAlignmentParameters, client,
                               cdp.PerSectionAlignmentParameters.alignment_id._in(sorted(used)))
    frames = _by_id(cdp.Frame, client, {s.frame_id for s in sections})
    spacing_ids = sorted({f.tomogram_voxel_spacing_id for f in files})
    tomograms = _find(cdp.Tomogram, client, cdp.Tomogram.alignment_id._in(sorted(used)),
                      cdp.Tomogram.tomogram_voxel_spacing_id._in(spacing_ids)) if files else []
    texts = _fetch_texts([f.https_path for f in files])

    sources = {}
    for a in sorted(used.values(), key=lambda a: (a.run_id, a.id)):
        if a.run_id not in runs:
            raise RelionPyError(f"alignment {a.id} of the selected annotations belongs to run {a.run_id}, "
                                "which is not selected")
        sources[a.id] = TomogramSource(
            runs[a.run_id], tiltseries[a.tiltseries_id], a,
            [s for s in sections if s.tiltseries_id == a.tiltseries_id],
            [s for s in section_alignments if s.alignment_id == a.id], frames)
    for f, text in sorted(zip(files, texts), key=lambda ft: ft[0].id):
        key = (f.alignment_id, f.tomogram_voxel_spacing_id)
        sizes = {(t.size_x, t.size_y, t.size_z, t.voxel_spacing) for t in tomograms
                 if (t.alignment_id, t.tomogram_voxel_spacing_id) == key}
        if len(sizes) != 1:
            raise RelionPyError(
                f"annotation file {f.id}: {'tomograms of different sizes' if sizes else 'no tomogram'} for "
                f"alignment {f.alignment_id} at voxel spacing {spacings[key[1]].voxel_spacing} Å: the "
                "particle coordinates cannot be centred")
        *size, spacing = sizes.pop()
        sources[f.alignment_id].annotation_files.append((f, text, tuple(size), spacing))
    return list(sources.values())


def _fetch_texts(urls):
    """The annotation files (ndjson), fetched in parallel with retries."""
    def get(url):
        try:
            return fetch_file(url).decode("utf-8")
        except UnicodeDecodeError:
            raise RelionPyError(f"annotation file {url} is not text (expected ndjson)") from None
    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(get, urls))
