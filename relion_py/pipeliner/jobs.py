"""Pipeliner job types running relion_py instead of RELION, with RELION's own job options.

Each class subclasses the pipeliner's RELION job of the same program, so a pipeline's job options, input
and output nodes and results display are RELION's; only the commands change: the RELION program (or
``mpirun … <program>_mpi``) becomes the relion_py command, whose flags are RELION's. relion_py runs as one
process: the job's MPI processes × threads become its ``--j`` threads. ``--theme classic`` (a RELION
display option the pipeliner adds) is dropped.
"""
from pipeliner.jobs.relion.reconstruct_job import RelionReconstruct
from pipeliner.jobs.tomography.relion_tomo.tomo_pseudosubtomo_job import RelionPseudoSubtomoJob
from pipeliner.jobs.tomography.relion_tomo.tomo_reconstructparticle_job import RelionReconstructParticleJob
from pipeliner.pipeliner_job import ExternalProgram, PipelinerCommand

# RELION program → relion_py command
PROGRAMS = {
    "relion_tomo_subtomo": "relion-py-extract",
    "relion_tomo_reconstruct_particle": "relion-py-reconstruct",
    "relion_reconstruct": "relion-py-reconstruct",
}


def _program_index(words):
    """Index of the RELION program in a command (after any ``mpirun …`` prefix); its name may be a path
    and end in ``_mpi``."""
    for k, word in enumerate(words):
        name = word.rsplit("/", 1)[-1].removesuffix("_mpi")
        if name in PROGRAMS:
            return k, PROGRAMS[name]
    raise ValueError(f"no RELION program in the command {' '.join(words)}")


def relion_py_command(command, n_threads):
    """RELION's :class:`PipelinerCommand` → relion_py's: the program swapped, ``--theme X`` dropped,
    ``--j`` set to ``n_threads`` (added if RELION's command has none)."""
    words = [str(w) for w in command.cmd]
    k, program = _program_index(words)
    out, rest, i = [program], words[k + 1:], 0
    while i < len(rest):
        if rest[i] in ("--theme", "--j"):       # a flag and its value
            i += 2
        else:
            out.append(rest[i])
            i += 1
    out += ["--j", str(n_threads)]
    return PipelinerCommand(out, relion_control=command.relion_control, allow_failure=command.allow_failure)


class _RelionPyJob:
    """Mixin: RELION's commands of the parent job class, run by relion_py."""

    RELION_PY_PROGRAM = ""
    DISPLAY_NAME = ""

    def __init__(self):
        super().__init__()          # the RELION job's options, nodes and commands
        self.jobinfo.programs = [ExternalProgram(command=self.RELION_PY_PROGRAM)]
        self.jobinfo.display_name = self.DISPLAY_NAME
        self.jobinfo.short_desc = f"{self.DISPLAY_NAME}: RELION's numbers and files, by relion_py"

    def _n_threads(self):
        n = 1
        for name in ("nr_mpi", "nr_threads"):
            if name in self.joboptions:
                n *= max(1, int(self.joboptions[name].get_number()))
        return n

    def get_commands(self):
        return [relion_py_command(c, self._n_threads()) for c in super().get_commands()]


class RelionPyExtractJob(_RelionPyJob, RelionPseudoSubtomoJob):
    """relion_tomo_subtomo ("Extract subtomos") run by ``relion-py-extract``."""

    PROCESS_NAME = "relion_py.pseudosubtomo"
    RELION_PY_PROGRAM = "relion-py-extract"
    DISPLAY_NAME = "Extract subtomos (relion_py)"


class RelionPyReconstructParticleJob(_RelionPyJob, RelionReconstructParticleJob):
    """relion_tomo_reconstruct_particle ("Reconstruct particle") run by ``relion-py-reconstruct``."""

    PROCESS_NAME = "relion_py.reconstructparticletomo"
    RELION_PY_PROGRAM = "relion-py-reconstruct"
    DISPLAY_NAME = "Reconstruct particle (relion_py)"


class RelionPyReconstructJob(_RelionPyJob, RelionReconstruct):
    """relion_reconstruct (map from particle images, optionally half maps) run by ``relion-py-reconstruct``."""

    PROCESS_NAME = "relion_py.reconstruct"
    RELION_PY_PROGRAM = "relion-py-reconstruct"
    DISPLAY_NAME = "Reconstruct (relion_py)"
