"""The DDPO trainer end to end on tiny models: run folder, reload, resume, errors, processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from diffusers import DDIMPipeline, DDPMPipeline, PNDMPipeline, UNet2DModel
from safetensors.torch import load_file

from ddpo_hub.training.cli import train_main
from ddpo_hub.training.config import DDPOConfig, TrainConfig, resolve_config
from ddpo_hub.training.ddpo import train
from ddpo_hub.training.rewards import jpeg_compressibility
from ddpo_hub.training.run_folder import latest_checkpoint, read_metrics
from ddpo_hub.training.trainer import TrainingDivergedError
from tests.helpers import FAST, interrupting_reward

REPO = Path(__file__).resolve().parents[1]


def _config(base: str, run_dir: Path, **overrides) -> DDPOConfig:
    return resolve_config(overrides={"base_model": base, "output_dir": str(run_dir), **FAST, **overrides})


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "unet" / "diffusion_pytorch_model.safetensors")


@pytest.fixture(scope="module")
def finished_run(tiny_pipeline_dir, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("run")
    train(_config(tiny_pipeline_dir, run_dir))
    return run_dir


def test_run_folder_layout_and_metrics(finished_run, tiny_pipeline_dir):
    for name in ("model_index.json", "unet/config.json", "scheduler/scheduler_config.json", "run_info.json"):
        assert (finished_run / name).is_file(), name
    assert (finished_run / "samples" / "epoch_0000.png").is_file()
    assert (finished_run / "samples" / "epoch_0002.png").is_file()
    assert list((finished_run / "logs").rglob("events.out.tfevents*")), "TensorBoard logs"
    assert latest_checkpoint(finished_run).name == "checkpoint_2"
    saved = json.loads((finished_run / "ddpo_config.json").read_text())
    assert saved["base_model"] == str(Path(tiny_pipeline_dir).resolve())
    assert saved["num_samples"] == 8
    rows = read_metrics(finished_run)
    assert [row["epoch"] for row in rows] == [1, 2]
    required = {"epoch", "reward_mean", "reward_std", "jpeg_kb_mean", "approx_kl", "clipfrac", "seconds", "loss"}
    assert required <= set(rows[0])
    # The JPEG reward is minus the size in kB, so the logged mean size mirrors the mean reward.
    assert rows[0]["jpeg_kb_mean"] == pytest.approx(-rows[0]["reward_mean"])


def test_saved_pipeline_loads_with_stock_pipelines(finished_run, tiny_pipeline_dir):
    unet = UNet2DModel.from_pretrained(finished_run, subfolder="unet")
    base = UNet2DModel.from_pretrained(tiny_pipeline_dir, subfolder="unet")
    changed = any(not torch.equal(a, b) for a, b in zip(unet.parameters(), base.parameters(), strict=True))
    assert changed, "training changed the weights"
    for pipeline_class, steps in ((DDPMPipeline, 3), (DDIMPipeline, 3), (PNDMPipeline, 4)):
        if pipeline_class is DDPMPipeline:
            pipeline = pipeline_class.from_pretrained(finished_run)
        else:  # the folder's scheduler is DDPM; users swap it through the matching pipeline class
            from ddpo_hub.training.pipelines import build_pipeline, load_unet_and_scheduler_config

            loaded_unet, scheduler_config = load_unet_and_scheduler_config(finished_run)
            pipeline = build_pipeline(loaded_unet, scheduler_config, pipeline_class.__name__[:4])
        images = pipeline(batch_size=2, num_inference_steps=steps, generator=torch.manual_seed(0), output_type="np")
        assert images.images.shape == (2, 16, 16, 3)
        assert np.isfinite(images.images).all()


_jpeg = jpeg_compressibility()


def test_interrupted_and_resumed_run_matches_uninterrupted_run(tiny_pipeline_dir, tmp_path):
    settings = dict(epochs=3, num_samples=8, sample_batch_size=4, train_batch_size=4, use_ema=True, stat_tracking=True)
    straight = tmp_path / "straight"
    train(_config(tiny_pipeline_dir, straight, **settings))

    resumed = tmp_path / "resumed"
    reward = interrupting_reward()  # its 4th call dies: epoch 2's second batch
    with pytest.raises(KeyboardInterrupt):
        train(_config(tiny_pipeline_dir, resumed, reward=reward, **settings))
    assert latest_checkpoint(resumed).name == "checkpoint_1"
    # The same reward setting, as a resume must keep it; the kill happens once, so it now runs through.
    interrupting = dict(reward=reward, **settings)
    train(_config(tiny_pipeline_dir, resumed, resume="latest", **interrupting))

    expected, actual = _weights(straight), _weights(resumed)
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name
    strip = lambda rows: [{k: v for k, v in row.items() if not k.startswith("seconds")} for row in rows]  # noqa: E731
    assert strip(read_metrics(resumed)) == strip(read_metrics(straight))


def nan_reward(images: torch.Tensor):
    return [float("nan")] * images.shape[0]


_nan_switch = {"on": False}


def switchable_nan_reward(images: torch.Tensor):
    """The JPEG reward until a test switches it to NaN: a resumed run must keep its reward setting."""
    return nan_reward(images) if _nan_switch["on"] else _jpeg(images)[0]


def test_nan_loss_stops_and_names_the_last_good_checkpoint(tiny_pipeline_dir, tmp_path, monkeypatch):
    run_dir = tmp_path / "nan"
    with pytest.raises(TrainingDivergedError, match="none: no epoch completed"):
        train(_config(tiny_pipeline_dir, run_dir, reward="tests.test_trainer:nan_reward"))
    # A run with good epochs keeps them: resume it once its reward turns NaN and it stops in epoch 2.
    switchable = "tests.test_trainer:switchable_nan_reward"
    train(_config(tiny_pipeline_dir, run_dir / "good", epochs=1, reward=switchable))
    before = _weights(run_dir / "good")
    monkeypatch.setitem(_nan_switch, "on", True)
    with pytest.raises(TrainingDivergedError, match="checkpoint_1"):
        train(_config(tiny_pipeline_dir, run_dir / "good", resume="latest", reward=switchable))
    assert latest_checkpoint(run_dir / "good").name == "checkpoint_1"
    after = _weights(run_dir / "good")
    assert all(torch.equal(before[name], after[name]) for name in before), "the NaN step was never saved"


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--reward", "sharpness"], "Unknown reward 'sharpness'"),
        (["--num-steps", "0"], "--num-steps must be a positive integer"),
        (["--num-samples", "6"], "must be a multiple of --sample-batch-size"),
        (["--train-batch-size", "3"], "must divide --sample-batch-size"),
        (["--eta", "0"], "--eta must be in (0, 1]"),
        (["--min-train-std", "-0.1"], "--min-train-std must be in [0, 1)"),
        # Two DDIM steps leave one stochastic step, t = 500 -> 0, whose std is only 0.01.
        (["--num-steps", "2"], "No step of the 2-step ddim sampler has a noise std above --min-train-std 0.05"),
        (["--preset", "huge"], "Unknown preset 'huge'"),
        (["--base-model", "./no/such/folder"], "No such model folder"),
        # Non-finite numbers compare false with every bound: each must be refused by name, before any epoch.
        (["--clip-range", "nan"], "--clip-range must be a finite positive number, got nan"),
        (["--clip-range", "inf"], "--clip-range must be a finite positive number, got inf"),
        (["--learning-rate", "nan"], "--learning-rate must be a finite positive number, got nan"),
        (["--max-grad-norm=-inf"], "--max-grad-norm must be a finite positive number, got -inf"),
        (["--adam-epsilon", "nan"], "--adam-epsilon must be a finite positive number, got nan"),
        (["--kl-coef", "inf"], "--kl-coef must be 0 (off) or positive, got inf"),
        (["--ema-decay", "2"], "--ema-decay must be in [0, 1), got 2.0"),
        (["--ema-decay", "1"], "--ema-decay must be in [0, 1), got 1.0"),
        (["--adam-beta1", "nan"], "--adam-beta1 must be in [0, 1), got nan"),
        (["--mixed-precision", "fp8"], "--mixed-precision must be 'no', 'fp16' or 'bf16', got 'fp8'"),
        (["--scheduler", "pndm"], "--scheduler must be 'ddim' or 'ddpm', got 'pndm'"),
        (["--algorithm", "ppo"], "--algorithm must be 'ddpo' or 'nft', got 'ppo'"),
        (["--eval-schedulers", "foo"], "--eval-schedulers: unknown 'foo'; choose from rollout, ddpm, ddim, pndm"),
        (["--eval-num-images", "4", "--eval-num-inference-steps", "ddim=x"], "Bad --num-inference-steps item"),
        (["--eval-num-images", "4", "--eval-num-inference-steps", "pndm=2"], "pndm needs between 4 and 1000"),
        (["--grid-size", "0"], "--grid-size must be a positive integer"),
        (["--overwrite", "--resume", "latest"], "--overwrite starts the run afresh"),
        (["--compile", "--use-lora"], "--compile does not support --use-lora"),
    ],
)
def test_bad_input_gets_a_clear_error(tiny_pipeline_dir, tmp_path, capsys, flags, message):
    argv = ["--base-model", tiny_pipeline_dir, "--output-dir", str(tmp_path / "run"), "--num-samples", "8"]
    argv += ["--sample-batch-size", "8", "--train-batch-size", "4", *flags]
    assert train_main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists(), "refused before anything was written"


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder`, by relative path, with its bytes."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def _one_epoch_argv(base: str, run_dir: Path) -> list[str]:
    argv = ["--base-model", base, "--output-dir", str(run_dir), "--epochs", "1", "--num-samples", "8"]
    return argv + ["--sample-batch-size", "8", "--train-batch-size", "4", "--num-steps", "4", "--grid-size", "4"]


def test_fresh_run_into_a_run_folder_is_refused_and_overwrite_replaces_it(
    tiny_pipeline_dir, tmp_path, capsys, hub_server
):
    run_dir = tmp_path / "run"
    argv = _one_epoch_argv(tiny_pipeline_dir, run_dir)
    assert train_main(argv) == 0
    (run_dir / "notes.txt").write_text("the user's own file\n")
    before = _snapshot(run_dir)
    capsys.readouterr()

    pushed = ["--push-to-hub", hub_server.unique_repo_id("ddpo-refused")]
    assert train_main([*argv, *pushed]) == 2
    err = capsys.readouterr().err
    assert "already holds a ddpo-hub run" in err and "--resume latest" in err and "--overwrite" in err
    assert _snapshot(run_dir) == before, "every file byte-identical, none added"
    assert [hub_server.calls(kind) for kind in ("create_repo", "refs", "commit")] == [0, 0, 0], "before the Hub"

    assert train_main([*argv, "--overwrite"]) == 0
    assert [row["epoch"] for row in read_metrics(run_dir)] == [1]
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 1
    assert (run_dir / "notes.txt").read_text() == "the user's own file\n", "files of no run are kept"
    assert [path.name for path in (run_dir / "checkpoints").iterdir()] == ["checkpoint_1"]
    assert len(list((run_dir / "logs").rglob("events.out.tfevents*"))) == len(
        [name for name in before if "events.out.tfevents" in name]
    ), "the old run's TensorBoard logs were deleted"


def test_resume_refuses_settings_that_change_the_run_and_accepts_more_epochs(tiny_pipeline_dir, tmp_path, capsys):
    run_dir = tmp_path / "run"
    argv = _one_epoch_argv(tiny_pipeline_dir, run_dir)
    assert train_main(argv) == 0
    saved = (run_dir / "ddpo_config.json").read_bytes()
    capsys.readouterr()

    changed = [*argv, "--resume", "latest", "--num-steps", "5", "--eta", "0.5", "--push-every", "3"]
    assert train_main(changed) == 2
    err = capsys.readouterr().err
    assert "num_steps: 4 -> 5" in err and "eta: 1.0 -> 0.5" in err
    assert "push_every" not in err, "output-only settings may change"
    assert (run_dir / "ddpo_config.json").read_bytes() == saved
    assert latest_checkpoint(run_dir).name == "checkpoint_1"

    # A kill while epoch 2's checkpoint was being written left it incomplete: the resumed run saves over it.
    (run_dir / "checkpoints" / "checkpoint_2").mkdir()
    (run_dir / "checkpoints" / "checkpoint_2" / "model.safetensors").write_bytes(b"truncated")
    assert train_main([*argv, "--resume", "latest", "--epochs", "2"]) == 0
    assert latest_checkpoint(run_dir).name == "checkpoint_2"
    assert [row["epoch"] for row in read_metrics(run_dir)] == [1, 2]
    assert json.loads((run_dir / "ddpo_config.json").read_text())["epochs"] == 2
    history = [json.loads(line) for line in (run_dir / "config_history.jsonl").read_text().splitlines()]
    assert history == [{"from_epoch": 2, "changes": {"epochs": [1, 2]}}], "the change, from the epoch it applied"
    from ddpo_hub.model_card.render import write_card

    assert "- from epoch 2: `epochs` `1` → `2`" in write_card(run_dir, run_dir).read_text()


def test_resume_treats_settings_an_older_version_did_not_save_as_their_defaults(finished_run):
    from ddpo_hub.training.run_folder import config_changes

    saved = json.loads((finished_run / "ddpo_config.json").read_text())
    config = DDPOConfig(**saved)
    older = {key: value for key, value in saved.items() if key not in ("kl_coef", "fidelity_num_images")}
    assert config_changes(older, config) == []
    config.kl_coef = 0.5
    assert config_changes(older, config) == ["kl_coef: 0.0 -> 0.5"]
    assert config_changes({**saved, "removed_setting": 1}, DDPOConfig(**saved)) == []


def test_output_dir_naming_a_file_is_refused(tiny_pipeline_dir, tmp_path, capsys):
    (tmp_path / "file").write_text("not a folder\n")
    assert train_main(_one_epoch_argv(tiny_pipeline_dir, tmp_path / "file")) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert (tmp_path / "file").read_text() == "not a folder\n"


def test_unreachable_hub_is_named(tmp_path):
    # huggingface_hub reads HF_ENDPOINT at import, so point a fresh process at a closed loopback port.
    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_ETAG_TIMEOUT": "1", "PYTHONPATH": str(REPO)}
    code = "from ddpo_hub.training.cli import train_main; raise SystemExit(train_main(['--base-model', 'google/ddpm-celebahq-256', '--output-dir', 'x']))"  # noqa: E501
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 2
    assert "the Hugging Face Hub" in result.stderr and "unreachable" in result.stderr


def test_every_setting_is_documented_and_fixed_choices_are_listed_in_the_help():
    from ddpo_hub.training.cli import build_parser

    assert all(item.metadata["help"] for item in fields(TrainConfig)), "each field's help is its documentation"
    help_text = " ".join(build_parser().format_help().split())
    assert all(f"--{item.name.replace('_', '-')} " in help_text for item in fields(TrainConfig))
    assert "--mixed-precision {no,fp16,bf16}" in help_text and "--algorithm {ddpo,nft}" in help_text
    assert "--eval-schedulers {rollout,ddpm,ddim,pndm}" in help_text


def test_config_file_and_flags_layer_over_the_preset(tmp_path):
    (tmp_path / "run.yaml").write_text("preset: tiny\nepochs: 7\nlearning-rate: 0.001\n")
    (tmp_path / "run.toml").write_text('preset = "celebahq-256"\nnum_steps = 50\n')
    from ddpo_hub.training.cli import parse_config

    config = parse_config(["--config", str(tmp_path / "run.yaml"), "--epochs", "9"])
    assert (config.preset, config.epochs, config.learning_rate, config.base_model) == (
        "tiny",
        9,
        0.001,
        "tiny-emoji-32",
    )
    config = parse_config(["--config", str(tmp_path / "run.toml")])
    assert (config.base_model, config.num_steps, config.eta, config.mixed_precision) == (
        "google/ddpm-celebahq-256",
        50,
        1.0,
        "bf16",
    )
    (tmp_path / "bad.yaml").write_text("learning_rat: 1\n")
    with pytest.raises(ValueError, match="Unknown setting.*learning_rat"):
        parse_config(["--config", str(tmp_path / "bad.yaml")])
    (tmp_path / "broken.toml").write_text("epochs = [\n")
    with pytest.raises(ValueError, match=r"Config file '.*broken\.toml' is not valid TOML"):
        parse_config(["--config", str(tmp_path / "broken.toml")])
    (tmp_path / "broken.yaml").write_text("epochs: [1\n")
    with pytest.raises(ValueError, match=r"Config file '.*broken\.yaml' is not valid YAML"):
        parse_config(["--config", str(tmp_path / "broken.yaml")])


@pytest.mark.slow
def test_celebahq_preset_runs_one_tiny_epoch_on_the_real_architecture(tmp_path):
    """google/ddpm-celebahq-256's configuration with random weights (113.67 M parameters).

    In fp32: this CPU has no native bf16, and one bf16-autocast forward of this UNet took minutes here.
    bf16 re-scoring is covered by tests/test_sampling.py on a tiny model.
    """
    reference = REPO / "tests" / "data" / "ddpm-celebahq-256-config"
    unet = UNet2DModel.from_config(UNet2DModel.load_config(reference / "unet"))
    assert sum(p.numel() for p in unet.parameters()) / 1e6 == pytest.approx(113.67, abs=0.01)
    base = tmp_path / "celebahq-random"
    from diffusers import DDPMScheduler

    DDPMPipeline(unet=unet, scheduler=DDPMScheduler.from_pretrained(reference / "scheduler")).save_pretrained(base)
    del unet
    config = resolve_config(
        preset="celebahq-256",
        overrides=dict(
            base_model=str(base),
            output_dir=str(tmp_path / "run"),
            epochs=1,
            num_samples=2,
            sample_batch_size=2,
            train_batch_size=2,
            gradient_accumulation_steps=1,
            num_steps=2,
            min_train_std=0.0,  # the one stochastic step of 2 (t = 500 -> 0) has std 0.01: train on it anyway
            grid_size=1,
            fidelity_num_images=0,  # 256-px fixed-seed sampling takes minutes here; test_fidelity.py covers it
            eval_num_images=0,
            checkpoints_total_limit=1,
            mixed_precision="no",
        ),
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # a UNet this size uses both cores well, unlike the tiny test models
    try:
        train(config)
    finally:
        torch.set_num_threads(threads)
    row = read_metrics(tmp_path / "run")[0]
    assert row["epoch"] == 1 and np.isfinite(row["loss"])
    assert DDPMPipeline.from_pretrained(tmp_path / "run").unet.config.sample_size == 256


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["ddpo", "nft"])
def test_two_processes_gather_rewards_and_end_with_identical_weights(tiny_pipeline_dir, tmp_path, algorithm):
    out = tmp_path / "out"
    out.mkdir()
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        str(REPO / "tests" / "distributed_worker.py"),
        "--base-model", tiny_pipeline_dir, "--output-dir", str(tmp_path / "run"), "--epochs", "2",
        "--num-samples", "8", "--sample-batch-size", "4", "--train-batch-size", "4", "--num-steps", "4",
        "--grid-size", "2", "--reward", "tests.distributed_worker:recording_reward", "--algorithm", algorithm,
    ]  # fmt: skip
    env = {**os.environ, "DDPO_TEST_OUT": str(out), "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = torch.load(out / "weights_rank0.pt"), torch.load(out / "weights_rank1.pt")
    assert all(torch.equal(rank0[name], rank1[name]) for name in rank0)
    saved = _weights(tmp_path / "run")
    assert all(torch.equal(saved[name], rank0[name]) for name in saved)
    local = {
        rank: [json.loads(line) for line in (out / f"rewards_rank{rank}.jsonl").read_text().splitlines()]
        for rank in (0, 1)
    }
    rows = read_metrics(tmp_path / "run")
    for epoch, row in enumerate(rows):
        gathered = np.array(local[0][epoch] + local[1][epoch])
        assert gathered.size == 8
        assert row["reward_mean"] == pytest.approx(gathered.mean())
        assert row["reward_std"] == pytest.approx(gathered.std())
    assert local[0][0] != local[1][0], "each process samples its own images"


@pytest.mark.slow
def test_short_run_on_the_bundled_model_raises_the_mean_reward(tmp_path):
    """The JPEG reward goes up within the tiny preset's first epochs (fixed seed): the update points the right way.

    Half the preset's samples per epoch (one optimizer step on 64), to keep the suite short; measured here the
    mean reward went from -1.214 to -1.100 kB by epoch 3."""
    config = resolve_config(
        preset="tiny",
        overrides=dict(
            output_dir=str(tmp_path / "run"),
            epochs=3,
            num_samples=64,
            gradient_accumulation_steps=2,
            grid_size=2,
            fidelity_num_images=0,
        ),
    )
    train(config)
    rewards = [row["reward_mean"] for row in read_metrics(tmp_path / "run")]
    assert np.mean(rewards[-2:]) > rewards[0], rewards


LORA_TARGETS = ("conv1", "conv2", "to_q", "to_k", "to_v", "to_out.0")


def _lora_targeted(key: str) -> bool:
    """peft's rule for a list of target modules: the module's name is, or ends with, one of them."""
    module = key.rsplit(".", 1)[0]
    return any(module == target or module.endswith("." + target) for target in LORA_TARGETS)


@pytest.fixture(scope="module")
def lora_run(tiny_pipeline_dir, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("lora")
    train(_config(tiny_pipeline_dir, run_dir, epochs=1, use_lora=True))
    return run_dir


def test_lora_run_saves_a_merged_unet_that_changes_only_the_adapted_weights(lora_run, tiny_pipeline_dir):
    assert list(DDPOConfig().lora_target_modules) == list(LORA_TARGETS), "the test's targets are the default"
    unet = UNet2DModel.from_pretrained(lora_run / "unet")
    base = UNet2DModel.from_pretrained(tiny_pipeline_dir, subfolder="unet").state_dict()
    saved = unet.state_dict()
    assert saved.keys() == base.keys(), "merged: no lora_A/lora_B or base_layer keys"
    assert all(tensor.dtype == torch.float32 for tensor in saved.values())
    changed = {key for key in base if not torch.equal(saved[key], base[key])}
    targeted_weights = {key for key in base if _lora_targeted(key) and key.endswith(".weight")}
    assert len(targeted_weights) > 10 and any(".to_out.0." in key for key in targeted_weights)
    # LoRA adds B @ A to each adapted weight; biases and every other module keep the base values.
    assert changed == targeted_weights
    assert torch.equal(saved["conv_in.weight"], base["conv_in.weight"])
    assert "conv_in.weight" not in changed and "time_embedding.linear_1.weight" not in changed


def test_lora_with_ema_saves_the_merged_average(lora_run, tiny_pipeline_dir, tmp_path):
    run_dir = tmp_path / "lora-ema"
    train(_config(tiny_pipeline_dir, run_dir, epochs=1, use_lora=True, use_ema=True))
    saved = UNet2DModel.from_pretrained(run_dir / "unet").state_dict()
    base = UNet2DModel.from_pretrained(tiny_pipeline_dir, subfolder="unet").state_dict()
    lora_only = _weights(lora_run)
    assert saved.keys() == base.keys()
    for key in base:
        if not _lora_targeted(key) or not key.endswith(".weight"):
            assert torch.equal(saved[key], base[key]), key
    # Same seed and samples as the plain LoRA run, so the adapters trained alike: the EMA copy is what differs.
    adapted = [key for key in base if _lora_targeted(key) and key.endswith(".weight")]
    assert any(not torch.equal(saved[key], base[key]) for key in adapted), "the EMA adapters moved"
    assert any(not torch.equal(saved[key], lora_only[key]) for key in adapted), "the EMA weights were saved"
    assert DDPMPipeline.from_pretrained(run_dir).unet.config.sample_size == 16


def test_two_inner_epochs_take_twice_the_optimizer_steps(finished_run, tiny_pipeline_dir, tmp_path):
    run_dir = tmp_path / "inner2"
    train(_config(tiny_pipeline_dir, run_dir, epochs=1, num_inner_epochs=2))
    one_pass = read_metrics(finished_run)[0]["global_step"]  # the same settings' first epoch, one inner epoch
    # 8 samples in minibatches of 4, one optimizer step per minibatch (its timesteps are accumulated).
    assert one_pass == FAST["num_samples"] // FAST["train_batch_size"]
    assert read_metrics(run_dir)[0]["global_step"] == 2 * one_pass


def _first_update_gradients(base: str, run_dir: Path, monkeypatch, **overrides) -> list[torch.Tensor]:
    """The accumulated gradients of a run's first optimizer step, as they are about to be clipped and applied."""
    captured: list[list[torch.Tensor]] = []
    clip = Accelerator.clip_grad_norm_

    def capture(accelerator, parameters, *args, **kwargs):
        parameters = list(parameters)
        captured.append([parameter.grad.clone() for parameter in parameters])
        return clip(accelerator, parameters, *args, **kwargs)

    monkeypatch.setattr(Accelerator, "clip_grad_norm_", capture)
    train(_config(base, run_dir, epochs=1, **overrides))
    return captured[0]


