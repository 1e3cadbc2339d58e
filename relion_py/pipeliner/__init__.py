"""relion_py's programs as CCP-EM pipeliner job types (the ``[pipeliner]`` extra).

The pipeliner (``ccpem-pipeliner``, which py2rely and Doppio drive) finds job types through the
``ccpem_pipeliner.jobs`` entry-point group (``pipeliner/job_factory.py``); pyproject.toml registers the
classes of :mod:`relion_py.pipeliner.jobs` there. Importing this package needs ccpem-pipeliner.
"""
