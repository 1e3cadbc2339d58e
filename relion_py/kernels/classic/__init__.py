"""RELION's classic Fourier-space reconstruction (the engine of ``relion_reconstruct``), one module per
RELION source:

- ``padded_grid``: the layout of ``BackProjector``'s ``data`` / ``weight`` (src/backprojector.h)
- ``insertion``: ``BackProjector::backproject2Dto3D`` / ``backrotate3D`` (src/backprojector.cpp)
- ``symmetrise``: ``BackProjector::enforceHermitianSymmetry`` / ``applyPointGroupSymmetry`` /
  ``applyHelicalSymmetry`` (src/backprojector.cpp)
- ``reconstruct``: the weight division of ``BackProjector::reconstruct`` (src/backprojector.cpp,
  src/tabfuncs.cpp)
- ``projector``: ``Projector::decenter`` / ``griddingCorrect`` (src/projector.h, src/projector.cpp)
- ``fftw_arrays``: ``shiftImageInFourierTransform`` / ``windowFourierTransform`` / ``CenterFFTbySign``
  (src/fftw.cpp, src/fftw.h)
- ``mask``: ``softMaskOutsideMap`` (src/mask.cpp)
- ``macros``, ``matrix2d``: ``ROUND`` / ``FLOOR`` / ``CEIL`` (src/macros.h), ``Matrix2D::inv`` (src/matrix2d.h)

The CTF image (``CTF::getFftwImage``, src/ctf.cpp) is ``relion_py.kernels.ctf.ctf_image``.
"""
