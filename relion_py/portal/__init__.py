"""The CryoET Data Portal as a source of RELION 5 projects.

:func:`~relion_py.portal.project.make_portal_project` (the ``relion-py-portal`` program) queries the portal's
GraphQL API with the cryoet-data-portal client (``query``), maps the metadata to RELION's STAR columns
(``mapping``, which documents every field) and writes tomograms.star, one tilt-series STAR file per tilt
series, particles.star and optimisation_set.star. Tilt images stay in the portal: they are named by the
URL of the tilt series' OME-Zarr stack and read remotely, chunk by chunk, by
:class:`relion_py.io.zarr_images.ZarrTiltImages`.
"""
from .project import PortalOptions, PortalProject, make_portal_project

__all__ = ["PortalOptions", "PortalProject", "make_portal_project"]
