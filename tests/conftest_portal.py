"""Fixtures shared by the portal and OME-Zarr tests (imported by those test modules).

``portal``: one simulated data set (relion_py.tools.simulate, 2 tilt series) served by a loopback
:class:`portal_server.PortalServer` as the CryoET Data Portal would serve it, plus the same data written as a
RELION project with MRC stacks (the "local disk" reference). Built once per session; the server's request
log and injected faults are cleared around every test. Nothing leaves 127.0.0.1.
"""
import atexit
import os
from dataclasses import dataclass

import pytest
from portal_server import PortalServer

from relion_py.io import remote
from relion_py.tools.simulate import SimulationParams, simulate, write_portal, write_relion_project

CHUNKS = (1, 32, 32)     # small chunks, so that particle windows touch a fraction of each tilt image
PARAMS = dict(n_tomograms=2, seed=7, n_particles=6, image_size="384,352", tomo_size="384,352,60")
ZARR = "cryoet-data-portal-public/10000/{name}/TiltSeries/{name}.zarr"


@dataclass
class Portal:
    sim: object
    root: str            # what the server serves (portal.json + files)
    server: PortalServer
    local: str           # RELION project folder: local/project/... (MRC stacks)

    def zarr_url(self, name="TS_01"):
        return f"{self.server.url}/{ZARR.format(name=name)}"

    def zarr_path(self, name="TS_01"):
        return os.path.join(self.root, *ZARR.format(name=name).split("/"))


_SHARED = []


@pytest.fixture(scope="session")
def portal_session(tmp_path_factory):
    """Built once per test session: the modules that import this fixture get their own fixture
    instance, so the data and the server are kept here (the server stops with the process)."""
    if not _SHARED:
        root = str(tmp_path_factory.mktemp("portal"))
        local = str(tmp_path_factory.mktemp("local"))
        sim = simulate(SimulationParams(**PARAMS))
        write_relion_project(sim, local)
        server = PortalServer(root)
        atexit.register(server.close)
        write_portal(sim, root, server.url, chunks=CHUNKS)
        _SHARED.append(Portal(sim, root, server, local))
    return _SHARED[0]


@pytest.fixture
def portal(portal_session, monkeypatch):
    """The session's portal with a clean request log, no faults and no retry back-off."""
    monkeypatch.setattr(remote, "BACKOFF_S", 0.0)
    portal_session.server.reset()
    yield portal_session
    portal_session.server.reset()
