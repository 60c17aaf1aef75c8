"""Throughput of the `celebahq-256` preset on the real architecture (random weights): old settings vs new.

    python benchmarks/celebahq_throughput.py                      # the preset as it is vs the new settings
    python benchmarks/celebahq_throughput.py --sweep 4 8 16 32    # and first: samples/s and memory per UNet batch
    python benchmarks/celebahq_throughput.py --smoke              # the same code end to end on a CPU, in minutes

Builds google/ddpm-celebahq-256's UNet from its configuration (113.67 M parameters, no download). For each
setting it builds the trainer, runs one warm-up epoch (sampling and training: compiles, fills caches), then
times one epoch of sampling and one of training through the trainer's own code and prints, side by side:
* samples/s of sampling (the rollouts, log-probs included) and of training (the clipped updates);
* achieved TFLOP/s and the fraction of the device's dense bf16 peak (`PEAK_BF16_TFLOPS`), counting the UNet's
  FLOPs with torch.utils.flop_counter.FlopCounterMode (matmuls and convolutions, forward and backward);
* peak GPU memory, the compiled graphs, the host-GPU syncs per UNet step (torch.cuda.set_sync_debug_mode
  flags each implicit one; explicit torch.cuda.synchronize calls are counted apart);
* the largest |ratio - 1| when re-scoring a fresh rollout as the trainer does: it must be 0 for PPO's 1e-4 clip.

`old` is the preset unchanged (UNet batch 4, no channels_last, no TF32, eager); `new` trains with UNet batch
`--new-batch` (gradient accumulation keeps the preset's effective batch of 16 samples per update), channels_last,
TF32 and `--compile`. `--sweep` measures eager channels_last + TF32 at each UNet batch (the sampler's forward
chunk and the training minibatch are the same batch: re-scoring is exact only then). `--keep-base DIR` keeps the
random-weight pipeline, e.g. for `overhead.py --model DIR`.
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
from torch._dynamo.utils import counters
from torch.utils.flop_counter import FlopCounterMode

from ddpo_hub.training.config import PRESETS, TrainConfig, resolve_config
from ddpo_hub.training.ddpo import DDPOSamples, DDPOTrainer
from ddpo_hub.training.phases import Rollouts
from ddpo_hub.training.pipelines import fetch_pipeline_folder

REFERENCE = Path(__file__).resolve().parents[1] / "tests" / "data" / "ddpm-celebahq-256-config"
PRESET = PRESETS["celebahq-256"]
EFFECTIVE_BATCH = PRESET["train_batch_size"] * PRESET["gradient_accumulation_steps"]
"""Samples per optimizer step of the preset (each over its trained timesteps): what a new UNet batch keeps."""

PEAK_BF16_TFLOPS = (
    # Dense (no 2:4 sparsity) bf16 tensor-core peaks of the vendors' datasheets; the first name found wins.
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM: "NVIDIA H100 80GB HBM3"
    ("H200 NVL", 835.0),
    ("H200", 989.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("A10G", 125.0),  # AWS's A10 variant: NVIDIA publishes no datasheet of its own, so the A10's figure is used
    ("A10", 125.0),
)


def peak_bf16_tflops(device_name: str) -> float | None:
    return next((peak for name, peak in PEAK_BF16_TFLOPS if name in device_name), None)


def build_random_celebahq(folder: Path) -> Path:
    """A `DDPMPipeline` folder with google/ddpm-celebahq-256's configuration and random weights."""
    unet = UNet2DModel.from_config(UNet2DModel.load_config(REFERENCE / "unet"))
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler.from_pretrained(REFERENCE / "scheduler")).save_pretrained(folder)
    return folder


def unet_flops(model_folder: str) -> tuple[float, float]:
    """FLOPs of one UNet forward, and of a forward plus backward (weights only), per sample: counted on shapes alone.

    The model is built on the meta device, so nothing is computed and the count takes a second even for 256x256.
    """
    config = UNet2DModel.load_config(Path(fetch_pipeline_folder(model_folder)) / "unet")
    with torch.device("meta"):
        unet = UNet2DModel.from_config(config)
    size = config["sample_size"]
    sample = torch.zeros((1, config["in_channels"], size, size), device="meta")
    timestep = torch.zeros((1,), dtype=torch.long, device="meta")
    with FlopCounterMode(display=False) as forward:
        unet(sample, timestep)
    with FlopCounterMode(display=False) as forward_backward:
        unet(sample, timestep).sample.sum().backward()
    return float(forward.get_total_flops()), float(forward_backward.get_total_flops())


