"""The loopback Hub (`ddpo_hub.training.publish.hub_server`) driven by the real huggingface_hub client, as our Hub
code is.

If one of these fails, the server is no longer faithful to the protocol the client speaks: fix the server, not the
client call.
"""

from __future__ import annotations

import os
from pathlib import Path

import httpx2
import numpy as np
import pytest
import torch
from diffusers import DDPMPipeline
from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationDelete,
    HfApi,
    get_hf_file_metadata,
    hf_hub_download,
    hf_hub_url,
    snapshot_download,
)
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import get_session
from safetensors.numpy import save_file

from ddpo_hub.training.publish.hub_server import HubServer
from tests.helpers import make_tiny_pipeline

BIG = 10 * 1024 * 1024 + 123  # above the Hub's 10 MiB limit for regular (non-LFS) files


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory) -> Path:
    """Small text files, a small .safetensors (LFS by .gitattributes) and a >10 MiB one (LFS by size too)."""
    folder = tmp_path_factory.mktemp("model-folder")
    (folder / "config.json").write_text('{"sample_size": 16}\n')
    (folder / "notes").mkdir()
    (folder / "notes" / "train.txt").write_text("lr=1e-5\n" * 10)
    rng = np.random.default_rng(0)
    save_file({"w": rng.standard_normal(64, dtype=np.float32)}, folder / "small.safetensors")
    save_file({"w": rng.standard_normal(BIG // 4, dtype=np.float32)}, folder / "big.safetensors")
    return folder


def _read_all(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _new_repo(api: HfApi, server: HubServer, prefix: str, **kwargs) -> str:
    repo_id = server.unique_repo_id(prefix)
    api.create_repo(repo_id, **kwargs)
    return repo_id


def test_create_repos_of_each_type(hub_api: HfApi, hub_server: HubServer):
    model = _new_repo(hub_api, hub_server, "model")
    dataset = _new_repo(hub_api, hub_server, "data", repo_type="dataset", private=True)
    space = _new_repo(hub_api, hub_server, "space", repo_type="space", space_sdk="gradio")

    assert hub_api.model_info(model).private is False
    assert hub_api.repo_info(dataset, repo_type="dataset").private is True
    info = hub_api.space_info(space)
    assert info.sdk == "gradio" and info.runtime is not None and info.runtime.stage == "RUNNING"
    assert hub_api.list_repo_files(model) == [".gitattributes"]
    assert sorted(hub_api.list_repo_files(space, repo_type="space")) == [".gitattributes", "README.md"]
    assert [c.title for c in hub_api.list_repo_commits(dataset, repo_type="dataset")] == ["initial commit"]
    assert hub_api.whoami()["name"] == hub_server.user == model.split("/")[0]

    url = hub_api.create_repo(model, exist_ok=True)
    assert url.repo_id == model and url.repo_type == "model"
    with pytest.raises(HfHubHTTPError) as excinfo:
        hub_api.create_repo(model)
    assert excinfo.value.response.status_code == 409

    hub_api.delete_repo(model)
    assert not hub_api.repo_exists(model)


def test_upload_folder_then_download_identical_bytes(hub_api: HfApi, hub_server: HubServer, model_folder, tmp_path):
    repo_id = _new_repo(hub_api, hub_server, "upload")
    info = hub_api.upload_folder(repo_id=repo_id, folder_path=model_folder, commit_message="Add model")
    expected = _read_all(model_folder)

    assert info.oid == hub_api.model_info(repo_id).sha == hub_server.commits(repo_id)[0].oid
    assert info.commit_url.endswith(f"/{repo_id}/commit/{info.oid}")
    assert sorted(hub_api.list_repo_files(repo_id)) == sorted([".gitattributes", *expected])
    lfs = {f.path for f in hub_api.list_repo_tree(repo_id, recursive=True) if getattr(f, "lfs", None)}
    assert lfs == {"small.safetensors", "big.safetensors"}
    assert hub_server.calls("lfs") == 2  # one PUT per LFS file; the text files went inline in the commit

    for path, data in expected.items():
        assert Path(hf_hub_download(repo_id, path, cache_dir=tmp_path / "cache")).read_bytes() == data
    snapshot = Path(snapshot_download(repo_id, cache_dir=tmp_path / "cache2"))
    assert {k: v for k, v in _read_all(snapshot).items() if k != ".gitattributes"} == expected

    meta = get_hf_file_metadata(hf_hub_url(repo_id, "big.safetensors"))
    assert meta.commit_hash == info.oid and meta.size == len(expected["big.safetensors"])
    response = get_session().get(hf_hub_url(repo_id, "big.safetensors"), headers={"Range": "bytes=10-19"})
    assert response.status_code == 206 and response.content == expected["big.safetensors"][10:20]

    big = {s.rfilename: s for s in hub_api.model_info(repo_id, files_metadata=True).siblings}["big.safetensors"]
    assert big.lfs is not None and big.lfs.sha256 == meta.etag and big.size == len(expected["big.safetensors"])


def test_commit_semantics(hub_api: HfApi, hub_server: HubServer):
    repo_id = _new_repo(hub_api, hub_server, "commits")
    ops = [CommitOperationAdd(f"dir/{i}.txt", f"{i}\n".encode()) for i in range(3)]
    first = hub_api.create_commit(repo_id, ops + [CommitOperationAdd("a.txt", b"a")], commit_message="three")

    # Re-uploading identical content is a no-op: the client compares the oids the preupload endpoint returns.
    same = hub_api.upload_file(path_or_fileobj=b"a", path_in_repo="a.txt", repo_id=repo_id)
    assert same.oid == first.oid and len(hub_server.commits(repo_id)) == 2

    deleted = hub_api.create_commit(
        repo_id, [CommitOperationDelete("dir/"), CommitOperationDelete("a.txt")], commit_message="rm"
    )
    assert hub_api.list_repo_files(repo_id) == [".gitattributes"]
    with pytest.raises(HfHubHTTPError) as excinfo:  # stale parent commit
        hub_api.upload_file(path_or_fileobj=b"b", path_in_repo="b.txt", repo_id=repo_id, parent_commit=first.oid)
    assert excinfo.value.response.status_code == 412
    with pytest.raises(EntryNotFoundError):
        hub_api.delete_file("missing.txt", repo_id)
    assert hub_server.commits(repo_id)[0].oid == deleted.oid

    pr = hub_api.upload_file(path_or_fileobj=b"pr", path_in_repo="pr.txt", repo_id=repo_id, create_pr=True)
    assert pr.pr_num == 1 and pr.pr_revision == "refs/pr/1"
    assert hub_api.list_repo_files(repo_id, revision="refs/pr/1") == [".gitattributes", "pr.txt"]
    assert hub_api.list_repo_files(repo_id) == [".gitattributes"]


def test_tags_branches_and_revisions(hub_api: HfApi, hub_server: HubServer, tmp_path):
    repo_id = _new_repo(hub_api, hub_server, "revs")
    v1 = hub_api.upload_file(path_or_fileobj=b"one", path_in_repo="v.txt", repo_id=repo_id).oid
    hub_api.create_tag(repo_id, tag="v1", tag_message="first")
    hub_api.upload_file(path_or_fileobj=b"two", path_in_repo="v.txt", repo_id=repo_id)

    def read(revision: str) -> bytes:
        return Path(hf_hub_download(repo_id, "v.txt", revision=revision, cache_dir=tmp_path)).read_bytes()

    assert (read("v1"), read("main"), read(v1), read(v1[:8])) == (b"one", b"two", b"one", b"one")

    hub_api.create_branch(repo_id, branch="dev", revision="v1")
    hub_api.upload_file(path_or_fileobj=b"dev", path_in_repo="v.txt", repo_id=repo_id, revision="dev")
    assert read("dev") == b"dev" and read("main") == b"two"

    refs = hub_api.list_repo_refs(repo_id)
    assert {b.name for b in refs.branches} == {"main", "dev"}
    assert [(t.name, t.target_commit) for t in refs.tags] == [("v1", v1)]
    assert [c.title for c in hub_api.list_repo_commits(repo_id, revision="dev")] == [
        "Upload v.txt with huggingface_hub",
        "Upload v.txt with huggingface_hub",
        "initial commit",
    ]
    assert snapshot_download(repo_id, revision="v1", cache_dir=tmp_path).endswith(v1)

    hub_api.delete_tag(repo_id, tag="v1")
    hub_api.delete_branch(repo_id, branch="dev")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(repo_id, "v.txt", revision="v1", cache_dir=tmp_path / "fresh")
    with pytest.raises(RevisionNotFoundError):
        hub_api.list_repo_files(repo_id, revision="dev")


def test_errors_map_to_the_client_exceptions(hub_api: HfApi, hub_server: HubServer, tmp_path):
    repo_id = _new_repo(hub_api, hub_server, "errors")
    private = _new_repo(hub_api, hub_server, "private", private=True)
    hub_api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=private)
    anonymous = HfApi(endpoint=hub_server.endpoint, token=False)

    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(hub_server.unique_repo_id("missing"), "x.txt", cache_dir=tmp_path)
    with pytest.raises(RepositoryNotFoundError):
        hub_api.model_info(hub_server.unique_repo_id("missing"))
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(repo_id, "missing.txt", cache_dir=tmp_path)
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(repo_id, ".gitattributes", revision="nope", cache_dir=tmp_path)
    with pytest.raises(RevisionNotFoundError):
        hub_api.model_info(repo_id, revision="nope")
    assert hub_api.file_exists(repo_id, ".gitattributes") and not hub_api.file_exists(repo_id, "missing.txt")

    # No token: writes are 401, private repos look missing (401 + RepoNotFound, like the Hub).
    with pytest.raises(HfHubHTTPError) as excinfo:
        anonymous.create_repo(hub_server.unique_repo_id("anon"))
    assert excinfo.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError) as excinfo:
        anonymous.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=repo_id)
    assert excinfo.value.response.status_code == 401
    with pytest.raises(RepositoryNotFoundError) as excinfo:
        anonymous.model_info(private)
    assert excinfo.value.response.status_code == 401
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(private, "x.txt", token=False, cache_dir=tmp_path)
    assert hf_hub_download(private, "x.txt", token=hub_server.token, cache_dir=tmp_path)
    with pytest.raises(HfHubHTTPError) as excinfo:
        HfApi(endpoint=hub_server.endpoint, token="hf_wrong").model_info(repo_id)
    assert excinfo.value.response.status_code == 401

    hub_api.update_repo_settings(repo_id, gated="auto")
    with pytest.raises(GatedRepoError):
        hf_hub_download(repo_id, ".gitattributes", token=False, cache_dir=tmp_path / "gated")


def test_injected_500_on_commit_raises_and_leaves_repo_unchanged(hub_api: HfApi, hub_server: HubServer):
    repo_id = _new_repo(hub_api, hub_server, "fail")
    before = hub_server.commits(repo_id)

    hub_server.fail_next("commit", status=500)
    with pytest.raises(HfHubHTTPError) as excinfo:
        hub_api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=repo_id)
    assert excinfo.value.response.status_code == 500
    assert hub_server.commits(repo_id) == before and hub_server.calls("commit") == 1

    hub_api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=repo_id)
    assert hub_server.files(repo_id)["x.txt"] == b"x" and len(hub_server.commits(repo_id)) == 2


