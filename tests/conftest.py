"""Shared test set-up: an isolated Hugging Face home, the loopback Hub endpoint, tiny models built in code.

huggingface_hub reads HF_ENDPOINT when it is imported, so the environment is set here, before any
test module imports it. The Hub server itself is started on that port by the `hub_server` fixture.
"""

from __future__ import annotations

import os
import tempfile

from tests.helpers import free_port, make_tiny_pipeline

os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="ddpo-hub-tests-hf-home-")
os.environ["HF_ENDPOINT"] = f"http://127.0.0.1:{free_port()}"
os.environ["HF_HUB_DISABLE_XET"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["HF_HUB_ETAG_TIMEOUT"] = "5"
os.environ.pop("HF_TOKEN", None)
os.environ.pop("HF_HUB_OFFLINE", None)

pytest_plugins = ["tests.hub_fixtures"]

import pytest  # noqa: E402
import torch  # noqa: E402

# Tiny test models run fastest on one thread; two threads on two shared cores mostly wait for each other.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory) -> str:
    """A saved tiny `DDPMPipeline` folder (random weights), shared by the whole session: do not modify."""
    path = tmp_path_factory.mktemp("tiny-ddpm")
    make_tiny_pipeline().save_pretrained(path)
    return str(path)