def test_gradient_accumulation_keeps_the_effective_batch(tiny_pipeline_dir, tmp_path, monkeypatch):
    """Micro-batch 4 x 2 accumulated and 2 x 4 average the same 8 samples' gradients into one update.

    So a preset can change its training batch to fill a GPU and keep its learning dynamics by keeping
    `train_batch_size * gradient_accumulation_steps`. Every trained step of all 8 samples is in the update
    (`timestep_fraction` 1), whatever order the minibatches and timesteps are shuffled into.
    """
    four_by_two = _first_update_gradients(
        tiny_pipeline_dir, tmp_path / "4x2", monkeypatch, train_batch_size=4, gradient_accumulation_steps=2
    )
    two_by_four = _first_update_gradients(
        tiny_pipeline_dir, tmp_path / "2x4", monkeypatch, train_batch_size=2, gradient_accumulation_steps=4
    )

    # The sampler's UNet batches differ (4 and 2 images), so the rollouts agree to float rounding, not bit for bit.
    def relative_error(actual: list[torch.Tensor], expected: list[torch.Tensor]) -> float:
        actual, expected = torch.cat([a.flatten() for a in actual]), torch.cat([e.flatten() for e in expected])
        return float((actual - expected).norm() / expected.norm())

    assert relative_error(two_by_four, four_by_two) < 1e-4
    half = _first_update_gradients(
        tiny_pipeline_dir, tmp_path / "4x1", monkeypatch, train_batch_size=4, gradient_accumulation_steps=1
    )
    assert relative_error(half, four_by_two) > 0.1, "an update of 4 of the samples is another gradient"


