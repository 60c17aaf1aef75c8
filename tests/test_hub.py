"""training/hub.py against the loopback Hub, with the real huggingface_hub client.

Each test fabricates a run folder as the trainer writes it, pushes it, and checks the result the way a
user would see it: `DDPMPipeline.from_pretrained`, `ModelCard.load`, the repo's commits, tags and files.
"""

from __future__ import annotations

import hashlib
import json
import re
import traceback
from pathlib import Path

import pytest
import torch
from diffusers import DDPMPipeline
from huggingface_hub import ModelCard

from ddpo_hub.training.cli import card_main
from ddpo_hub.training.hub import HubPublisher, PushError, commit_title, epoch_tag, scrub_token
from tests.conftest import make_tiny_pipeline
from tests.run_folder import advance_run, make_run_folder, metrics_row

PIPELINE_FILES = {
    "model_index.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "scheduler/scheduler_config.json",
}
CARD_FILES = {"README.md", "images/before_after.png", "images/training_curves.png"}


def _assert_same_weights(pipeline: DDPMPipeline, reference: DDPMPipeline) -> None:
    pushed, local = pipeline.unet.state_dict(), reference.unet.state_dict()
    assert pushed.keys() == local.keys()
    for name, tensor in local.items():
        assert torch.equal(pushed[name], tensor), name


def _tree_digest(folder: Path) -> dict[str, str]:
    return {
        path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def _new_commits(hub_server, repo_id: str, revision: str = "main") -> list:
    """Commits after the repo's initial one, oldest first."""
    return list(reversed(hub_server.commits(repo_id, revision=revision)))[1:]


def test_commit_title_compares_with_epoch_one():
    rows = [{"epoch": 1, "jpeg_kb_mean": 13.35}, {"epoch": 12, "jpeg_kb_mean": 8.41}]
    assert commit_title(rows, 12) == "Epoch 12: mean JPEG 8.41 kB (-37% vs base)"
    assert commit_title(rows, 1) == "Epoch 1: mean JPEG 13.35 kB (+0% vs base)"
    assert commit_title([{"epoch": 1, "jpeg_kb_mean": 10.0}, {"epoch": 2, "jpeg_kb_mean": 9.99}], 2).endswith(
        "(+0% vs base)"
    )
    assert commit_title(rows, 7) == "Epoch 7"
    assert epoch_tag(12) == "epoch-12"


def test_scrub_token_masks_given_and_token_shaped_strings(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "from-the-env-0123")
    token_shaped = "hf_" + "abcdefghijklmnopqrstuvwxyz0123"  # built here so no token-shaped text is tracked
    text = f"401 for Bearer s3cret-value, env from-the-env-0123, other {token_shaped}"
    scrubbed = scrub_token(text, "s3cret-value")
    assert "s3cret-value" not in scrubbed and "from-the-env-0123" not in scrubbed
    assert token_shaped not in scrubbed
    assert scrubbed.startswith("401 for Bearer ***")


def test_push_epochs_publishes_pipeline_card_and_tags(hub_server, hub_token, tmp_path):
    repo_id = hub_server.unique_repo_id("ddpo-push")
    run = make_run_folder(tmp_path / "run", epochs=1, seed=0)
    with HubPublisher(repo_id) as publisher:  # token from HF_TOKEN, as users run it
        assert publisher.pushed_epochs() == set()
        publisher.push_epoch(run, 1)
        advance_run(run, 2, seed=1)  # the trainer overwrites the folder while epoch 1 uploads
        publisher.push_epoch(run, 2)
    assert publisher.pushed_epochs() == {1, 2}

    _assert_same_weights(DDPMPipeline.from_pretrained(repo_id), DDPMPipeline.from_pretrained(run))
    _assert_same_weights(DDPMPipeline.from_pretrained(repo_id, revision="epoch-1"), make_tiny_pipeline(0))

    commits = _new_commits(hub_server, repo_id)
    assert [commit.title for commit in commits] == [
        "Epoch 1: mean JPEG 10.00 kB (+0% vs base)",
        "Epoch 2: mean JPEG 9.50 kB (-5% vs base)",
    ]
    tags = hub_server.repo(repo_id).tags
    assert {name: oid for name, oid in tags.items()} == {"epoch-1": commits[0].oid, "epoch-2": commits[1].oid}

    files = hub_server.files(repo_id)
    assert set(files) == {".gitattributes"} | PIPELINE_FILES | CARD_FILES
    assert not any(path.startswith(("checkpoints/", "logs/")) or "optimizer" in path for path in files)

    card = ModelCard.load(repo_id)
    assert card.data.license == "apache-2.0"
    assert card.data.library_name == "diffusers"
    assert card.data.pipeline_tag == "unconditional-image-generation"
    assert card.data.base_model == "google/ddpm-celebahq-256"
    assert "jpeg_compressibility" in card.data.tags
    for image in re.findall(r"\]\((images/[^)]+)\)", card.text):
        assert image in files


def test_push_returns_at_once_and_stages_a_snapshot(hub_server, hub_token, tmp_path):
    repo_id = hub_server.unique_repo_id("ddpo-background")
    run = make_run_folder(tmp_path / "run", epochs=1, seed=0)
    publisher = HubPublisher(repo_id, token=hub_token)
    hub_server.set_latency(1.0, "commit")
    future = publisher.push_epoch(run, 1)
    assert not future.done()
    make_tiny_pipeline(7).save_pretrained(run)  # overwritten before the upload ran
    publisher.wait()
    assert future.result().oid == hub_server.repo(repo_id).tags["epoch-1"]
    _assert_same_weights(DDPMPipeline.from_pretrained(repo_id), make_tiny_pipeline(0))


def test_resumed_run_does_not_push_an_epoch_twice(hub_server, hub_token, tmp_path):
    repo_id = hub_server.unique_repo_id("ddpo-resume")
    run = make_run_folder(tmp_path / "run", epochs=1)
    with HubPublisher(repo_id, token=hub_token) as first:
        first.push_epoch(run, 1)
        assert first.push_epoch(run, 1).result() is None  # queued already

    hub_server.reset_faults()  # zero the call counters
    resumed = HubPublisher(repo_id, token=hub_token)
    assert resumed.pushed_epochs() == {1}
    assert resumed.push_epoch(run, 1).result() is None
    resumed.wait()
    assert hub_server.calls("commit") == 0
    assert len(_new_commits(hub_server, repo_id)) == 1


def test_branch_revision_leaves_main_alone(hub_server, hub_token, tmp_path):
    repo_id = hub_server.unique_repo_id("ddpo-branch")
    run = make_run_folder(tmp_path / "run", epochs=1)
    with HubPublisher(repo_id, token=hub_token, revision="experiment") as publisher:
        publisher.push_epoch(run, 1)
    assert _new_commits(hub_server, repo_id) == []
    assert [c.title for c in _new_commits(hub_server, repo_id, "experiment")] == [
        "Epoch 1: mean JPEG 10.00 kB (+0% vs base)"
    ]
    _assert_same_weights(DDPMPipeline.from_pretrained(repo_id, revision="experiment"), make_tiny_pipeline(0))
    HubPublisher(repo_id, token=hub_token, revision="experiment")  # the branch exists now: no error


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        (lambda server: server.fail_next("commit", 500), "HTTP 500"),
        (lambda server: server.drop_next("commit"), "connection to the Hub failed"),
        (lambda server: server.fail_next("commit", 401, message=f"bad token {server.token}"), "HTTP 401"),
    ],
    ids=["server-error", "dropped-connection", "unauthorized"],
)
def test_failed_push_is_clear_tokenless_and_published_later(hub_server, hub_token, tmp_path, fault, expected, capsys):
    repo_id = hub_server.unique_repo_id("ddpo-fail")
    run = make_run_folder(tmp_path / "run", epochs=1)
    before = _tree_digest(run)
    publisher = HubPublisher(repo_id, token=hub_token)
    fault(hub_server)
    publisher.push_epoch(run, 1)
    with pytest.raises(PushError) as raised:
        publisher.wait()

    message = str(raised.value)
    printed = "".join(traceback.format_exception(raised.value))
    assert hub_token not in printed and hub_token not in capsys.readouterr().err
    assert expected in message
    assert "epoch 1" in message and repo_id in message
    assert "intact" in message and f"ddpo-card {run} --push-to-hub {repo_id}" in message
    assert raised.value.epochs == [1]
    assert _tree_digest(run) == before
    assert publisher.pushed_epochs() == set()

    assert card_main([str(run), "--push-to-hub", repo_id]) == 0  # the hint works
    assert hub_server.repo(repo_id).tags.keys() == {"epoch-1"}
    _assert_same_weights(DDPMPipeline.from_pretrained(repo_id), make_tiny_pipeline(0))


