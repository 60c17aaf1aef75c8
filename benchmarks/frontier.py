"""The fidelity frontier: how many JPEG bytes each method saves, and what it costs the pictures (run by hand).

    python benchmarks/frontier.py                                  # every method below, then the table and plot
    python benchmarks/frontier.py --methods ddpo ddpo-kl1           # some of them (finished runs are reused)
    python benchmarks/frontier.py --method "mine=--kl-coef 3 --learning-rate 1e-5"   # any ddpo-train flags

A method is a name plus `ddpo-train` flags on top of `--preset tiny --kl-coef 0` (another trainer adds a row with
its own flags, e.g. `--algorithm nft`). Every method gets the same reward queries (`--query-budget`, by default
`QUERY_BUDGET`: as many epochs as the preset's samples per epoch allow). Per epoch, the trainer measures 64 fixed
seeds on its own rollout sampler against the base's images from the same noise (metrics.jsonl: jpeg_change_vs_base
and the fidelity figures of `training/fidelity.py`, the subject judge's among them where the base ships one). At the
end, the final model is measured with stock diffusers pipelines, both models given the same noise: `DDIMPipeline`
with the rollout's steps and eta and with 50 steps at eta 0 (64 seeds each), and `DDPMPipeline`'s default 1000 steps
(`--ddpm-images` seeds, 64 by default). The reference is a Gaussian blur of the base's own samples (radius 0.5-3): a
fine-tune that saves fewer bytes than a blur at the same cut has learned less than a one-line filter, unless it
keeps what the blur loses (the subject, in the judge's eyes and KID; edge sharpness).

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
from ddpo_hub.training.cli import parse_config
from ddpo_hub.training.evaluate import ROLLOUT, EvalSampler, run_evaluation
from ddpo_hub.training.fidelity import describe, fidelity_to_base
from ddpo_hub.training.jpeg import jpeg_sizes
from ddpo_hub.training.judge import SubjectJudge, load_judge
from ddpo_hub.training.run_folder import latest_checkpoint, load_run
from ddpo_hub.training.workflow import trainer_class

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
    # A named, optional reward (benchmarks/frontier_rewards.py): the JPEG reward plus a term for edge sharpness.
    "ddpo-keep-edges": "--reward frontier_rewards:jpeg_compressibility_keep_edges",
    # Another (same file): the JPEG reward plus the log-probability that the base's judge sees a subject.
    "ddpo-keep-subject": "--reward frontier_rewards:jpeg_compressibility_keep_subject",
    # Only the last stochastic steps learn (std 0.1-0.35 of DDIM 20: t = 250 down to 100), every one of them.
    "ddpo-grain": "--min-train-std 0.1 --max-train-std 0.35 --timestep-fraction 1",
    # Low-rank adapters (rank 8) instead of every weight: a smaller, lower-dimensional move per update.
    "ddpo-lora": "--use-lora --learning-rate 3e-4",
}
BLUR_RADII = (0.5, 0.75, 1.0, 1.5, 2.0, 3.0)
NUM_IMAGES = 64
QUERY_BUDGET = 2048
"""Reward queries per method: epochs x samples per epoch."""
DDIM_ETA0 = EvalSampler("ddim", "DDIM", 50, 0.0)
"""Where users sample (the Space's DDIM): deterministic, 50 steps."""
TARGET = {"cut": 0.25, "subject_kept": 0.90, "diversity_vs_base": 0.90}
"""On the rollout sampler: a quarter of the bytes cut, the subject kept on 90% of the seeds, diversity kept."""
TARGET_DDIM50 = 0.15
"""And a 15% cut where users sample (DDIM 50, eta 0)."""


def train_method(name: str, flags: str, output_dir: Path, query_budget: int = QUERY_BUDGET) -> Path:
    """Run (or reuse, when finished) `--preset tiny` with `flags` for `query_budget` reward queries, measuring
    64 fixed seeds every epoch."""
    run_dir = output_dir / name
    argv = ["--preset", "tiny", "--kl-coef", "0", *shlex.split(flags)]
    epochs = query_budget // parse_config(argv).num_samples
    argv += ["--epochs", str(epochs), "--output-dir", str(run_dir)]
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
        DDIM_ETA0,
        EvalSampler("ddpm", "DDPM", 1000),
    ]


def sampler_id(sampler: EvalSampler) -> str:
    return f"{sampler.scheduler}-{sampler.num_inference_steps}-eta{sampler.eta}"


