"""training/evaluate.py: fixed-seed JPEG statistics, checked against independent generation and measurement."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, PNDMPipeline, PNDMScheduler
from PIL import Image

from ddpo_hub.training import jpeg
from ddpo_hub.training.evaluate import generate, main, parse_num_inference_steps, push_eval_dataset, run_evaluation
from tests.helpers import make_tiny_pipeline
from tests.run_folder import make_run_folder

STEPS = {"ddpm": 2, "ddim": 2, "pndm": 4}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    """A 'fine-tuned' model: same architecture as the base, other weights."""
    path = tmp_path_factory.mktemp("tiny-finetuned")
    make_tiny_pipeline(seed=1).save_pretrained(path)
    return str(path)


def test_parse_num_inference_steps():
    assert parse_num_inference_steps("ddim=50,pndm=40,DDPM=1000", ["ddpm", "ddim", "pndm"]) == {
        "ddim": 50,
        "pndm": 40,
        "ddpm": 1000,
    }
    assert parse_num_inference_steps("25", ["ddim", "pndm"]) == {"ddim": 25, "pndm": 25}
    assert parse_num_inference_steps(None, ["ddim"]) == {}
    with pytest.raises(ValueError, match="NAME=INT"):
        parse_num_inference_steps("ddim:50", ["ddim"])
    with pytest.raises(ValueError, match="Unknown scheduler"):
        parse_num_inference_steps("euler=50", ["ddim"])


def test_bad_arguments_are_rejected(tiny_pipeline_dir):
    with pytest.raises(ValueError, match="Unknown scheduler"):
        run_evaluation(tiny_pipeline_dir, None, schedulers=["euler"], num_images=1)
    with pytest.raises(ValueError, match="between 1 and 1000"):
        run_evaluation(tiny_pipeline_dir, None, schedulers=["ddim"], num_images=1, num_inference_steps={"ddim": 0})
    with pytest.raises(ValueError, match="Unknown scheduler"):
        run_evaluation(tiny_pipeline_dir, None, schedulers=["ddim"], num_images=1, num_inference_steps={"euler": 5})
    with pytest.raises(ValueError, match="pndm needs between 4 and 1000"):
        run_evaluation(tiny_pipeline_dir, None, schedulers=["pndm"], num_images=1, num_inference_steps={"pndm": 3})


@pytest.mark.parametrize("batch_size", [1, 3])
def test_each_image_starts_from_the_noise_of_its_seed(tiny_pipeline_dir, batch_size):
    pipeline = DDIMPipeline.from_pretrained(tiny_pipeline_dir)
    pipeline.set_progress_bar_config(disable=True)
    first_inputs = []
    calls = {"n": 0}

    def record_first_step(module, args):
        if calls["n"] % 2 == 0:  # 2 steps per batch: the first input of each batch is its starting noise
            first_inputs.append(args[0].clone())
        calls["n"] += 1

    pipeline.unet.register_forward_pre_hook(record_first_step)
    generate(pipeline, seeds=[5, 6, 7], num_inference_steps=2, batch_size=batch_size)
    noise = torch.cat(first_inputs)
    expected = torch.cat([torch.randn((1, 3, 16, 16), generator=torch.Generator().manual_seed(s)) for s in (5, 6, 7)])
    assert torch.equal(noise, expected)


def test_sampled_alone_an_image_depends_on_its_seed_not_on_the_seeds_drawn_with_it(tiny_pipeline_dir, model_dir):
    """`--batch-size 1`, the Space's layout: image i is the same picture whatever else was evaluated."""
    kwargs = dict(schedulers=["ddpm", "pndm"], num_inference_steps=STEPS, device="cpu", batch_size=1)
    _, three = run_evaluation(model_dir, tiny_pipeline_dir, num_images=3, seed=4, **kwargs)
    _, two = run_evaluation(model_dir, tiny_pipeline_dir, num_images=2, seed=5, **kwargs)
    for key, by_role in two.items():
        for role, images in by_role.items():
            for image, same_seed in zip(images, three[key][role][1:], strict=True):
                assert np.array_equal(np.asarray(image), np.asarray(same_seed)), (key, role)