def test_wrong_token_fails_early_without_showing_it(hub_server, tmp_path):
    wrong = "hf_" + "x" * 30
    with pytest.raises(PushError) as raised:
        HubPublisher(hub_server.unique_repo_id("ddpo-401"), token=wrong)
    assert raised.value.status_code == 401
    assert wrong not in str(raised.value) and "HTTP 401" in str(raised.value)
    assert "HF_TOKEN" in str(raised.value)


def test_card_push_is_one_commit_without_model_files(hub_server, hub_token, tmp_path):
    repo_id = hub_server.unique_repo_id("ddpo-card")
    run = make_run_folder(tmp_path / "run", epochs=2)
    with HubPublisher(repo_id, token=hub_token) as publisher:
        publisher.push_epoch(run, 2)
    (run / "metrics.jsonl").write_text("".join(json.dumps(metrics_row(e) | {"reward_std": 0.5}) + "\n" for e in (1, 2)))
    assert card_main([str(run), "--push-to-hub", repo_id]) == 0  # epoch 2 is tagged: card only
    commits = _new_commits(hub_server, repo_id)
    assert [c.title for c in commits] == ["Epoch 2: mean JPEG 9.50 kB (-5% vs base)", "Update model card (epoch 2)"]
    changed = {
        path
        for path, data in hub_server.files(repo_id, revision=commits[1].oid).items()
        if hub_server.files(repo_id, revision=commits[0].oid).get(path) != data
    }
    assert changed and changed <= CARD_FILES