def rescoring_drift(trainer: DDPOTrainer) -> float:
    """Largest |ratio - 1| when the trainer re-scores its own fresh rollout (one training batch, every trained step).

    Sampled as the trainer samples (`rollout_policy`: compiled, the training graph) and re-scored as it trains
    (train mode, gradients on, the run's precision). Nothing is back-propagated or stepped.
    """
    accelerator, sampler = trainer.accelerator, trainer.sampler
    batch = trainer.config.train_batch_size
    noise = torch.randn((batch, *trainer.sample_shape), generator=torch.Generator().manual_seed(0))
    rollout = sampler.rollout(
        trainer.rollout_policy(),
        noise.to(accelerator.device),
        torch.Generator().manual_seed(1),
        autocast=accelerator.autocast,
        forward_batch_size=batch,
    )
    trainer.unet.train()
    drift = 0.0
    for index in torch.nonzero(rollout.trainable).squeeze(1).tolist():
        step_index = torch.full((batch,), index, dtype=torch.long)
        log_prob = sampler.score_step(
            trainer.unet, rollout.latents[:, index], step_index, rollout.latents[:, index + 1], accelerator.autocast
        )
        ratio = torch.exp(log_prob.detach() - rollout.log_probs[:, index])
        drift = max(drift, (ratio - 1).abs().max().item())
    return drift


class SyncCounter:
    """Host-GPU syncs while active: implicit ones as torch.cuda.set_sync_debug_mode flags them, explicit
    torch.cuda.synchronize calls apart. Counts nothing off CUDA."""

    def __init__(self, cuda: bool):
        self.cuda, self.implicit, self.explicit = cuda, 0, 0

    def __enter__(self) -> SyncCounter:
        if self.cuda:
            self._warnings = warnings.catch_warnings(record=True)
            self._caught = self._warnings.__enter__()
            warnings.simplefilter("always")
            self._synchronize = torch.cuda.synchronize
            torch.cuda.synchronize = self._counted_synchronize
            torch.cuda.set_sync_debug_mode("warn")
        return self

    def _counted_synchronize(self, *args, **kwargs) -> None:
        self.explicit += 1
        self._synchronize(*args, **kwargs)

    def __exit__(self, *exc) -> None:
        if self.cuda:
            torch.cuda.set_sync_debug_mode("default")
            torch.cuda.synchronize = self._synchronize
            self.implicit = sum("synchronizing" in str(warning.message) for warning in self._caught)
            self._warnings.__exit__(*exc)


def _advantages(rollouts: Rollouts[DDPOSamples]) -> torch.Tensor:
    """The rollouts' standardised rewards, as advantages for an update (any do for timing)."""
    rewards = torch.as_tensor(rollouts.rewards, dtype=torch.float32)
    return (rewards - rewards.mean()) / (rewards.std() + 1e-8)


def _update(trainer: DDPOTrainer, epoch: int, rollouts: Rollouts[DDPOSamples]) -> None:
    trainer.update(epoch, rollouts, _advantages(rollouts).to(trainer.accelerator.device))


