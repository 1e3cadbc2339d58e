"""The files of 3-D pseudo-subtomograms: per particle ``<name>_data.mrc``, ``_weights.mrc`` and the optional
``_CTF2``, ``_multi``, ``_data_nrm``, ``_CTF2_nrm``, ``_div`` maps, and the ``--sum`` maps (``SubtomoProgram``,
src/jaz/tomography/programs/subtomo.cpp)."""
import numpy as np

from ..io.mrc import write_mrc
from ..kernels.tomography.volume_filters import divide_heuristic, divide_wiener, taper
from .half_grid import half_to_centred_full


def output_suffixes(opts):
    """The file suffixes one particle's outputs have: a particle is finished only when all exist."""
    if opts.stack2d:
        return ["_stack2d.mrcs"]
    if opts.no_writing:
        return []
    extras = [("_weights.mrc", not opts.no_comb), ("_CTF2.mrc", opts.ctf), ("_multi.mrc", opts.multi),
              ("_data_nrm.mrc", opts.nrm), ("_CTF2_nrm.mrc", opts.nrm), ("_div.mrc", opts.div)]
    return ["_data.mrc"] + [name for name, wanted in extras if wanted]


def write_volume_outputs(opts, root, data, ctf_mult, s3, pixel_size):
    """``<root>_data.mrc``, ``_weights.mrc`` and the optional 3-D outputs of one particle. Each file is renamed
    into place whole; --only_do_unfinished redoes a particle unless all of them exist."""
    import scipy.fft   # only the 3-D extras use it: not imported at start-up (0.1 s)
    inv_px = 1.0 / pixel_size
    f16 = opts.float16
    write_mrc(root + "_data.mrc", data, pixel_size, float16=f16)
    if not opts.no_comb:
        write_mrc(root + "_weights.mrc", ctf_mult, inv_px, float16=f16)
    ctf, mult = ctf_mult[:s3], ctf_mult[s3:]
    if opts.ctf:
        write_mrc(root + "_CTF2.mrc", half_to_centred_full(ctf), inv_px, float16=f16)
    if opts.multi:
        write_mrc(root + "_multi.mrc", half_to_centred_full(mult), inv_px, float16=f16)
    if opts.nrm:
        spectrum = scipy.fft.rfftn(data, norm="ortho")
        positive = mult > 0
        safe = np.where(positive, mult, np.float32(1))
        spectrum = np.where(positive, (spectrum.real / safe) + 1j * (spectrum.imag / safe), 0).astype(np.complex64)
        ctf_nrm = np.where(positive, ctf / safe, np.float32(0)).astype(np.float32)
        write_mrc(root + "_data_nrm.mrc", scipy.fft.irfftn(spectrum, s=data.shape, norm="ortho"), pixel_size,
                  float16=f16)
        write_mrc(root + "_CTF2_nrm.mrc", half_to_centred_full(ctf_nrm), inv_px, float16=f16)
    if opts.div:
        spectrum = scipy.fft.rfftn(data, norm="ortho")
        if opts.SNR > 0.0:
            divide_wiener(spectrum, ctf, 1.0 / opts.SNR)
        else:
            divide_heuristic(spectrum, ctf, 0.001)
        divided = scipy.fft.irfftn(spectrum, s=data.shape, norm="ortho")
        taper(divided, opts.taper, not opts.no_center)
        write_mrc(root + "_div.mrc", divided, pixel_size, float16=f16)


class Sums:
    """``--sum``: the float32 sums of all data volumes and CTF² volumes (in particle order; RELION's order
    depends on its thread schedule), written as sum_data.mrc, sum_weight.mrc (full, centred) and the
    CTF-divided sum_div.mrc (Wiener with --SNR, else the heuristic; no taper)."""

    def __init__(self, size):
        self.data = np.zeros((size, size, size), np.float32)
        self.weights = np.zeros((size, size, size // 2 + 1), np.float32)

    def add(self, data, ctf_mult):
        self.data += data
        self.weights += ctf_mult[:len(data)]

    def write(self, opts, out_dir, pixel_size):
        import scipy.fft   # only the 3-D extras use it: not imported at start-up (0.1 s)
        write_mrc(out_dir + "sum_data.mrc", self.data, pixel_size)
        write_mrc(out_dir + "sum_weight.mrc", half_to_centred_full(self.weights), pixel_size)
        spectrum = scipy.fft.rfftn(self.data, norm="ortho")
        if opts.SNR > 0.0:
            divide_wiener(spectrum, self.weights, 1.0 / opts.SNR)
        else:
            divide_heuristic(spectrum, self.weights, 0.001)
        write_mrc(out_dir + "sum_div.mrc", scipy.fft.irfftn(spectrum, s=self.data.shape, norm="ortho"), pixel_size)
