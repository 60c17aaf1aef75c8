"""training/publish/hub.py against the loopback Hub, with the real huggingface_hub client.

Each test fabricates a run folder as the trainer writes it, pushes it, and checks the result the way a
user would see it: `DDPMPipeline.from_pretrained`, `ModelCard.load`, the repo's commits, tags and files.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
import traceback
from pathlib import Path

import pytest
import torch
from diffusers import DDPMPipeline
from huggingface_hub import ModelCard

from ddpo_hub.training.cli import card_main
from ddpo_hub.training.publish.hub import HubPublisher, PushError, Retry, commit_title, epoch_tag, scrub_token
from ddpo_hub.training.publish.hub_ledger import PushLedger
from tests.helpers import make_tiny_pipeline
from tests.run_folder import advance_run, make_run_folder, metrics_row

PIPELINE_FILES = {
    "model_index.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "scheduler/scheduler_config.json",
}
CARD_FILES = {"README.md", "images/before_after.png", "images/training_curves.png"}
LEDGER_NAMES = ("hub_pushes.json", "hub_queue/")
QUICK = Retry(attempts=3, first_wait=0.01, max_wait=0.01)
"""Retries as in production, minus the waiting."""


def _assert_same_weights(pipeline: DDPMPipeline, reference: DDPMPipeline) -> None:
    pushed, local = pipeline.unet.state_dict(), reference.unet.state_dict()
    assert pushed.keys() == local.keys()
    for name, tensor in local.items():
        assert torch.equal(pushed[name], tensor), name


def _tree_digest(folder: Path) -> dict[str, str]:
    """Every file the run wrote; the push ledger and its staged epochs are the publisher's, not the run's."""
    return {
        name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and not (name := path.relative_to(folder).as_posix()).startswith(LEDGER_NAMES)
    }


def _assert_each_epoch_tagged_once(hub_server, repo_id: str, seeds: dict[int, int]) -> None:
    """One commit per epoch, oldest first, each tagged `epoch-N` and holding that epoch's weights (by seed)."""
    commits = [commit for commit in _new_commits(hub_server, repo_id) if commit.title.startswith("Epoch ")]
    assert [commit.title.split(":")[0] for commit in commits] == [f"Epoch {epoch}" for epoch in seeds]
    assert hub_server.repo(repo_id).tags == {epoch_tag(e): c.oid for e, c in zip(seeds, commits, strict=True)}
    for epoch, seed in seeds.items():
        pushed = DDPMPipeline.from_pretrained(repo_id, revision=epoch_tag(epoch))
        _assert_same_weights(pushed, make_tiny_pipeline(seed))


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
    assert future.result() == hub_server.repo(repo_id).tags["epoch-1"]
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
    "fault",
    [
        lambda server: server.fail_next("commit", 500),
        lambda server: server.drop_next("commit"),
        lambda server: server.fail_next("tag", 503),
        lambda server: server.drop_next("tag"),
        lambda server: server.fail_next("create_repo", 503),
        lambda server: server.drop_next("create_repo"),
        lambda server: server.drop_next("commit", after_processing=True),
        lambda server: server.drop_next("tag", after_processing=True),
    ],
    ids=[
        "commit-500", "commit-dropped", "tag-503", "tag-dropped", "create-repo-503", "create-repo-dropped",
        "commit-landed-answer-lost", "tag-landed-answer-lost",
    ],
)  # fmt: skip
def test_transient_failures_are_retried_and_each_epoch_tagged_once(hub_server, hub_token, tmp_path, fault):
    repo_id = hub_server.unique_repo_id("ddpo-retry")
    run = make_run_folder(tmp_path / "run", epochs=1, seed=0)
    fault(hub_server)
    with HubPublisher(repo_id, token=hub_token, retry=QUICK) as publisher:
        publisher.push_epoch(run, 1)
        advance_run(run, 2, seed=1)
        publisher.push_epoch(run, 2)
    _assert_each_epoch_tagged_once(hub_server, repo_id, {1: 0, 2: 1})
    assert not (run / "hub_queue").exists() or not any((run / "hub_queue").iterdir()), "staged copies are removed"
    ledger = PushLedger(run)
    assert [(e.epoch, e.state, e.commit) for e in ledger.entries] == [
        (epoch, "tagged", hub_server.repo(repo_id).tags[epoch_tag(epoch)]) for epoch in (1, 2)
    ]


