"""`ddpo-train --push-to-hub` end to end against the loopback Hub, read back with stock libraries."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch
from diffusers import DDPMPipeline
from huggingface_hub import HfApi, ModelCard
from safetensors.torch import load_file

from ddpo_hub.training.cli import train_main
from ddpo_hub.training.publish.hub_ledger import PushLedger

TRAINING_STATE = ("checkpoints/", "logs/", "optimizer", "random_states", "metrics.jsonl", "ddpo_config.json")


def test_training_pushes_each_epoch_as_one_tagged_commit_with_its_card(
    hub_server, hub_token, tiny_pipeline_dir, tmp_path, capsys
):
    repo_id = hub_server.unique_repo_id("ddpo-tiny")
    run_dir = tmp_path / "run"
    argv = [
        "--base-model", tiny_pipeline_dir, "--output-dir", str(run_dir), "--epochs", "2", "--num-samples", "8",
        "--sample-batch-size", "8", "--train-batch-size", "4", "--num-steps", "4", "--grid-size", "4",
        "--push-to-hub", repo_id, "--push-every", "1", "--eval-num-images", "4", "--eval-schedulers", "ddim", "ddpm",
    ]  # fmt: skip
    assert train_main(argv) == 0
    assert hub_token not in capsys.readouterr().err

    pushed = DDPMPipeline.from_pretrained(repo_id).unet.state_dict()
    local = DDPMPipeline.from_pretrained(run_dir).unet.state_dict()
    assert pushed.keys() == local.keys()
    assert all(torch.equal(pushed[name], local[name]) for name in local)

    api = HfApi()
    commits = api.list_repo_commits(repo_id)
    assert len(commits) == 3, "the initial commit plus one per pushed epoch"
    assert commits[0].title.startswith("Epoch 2: mean JPEG")
    tags = {ref.name: ref.target_commit for ref in api.list_repo_refs(repo_id).tags}
    assert tags == {"epoch-1": commits[1].commit_id, "epoch-2": commits[0].commit_id}
    files = api.list_repo_files(repo_id)
    assert not [name for name in files if name.startswith(TRAINING_STATE)], files
    assert {"README.md", "model_index.json", "unet/diffusion_pytorch_model.safetensors"} <= set(files)

    card = ModelCard.load(repo_id)
    assert card.data.library_name == "diffusers"
    assert card.data.pipeline_tag == "unconditional-image-generation"
    assert {"ddpo", "reinforcement-learning", "jpeg_compressibility"} <= set(card.data.tags)
    evaluation = json.loads((run_dir / "eval_results.json").read_text())
    reported = {(result.dataset_config, result.metric_type): result.metric_value for result in card.data.eval_results}
    for key, entry in evaluation["schedulers"].items():
        for statistic in ("mean", "median"):
            assert reported[key, f"jpeg_bytes_{statistic}"] == round(entry["model"][statistic], 1)
        assert f"{entry['model']['mean']:,.1f}" in card.text  # the card's table shows one decimal


@pytest.mark.slow
def test_run_killed_while_pushing_publishes_every_epoch_when_resumed(
    hub_server, hub_token, tiny_pipeline_dir, tmp_path
):
    """kill -9 while epoch 1 uploads and epoch 2 waits behind it; `--resume latest` publishes both, each once."""
    repo_id = hub_server.unique_repo_id("ddpo-killed-run")
    run_dir = tmp_path / "run"
    argv = [
        "--base-model", tiny_pipeline_dir, "--output-dir", str(run_dir), "--epochs", "2", "--num-samples", "8",
        "--sample-batch-size", "8", "--train-batch-size", "4", "--num-steps", "4", "--grid-size", "4",
        "--push-to-hub", repo_id, "--push-every", "1", "--eval-num-images", "0",
    ]  # fmt: skip
    hub_server.set_latency(60, "preupload")
    child = subprocess.Popen(
        [sys.executable, "-m", "ddpo_hub.training", *argv], env=os.environ | {"HF_TOKEN": hub_token}
    )
    try:
        deadline = time.monotonic() + 240
        while len(PushLedger(run_dir).entries) < 2:  # both epochs staged, the first one stuck in its upload
            assert child.poll() is None and time.monotonic() < deadline, "the run ended before it was killed"
            time.sleep(0.1)
    finally:
        child.kill()
        child.wait()
    hub_server.reset_faults()
    assert HfApi().list_repo_refs(repo_id).tags == []

    assert train_main([*argv, "--resume", "latest"]) == 0
    api = HfApi()
    commits = [commit for commit in api.list_repo_commits(repo_id) if commit.title.startswith("Epoch ")]
    assert [commit.title.split(":")[0] for commit in commits] == ["Epoch 2", "Epoch 1"]
    tags = {ref.name: ref.target_commit for ref in api.list_repo_refs(repo_id).tags}
    assert tags == {"epoch-1": commits[1].commit_id, "epoch-2": commits[0].commit_id}
    for epoch, expected in (
        (1, load_file(run_dir / "checkpoints" / "checkpoint_1" / "model.safetensors")),
        (2, load_file(run_dir / "unet" / "diffusion_pytorch_model.safetensors")),
    ):
        pushed = DDPMPipeline.from_pretrained(repo_id, revision=f"epoch-{epoch}").unet.state_dict()
        assert pushed.keys() == expected.keys()
        assert all(torch.equal(pushed[name], expected[name]) for name in expected), f"epoch {epoch}'s own weights"
    assert not any((run_dir / "hub_queue").iterdir())
