"""relion_py: RELION-exact cryo-ET particle extraction and reconstruction with a Numba core."""

__version__ = "0.1.0"