_COMPARED = ("reward_mean", "loss", "approx_kl", "clipfrac")


def test_bf16_run_on_cpu_autocasts_and_saves_float32_weights(finished_run, tiny_pipeline_dir, tmp_path):
    run_dir = tmp_path / "bf16"
    train(_config(tiny_pipeline_dir, run_dir, epochs=1, mixed_precision="bf16"))
    row = read_metrics(run_dir)[0]
    assert all(np.isfinite(row[key]) for key in _COMPARED)
    fp32 = read_metrics(finished_run)[0]
    assert any(row[key] != fp32[key] for key in _COMPARED), "bf16 autocast changed the numbers"
    pipeline = DDPMPipeline.from_pretrained(run_dir)
    assert all(parameter.dtype == torch.float32 for parameter in pipeline.unet.parameters())
    images = pipeline(batch_size=1, num_inference_steps=2, generator=torch.manual_seed(0), output_type="np").images
    assert np.isfinite(images).all()
    assert json.loads((run_dir / "run_info.json").read_text())["hardware"]["mixed_precision"] == "bf16"


def test_fp16_on_cpu_is_refused_before_anything_is_written(tiny_pipeline_dir, tmp_path):
    """accelerate enables fp16 autocast only on accelerators: on CPU the run would silently be fp32."""
    run_dir = tmp_path / "fp16"
    with pytest.raises(ValueError, match="fp16.*CPU.*bf16"):
        train(_config(tiny_pipeline_dir, run_dir, epochs=1, mixed_precision="fp16"))
    assert not run_dir.exists()


