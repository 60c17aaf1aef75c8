"""model_card/: cards rendered from fabricated run folders, read back with `ModelCard.load` and checked
against the run's own files and a real `ddpo-eval` JSON."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDIMPipeline, DDPMPipeline, PNDMPipeline
from huggingface_hub import ModelCard
from PIL import Image

from ddpo_hub.model_card import render_card, write_card
from ddpo_hub.model_card.figures import nice_ticks
from ddpo_hub.training import evaluate
from ddpo_hub.training.cli import card_main
from ddpo_hub.training.pipelines import Sampler, card_rollout_sampler, read_base_model, read_card_data
from ddpo_hub.training.run_folder import read_metrics
from tests.run_folder import CONFIG, make_run_folder, metrics_row, sample_grid

TAGS = ["pytorch", "diffusers", "unconditional-image-generation", "reinforcement-learning", "ddpo"]


@pytest.fixture(scope="module")
def evaluated_run(tmp_path_factory, tiny_pipeline_dir) -> Path:
    """A run whose base is a local folder, evaluated by the real `ddpo-eval` CLI (grids included)."""
    run = make_run_folder(tmp_path_factory.mktemp("evaluated") / "run", epochs=4, seed=1, base_model=tiny_pipeline_dir)
    argv = ["--model", str(run), "--schedulers", "ddpm,ddim,pndm,rollout", "--num-images", "3", "--seed", "7",
            "--num-inference-steps", "ddpm=2,ddim=2,pndm=4", "--device", "cpu"]  # fmt: skip
    assert evaluate.main(argv) == 0
    return run


def _table(text: str, header_start: str) -> list[list[str]]:
    """The body rows of the Markdown table whose header starts with `header_start`, as lists of cells."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split(" | ")])
    return rows


def test_metadata_round_trips_through_model_card_load(tmp_path):
    run = make_run_folder(tmp_path / "run", epochs=3)
    card = render_card(run, repo_id="me/ddpo-tiny")
    readme = write_card(run, tmp_path / "out", repo_id="me/ddpo-tiny")
    loaded = ModelCard.load(readme)

    assert loaded.data.to_dict() == card.data.to_dict()
    assert loaded.text == card.text
    data = loaded.data
    assert (data.license, data.library_name, data.pipeline_tag) == (
        "apache-2.0",
        "diffusers",
        "unconditional-image-generation",
    )
    assert data.base_model == "google/ddpm-celebahq-256"
    # The sampler it was trained with travels with the model, for the Space to open on.
    assert data.rollout_sampler == {"scheduler": "DDIM", "num_inference_steps": 4, "eta": 1.0}
    assert card_rollout_sampler(read_card_data(tmp_path / "out")) == Sampler("DDIM", 4, 1.0)
    assert data.tags == [*TAGS, "jpeg_compressibility"]
    # Without ddpo-eval, the model-index reports the training samples of the last epoch, saying so.
    assert data.model_name == "ddpo-tiny"
    [result] = data.eval_results
    assert (result.dataset_type, result.metric_type, result.metric_value) == (
        "ddpo-training-samples",
        "jpeg_kb_mean",
        9.0,
    )


def test_body_is_generated_from_the_run(tmp_path):
    run = make_run_folder(tmp_path / "run", epochs=3, hub_token="hf_" + "s" * 30, resume=str(tmp_path / "ckpt"))
    text = render_card(run, repo_id="me/ddpo-tiny").text

    assert text.startswith("\n# ddpo-tiny: DDPO fine-tune for JPEG compressibility")
    assert "arxiv.org/abs/2305.13301" in text and "@misc{black2023ddpo" in text
    for pipeline in ("DDPMPipeline", "DDIMPipeline", "PNDMPipeline"):
        assert f"{pipeline}.from_pretrained(model_id)" in text
    assert 'model_id = "me/ddpo-tiny"' in text
    assert "from **10.00 kB** at epoch 1" in text and "**9.00 kB** at epoch 3 (-10% vs base)" in text
    assert "Evaluation not run yet" in text
    assert "Reward hacking" in text and "blurrier" in text and "backgrounds" in text

    hyperparameters = dict(_table(text, "| Setting |"))
    config = json.loads((run / "ddpo_config.json").read_text())
    assert set(hyperparameters) == {f"`{key}`" for key in config}  # every key, none hard-coded
    assert hyperparameters["`learning_rate`"] == "`0.0003`"
    assert hyperparameters["`use_lora`"] == "`false`"
    assert hyperparameters["`hub_token`"] == "***"
    assert hyperparameters["`resume`"] == "`ckpt` (local path)"
    assert "hf_sss" not in text and str(tmp_path) not in text

    assert "- **Epochs completed**: 3" in text
    assert "- **Reward queries**: 24 (8 samples per epoch × 3 epochs)" in text
    assert "- **Hardware**: cpu, 1 process, mixed precision `no`" in text
    assert "- **Wall time**: 1 h 02 min 04 s" in text
    assert dict(_table(text, "| Library |"))["diffusers"] == "0.x"
    epochs = _table(text, "| Epoch |")
    assert [row[0] for row in epochs] == ["1", "2", "3"] and epochs[2][3] == "9"


