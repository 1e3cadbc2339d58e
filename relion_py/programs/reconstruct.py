"""relion-py-reconstruct's two programs behind one command: which one a set of inputs is for.

relion_reconstruct (image mode, :mod:`.reconstruct_images`) reconstructs from particle images;
relion_tomo_reconstruct_particle (tilt-series mode, :mod:`.reconstruct_particle`) from tilt series. RELION
has one command per program; relion_py tells them apart by what the input files contain.
"""
import os

from ..io.star import read_star
from ..runtime.errors import RelionPyError


class ParticlesWithoutImages(RelionPyError):
    """--i names particles without images (a picking result) and nothing says where their tilt series are."""

    def __init__(self, path):
        super().__init__(
            f"{path} lists particles without images (rlnImageName; e.g. a picking result such as pyTME's "
            f"relion5 output): extract them first with relion-py-extract --p {path} --t tomograms.star --o DIR "
            f"(then reconstruct DIR/particles.star), or reconstruct from the tilt series with "
            f"relion-py-reconstruct --p {path} --t tomograms.star --b BOX --o DIR")


def choose_mode(i=None, t=None, p=None):
    """'images' or 'tilt_series' from the values of --i, --t and --p (None: not given). --t or --p → tilt
    series; --i naming an optimisation set (rlnTomoParticlesFile) → tilt series; --i naming a particle table
    without rlnImageName (and no --t, checked first) → :class:`ParticlesWithoutImages`; otherwise images."""
    if t is not None or p is not None:
        return "tilt_series"
    if i is None or not os.path.isfile(i):
        return "images"          # let the image mode report the problem (or print --help)
    blocks = read_star(i)
    if any("rlnTomoParticlesFile" in (blocks[name] if blocks.is_list(name) else blocks[name].columns)
           for name in blocks):
        return "tilt_series"
    particles = blocks["particles"] if blocks.is_loop("particles") else \
        next((table for name, table in blocks.loops() if name != "optics"), None)
    if particles is not None and "rlnImageName" not in particles.columns:
        raise ParticlesWithoutImages(i)
    return "images"