def test_statistics_match_an_independent_measurement(tiny_pipeline_dir, model_dir):
    results, samples = run_evaluation(
        model_dir,
        tiny_pipeline_dir,
        schedulers=["ddim", "pndm", "ddpm"],
        num_images=3,
        seed=10,
        num_inference_steps=STEPS,
        device="cpu",
    )
    assert results["seeds"] == [10, 11, 12] and results["num_images"] == 3
    assert list(results["schedulers"]) == ["ddim", "pndm", "ddpm"]
    for role, folder in (("model", model_dir), ("base", tiny_pipeline_dir)):
        reference = DDPMPipeline.from_pretrained(folder)
        config = reference.scheduler.config
        for key, pipeline in (
            ("ddim", DDIMPipeline(reference.unet, DDIMScheduler.from_config(config))),
            ("pndm", PNDMPipeline(reference.unet, PNDMScheduler.from_config(config))),
            ("ddpm", reference),
        ):
            pipeline.set_progress_bar_config(disable=True)
            sizes = [
                len(
                    jpeg.encode_jpeg(
                        pipeline(generator=torch.Generator().manual_seed(seed), num_inference_steps=STEPS[key]).images[
                            0
                        ]
                    )
                )
                for seed in (10, 11, 12)
            ]
            stats = results["schedulers"][key][role]
            assert stats["jpeg_bytes"] == sizes, (role, key)
            assert stats["mean"] == pytest.approx(statistics.fmean(sizes))
            assert stats["median"] == statistics.median(sizes)
            assert stats["std"] == pytest.approx(statistics.pstdev(sizes))
            assert len(samples[key][role]) == 3
    for entry in results["schedulers"].values():
        assert entry["mean_change"] == pytest.approx(entry["model"]["mean"] / entry["base"]["mean"] - 1)
    json.dumps(results)  # the JSON the card reads


def test_model_alone_has_no_base_entries(tiny_pipeline_dir):
    results, _ = run_evaluation(
        tiny_pipeline_dir, None, schedulers=["ddim"], num_images=1, num_inference_steps={"ddim": 1}
    )
    assert results["base"] is None
    assert set(results["schedulers"]["ddim"]) == {"name", "num_inference_steps", "model"}


def test_cli_writes_json_and_grids_into_the_run_folder(tiny_pipeline_dir, tmp_path, capsys):
    run = make_run_folder(tmp_path / "run", seed=1, base_model=tiny_pipeline_dir)
    code = main(
        ["--model", str(run), "--schedulers", "ddim,pndm", "--num-images", "2",
         "--num-inference-steps", "ddim=2,pndm=4", "--device", "cpu"]
    )  # fmt: skip
    assert code == 0
    results = json.loads((run / "eval_results.json").read_text())
    assert results["base"] == tiny_pipeline_dir  # from ddpo_config.json
    assert {key: entry["num_inference_steps"] for key, entry in results["schedulers"].items()} == {"ddim": 2, "pndm": 4}
    for key in ("ddim", "pndm"):
        grid = results["schedulers"][key]["grid"]
        assert grid["rows"] == ["base", "model"] and grid["seeds"] == [0, 1]
        with Image.open(run / grid["path"]) as image:
            assert image.size == (2 * 16 + 2, 2 * 16 + 2)  # 2 seeds x (base, model), 2-pixel gaps
    assert "DDIM (2 steps): mean JPEG" in capsys.readouterr().out


def test_cli_reports_a_bad_model_without_a_traceback(tmp_path, capsys):
    assert main(["--model", str(tmp_path / "missing"), "--no-base", "--num-images", "1"]) == 2
    assert "ddpo-eval: error:" in capsys.readouterr().err


def test_push_eval_dataset_round_trips(hub_server, hub_token, tiny_pipeline_dir, model_dir):
    from datasets import load_dataset

    results, samples = run_evaluation(
        model_dir, tiny_pipeline_dir, schedulers=["ddim"], num_images=2, num_inference_steps={"ddim": 1}, device="cpu"
    )
    repo_id = hub_server.unique_repo_id("ddpo-eval-images")
    push_eval_dataset(results, samples, repo_id, token=hub_token)
    dataset = load_dataset(repo_id, split="train")
    rows = sorted(dataset, key=lambda row: (row["role"], row["seed"]))
    assert [(row["role"], row["scheduler"], row["seed"]) for row in rows] == [
        ("base", "ddim", 0), ("base", "ddim", 1), ("model", "ddim", 0), ("model", "ddim", 1)
    ]  # fmt: skip
    for row in rows:
        assert row["jpeg_bytes"] == results["schedulers"]["ddim"][row["role"]]["jpeg_bytes"][row["seed"]]
        assert row["jpeg_bytes"] == len(jpeg.encode_jpeg(row["image"]))  # PNG storage is lossless
    assert {row["model"] for row in rows if row["role"] == "base"} == {Path(tiny_pipeline_dir).name}
