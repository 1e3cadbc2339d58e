"""The box sizes of the tomography programs, from --b, --crop and --bin (``SubtomoProgram::run``,
``ReconstructParticleProgram::readBasicParameters``), checked once for both programs."""
from dataclasses import dataclass

from ..runtime.errors import RelionPyError


#: Largest unbinned extraction square (px): 4× the widest detector, a 1 GiB float32 window per tilt image.
MAX_SQUARE = 16384


@dataclass
class BoxSizes:
    """Derived box sizes, in binned pixels unless stated."""

    box: int        # s2D: the box of the 2-D tilt images (--b)
    crop: int       # s3D: the output box (--crop, or --b)
    square: int     # s02D: the unbinned extraction square, int(bin·b + 0.5) tilt-series pixels
    boundary: int   # (box - crop) / 2


def box_sizes(box, crop, binning):
    """Check --b, --crop (None: the same as --b) and --bin and derive the sizes. Odd sizes are refused: RELION
    infers sizes as 2·(w−1) and silently mis-shifts odd boxes, writes a crop+1 map for an odd crop, and
    cannot Fourier-crop an odd unbinned square (docs/relion_quirks.md #14)."""
    if not binning > 0:
        raise RelionPyError(f"--bin must be positive (got {binning})")
    if box is None or box <= 0 or box % 2:
        raise RelionPyError(f"--b must be a positive even number (got {box}); RELION's Fourier-space centring "
                            "assumes even boxes")
    crop = box if crop is None else crop
    if crop <= 0 or crop % 2:
        raise RelionPyError(f"--crop must be a positive even number (got {crop})")
    if crop > box:
        raise RelionPyError(f"--crop ({crop}) must not exceed --b ({box})")
    square = int(binning * box + 0.5)
    if square > MAX_SQUARE:
        raise RelionPyError(f"--bin {binning} x --b {box} gives an extraction square of {binning * box:.4g} px, more "
                            f"than any tilt image (at most {MAX_SQUARE} px are supported)")
    if square % 2:
        raise RelionPyError(f"--bin {binning} x --b {box} gives an odd extraction square of {square} px; "
                            "choose sizes whose unbinned square is even")
    if binning != 1.0 and int(square / binning + 0.5) != box:
        raise RelionPyError(f"--bin {binning} cannot Fourier-crop a {square}-px square to --b {box}")
    return BoxSizes(box=box, crop=crop, square=square, boundary=(box - crop) // 2)