def test_dropped_commit_connection_raises_and_retry_succeeds(hub_api: HfApi, hub_server: HubServer, model_folder):
    repo_id = _new_repo(hub_api, hub_server, "drop")
    before = hub_server.commits(repo_id)

    hub_server.drop_next("commit")
    with pytest.raises(httpx2.TransportError):
        hub_api.upload_folder(repo_id=repo_id, folder_path=model_folder, commit_message="try 1")
    assert hub_server.commits(repo_id) == before

    hub_api.upload_folder(repo_id=repo_id, folder_path=model_folder, commit_message="try 2")
    assert [c.title for c in hub_server.commits(repo_id)] == ["try 2", "initial commit"]
    assert hub_server.files(repo_id)["big.safetensors"] == (model_folder / "big.safetensors").read_bytes()


def test_response_lost_after_commit_applied(hub_api: HfApi, hub_server: HubServer):
    repo_id = _new_repo(hub_api, hub_server, "lost")
    hub_server.drop_next("commit", after_processing=True)
    with pytest.raises(httpx2.TransportError):
        hub_api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=repo_id)
    assert hub_server.files(repo_id)["x.txt"] == b"x"  # applied: a blind retry would be an empty commit


def test_dropped_lfs_upload_is_retried_by_the_client(hub_api: HfApi, hub_server: HubServer, model_folder):
    repo_id = _new_repo(hub_api, hub_server, "droplfs")
    hub_server.drop_next_upload()
    hub_api.upload_file(path_or_fileobj=model_folder / "big.safetensors", path_in_repo="w.safetensors", repo_id=repo_id)
    assert hub_server.calls("lfs") == 2  # the dropped PUT, then the client's own retry
    assert hub_server.files(repo_id)["w.safetensors"] == (model_folder / "big.safetensors").read_bytes()


