"""RELION optimisation sets: the file that names a project's particles, tomograms and trajectories.

Mirrors ``OptimisationSet::read`` (src/jaz/tomography/optimisation_set.cpp).
"""
from dataclasses import dataclass

from ..runtime.errors import RelionPyError
from ..io.star import read_star

LABELS = {"particles": "rlnTomoParticlesFile", "tomograms": "rlnTomoTomogramsFile",
          "trajectories": "rlnTomoTrajectoriesFile", "manifolds": "rlnTomoManifoldsFile"}


@dataclass
class OptimisationSet:
    """File names of a project (empty string = not given)."""

    particles: str = ""
    tomograms: str = ""
    trajectories: str = ""
    manifolds: str = ""

    @classmethod
    def read(cls, path, blocks=None):
        """The first data block is used whatever its name, as in RELION. Reference-map entries are
        read but dropped (RELION does not write them back either)."""
        blocks = read_star(path) if blocks is None else blocks
        if not blocks:
            raise RelionPyError(f"{path}: empty optimisation set")
        first = next(iter(blocks))
        if blocks.is_list(first):
            table = blocks.list(first)
        else:
            table = blocks[first].iloc[0].to_dict() if len(blocks[first]) else {}
        return cls(**{key: str(table.get(label, "")) for key, label in LABELS.items()})

    @classmethod
    def from_arguments(cls, i="", p="", t="", mot=""):
        """Combine ``--i`` with ``--p/--t/--mot``, which take precedence (RELION's rule).

        ``--i`` may also name a particles STAR file directly (one with a data_particles table)."""
        base = cls()
        if i:
            blocks = read_star(i)
            base = cls(particles=i) if "particles" in blocks else cls.read(i, blocks)
        out = cls(particles=p or base.particles, tomograms=t or base.tomograms,
                  trajectories=mot or base.trajectories, manifolds=base.manifolds)
        if not out.particles:
            raise RelionPyError("no particles file: give --p or an optimisation set (--i) that names one")
        if not out.tomograms:
            raise RelionPyError("no tomograms file: give --t or an optimisation set (--i) that names one")
        return out

    def to_star_block(self):
        """The list table RELION writes as ``optimisation_set.star`` (non-empty entries only)."""
        return {label: getattr(self, key) for key, label in LABELS.items() if getattr(self, key)}
