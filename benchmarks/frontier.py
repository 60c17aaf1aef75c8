"""The fidelity frontier: how many JPEG bytes each method saves, and what it costs the pictures (run by hand).

    python benchmarks/frontier.py                                  # every method below, then the table and plot
    python benchmarks/frontier.py --methods ddpo ddpo-kl1           # some of them (finished runs are reused)
    python benchmarks/frontier.py --method "mine=--kl-coef 3 --learning-rate 1e-5"   # any ddpo-train flags

A method is a name plus `ddpo-train` flags on top of `--preset tiny --kl-coef 0 --epochs 8` (another trainer adds
a row with its own flags, e.g. `--algorithm nft`). Every method gets the same 1,024 reward queries.
Per epoch, the trainer measures 64 fixed seeds on its own rollout sampler against the base's images from the
same noise (metrics.jsonl: jpeg_change_vs_base, ssim_to_base, diversity_vs_base, colour_spread_vs_base). At the
end, the final model is measured with stock diffusers pipelines on 64 seeds, both models given the same noise:
`DDIMPipeline` with the rollout's steps and eta, and `DDPMPipeline`'s default 1000 steps. The reference is a
Gaussian blur of the base's own samples (radius 0.5-3): a fine-tune that saves fewer bytes than a blur at the
same SSIM has learned less than a one-line filter.

Prints one table, writes `frontier.png` (cut against SSIM, one curve per method, one point per epoch) and
`frontier.json` into the output folder.
"""

from __future__ import annotations

import argparse
import json
import shlex
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from ddpo_hub.model_card.figures import cut_vs_ssim
from ddpo_hub.training.cli import parse_config, trainer_class
from ddpo_hub.training.evaluate import ROLLOUT, EvalSampler, run_evaluation
from ddpo_hub.training.fidelity import fidelity_to_base
from ddpo_hub.training.jpeg import jpeg_sizes
from ddpo_hub.training.run_folder import latest_checkpoint, load_run

METHODS: dict[str, str] = {
    "ddpo": "",  # the tiny preset's DDPO settings without the KL leash (the preset before the frontier)
    "ddpo-kl0.1": "--kl-coef 0.1",
    "ddpo-kl1": "--kl-coef 1",
    # Only the later steps (t <= 400 of 1000: std <= 0.42) learn: they set grain and detail, not composition.
    "ddpo-late": "--max-train-std 0.42",
    # DiffusionNFT (training/nft.py) on the same budget: deterministic (eta 0) or stochastic rollouts, +- KL.
    "nft-eta0": "--algorithm nft --eta 0 --learning-rate 3e-5",
    "nft-eta1": "--algorithm nft --eta 1 --learning-rate 3e-5",
    "nft-eta0-kl": "--algorithm nft --eta 0 --learning-rate 3e-5 --kl-coef 1",
}
BLUR_RADII = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0)
NUM_IMAGES = 64
EPOCHS = 8
"""Every method gets 8 epochs of the preset's 128 samples: 1,024 reward queries."""
TARGET = {"cut": 0.30, "ssim_to_base": 0.55, "diversity_vs_base": 0.90, "colour_spread_vs_base": 0.90}
FIRST_REACH = {"cut": 0.25, "ssim_to_base": 0.55}
"""The issue's milestone: reward queries until a method first stands at a 25% cut with SSIM >= 0.55."""


def train_method(name: str, flags: str, output_dir: Path) -> Path:
    """Run (or reuse, when finished) `--preset tiny` with `flags`, measuring 64 fixed seeds every epoch."""
    run_dir = output_dir / name
    argv = [
        "--preset",
        "tiny",
        "--kl-coef",
        "0",
        "--epochs",
        str(EPOCHS),
        *shlex.split(flags),
        "--output-dir",
        str(run_dir),
    ]
    argv += ["--fidelity-num-images", str(NUM_IMAGES), "--eval-num-images", "0"]
    config = parse_config(argv)
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is not None and load_run(run_dir).epochs_completed >= config.epochs:
        print(f"{name}: reusing the finished run in {run_dir}", flush=True)
        return run_dir
    if checkpoint is not None:
        config = parse_config([*argv, "--resume", "latest"])
    print(f"==> {name}: ddpo-train {' '.join(argv)}", flush=True)
    trainer_class(config.algorithm)(config).train()
    return run_dir


