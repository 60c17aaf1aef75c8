"""pytest fixtures for the test Hub (registered by `pytest_plugins = ["tests.hub_fixtures"]` in conftest).

- `hub_server` (session): a started `HubServer` on the port of `HF_ENDPOINT` (set by `tests/conftest.py` before
  huggingface_hub is imported). Attributes: `endpoint`, `token`, `user` ("tester"); fault injection:
  `fail_next(kind="commit", status=500, *, times=1, message="", code=None)`, `drop_next(kind="lfs", *, times=1,
  after_processing=False)`, `drop_next_upload(times=1)`, `set_latency(seconds, kind="any")`, `reset_faults()`;
  inspection: `calls(kind)`, `repo(repo_id, repo_type)`, `commits(...)`, `files(...)`, `unique_repo_id(prefix)`.
  Repos are never wiped: name them with `hub_server.unique_repo_id("...")`.
- `hub_token` (function): the server's write token, also exported as `HF_TOKEN` for code that reads the environment.
- `hub_api` (function): an `HfApi` bound to the server with that token.
- an autouse fixture disarms faults and zeroes call counters after every test that started the server.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from urllib.parse import urlparse

import pytest

from ddpo_hub.training.publish.hub_server import HubServer

_server: HubServer | None = None


@pytest.fixture(scope="session")
def hub_server() -> Iterator[HubServer]:
    global _server
    endpoint = urlparse(os.environ["HF_ENDPOINT"])
    if endpoint.hostname != "127.0.0.1" or endpoint.port is None:
        raise RuntimeError(f"HF_ENDPOINT must be http://127.0.0.1:<port> for the test Hub, got {endpoint.geturl()}")
    with HubServer(port=endpoint.port) as server:
        _server = server
        try:
            yield server
        finally:
            _server = None


@pytest.fixture
def hub_token(hub_server: HubServer, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("HF_TOKEN", hub_server.token)
    return hub_server.token


@pytest.fixture
def hub_api(hub_server: HubServer, hub_token: str):
    from huggingface_hub import HfApi

    return HfApi(endpoint=hub_server.endpoint, token=hub_token)


@pytest.fixture(autouse=True)
def _reset_hub_faults() -> Iterator[None]:
    yield
    if _server is not None:
        _server.reset_faults()
