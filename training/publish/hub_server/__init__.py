"""A Hub-compatible HTTP server for tests: the real `huggingface_hub` client talks to it over loopback.

See `server.HubServer` (lifecycle, fault injection, inspection), `app` (the HTTP API), `faults` (failures,
dropped connections, latency) and `storage` (repos and commits in memory); the tests' pytest fixtures around it are
in `tests/hub_fixtures.py`.
"""

from .app import HubConfig, create_app
from .faults import FaultInjector, classify
from .server import HubServer
from .storage import Commit, FileEntry, HubError, HubStore, Repo

__all__ = [
    "Commit",
    "FaultInjector",
    "FileEntry",
    "HubConfig",
    "HubError",
    "HubServer",
    "HubStore",
    "Repo",
    "classify",
    "create_app",
]