def num_images(sampler: EvalSampler, ddpm_images: int) -> int:
    return ddpm_images if sampler.scheduler == "DDPM" else NUM_IMAGES


class BaseSamples:
    """The base model's stock-pipeline samples per sampler, drawn once and kept as PNGs (lossless) for reruns."""

    def __init__(self, base_path: str, folder: Path, ddpm_images: int):
        self.base_path, self.folder, self.ddpm_images = base_path, folder, ddpm_images
        self.judge = load_judge(base_path)

    def get(self, sampler: EvalSampler) -> list[Image.Image]:
        folder = self.folder / sampler_id(sampler)
        count = num_images(sampler, self.ddpm_images)
        paths = [folder / f"seed_{seed:04d}.png" for seed in range(count)]
        if not all(path.is_file() for path in paths):
            _, samples = run_evaluation(self.base_path, None, schedulers=[sampler], num_images=count)
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
    for sampler in missing:
        count = num_images(sampler, base.ddpm_images)
        _, samples = run_evaluation(str(run_dir), None, schedulers=[sampler], num_images=count)
        cache[sampler_id(sampler)] = measure(samples[sampler.key]["model"], base.get(sampler), base.judge)
        cache_path.write_text(json.dumps(cache, indent=2) + "\n")
    return {sampler.key: cache[sampler_id(sampler)] for sampler in stock_samplers(run_dir)}


def blurred(images: list[Image.Image], radius: float) -> list[Image.Image]:
    return [image.filter(ImageFilter.GaussianBlur(radius)) for image in images]


def measure(images: list[Image.Image], base: list[Image.Image], judge: SubjectJudge | None) -> dict[str, float]:
    sizes, base_sizes = np.mean(jpeg_sizes(images)), np.mean(jpeg_sizes(base))
    return {"cut": float(1 - sizes / base_sizes), **fidelity_to_base(images, base, judge)}


def reaches(point: dict, goal: dict) -> bool:
    return all(point[key] >= value for key, value in goal.items() if key in point)


def blur_at(cut: float, blur_rows: list[dict], key: str, sampler: str = ROLLOUT) -> float:
    """The blur reference's `key` at the same cut: linear between the two radii whose cuts bracket it."""
    points = sorted((row["final"][sampler]["cut"], row["final"][sampler][key]) for row in blur_rows)
    return float(np.interp(cut, [c for c, _ in points], [v for _, v in points]))