def _timed(function: Callable[[], Any], syncs: SyncCounter | None = None) -> tuple[Any, float]:
    """`function()` and its seconds, the GPU's work included; `syncs` counts the syncs inside it, not these two."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    started = time.perf_counter()
    with syncs or nullcontext():
        result = function()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return result, time.perf_counter() - started


def measure_or_report(config: TrainConfig, flops: tuple[float, float]) -> dict[str, Any]:
    """`measure`, or the error that stopped it (out of memory, a compiler failure), so the other settings still run."""
    try:
        return measure(config, flops)
    except Exception as error:  # reported in the table and the JSON, with the traceback on stderr
        traceback.print_exc()
        message = "out of memory" if isinstance(error, torch.OutOfMemoryError) else f"{type(error).__name__}"
        return {"error": f"{config.train_batch_size}: {message}", "detail": str(error)[:500]}


DEFAULT_TF32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
OLD = dict(channels_last=False, tf32=False, compile=False)
"""The preset as measured before this benchmark grew its `new` column."""


def measure(config: TrainConfig, flops: tuple[float, float]) -> dict[str, Any]:
    """One setting's figures: a warm-up epoch, then one timed epoch of sampling and one of training."""
    # Process-wide flags: each setting starts from torch's defaults, whatever the one before it enabled.
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = DEFAULT_TF32
    torch._dynamo.reset()
    counters.clear()
    cuda = torch.cuda.is_available()
    gc.collect()  # the previous setting's trainer
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    trainer = DDPOTrainer(config)
    with ThreadPoolExecutor(max_workers=2) as pool:
        _, warm_up = _timed(lambda: _update(trainer, 1, trainer.sample_epoch(1, pool)))
        drift = rescoring_drift(trainer)
        sampling_syncs, training_syncs = SyncCounter(cuda), SyncCounter(cuda)
        rollouts, seconds_sampling = _timed(lambda: trainer.sample_epoch(2, pool), sampling_syncs)
        advantages = _advantages(rollouts).to(trainer.accelerator.device)
        _, seconds_training = _timed(lambda: trainer.update(2, rollouts, advantages), training_syncs)
    num_samples, num_steps = config.num_samples, config.num_steps
    sampling_steps = num_samples // config.sample_batch_size * num_steps  # denoising steps of whole batches
    training_steps = num_samples // config.train_batch_size * trainer.num_train_timesteps * config.num_inner_epochs
    forward, forward_backward = flops
    sampling_tflops = num_samples * num_steps * forward / seconds_sampling / 1e12
    training_tflops = (
        num_samples * config.num_inner_epochs * trainer.num_train_timesteps * forward_backward / seconds_training / 1e12
    )
    peak = peak_bf16_tflops(torch.cuda.get_device_name()) if cuda else None
    figures = {
        "unet_batch": config.train_batch_size,
        "sample_batch": config.sample_batch_size,
        "accumulation": config.gradient_accumulation_steps,
        "effective_batch": config.train_batch_size * config.gradient_accumulation_steps,
        "channels_last": config.channels_last and cuda,
        "tf32": config.tf32 and cuda,
        "compiled": trainer.compiled,
        "sampling_samples_per_s": num_samples / seconds_sampling,
        "training_samples_per_s": num_samples * config.num_inner_epochs / seconds_training,
        "sampling_tflops": sampling_tflops,
        "training_tflops": training_tflops,
        "sampling_peak_fraction": sampling_tflops / peak if peak else None,
        "training_peak_fraction": training_tflops / peak if peak else None,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "rescoring_max_abs_ratio_minus_1": drift,
        "compiled_graphs": counters["stats"]["unique_graphs"],
        "syncs_per_sampling_step": (sampling_syncs.implicit + sampling_syncs.explicit) / sampling_steps
        if cuda
        else None,
        "syncs_per_training_step": (training_syncs.implicit + training_syncs.explicit) / training_steps
        if cuda
        else None,
        "sampling_syncs_implicit_explicit": [sampling_syncs.implicit, sampling_syncs.explicit] if cuda else None,
        "training_syncs_implicit_explicit": [training_syncs.implicit, training_syncs.explicit] if cuda else None,
        "warm_up_seconds": warm_up,
    }
    return figures