def test_images_show_the_first_and_last_samples_and_the_curves(tmp_path):
    run = make_run_folder(tmp_path / "run", epochs=3)
    readme = write_card(run, tmp_path / "out")
    text = readme.read_text()
    linked = re.findall(r"\]\((images/[^)]+)\)", text)
    assert linked == ["images/before_after.png", "images/training_curves.png"]
    assert sorted(p.name for p in (tmp_path / "out" / "images").iterdir()) == [
        "before_after.png",
        "training_curves.png",
    ]

    # The comparison holds both sample grids, enlarged pixel for pixel: find each by downscaling its panel.
    with Image.open(tmp_path / "out" / "images" / "before_after.png") as composed:
        composed = composed.convert("RGB")
        factor = 12  # 32-pixel grids enlarged to at least 384 pixels
        for index, epoch in enumerate((0, 3)):
            left = 16 + index * (32 * factor + 16)
            panel = composed.crop((left, 36, left + 32 * factor, 36 + 32 * factor))
            shrunk = panel.resize((32, 32), Image.NEAREST)
            assert np.array_equal(np.asarray(shrunk), np.asarray(sample_grid(epoch))), epoch
    with Image.open(tmp_path / "out" / "images" / "training_curves.png") as curves:
        assert curves.size == (900, 720) and len(curves.convert("RGB").getcolors(1 << 16)) > 3