def test_a_damaged_checkpoint_is_named_with_the_one_to_resume_from(tiny_pipeline_dir, tmp_path, capsys):
    run_dir = tmp_path / "run"
    argv = [*_one_epoch_argv(tiny_pipeline_dir, run_dir), "--epochs", "2"]
    assert train_main(argv) == 0
    damaged = run_dir / "checkpoints" / "checkpoint_2"
    weights = next(damaged.glob("model*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])  # truncated, yet the checkpoint's marker says complete
    capsys.readouterr()
    assert train_main([*argv[:-2], "--epochs", "3", "--resume", "latest"]) == 2
    err = capsys.readouterr().err
    assert str(damaged) in err and f"--resume {run_dir / 'checkpoints' / 'checkpoint_1'}" in err
    assert "Traceback" not in err
    assert train_main([*argv[:-2], "--epochs", "3", "--resume", str(run_dir / "checkpoints" / "checkpoint_1")]) == 0
    assert [row["epoch"] for row in read_metrics(run_dir)] == [1, 2, 3]


def raising_reward(images: torch.Tensor):
    return 1 / 0


def test_a_custom_reward_that_raises_is_named_in_one_line(tiny_pipeline_dir, tmp_path, capsys):
    argv = [*_one_epoch_argv(tiny_pipeline_dir, tmp_path / "run"), "--reward", "tests.test_trainer:raising_reward"]
    assert train_main(argv) == 2
    err = capsys.readouterr().err
    assert "Custom reward 'tests.test_trainer:raising_reward' raised ZeroDivisionError" in err
    assert "Traceback" not in err
