"""Which `tiny` settings cut the JPEG size most for the compute `make demo` can spend (run by hand).

    python benchmarks/tiny_sweep.py --output-dir runs/sweep --jobs 8 [--only preset lora-1e-3]

Runs each candidate below as its own `python -m training --preset tiny ...` process, several at once,
then samples the 64 fixed-seed images of `learning.py` from each result with the sampler DDPO trained
and prints their mean JPEG bytes against the base. `cost` counts UNet passes (a backward counts as two
forwards) relative to the preset, so candidates compare at equal CPU time; `make demo` has room for ~1.2x.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from learning import training_sampler_sizes

from ddpo_hub.training.cli import parse_config
from ddpo_hub.training.config import TrainConfig
from ddpo_hub.training.run_folder import read_config, read_metrics

EARLIER = ["--num-samples", "64", "--epochs", "20", "--gradient-accumulation-steps", "2", "--timestep-fraction", "1"]
"""The `tiny` preset before this sweep (20 epochs of 64 samples, all timesteps); most candidates vary it."""

CANDIDATES: dict[str, list[str]] = {
    "preset": [],
    "earlier-preset": EARLIER,
    "lr-1e-5": [*EARLIER, "--learning-rate", "1e-5"],
    "lr-1e-4": [*EARLIER, "--learning-rate", "1e-4"],
    "accum-1": [*EARLIER, "--gradient-accumulation-steps", "1"],
    "inner-2": [*EARLIER, "--num-inner-epochs", "2"],
    "half-timesteps-32ep": [*EARLIER, "--timestep-fraction", "0.5", "--epochs", "32"],
    "stat-tracking": [*EARLIER, "--stat-tracking"],
    "samples-128-10ep": [*EARLIER, "--num-samples", "128", "--epochs", "10", "--gradient-accumulation-steps", "4"],
    "adam-eps-1e-6-lr-1e-4": [*EARLIER, "--adam-epsilon", "1e-6", "--learning-rate", "1e-4"],
    "adam-eps-1e-5-lr-3e-4": [*EARLIER, "--adam-epsilon", "1e-5", "--learning-rate", "3e-4"],
    "lora-3e-4": [*EARLIER, "--use-lora", "--learning-rate", "3e-4"],
    "lora-1e-3": [*EARLIER, "--use-lora", "--learning-rate", "1e-3"],
    "lora-3e-3": [*EARLIER, "--use-lora", "--learning-rate", "3e-3"],
    "lora-1e-3-accum-1": [*EARLIER, "--use-lora", "--learning-rate", "1e-3", "--gradient-accumulation-steps", "1"],
    "epochs-40": [*EARLIER, "--epochs", "40"],
    "epochs-40-lr-1e-4": [*EARLIER, "--epochs", "40", "--learning-rate", "1e-4"],
    "preset-lr-5e-5": ["--learning-rate", "5e-5"],
    "eta-0.5": ["--eta", "0.5"],
    "eta-0.3": ["--eta", "0.3"],
    "all-steps": ["--min-train-std", "0"],
    "min-std-0.05": ["--min-train-std", "0.05"],
    "min-std-0.3": ["--min-train-std", "0.3"],
    "min-std-0.05-lr-5e-5": ["--min-train-std", "0.05", "--learning-rate", "5e-5"],
    "min-std-0.05-lr-1e-4": ["--min-train-std", "0.05", "--learning-rate", "1e-4"],
    "preset-lr-1e-4": ["--learning-rate", "1e-4"],
    "epochs-16": ["--epochs", "16"],
    "all-timesteps": ["--timestep-fraction", "1"],
    "samples-256-8ep": ["--num-samples", "256", "--epochs", "8", "--gradient-accumulation-steps", "8"],
}
"""Later flags win, so each candidate is the earlier preset (or the current one) with its own changes."""


def unet_passes(config: TrainConfig) -> int:
    """Forward-pass equivalents of a run: sampling steps plus 3x each trained step (forward + backward)."""
    trained = max(1, int(config.timestep_fraction * (config.num_steps - 1))) * config.num_inner_epochs
    return config.epochs * config.num_samples * (config.num_steps + 3 * trained)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", type=Path, default=Path("runs/sweep"))
    parser.add_argument("--jobs", type=int, default=2, help="runs at once")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--time-limit", type=float, help="stop runs still going after this many seconds")
    parser.add_argument("--only", nargs="+", choices=sorted(CANDIDATES), help="run these candidates only")
    args = parser.parse_args()
    names = args.only or list(CANDIDATES)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONUNBUFFERED": "1"}

    running: dict[str, tuple[subprocess.Popen, float]] = {}
    wall: dict[str, float] = {}
    queue = list(names)
    deadline = time.time() + args.time_limit if args.time_limit else float("inf")
    while queue or running:
        if time.time() > deadline:
            for name, (process, _) in running.items():
                process.terminate()
                process.wait()
                print(f"{name} stopped at the time limit; its latest epoch is evaluated")
            break
        while queue and len(running) < args.jobs:
            name = queue.pop(0)
            run_dir = args.output_dir / name
            run_dir.mkdir(parents=True, exist_ok=True)
            command = [sys.executable, "-m", "training", "--preset", "tiny", "--output-dir", str(run_dir)]
            command += ["--eval-num-images", "0", *CANDIDATES[name]]
            log = (run_dir / "train.log").open("w")
            running[name] = (subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env), time.time())
        time.sleep(1)
        for name, (process, started) in list(running.items()):
            if process.poll() is not None:
                wall[name] = time.time() - started
                del running[name]
                if process.returncode:
                    print(f"{name} failed ({process.returncode}); see {args.output_dir / name / 'train.log'}")

    preset = parse_config(["--preset", "tiny"])
    base_means: dict[tuple, float] = {}
    print(
        "| candidate | flags | cost | epochs | wall (s) | last epoch's samples (B) "
        "| 64 fixed seeds, base (B) | 64 fixed seeds (B) | vs base |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name in names:
        run_dir = args.output_dir / name
        if not (run_dir / "model_index.json").exists():
            continue
        config = read_config(run_dir)
        try:
            mean = training_sampler_sizes(str(run_dir), config, 64).mean()
        except (OSError, ValueError) as error:  # stopped while saving (ModelLoadError is a ValueError)
            print(f"| {name} | could not be evaluated: {error} |")
            continue
        sampler = (config.base_model, config.scheduler, config.num_steps, config.eta)
        if sampler not in base_means:  # the base, sampled as this candidate samples (eta and steps may differ)
            base_means[sampler] = training_sampler_sizes(config.base_model, config, 64).mean()
        base_mean = base_means[sampler]
        last = read_metrics(run_dir)[-1]
        cost = unet_passes(config) / unet_passes(preset)
        flags = " ".join(
            CANDIDATES[name][len(EARLIER) :] if CANDIDATES[name][: len(EARLIER)] == EARLIER else CANDIDATES[name]
        )
        print(
            f"| {name} | {flags} | {cost:.2f}x | {last['epoch']}/{config.epochs} | {wall.get(name, 0):.0f} "
            f"| {last['jpeg_bytes_mean']:.0f} | {base_mean:.0f} | {mean:.0f} "
            f"| {mean / base_mean - 1:+.1%} |"
        )


if __name__ == "__main__":
    main()
