"""Opening a tilt series: the reader (MRC files or OME-Zarr) chosen from where its frames are."""
from ..runtime.errors import RelionPyError
from .image_names import split_image_name
from .mrc_tilt_images import MrcTiltImages


def is_zarr_location(path):
    """True for OME-Zarr tilt series (local ``*.zarr`` folders or http(s)/s3 URLs)."""
    return "://" in path or path.rstrip("/").endswith(".zarr")


def is_one_mrc_stack(micrograph_names):
    """True if the frames are slices of one MRC file: its reader hands compiled code the whole pixel stack
    (``TiltImages.pixel_stack``), which cuts each window into one reused buffer; other readers (per-tilt files,
    OME-Zarr) gather all of a particle's windows first, one buffer each."""
    paths = {split_image_name(n)[0] for n in micrograph_names}
    return len(paths) == 1 and not is_zarr_location(next(iter(paths)))


def open_tilt_images(micrograph_names):
    """Open the frames named by a tilt-series STAR file's ``rlnMicrographName`` column.

    Dispatches on the location: OME-Zarr (``*.zarr`` folder or URL) or MRC files.
    """
    locations = [split_image_name(n) for n in micrograph_names]
    if not locations:
        raise RelionPyError("tilt series has no images (empty rlnMicrographName column)")
    if any(is_zarr_location(p) for p, _ in locations):
        # imported here: numcodecs and urllib3 add ~0.2 s to every program's start-up otherwise
        from .zarr_images import ZarrTiltImages
        return ZarrTiltImages(locations)
    return MrcTiltImages(locations)
