"""What a RELION-named executable written by ``relion-py-shims`` runs: RELION's command line, by relion_py.

``python -m relion_py.cli.shim NAME ARGS...``, NAME one of RELION's program names (:data:`PROGRAMS`,
``_mpi`` variants included). The command line is RELION's own (the RELION 5 GUI writes
``relion_tomo_subtomo --i … --theme classic --o Extract/job005/ --b 64 … --pipeline_control Extract/job005/``);
relion_py runs it unchanged when it supports every flag on it. A flag relion_py does not know, or knows
and refuses (e.g. ``--real_subtomo``), hands the whole command to the real RELION program further down
PATH, saying so on stdout (the GUI's run.out); without a real RELION on PATH, relion_py runs it and
reports the flag in its usual one-line error.

RELION's particle programs read no environment variable that changes their output (``RELION_STACK_BUFFER``
sizes an I/O buffer, ``HOME`` locates the theme settings; ``RELION_EXTERNAL_RECONSTRUCT_EXECUTABLE`` is
read only with ``--external_reconstruct``, a flag that is handed over), so only flags decide.
"""
import os
import sys

from ..runtime.options import build_parser

#: A line every shim script carries, by which a shim is told from a real RELION program on PATH.
MARKER = "relion_py shim"

#: RELION program → (relion_py command, relion_py module, the mode relion-py-reconstruct must run in).
PROGRAMS = {
    "relion_tomo_subtomo": ("relion-py-extract", "extract", None),
    "relion_tomo_reconstruct_particle": ("relion-py-reconstruct", "reconstruct", "tilt_series"),
    "relion_reconstruct": ("relion-py-reconstruct", "reconstruct", "images"),
}
PROGRAMS.update({name + "_mpi": entry for name, entry in list(PROGRAMS.items())})

#: Environment variables by which MPI launchers (OpenMPI, MPICH/Hydra, PMIx, Slurm's srun) give the rank
#: and the number of ranks.
_MPI_RANK = ("OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "SLURM_PROCID")
_MPI_SIZE = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_NTASKS")


def _options_class(name):
    """The options dataclass relion_py parses ``name``'s command line into."""
    module = PROGRAMS[name][1]
    mode = PROGRAMS[name][2]
    if module == "extract":
        from ..programs.subtomo import ExtractOptions
        return ExtractOptions
    if mode == "tilt_series":
        from ..programs.reconstruct_particle import ReconstructParticleOptions
        return ReconstructParticleOptions
    from ..programs.reconstruct_images import ReconstructImagesOptions
    return ReconstructImagesOptions


def flags_relion_py_cannot_run(name, argv):
    """The flags on ``argv`` that relion_py does not know or refuses for RELION program ``name``."""
    options = _options_class(name)
    parser = build_parser(options, PROGRAMS[name][0], "")
    known = parser._option_string_actions   # argparse's table of every flag string it accepts
    refused = {"--" + (f.metadata.get("flag") or f.name)
               for f in options.__dataclass_fields__.values() if f.metadata.get("unsupported")}
    flags = [word.split("=", 1)[0] for word in argv if word.startswith("--")]
    return [flag for flag in flags if flag not in known or flag in refused]


def is_shim(path):
    """Whether the executable at ``path`` is a relion_py shim (and not a real RELION program)."""
    try:
        with open(path, "rb") as f:
            return MARKER.encode() in f.read(512)
    except OSError:
        return False


def find_relion(name):
    """The real RELION program ``name`` on PATH: the first executable of that name that is not a shim."""
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        candidate = os.path.join(folder or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK) and not is_shim(candidate):
            return candidate
    return None


def mpi_rank_and_size():
    """(rank, number of ranks) when launched by mpirun/srun, else (0, 1)."""
    def first(names):
        return next((int(os.environ[n]) for n in names if os.environ.get(n, "").isdigit()), None)
    size = first(_MPI_SIZE) or 1
    return (first(_MPI_RANK) or 0) if size > 1 else 0, size


def _has_dask_mpi():
    """Whether relion_py's [mpi] extra (dask-mpi, mpi4py) is installed."""
    import importlib.util
    return all(importlib.util.find_spec(m) is not None for m in ("dask_mpi", "mpi4py"))


def say(message):
    """A line for RELION's run.out (the GUI shows the program's stdout there)."""
    print(f"relion_py: {message}", flush=True)


def run(name, argv):
    """Run RELION program ``name``'s command line ``argv``; returns the exit status."""
    command, module, mode = PROGRAMS[name]
    cannot = flags_relion_py_cannot_run(name, argv)
    if cannot:
        relion = find_relion(name)
        if relion:
            say(f"{' '.join(cannot)} not supported by relion_py: handing the command to {relion}")
            os.execv(relion, [relion] + argv)
        say(f"{' '.join(cannot)} not supported by relion_py, and no RELION {name} further down PATH")
    rank, size = mpi_rank_and_size()
    if name.endswith("_mpi"):
        if size > 2 and _has_dask_mpi():
            # dask-mpi: rank 0 the scheduler, rank 1 the client that writes the outputs, the others workers
            if rank == 0:
                say(f"{name}: {size} MPI ranks → {command} --mpi (Dask: 1 scheduler, 1 client, "
                    f"{size - 2} workers)")
            argv = argv + ["--mpi"]
        else:
            if rank > 0:
                return 0        # one process does the work (see below); the other ranks have nothing to do
            ranks = f"launched with {size} MPI ranks" if size > 1 else "launched without mpirun"
            say(f"{name}: {ranks}; relion_py runs it in one process with --j threads")
    say(f"{name} → {command} (relion_py)")
    if module == "extract":
        from .extract import main
        return main(argv)
    from .reconstruct import main
    return main(argv, mode=mode)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in PROGRAMS:
        print(f"usage: python -m relion_py.cli.shim {{{','.join(PROGRAMS)}}} ARGS...", file=sys.stderr)
        return 2
    return run(argv[0], argv[1:])


if __name__ == "__main__":
    sys.exit(main())
