"""relion-py-reconstruct: drop-in for relion_reconstruct (image mode) and relion_tomo_reconstruct_particle
(tilt-series mode). The mode is chosen from the inputs' content."""
import sys

from ..runtime.errors import RelionPyError
from ..runtime.options import build_parser, parse_options
from ..programs.reconstruct import choose_mode as choose_input_mode
from ..programs.reconstruct_images import ReconstructImagesOptions, reconstruct_images
from ..programs.reconstruct_particle import ReconstructParticleOptions, reconstruct_particle
from ..runtime.cluster_options import wants_cluster, without_cluster_flags
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


def choose_mode(argv):
    """'images' or 'tilt_series' for a command line (:func:`relion_py.programs.reconstruct.choose_mode`)."""
    return choose_input_mode(*(_value(argv, flag) for flag in ("--i", "--t", "--p")))


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
    return parse_options(ReconstructImagesOptions, argv, PROG, DESCRIPTION)


def _tilt_series(argv):
    opts = parse_options(ReconstructParticleOptions, argv, PROG, TILT_SERIES_DESCRIPTION)
    command = [PROG] + without_cluster_flags(list(argv))
    if wants_cluster(opts):
        from ..distributed.reconstruct import reconstruct_particle_on_cluster   # Dask only when asked for
        return reconstruct_particle_on_cluster(opts, command)
    return reconstruct_particle(opts, command=command)


def _images(opts):
    if wants_cluster(opts):
        from ..distributed.reconstruct import reconstruct_images_on_cluster
        return reconstruct_images_on_cluster(opts)
    return reconstruct_images(opts)


def main(argv=None, mode=None):
    """``mode``: 'images' or 'tilt_series' to run that mode whatever the inputs (the relion_reconstruct and
    relion_tomo_reconstruct_particle shims); by default it is chosen from the inputs."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if mode is None and ("-h" in argv or "--help" in argv):
        print_help()
        return 0
    try:
        mode = mode or choose_mode(argv)
    except RelionPyError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    if mode == "tilt_series":
        return run_cli(PROG, lambda: _tilt_series(argv), _value(argv, "--pipeline_control") or "")
    return run_cli(PROG, lambda: _images(parse_image_options(argv)))


if __name__ == "__main__":
    sys.exit(main())