def new_settings(
    batch: int, effective_batch: int, sample_batch: int, *, compile_: bool, channels_last: bool
) -> dict[str, Any]:
    """UNet batch `batch` with the accumulation that keeps `effective_batch` samples per update; fast settings on.

    Above `effective_batch` one minibatch is already more than an update's samples: accumulation 1.
    """
    accumulation = max(1, effective_batch // batch)
    return dict(
        train_batch_size=batch,
        sample_batch_size=max(batch, sample_batch),
        gradient_accumulation_steps=accumulation,
        channels_last=channels_last,
        tf32=True,
        compile=compile_,
    )


ROWS = (
    ("sampling, samples/s", "sampling_samples_per_s", "{:.2f}"),
    ("training, samples/s", "training_samples_per_s", "{:.2f}"),
    ("sampling, TFLOP/s", "sampling_tflops", "{:.3g}"),
    ("training, TFLOP/s", "training_tflops", "{:.3g}"),
    ("sampling, fraction of bf16 peak", "sampling_peak_fraction", "{:.1%}"),
    ("training, fraction of bf16 peak", "training_peak_fraction", "{:.1%}"),
    ("peak GPU memory, GiB", "peak_memory_gib", "{:.2f}"),
    ("max \\|ratio - 1\\| re-scoring", "rescoring_max_abs_ratio_minus_1", "{}"),
    ("host syncs per sampling step", "syncs_per_sampling_step", "{:.3f}"),
    ("host syncs per training step", "syncs_per_training_step", "{:.3f}"),
    ("compiled graphs", "compiled_graphs", "{}"),
    ("warm-up epoch, s", "warm_up_seconds", "{:.1f}"),
)
SETTINGS_ROWS = (
    ("UNet batch (sampler chunk = train minibatch)", "unet_batch"),
    ("sample batch", "sample_batch"),
    ("gradient accumulation", "accumulation"),
    ("effective batch (samples per update)", "effective_batch"),
    ("channels_last / TF32 / compiled", None),
)


def _cell(figures: dict, key: str | None, form: str = "{}") -> str:
    if "error" in figures:
        return figures["error"] if key == "unet_batch" else "-"
    if key is None:
        return " / ".join("yes" if figures[name] else "no" for name in ("channels_last", "tf32", "compiled"))
    value = figures[key]
    return "n/a" if value is None else form.format(value)


def table(columns: dict[str, dict]) -> str:
    lines = ["| | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for label, key in SETTINGS_ROWS:
        lines.append(f"| {label} | " + " | ".join(_cell(figures, key) for figures in columns.values()) + " |")
    for label, key, form in ROWS:
        lines.append(f"| {label} | " + " | ".join(_cell(figures, key, form) for figures in columns.values()) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-samples", type=int, help="samples per timed epoch (default 32, --smoke 8)")
    parser.add_argument("--mixed-precision", default="bf16")
    parser.add_argument("--new-batch", type=int, default=16, help="UNet batch of the `new` column")
    parser.add_argument("--sweep", type=int, nargs="*", default=[], help="UNet batches to measure first (eager)")
    parser.add_argument("--no-compare", action="store_true", help="only the sweep, not old vs new")
    parser.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="channels_last in the sweep and the new column (--no-channels-last: to see what it adds)",
    )
    parser.add_argument(
        "--smoke", action="store_true", help="the bundled 32x32 model, 6 steps, 8 samples, fp32: runs on a CPU"
    )
    parser.add_argument("--output", type=Path, help="also write the figures as JSON here")
    parser.add_argument("--keep-base", type=Path, help="build the random-weight pipeline here and keep it")
    args = parser.parse_args()

    # --smoke: the preset's structure at a CPU's scale (fp32: CPUs without native bf16 autocast it slowly).
    small = dict(num_steps=6, min_train_std=0.0, train_batch_size=2, sample_batch_size=4, gradient_accumulation_steps=2)
    settings = small if args.smoke else PRESET
    effective_batch = settings["train_batch_size"] * settings["gradient_accumulation_steps"]
    sample_batch = settings["sample_batch_size"]
    num_samples = args.num_samples or (8 if args.smoke else 32)
    precision = "no" if args.smoke else args.mixed_precision
    results: dict[str, Any] = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}
    results |= {"torch": torch.__version__, "mixed_precision": precision}
    with tempfile.TemporaryDirectory() as scratch:
        base = (
            "tiny-textures-32" if args.smoke else str(build_random_celebahq(args.keep_base or Path(scratch) / "base"))
        )
        flops = unet_flops(base)
        results["unet_gflop_per_sample"] = {"forward": flops[0] / 1e9, "forward_backward": flops[1] / 1e9}

        def config(name: str, **overrides) -> TrainConfig:
            values = dict(base_model=base, output_dir=str(Path(scratch) / name), mixed_precision=precision)
            values |= (small if args.smoke else {}) | overrides
            batch = values.get("sample_batch_size", sample_batch)
            values["num_samples"] = -(-num_samples // batch) * batch  # whole sampler batches
            return resolve_config(preset="celebahq-256", overrides=values)

        settings_of = {
            f"batch {batch}": new_settings(
                batch, effective_batch, sample_batch, compile_=False, channels_last=args.channels_last
            )
            for batch in args.sweep
        }
        new_batch = min(args.new_batch, effective_batch)
        if not args.no_compare:
            settings_of |= {
                "old": OLD,
                f"new (batch {new_batch})": new_settings(
                    new_batch, effective_batch, sample_batch, compile_=True, channels_last=args.channels_last
                ),
            }
        measured = {}
        for name, overrides in settings_of.items():
            measured[name] = measure_or_report(config(name.replace(" ", "-"), **overrides), flops)
            print(json.dumps({name: measured[name]}), flush=True)  # a run cut short keeps what it measured
    sweep = {name: figures for name, figures in measured.items() if name.startswith("batch")}
    compared = {name: figures for name, figures in measured.items() if not name.startswith("batch")}
    results |= {"sweep": sweep, "compared": compared}

    peak = peak_bf16_tflops(results["device"])
    print(
        f"\n{results['device']} (dense bf16 peak {peak or 'unknown'} TFLOP/s), torch {torch.__version__}, "
        f"precision {precision}, {'bundled tiny-textures-32' if args.smoke else 'celebahq-256 architecture'}; "
        f"UNet {flops[0] / 1e9:.3g} GFLOP forward, {flops[1] / 1e9:.3g} forward+backward per sample"
    )
    for title, columns in (("sweep (eager)", sweep), ("old vs new", compared)):
        if columns:
            print(f"\n{title}\n{table(columns)}")
    if args.output:
        args.output.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