def test_latency_makes_client_timeouts_fire(hub_api: HfApi, hub_server: HubServer):
    repo_id = _new_repo(hub_api, hub_server, "slow")
    hub_server.set_latency(1.0, kind="resolve")
    with pytest.raises(httpx2.TimeoutException):
        get_hf_file_metadata(hf_hub_url(repo_id, ".gitattributes"), timeout=0.1)


def test_run_as_future_upload(hub_api: HfApi, hub_server: HubServer, model_folder):
    repo_id = _new_repo(hub_api, hub_server, "future")
    future = hub_api.upload_folder(repo_id=repo_id, folder_path=model_folder, run_as_future=True)
    assert future.result(timeout=120).oid == hub_api.model_info(repo_id).sha
    assert "big.safetensors" in hub_api.list_repo_files(repo_id)


def test_space_variables_and_secrets(hub_api: HfApi, hub_server: HubServer):
    space = _new_repo(hub_api, hub_server, "demo", repo_type="space", space_sdk="gradio")
    hub_api.add_space_variable(space, "MODEL_ID", "tester/model", description="model to serve")
    hub_api.add_space_secret(space, "API_KEY", "s3cr3t")
    variables = hub_api.get_space_variables(space)
    assert variables["MODEL_ID"].value == "tester/model" and variables["MODEL_ID"].description == "model to serve"
    assert list(hub_api.get_space_secrets(space)) == ["API_KEY"]
    assert hub_server.repo(space, "space").secrets["API_KEY"]["value"] == "s3cr3t"
    hub_api.delete_space_variable(space, "MODEL_ID")
    assert hub_api.get_space_variables(space) == {}
    with pytest.raises(HfHubHTTPError) as excinfo:
        HfApi(endpoint=hub_server.endpoint, token=False).add_space_variable(space, "X", "y")
    assert excinfo.value.response.status_code == 401


def test_hub_token_fixture_exports_hf_token(hub_token: str, hub_server: HubServer):
    assert os.environ["HF_TOKEN"] == hub_token == hub_server.token
    assert HfApi().whoami()["name"] == hub_server.user  # no explicit token: read from the environment


def test_ddpm_pipeline_round_trip(hub_api: HfApi, hub_server: HubServer, hub_token: str):
    repo_id = hub_server.unique_repo_id("ddpm")
    pipeline = make_tiny_pipeline(seed=1)
    pipeline.push_to_hub(repo_id, token=hub_token)

    loaded = DDPMPipeline.from_pretrained(repo_id)
    expected, actual = pipeline.unet.state_dict(), loaded.unet.state_dict()
    assert expected.keys() == actual.keys() and all(torch.equal(expected[k], actual[k]) for k in expected)
    assert loaded.scheduler.config.num_train_timesteps == pipeline.scheduler.config.num_train_timesteps
    assert "unet/diffusion_pytorch_model.safetensors" in hub_api.list_repo_files(repo_id)
