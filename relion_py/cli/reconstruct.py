"""relion-py-reconstruct: drop-in for relion_reconstruct (image mode) and relion_tomo_reconstruct_particle
(tilt-series mode). The mode is chosen from the inputs' content."""
import os
import sys

from ..runtime.errors import RelionPyError
from ..io.star import read_star
from ..runtime.options import build_parser
from ..programs.reconstruct_images import ReconstructImagesOptions, reconstruct_images
from ..programs.reconstruct_particle import ReconstructParticleOptions, reconstruct_particle
from .common import run_cli

PROG = "relion-py-reconstruct"
DESCRIPTION = """Reconstruct a 3-D map from particles with known orientations, as RELION 5 does, with RELION's
flags and output. Two modes, chosen from what the input files contain:

  image mode (relion_reconstruct): --i particles.star whose particles have images (rlnImageName): 2-D
      single-particle stacks (N@stack.mrcs) or 3-D subtomograms (--3d_rot; relion_tomo_subtomo
      pseudo-subtomograms, pyTME or Warp exports); writes --o (default relion.mrc).
  tilt-series mode (relion_tomo_reconstruct_particle): --t tomograms.star / --p particles.star, or --i an
      optimisation set, or particles without images; reconstructs from the tilt series.

Run it from the RELION project folder (paths in STAR files are relative to it). The image mode's options
come first, then those of the tilt-series mode."""
TILT_SERIES = "Tilt-series mode (relion_tomo_reconstruct_particle)"
TILT_SERIES_DESCRIPTION = f"""{TILT_SERIES}: writes its output folder --o (merged.mrc, half1.mrc,
half2.mrc, data_*.mrc, weight_*.mrc, with --crop also *_full.mrc)."""


def _value(argv, flag):
    """The value following ``flag`` in argv (last occurrence), or None."""
    value = None
    for k, word in enumerate(argv):
        if word == flag and k + 1 < len(argv):
            value = argv[k + 1]
        elif word.startswith(flag + "="):
            value = word.split("=", 1)[1]
    return value


class ParticlesWithoutImages(RelionPyError):
    """--i names particles without images (a picking result) and nothing says where their tilt series are."""

    def __init__(self, path):
        super().__init__(
            f"{path} lists particles without images (rlnImageName; e.g. a picking result such as pyTME's "
            f"relion5 output): extract them first with relion-py-extract --p {path} --t tomograms.star --o DIR "
            f"(then reconstruct DIR/particles.star), or reconstruct from the tilt series with "
            f"relion-py-reconstruct --p {path} --t tomograms.star --b BOX --o DIR")


def choose_mode(argv):
    """'images' or 'tilt_series', from the inputs: --t or --p → tilt series; --i naming an optimisation set
    (rlnTomoParticlesFile) → tilt series; --i naming a particle table without rlnImageName: tilt series
    with an optimisation set's or --t's tomograms, else :class:`ParticlesWithoutImages`; otherwise images."""
    if any(_value(argv, flag) is not None for flag in ("--t", "--p")):
        return "tilt_series"
    path = _value(argv, "--i")
    if path is None or not os.path.isfile(path):
        return "images"          # let the image mode report the problem (or print --help)
    blocks = read_star(path)
    if any("rlnTomoParticlesFile" in (b.columns if hasattr(b, "columns") else b) for b in blocks.values()):
        return "tilt_series"
    particles = blocks.get("particles")
    if particles is None or not hasattr(particles, "columns"):
        particles = next((t for name, t in blocks.items() if hasattr(t, "columns") and name != "optics"),
                         None)
    if particles is not None and "rlnImageName" not in particles.columns:
        # without --t (checked above) such a file has no tomograms to be reconstructed from
        raise ParticlesWithoutImages(path)
    return "images"


def build_image_parser():
    """The argparse parser of the image mode."""
    return build_parser(ReconstructImagesOptions, PROG, DESCRIPTION)


def build_tilt_series_parser():
    """The argparse parser of the tilt-series mode."""
    return build_parser(ReconstructParticleOptions, PROG, TILT_SERIES_DESCRIPTION)


def print_help():
    """Both modes' options: the image mode's usage and flags, then the tilt-series mode's."""
    build_image_parser().print_help()
    print("\n" + "=" * 100 + "\n")
    build_tilt_series_parser().print_help()


def parse_image_options(argv):
    ns = build_image_parser().parse_args(argv)
    return ReconstructImagesOptions(**vars(ns))


def _tilt_series(argv):
    ns = build_tilt_series_parser().parse_args(argv)
    opts = ReconstructParticleOptions(**vars(ns))
    reconstruct_particle(opts, command=[PROG] + list(argv))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if "-h" in argv or "--help" in argv:
        print_help()
        return 0
    try:
        mode = choose_mode(argv)
    except RelionPyError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    if mode == "tilt_series":
        return run_cli(PROG, lambda: _tilt_series(argv))
    opts = parse_image_options(argv)
    return run_cli(PROG, lambda: reconstruct_images(opts))


if __name__ == "__main__":
    sys.exit(main())