def test_commit_landed_without_answer_is_tagged_not_committed_again(hub_server, hub_token, tmp_path):
    repo_id = hub_server.unique_repo_id("ddpo-lost-answer")
    run = make_run_folder(tmp_path / "run", epochs=1, seed=0)
    publisher = HubPublisher(repo_id, token=hub_token, retry=QUICK)
    hub_server.drop_next("commit", after_processing=True)
    publisher.push_epoch(run, 1)
    publisher.wait()
    assert hub_server.calls("commit") == 1, "the landed commit was found by its marker, not sent twice"
    _assert_each_epoch_tagged_once(hub_server, repo_id, {1: 0})


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        (lambda server: server.fail_next("commit", 500, times=3), "HTTP 500"),
        (lambda server: server.drop_next("commit", times=3), "connection to the Hub failed"),
        (lambda server: server.fail_next("tag", 502, times=3), "HTTP 502"),
        (lambda server: server.fail_next("lfs", 403, message="Upload refused"), "HTTP 403: Upload refused"),
        (lambda server: server.fail_next("commit", 401, message=f"bad token {server.token}"), "HTTP 401"),
    ],
    ids=["server-error", "dropped-connection", "tag-bad-gateway", "lfs-forbidden", "unauthorized"],
)
def test_failed_push_is_clear_tokenless_and_published_later(hub_server, hub_token, tmp_path, fault, expected, capsys):
    repo_id = hub_server.unique_repo_id("ddpo-fail")
    run = make_run_folder(tmp_path / "run", epochs=1)
    before = _tree_digest(run)
    publisher = HubPublisher(repo_id, token=hub_token, retry=QUICK)
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
    if expected == "HTTP 401":
        assert hub_server.calls("commit") == 1, "a permanent failure is not retried"

    assert card_main([str(run), "--push-to-hub", repo_id]) == 0  # the hint works
    _assert_each_epoch_tagged_once(hub_server, repo_id, {1: 0})


def test_every_missing_epoch_is_pushed_later_oldest_first_with_its_own_weights(hub_server, hub_token, tmp_path):
    repo_id = hub_server.unique_repo_id("ddpo-backlog")
    run = make_run_folder(tmp_path / "run", epochs=1, seed=0)
    publisher = HubPublisher(repo_id, token=hub_token, retry=QUICK)
    hub_server.fail_next("commit", 503, times=2 * QUICK.attempts)  # the Hub is down for both epochs
    publisher.push_epoch(run, 1)
    advance_run(run, 2, seed=1)
    publisher.push_epoch(run, 2)
    with pytest.raises(PushError) as raised:
        publisher.wait()
    assert raised.value.epochs == [1, 2]
    advance_run(run, 3, seed=2)  # the run went on; epochs 1 and 2 are still staged with their own weights

    resumed = HubPublisher(repo_id, token=hub_token, retry=QUICK)
    assert len(resumed.push_pending(run)) == 2
    resumed.push_epoch(run, 3)
    resumed.wait()
    _assert_each_epoch_tagged_once(hub_server, repo_id, {1: 0, 2: 1, 3: 2})
    assert resumed.push_pending(run) == [], "nothing is left to push"


@pytest.mark.parametrize("request_kind", ["preupload", "tag"])
def test_kill_during_upload_then_card_push_publishes_the_epoch_once(hub_server, hub_token, tmp_path, request_kind):
    """kill -9 while the upload (nothing landed yet) or the tag (the commit landed) is on the wire."""
    repo_id = hub_server.unique_repo_id("ddpo-killed")
    run = make_run_folder(tmp_path / "run", epochs=1, seed=0)
    hub_server.set_latency(30, request_kind)
    script = (
        "import sys; from ddpo_hub.training.publish.hub import HubPublisher\n"
        "HubPublisher(sys.argv[1]).push_epoch(sys.argv[2], 1).result()\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script, repo_id, str(run)], env=os.environ | {"HF_TOKEN": hub_token}
    )
    try:
        deadline = time.monotonic() + 120
        while hub_server.calls(request_kind) == 0:  # the request is on the wire: kill -9 now
            assert child.poll() is None and time.monotonic() < deadline, f"the push never sent a {request_kind}"
            time.sleep(0.02)
    finally:
        child.kill()
        child.wait()
    hub_server.reset_faults()
    landed = _new_commits(hub_server, repo_id)
    assert len(landed) == (1 if request_kind == "tag" else 0)
    assert hub_server.repo(repo_id).tags == {}
    assert [entry.state for entry in PushLedger(run).entries] == ["committed" if landed else "staged"]

    (run / "hub_queue" / "leftover.partial").mkdir()  # a staging copy cut short by the kill
    assert card_main([str(run), "--push-to-hub", repo_id]) == 0
    # The epoch's commit unless it had landed; the card it then re-renders is unchanged, so no commit for it.
    assert hub_server.calls("commit") == 1 - len(landed)
    _assert_each_epoch_tagged_once(hub_server, repo_id, {1: 0})
    assert list((run / "hub_queue").iterdir()) == [], "staged and stale copies are cleaned up"


def test_commit_whose_answer_never_came_is_found_by_the_next_process(hub_server, hub_token, tmp_path):
    repo_id = hub_server.unique_repo_id("ddpo-lost-then-exit")
    run = make_run_folder(tmp_path / "run", epochs=1, seed=0)
    publisher = HubPublisher(repo_id, token=hub_token, retry=Retry(attempts=1))
    hub_server.drop_next("commit", after_processing=True)
    publisher.push_epoch(run, 1)
    with pytest.raises(PushError, match="connection to the Hub failed"):
        publisher.wait()
    assert len(_new_commits(hub_server, repo_id)) == 1 and hub_server.repo(repo_id).tags == {}

    hub_server.reset_faults()
    assert card_main([str(run), "--push-to-hub", repo_id]) == 0
    assert hub_server.calls("commit") == 0, "found by its marker and tagged, not committed again"
    _assert_each_epoch_tagged_once(hub_server, repo_id, {1: 0})


def test_bad_repo_id_fails_before_any_request(hub_server, hub_token):
    with pytest.raises(PushError, match="not a Hub repo id"):
        HubPublisher("tester/bad name!", token=hub_token)
    assert hub_server.calls("create_repo") == 0


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