def stock_samplers(run_dir: Path) -> list[EvalSampler]:
    config = load_run(run_dir).config
    return [
        EvalSampler(ROLLOUT, config["scheduler"].upper(), config["num_steps"], config["eta"]),
        EvalSampler("ddpm", "DDPM", 1000),
    ]


def sampler_id(sampler: EvalSampler) -> str:
    return f"{sampler.scheduler}-{sampler.num_inference_steps}-eta{sampler.eta}"


class BaseSamples:
    """The base model's stock-pipeline samples per sampler, drawn once and kept as PNGs (lossless) for reruns."""

    def __init__(self, base_path: str, folder: Path):
        self.base_path, self.folder = base_path, folder

    def get(self, sampler: EvalSampler) -> list[Image.Image]:
        folder = self.folder / sampler_id(sampler)
        paths = [folder / f"seed_{seed:04d}.png" for seed in range(NUM_IMAGES)]
        if not all(path.is_file() for path in paths):
            _, samples = run_evaluation(self.base_path, None, schedulers=[sampler], num_images=NUM_IMAGES)
            folder.mkdir(parents=True, exist_ok=True)
            for image, path in zip(samples[sampler.key]["model"], paths, strict=True):
                image.save(path)
        return [Image.open(path).convert("RGB") for path in paths]


def final_measurements(run_dir: Path, base: BaseSamples) -> dict[str, dict[str, float]]:
    """The final model against the base under stock pipelines: its own rollout sampler and DDPM 1000.

    Kept in the run folder (`frontier_final.json`, by sampler), so a rerun measures only what is new.
    """
    cache_path = run_dir / "frontier_final.json"
    cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    missing = [sampler for sampler in stock_samplers(run_dir) if sampler_id(sampler) not in cache]
    if missing:
        _, samples = run_evaluation(str(run_dir), None, schedulers=missing, num_images=NUM_IMAGES)
        for sampler in missing:
            cache[sampler_id(sampler)] = measure(samples[sampler.key]["model"], base.get(sampler))
        cache_path.write_text(json.dumps(cache, indent=2) + "\n")
    return {sampler.key: cache[sampler_id(sampler)] for sampler in stock_samplers(run_dir)}


def blurred(images: list[Image.Image], radius: float) -> list[Image.Image]:
    return [image.filter(ImageFilter.GaussianBlur(radius)) for image in images]


def measure(images: list[Image.Image], base: list[Image.Image]) -> dict[str, float]:
    sizes, base_sizes = np.mean(jpeg_sizes(images)), np.mean(jpeg_sizes(base))
    return {"cut": float(1 - sizes / base_sizes), **fidelity_to_base(images, base)}


