"""`python -m ddpo_hub.training.publish_job`, the CI job: train -> ddpo-eval -> push model and card -> deploy the Space.

Runs on the random 16x16 test pipeline with a few tiny epochs and 4-step evaluation, against the session's
loopback Hub (in process), once more as `make demo` runs it (`--local-hub`, in a fresh process), and without a
token, where it must skip publishing and succeed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import ModelCard, SpaceCard, get_token

from ddpo_hub.training import publish_job

REPO_ROOT = Path(__file__).resolve().parents[1]
FAST = [
    "--epochs", "2", "--num-samples", "8", "--sample-batch-size", "8", "--train-batch-size", "8",
    "--num-steps", "4", "--grid-size", "4", "--grid-every", "1", "--gradient-accumulation-steps", "1",
    "--eval-num-images", "4", "--eval-schedulers", "ddim", "--eval-num-inference-steps", "4",
]  # fmt: skip
"""Job flags and ddpo-train flags (passed on) that make a whole run take seconds."""


def test_job_trains_evaluates_publishes_and_deploys(
    hub_server, hub_token, hub_api, tiny_pipeline_dir, tmp_path, capsys
):
    model_repo, space_id = hub_server.unique_repo_id("ddpo-job"), hub_server.unique_repo_id("ddpo-demo")
    run_dir = tmp_path / "run"
    argv = ["--output-dir", str(run_dir), "--base-model", tiny_pipeline_dir, "--model-repo", model_repo]
    assert publish_job.main([*argv, "--space-id", space_id, *FAST]) == 0

    # The run folder: trained, evaluated against its base, with its card.
    assert [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    results = json.loads((run_dir / "eval_results.json").read_text())
    assert results["base"] == tiny_pipeline_dir and set(results["schedulers"]) == {"ddim"}
    assert (run_dir / "README.md").is_file()

    # The model repo: the last epoch as a tagged commit, the pipeline and a card with the evaluation.
    tags = {ref.name for ref in hub_api.list_repo_refs(model_repo).tags}
    assert "epoch-2" in tags
    commits = hub_api.list_repo_commits(model_repo)
    assert any(commit.title.startswith("Epoch 2") for commit in commits)
    files = hub_server.files(model_repo)
    assert {"model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors", "README.md"} <= set(
        files
    )
    assert not any(name.startswith(("checkpoints/", "logs/")) for name in files)
    card = ModelCard.load(model_repo)
    assert "ddpo" in card.data.tags and card.data.eval_results
    assert {result.dataset_config for result in card.data.eval_results} >= {"ddim"}

    # The Space: the app, its requirements, its card's front matter, and MODEL_ID naming the pushed model.
    space_files = hub_server.files(space_id, "space")
    assert {"app.py", "requirements.txt", "README.md", "ddpo_hub/training/jpeg.py"} <= set(space_files)
    space_card = SpaceCard(space_files["README.md"].decode())
    assert space_card.data.sdk == "gradio" and model_repo in space_card.data.models
    assert hub_api.get_space_variables(space_id)["MODEL_ID"].value == model_repo

    out, err = capsys.readouterr()
    assert f"{model_repo}: " in out and "epoch-2" in out and f"MODEL_ID={model_repo}" in out
    assert hub_token not in out + err


def test_a_second_run_to_the_same_repo_publishes_its_own_weights(
    hub_server, hub_token, hub_api, tiny_pipeline_dir, tmp_path
):
    """As the weekly schedule does: the first run's epoch tags must not make the publisher skip the new epochs."""
    model_repo = hub_server.unique_repo_id("ddpo-rerun")
    argv = ["--base-model", tiny_pipeline_dir, "--model-repo", model_repo, "--no-space", *FAST, "--epochs", "1"]
    assert publish_job.main(["--output-dir", str(tmp_path / "first"), *argv]) == 0
    first_tag = {ref.name: ref.target_commit for ref in hub_api.list_repo_refs(model_repo).tags}["epoch-1"]
    assert publish_job.main(["--output-dir", str(tmp_path / "second"), *argv, "--seed", "1"]) == 0

    second_tag = {ref.name: ref.target_commit for ref in hub_api.list_repo_refs(model_repo).tags}["epoch-1"]
    assert second_tag != first_tag
    pushed = hub_server.files(model_repo)["unet/diffusion_pytorch_model.safetensors"]
    assert pushed == (tmp_path / "second" / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    assert pushed != (tmp_path / "first" / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()


def test_without_a_token_it_trains_evaluates_and_skips_publishing(
    hub_server, tiny_pipeline_dir, tmp_path, monkeypatch, capsys
):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    assert get_token() is None, "the tests' HF_HOME must hold no login"
    monkeypatch.setenv("GITHUB_ACTIONS", "true")  # as in a fork's workflow run without the HF_TOKEN secret
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(tmp_path / "summary.md"))
    run_dir = tmp_path / "run"
    argv = ["--output-dir", str(run_dir), "--base-model", tiny_pipeline_dir, *FAST, "--epochs", "1"]
    assert publish_job.main(argv) == 0

    assert (run_dir / "eval_results.json").is_file() and (run_dir / "samples").is_dir()
    out = capsys.readouterr().out
    assert f"::notice title=Publishing skipped::{publish_job.SKIPPED_NOTICE}" in out
    assert "::group::Train, evaluate and card" in out and "Evaluating 4 fixed-seed images" in out
    assert "::group::Check" not in out and "::group::Deploy" not in out
    assert publish_job.SKIPPED_NOTICE in (tmp_path / "summary.md").read_text()
    assert hub_server.calls("create_repo") == hub_server.calls("commit") == 0


def test_bad_token_fails_before_training(hub_server, tiny_pipeline_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", "hf_" + "x" * 30)
    argv = ["--output-dir", str(tmp_path / "run"), "--base-model", tiny_pipeline_dir, *FAST]
    assert publish_job.main(argv) == 1
    out, err = capsys.readouterr()
    assert "invalid" in err.lower() and "x" * 30 not in out + err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_local_hub_mode_publishes_and_loads_back_in_a_fresh_process(tiny_pipeline_dir, tmp_path):
    """What `make demo` runs: its own Hub server, default repo ids, the model loaded back, a short summary."""
    env = {key: value for key, value in os.environ.items() if key not in ("HF_ENDPOINT", "HF_TOKEN")}
    argv = ["--local-hub", "--output-dir", str(tmp_path / "run"), "--base-model", tiny_pipeline_dir, *FAST]
    result = subprocess.run(
        [sys.executable, "-m", "ddpo_hub.training.publish_job", *argv],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("Local Hub server at http://127.0.0.1:") for line in lines)
    (model_line,) = [line for line in lines if line.startswith("Model ")]
    assert "/tester/ddpo-tiny: " in model_line and "epoch-2" in model_line and "exact weights" in model_line
    (space_line,) = [line for line in lines if line.startswith("Space ")]
    assert "/spaces/tester/ddpo-demo: " in space_line and space_line.endswith("MODEL_ID=tester/ddpo-tiny")
    assert any(line.startswith("Evaluation, mean JPEG of base -> fine-tuned: DDIM (4 steps)") for line in lines)


@pytest.mark.parametrize("flag", ["--num", "--eval"])
def test_abbreviations_are_not_taken_for_job_flags(flag):
    """Unknown flags go to ddpo-train, so an abbreviation must not silently become one of the job's own flags."""
    args, rest = publish_job.build_parser().parse_known_args([flag, "3"])
    assert rest == [flag, "3"]
