"""Numba kernels: no I/O, plain arrays and scalars in and out.

Every kernel's docstring names the RELION function it mirrors.
"""