def beats_blur(point: dict, blur_rows: list[dict]) -> bool:
    """Lower KID to the base and crisper edges than a blur of the base's samples that saves as many bytes."""
    if "kid_to_base" not in point:
        return point["edge_sharpness_vs_base"] > blur_at(point["cut"], blur_rows, "edge_sharpness_vs_base")
    return point["kid_to_base"] < blur_at(point["cut"], blur_rows, "kid_to_base") and point[
        "edge_sharpness_vs_base"
    ] > blur_at(point["cut"], blur_rows, "edge_sharpness_vs_base")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="*", default=list(METHODS), help=f"of {', '.join(METHODS)}")
    parser.add_argument("--method", action="append", default=[], metavar="NAME=FLAGS", help="add a method")
    parser.add_argument("--output-dir", type=Path, default=Path("runs/frontier"))
    parser.add_argument("--no-train", action="store_true", help="only tabulate runs that already exist")
    parser.add_argument("--query-budget", type=int, default=QUERY_BUDGET, help="reward queries per method")
    parser.add_argument("--ddpm-images", type=int, default=NUM_IMAGES, help="seeds for DDPM 1000 (the costly one)")
    args = parser.parse_args()
    methods = {name: METHODS[name] for name in args.methods}
    methods |= dict(item.split("=", 1) for item in args.method)
    args.output_dir.mkdir(parents=True, exist_ok=True)

    runs = {}
    for name, flags in methods.items():
        started = time.perf_counter()
        run_dir = (
            args.output_dir / name if args.no_train else train_method(name, flags, args.output_dir, args.query_budget)
        )
        runs[name] = (run_dir, time.perf_counter() - started)

    base_path = load_run(next(iter(runs.values()))[0]).base_model_path
    base_samples = BaseSamples(base_path, args.output_dir / "base-samples", args.ddpm_images)
    judge = base_samples.judge
    figure_keys = ("ssim_to_base", "diversity_vs_base", "colour_spread_vs_base", "edge_sharpness_vs_base")
    figure_keys += ("subject_kept", "subject_rate", "base_subject_rate", "kid_to_base") if judge is not None else ()

    table, curves = [], {}
    for name, (run_dir, _) in runs.items():
        run = load_run(run_dir)
        per_epoch = [
            {
                "epoch": row["epoch"],
                "reward_queries": row["epoch"] * run.config["num_samples"],
                "cut": -row["jpeg_change_vs_base"],
                **{key: row.get(key, float("nan")) for key in figure_keys},
                "kl_to_base": row.get("kl_to_base", float("nan")),  # none for deterministic rollouts
            }
            for row in run.metrics
        ]
        curves[name] = [(1.0, 0.0)] + [(row["ssim_to_base"], 100 * row["cut"]) for row in per_epoch]
        table.append(
            {
                "method": name,
                "flags": methods[name],
                "reward_queries": per_epoch[-1]["reward_queries"],
                "wall_seconds": sum(row["seconds"] for row in run.metrics),
                "final": final_measurements(run_dir, base_samples),
                "per_epoch": per_epoch,
            }
        )
    # The blur reference: the base's own samples from each stock sampler, blurred.
    references = {sampler.key: sampler for sampler in stock_samplers(next(iter(runs.values()))[0])}
    blur_rows = []
    for radius in BLUR_RADII:
        final = {
            key: measure(blurred(base_samples.get(sampler), radius), base_samples.get(sampler), judge)
            for key, sampler in references.items()
        }
        blur_rows.append({"method": f"blur r={radius:g}", "final": final})
    curves["blur (base)"] = [(1.0, 0.0)] + [
        (row["final"][ROLLOUT]["ssim_to_base"], 100 * row["final"][ROLLOUT]["cut"]) for row in blur_rows
    ]

    subject = judge is not None
    header = (
        f"{'method':<16} {'queries':>7} {'wall':>6} {'cut roll.':>9} {'DDIM50':>6} {'DDPM':>6} {'SSIM':>5} "
        f"{'divers.':>7} {'colour':>6} {'edges':>5}"
        + (f" {'kept':>5} {'rate':>5} {'KID':>6} {'kept50':>6}" if subject else "")
        + f" {'>blur':>5} {'target':>6}"
    )
    print("\n" + header + "\n" + "-" * len(header))
    for row in [*table, *blur_rows]:
        rollout, ddim, ddpm = (row["final"][key] for key in (ROLLOUT, "ddim", "ddpm"))
        queries = row.get("reward_queries", "-")
        wall = f"{row['wall_seconds']:.0f}s" if "wall_seconds" in row else "-"
        print(
            f"{row['method']:<16} {queries!s:>7} {wall:>6} {rollout['cut']:>9.1%} {ddim['cut']:>6.1%} "
            f"{ddpm['cut']:>6.1%} {rollout['ssim_to_base']:>5.2f} {rollout['diversity_vs_base']:>7.2f} "
            f"{rollout['colour_spread_vs_base']:>6.2f} {rollout['edge_sharpness_vs_base']:>5.2f}"
            + (
                f" {rollout['subject_kept']:>5.2f} {rollout['subject_rate']:>5.2f} {rollout['kid_to_base']:>6.3f}"
                f" {ddim['subject_kept']:>6.2f}"
                if subject
                else ""
            )
            + f" {'yes' if beats_blur(rollout, blur_rows) else 'no':>5}"
            + f" {'yes' if reaches(rollout, TARGET) and ddim['cut'] >= TARGET_DDIM50 else 'no':>6}"
        )
    for row in table:
        print(f"\n{row['method']} per epoch (64 fixed seeds, rollout sampler, same noise as the base):")
        for point in row["per_epoch"]:
            print(
                f"  epoch {point['epoch']:>2} ({point['reward_queries']:>5} queries): cut {point['cut']:6.1%}, "
                f"{describe(point)}, KL to base {point['kl_to_base']:.3g}"
            )
    cut_vs_ssim(curves).save(args.output_dir / "frontier.png")
    (args.output_dir / "frontier.json").write_text(json.dumps({"methods": table, "blur": blur_rows}, indent=2) + "\n")
    print(f"\nWrote {args.output_dir / 'frontier.png'} and {args.output_dir / 'frontier.json'}")


if __name__ == "__main__":
    main()