def test_results_table_and_model_index_match_the_eval_json(evaluated_run, tiny_pipeline_dir):
    readme = write_card(evaluated_run, evaluated_run, repo_id="me/ddpo-eval-card")
    results = json.loads((evaluated_run / "eval_results.json").read_text())
    card = ModelCard.load(readme)

    rows = _table(card.text, "| Scheduler |")
    # The trained sampler heads the table (the Space's default), then DDIM at eta 0, PNDM and DDPM.
    names = {"rollout": "DDIM, eta 1 (trained)", "ddim": "DDIM, eta 0", "pndm": "PNDM", "ddpm": "DDPM"}
    for row, (key, name) in zip(rows, names.items(), strict=True):
        entry = results["schedulers"][key]
        shown, steps, images, seeds, base_mean, base_median, mean, median, change, ssim, diversity, spread, edges = row
        assert (shown, int(steps), int(images), seeds) == (name, entry["num_inference_steps"], 3, "7–9")
        assert float(base_mean.replace(",", "")) == pytest.approx(entry["base"]["mean"], abs=0.05)
        assert float(base_median.replace(",", "")) == entry["base"]["median"]
        assert float(mean.replace(",", "")) == pytest.approx(entry["model"]["mean"], abs=0.05)
        assert float(median.replace(",", "")) == entry["model"]["median"]
        assert float(change.rstrip("%")) == pytest.approx(100 * entry["mean_change"], abs=0.05)
        fidelity = entry["fidelity"]
        assert [float(ssim), float(diversity), float(spread), float(edges)] == pytest.approx(
            [
                fidelity["ssim_to_base"],
                fidelity["diversity_vs_base"],
                fidelity["colour_spread_vs_base"],
                fidelity["edge_sharpness_vs_base"],
            ],
            abs=0.005,
        )
        assert "subject_kept" not in fidelity  # a base without a judge: the subject figures are absent

    index = {(r.dataset_config, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert index == {
        (key, f"jpeg_bytes_{stat}"): round(entry["model"][stat], 1)
        for key, entry in results["schedulers"].items()
        for stat in ("mean", "median")
    } | {
        (key, name): round(value, 4)
        for key, entry in results["schedulers"].items()
        for name, value in entry["fidelity"].items()
    }
    assert (
        "The cut depends on the sampler: the first row is the one this model was trained with (DDIM, 4 steps, eta 1), "
        "which the ddpo-hub demo Space samples with by default." in " ".join(card.text.split())
    )
    assert card.data.base_model is None  # a local folder is not valid `base_model` metadata
    assert "(a local model)" in card.text and tiny_pipeline_dir not in card.text

    for key in results["schedulers"]:
        assert f"](images/eval_{key}.png)" in card.text
        with Image.open(evaluated_run / "images" / f"eval_{key}.png") as grid:
            assert grid.width > grid.height > 0


def test_card_renders_from_a_bare_run_folder(tmp_path):
    run = tmp_path / "bare"
    make_run_folder(run, epochs=1)
    for name in ("run_info.json", "metrics.jsonl"):
        (run / name).unlink()
    for path in (run / "samples").iterdir():
        path.unlink()
    readme = write_card(run, run)
    card = ModelCard.load(readme)
    assert card.data.eval_results is None and "model-index" not in card.data.to_dict()
    assert "- **Wall time**: not recorded" in card.text and "images/" not in card.text
    assert not (run / "images").exists()


def test_a_bundled_base_is_named_so_the_space_and_ddpo_eval_find_it(tmp_path):
    """`make demo` fine-tunes the bundled tiny-textures-32: no Hub id, so the card names it by its bundled name."""
    run = make_run_folder(tmp_path / "from-bundled", epochs=1, base_model="tiny-textures-32")
    card = ModelCard.load(write_card(run, run))
    assert card.data.base_model is None and card.data.bundled_base_model == "tiny-textures-32"
    assert read_base_model(run) == "tiny-textures-32"
    assert "`tiny-textures-32` (bundled with ddpo-hub)" in card.text
    # A name this install does not ship is not a base model here.
    card.data.bundled_base_model = "not-bundled-32"
    card.save(run / "README.md")
    assert read_base_model(run) is None


def test_usage_snippet_pipelines_load_the_run_folder(tmp_path):
    run = make_run_folder(tmp_path / "run", epochs=1)
    for pipeline_class, steps in ((DDPMPipeline, 2), (DDIMPipeline, 2), (PNDMPipeline, 4)):
        pipeline = pipeline_class.from_pretrained(run)
        pipeline.set_progress_bar_config(disable=True)
        images = pipeline(num_inference_steps=steps, generator=torch.Generator().manual_seed(0)).images
        assert images[0].size == (16, 16)


def test_resumed_runs_keep_the_last_row_per_epoch(tmp_path):
    run = make_run_folder(tmp_path / "run", epochs=2)
    rows = [metrics_row(1), metrics_row(2), metrics_row(2) | {"jpeg_kb_mean": 7.0}, metrics_row(3)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows) + "\n")
    assert [(row["epoch"], row["jpeg_kb_mean"]) for row in read_metrics(run)] == [(1, 10.0), (2, 7.0), (3, 9.0)]


def test_custom_reward_and_license(tmp_path):
    run = make_run_folder(tmp_path / "run", reward="my_rewards:Aesthetic Score", license="mit")
    card = render_card(run)
    assert card.data.license == "mit"
    assert card.data.tags[-1] == "my_rewards-aesthetic-score"
    assert card.data.model_name == "run"


def test_cli_writes_the_card_into_the_run_folder(tmp_path, capsys):
    run = make_run_folder(tmp_path / "run", epochs=2)
    assert card_main([str(run)]) == 0
    assert ModelCard.load(run / "README.md").data.base_model == CONFIG["base_model"]
    assert (run / "images" / "before_after.png").is_file()
    assert card_main([str(tmp_path / "not-a-run")]) == 2
    assert "no ddpo_config.json" in capsys.readouterr().err


def test_nice_ticks_cover_the_range_with_round_steps():
    assert nice_ticks(-10.3, -0.9) == [-12.5, -10.0, -7.5, -5.0, -2.5, 0.0]
    assert nice_ticks(1, 12, 8, integer=True) == [0, 2, 4, 6, 8, 10, 12]
    assert nice_ticks(5, 5) == [4.5, 4.75, 5.0, 5.25, 5.5]