def reaches(point: dict, goal: dict) -> bool:
    return all(point[key] >= value for key, value in goal.items() if key in point)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="*", default=list(METHODS), help=f"of {', '.join(METHODS)}")
    parser.add_argument("--method", action="append", default=[], metavar="NAME=FLAGS", help="add a method")
    parser.add_argument("--output-dir", type=Path, default=Path("runs/frontier"))
    parser.add_argument("--no-train", action="store_true", help="only tabulate runs that already exist")
    args = parser.parse_args()
    methods = {name: METHODS[name] for name in args.methods}
    methods |= dict(item.split("=", 1) for item in args.method)
    args.output_dir.mkdir(parents=True, exist_ok=True)

    runs = {}
    for name, flags in methods.items():
        started = time.perf_counter()
        run_dir = args.output_dir / name if args.no_train else train_method(name, flags, args.output_dir)
        runs[name] = (run_dir, time.perf_counter() - started)

    base_path = load_run(next(iter(runs.values()))[0]).base_model_path
    base_samples = BaseSamples(base_path, args.output_dir / "base-samples")

    table, curves = [], {}
    for name, (run_dir, _) in runs.items():
        run = load_run(run_dir)
        per_epoch = [
            {
                "epoch": row["epoch"],
                "reward_queries": row["epoch"] * run.config["num_samples"],
                "cut": -row["jpeg_change_vs_base"],
                **{key: row[key] for key in ("ssim_to_base", "diversity_vs_base", "colour_spread_vs_base")},
                "kl_to_base": row.get("kl_to_base", float("nan")),  # none for deterministic rollouts
            }
            for row in run.metrics
        ]
        curves[name] = [(1.0, 0.0)] + [(row["ssim_to_base"], 100 * row["cut"]) for row in per_epoch]
        first_reach = next((row["reward_queries"] for row in per_epoch if reaches(row, FIRST_REACH)), None)
        table.append(
            {
                "method": name,
                "flags": methods[name],
                "reward_queries": per_epoch[-1]["reward_queries"],
                "wall_seconds": sum(row["seconds"] for row in run.metrics),
                "first_reach_25pct_ssim055": first_reach,
                "final": final_measurements(run_dir, base_samples),
                "per_epoch": per_epoch,
            }
        )
    # The blur reference: the base's own samples from the preset's sampler (DDIM 40, eta 1) and DDPM 1000.
    references = {ROLLOUT: EvalSampler(ROLLOUT, "DDIM", 40, 1.0), "ddpm": EvalSampler("ddpm", "DDPM", 1000)}
    blur_rows = []
    for radius in BLUR_RADII:
        final = {
            key: measure(blurred(base_samples.get(sampler), radius), base_samples.get(sampler))
            for key, sampler in references.items()
        }
        blur_rows.append({"method": f"blur r={radius:g}", "final": final})
    curves["blur (base)"] = [(1.0, 0.0)] + [
        (row["final"][ROLLOUT]["ssim_to_base"], 100 * row["final"][ROLLOUT]["cut"]) for row in blur_rows
    ]

    header = (
        f"{'method':<16} {'queries':>7} {'wall':>7} {'cut rollout':>11} {'cut DDPM1000':>12} "
        f"{'SSIM':>5} {'divers.':>7} {'colour':>6} {'SSIM(DDPM)':>10} {'1st 25%/0.55':>12} {'target':>6}"
    )
    print("\n" + header + "\n" + "-" * len(header))
    for row in [*table, *blur_rows]:
        rollout, ddpm = row["final"][ROLLOUT], row["final"]["ddpm"]
        hit = reaches(rollout, TARGET) and reaches(ddpm, {"cut": TARGET["cut"]})
        queries = row.get("reward_queries", "-")
        wall = f"{row['wall_seconds']:.0f}s" if "wall_seconds" in row else "-"
        first_reach = row.get("first_reach_25pct_ssim055", "-") if "per_epoch" in row else "-"
        print(
            f"{row['method']:<16} {queries!s:>7} {wall:>7} {rollout['cut']:>11.1%} {ddpm['cut']:>12.1%} "
            f"{rollout['ssim_to_base']:>5.2f} {rollout['diversity_vs_base']:>7.2f} "
            f"{rollout['colour_spread_vs_base']:>6.2f} {ddpm['ssim_to_base']:>10.2f} {first_reach!s:>12} "
            f"{'yes' if hit else 'no':>6}"
        )
    for row in table:
        print(f"\n{row['method']} per epoch (64 fixed seeds, rollout sampler, same noise as the base):")
        for point in row["per_epoch"]:
            print(
                f"  epoch {point['epoch']:>2} ({point['reward_queries']:>5} queries): cut {point['cut']:6.1%}, "
                f"SSIM {point['ssim_to_base']:.2f}, diversity {point['diversity_vs_base']:.2f}, "
                f"colour spread {point['colour_spread_vs_base']:.2f}, KL to base {point['kl_to_base']:.3g}"
            )
    cut_vs_ssim(curves, target=(TARGET["ssim_to_base"], 100 * TARGET["cut"])).save(args.output_dir / "frontier.png")
    (args.output_dir / "frontier.json").write_text(json.dumps({"methods": table, "blur": blur_rows}, indent=2) + "\n")
    print(f"\nWrote {args.output_dir / 'frontier.png'} and {args.output_dir / 'frontier.json'}")


if __name__ == "__main__":
    main()
