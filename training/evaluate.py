"""`ddpo-eval`: how many JPEG bytes a model's samples take, next to its base model's, per scheduler.

Every image i is generated from its own CPU generator seeded `seed + i`, for the fine-tuned model and for
its base alike, so image i of both models starts from the same noise and the two sets pair up picture by
picture. Images are sampled `batch_size` at a time (16: batched forwards are several times faster); with
`--batch-size 1` each is sampled alone, exactly as the Space draws it (`pipelines.sample_image`), so a seed
gives the same picture in both on the same device, precision and thread count (in a batch it may differ by a
byte or so of JPEG). Bytes are measured with `training.jpeg`, the function the
reward uses. The JSON written here is what the model card's results table and model-index are built from:

    {
      "schema_version": 1,
      "model": "runs/celebahq", "model_revision": null, "base": "google/ddpm-celebahq-256" | null,
      "num_images": 64, "seed": 0, "seeds": [0, ..., 63],
      "jpeg": {"quality": 95, "subsampling": "4:2:0"},
      "device": "cuda", "versions": {"torch": ..., "diffusers": ..., "python": ...},
      "schedulers": {
        "ddim": {
          "name": "DDIM", "num_inference_steps": 50,
          "model": {"mean": 8412.3, "median": 8390.0, "std": 512.1, "min": 7001, "max": 9950,
                    "jpeg_bytes": [8123, ...]},          # per image, in seed order
          "base": {...same keys...},                     # absent when evaluated without a base
          "mean_change": -0.37,                          # model mean / base mean - 1 (with a base only)
          "fidelity": {"ssim_to_base": 0.71, "diversity_vs_base": 0.95,   # same seeds, with a base only
                       "colour_spread_vs_base": 0.98,                     # (see training/fidelity.py)
                       "edge_sharpness_vs_base": 0.91,
                       "subject_rate": 0.92, "base_subject_rate": 0.95,   # these four only where the
                       "subject_kept": 0.94, "kid_to_base": 0.012},       # base ships a subject judge
          "grid": {"path": "eval_images/ddim.png", "rows": ["base", "model"], "seeds": [0, ..., 7]}
        },                                               # "grid" is relative to the JSON's folder
        "ddpm": {...}, "pndm": {...}
      },
      "image_size": 256
    }
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import diffusers
import torch
from huggingface_hub.errors import HfHubHTTPError
from PIL import Image
from tqdm.auto import tqdm

from . import jpeg
from .extras import require_extra
from .fidelity import describe, fidelity_to_base
from .humanize import duration_text
from .judge import load_judge
from .pipelines import (
    ModelLoadError,
    build_pipeline,
    display_name,
    fetch_pipeline_folder,
    hub_repo_id,
    load_unet_and_scheduler_config,
    read_base_model,
    sample_images,
    scheduler_choice,
)
from .publish.redaction import scrub_token
from .run_folder import (
    CONFIG_NAME,
    EVAL_IMAGES_DIR,
    EVAL_RESULTS_NAME,
    RunFolderError,
    image_grid,
    load_run,
)

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
ROLLOUT = "rollout"
"""`--schedulers rollout`: the sampler a run trained on (its scheduler, `--num-steps`, `--eta`) as a stock pipeline."""
DEFAULT_SCHEDULERS = ("ddpm", "ddim", "pndm")
"""What `ddpo-eval` compares by default; a run's end-of-run evaluation uses `DDPOConfig.eval_schedulers`."""
GRID_COLUMNS = 8
"""Seeds shown in each per-scheduler before/after grid (the first ones)."""

Samples = dict[str, dict[str, list[Image.Image]]]
"""Generated images by scheduler key, then by role ("model" or "base"), in seed order."""


def parse_num_inference_steps(text: str | None, schedulers: Sequence[str]) -> dict[str, int]:
    """Parse `--num-inference-steps`: one int for every scheduler, or `ddim=50,pndm=50,ddpm=1000`."""
    if not text:
        return {}
    text = text.strip()
    if text.isdigit():
        return {name.lower(): int(text) for name in schedulers}
    steps = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        if not sep or not value.strip().isdigit():
            raise ValueError(f"Bad --num-inference-steps item {item!r}: expected NAME=INT, e.g. ddim=50.")
        name = name.strip().lower()
        scheduler_choice(name)  # a clear error for an unknown name
        steps[name] = int(value)
    return steps


@dataclass(frozen=True)
class EvalSampler:
    """One evaluated sampler: a stock diffusers scheduler, its step count and (DDIM only) eta."""

    key: str
    """Key in `eval_results.json`: ddpm, ddim, pndm or rollout."""
    scheduler: str
    """DDPM, DDIM or PNDM."""
    num_inference_steps: int
    eta: float | None = None

    @property
    def name(self) -> str:
        if self.key == ROLLOUT:
            return f"{self.scheduler}" + (f", eta {self.eta:g}" if self.eta is not None else "") + " (trained)"
        return self.scheduler


def resolve_samplers(
    schedulers: Sequence[str],
    num_inference_steps: dict[str, int] | None = None,
    *,
    rollout: tuple[str, int, float] | None = None,
) -> list[EvalSampler]:
    """The evaluated samplers: steps as given or the scheduler's default, range-checked.

    `rollout` is the run's (scheduler, num_steps, eta), needed for the `rollout` entry. Steps for
    schedulers that are not evaluated are ignored (one `--num-inference-steps` for any `--schedulers`),
    but unknown scheduler names are errors.
    """
    given = {}
    for name, steps in (num_inference_steps or {}).items():
        scheduler_choice(name)  # an unknown name is an error, not silently ignored
        given[name.lower()] = steps
    samplers = []
    for key in dict.fromkeys(name.strip().lower() for name in schedulers):
        if key == ROLLOUT:
            if rollout is None:
                raise ValueError("'rollout' evaluates a run's own sampler: give a run folder as the model.")
            kind, steps, eta = rollout
            samplers.append(EvalSampler(ROLLOUT, kind.upper(), steps, eta if kind.lower() == "ddim" else None))
            continue
        choice = scheduler_choice(key)
        steps = given.get(key, choice.default_steps)
        if not choice.min_steps <= steps <= choice.max_steps:
            raise ValueError(
                f"{key} needs between {choice.min_steps} and {choice.max_steps} inference steps, got {steps}."
            )
        samplers.append(EvalSampler(key, key.upper(), steps))
    return samplers


def image_steps(samplers: Sequence[EvalSampler], num_images: int, num_models: int) -> int:
    """UNet evaluations of one image each that an evaluation costs: what its run time is proportional to."""
    return num_models * num_images * sum(sampler.num_inference_steps for sampler in samplers)


def byte_stats(sizes: Sequence[int]) -> dict:
    """Mean, median, population std, min and max of JPEG sizes, plus the per-image list in seed order."""
    return {
        "mean": statistics.fmean(sizes),
        "median": float(statistics.median(sizes)),
        "std": statistics.pstdev(sizes),
        "min": min(sizes),
        "max": max(sizes),
        "jpeg_bytes": list(sizes),
    }


def generate(
    pipeline: diffusers.DiffusionPipeline,
    *,
    seeds: Sequence[int],
    num_inference_steps: int,
    batch_size: int = 16,
    eta: float | None = None,
    progress: tqdm | None = None,
) -> list[Image.Image]:
    """Sample one image per seed, `batch_size` at a time, each from its own CPU generator (`sample_images`)."""
    images: list[Image.Image] = []
    for start in range(0, len(seeds), batch_size):
        chunk = seeds[start : start + batch_size]
        images.extend(sample_images(pipeline, chunk, num_inference_steps, eta=eta))
        if progress is not None:
            progress.update(len(chunk))
    return images


def run_evaluation(
    model: str,
    base: str | None,
    *,
    schedulers: Sequence[str] | Sequence[EvalSampler],
    num_images: int,
    seed: int = 0,
    num_inference_steps: dict[str, int] | None = None,
    batch_size: int = 16,
    device: str | None = None,
    revision: str | None = None,
) -> tuple[dict, Samples]:
    """JPEG byte statistics of `num_images` fixed-seed samples of `model` (and `base`), per scheduler.

    Returns the evaluation JSON (schema in the module docstring) and the images, for grids and the
    optional Hub dataset. `base=None` evaluates the model alone. Raises `ModelLoadError` for a model that
    cannot be loaded and `ValueError` for a bad scheduler name, step count or image count.
    """
    if num_images < 1:
        raise ValueError("num_images must be at least 1.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    if not schedulers:
        raise ValueError("Give at least one scheduler (ddpm, ddim, pndm).")
    if all(isinstance(sampler, EvalSampler) for sampler in schedulers):
        samplers = list(schedulers)
    else:
        samplers = resolve_samplers(schedulers, num_inference_steps, rollout=_run_sampler(model))
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    seeds = list(range(seed, seed + num_images))
    roles = {"model": (model, revision)} | ({"base": (base, None)} if base else {})

    results: dict = {
        "schema_version": SCHEMA_VERSION,
        "model": str(model),
        "model_revision": revision,
        "base": str(base) if base else None,
        "num_images": num_images,
        "seed": seed,
        "seeds": seeds,
        "jpeg": {"quality": jpeg.JPEG_QUALITY, "subsampling": jpeg.JPEG_SUBSAMPLING},
        "device": device,
        "versions": {
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "python": platform.python_version(),
        },
        "schedulers": {
            sampler.key: {"name": sampler.name, "num_inference_steps": sampler.num_inference_steps}
            | ({"eta": sampler.eta} if sampler.eta is not None else {})
            for sampler in samplers
        },
    }
    samples: Samples = {sampler.key: {} for sampler in samplers}
    progress = tqdm(total=len(roles) * len(samplers) * num_images, unit="img", desc="ddpo-eval")
    try:
        for role, (name, role_revision) in roles.items():
            unet, scheduler_config = load_unet_and_scheduler_config(name, revision=role_revision)
            unet = unet.to(device).eval()
            results.setdefault("image_size", unet.config.sample_size)
            for sampler in samplers:
                progress.set_description(f"{role} {sampler.key}")
                pipeline = build_pipeline(unet, scheduler_config, sampler.scheduler)
                pipeline.set_progress_bar_config(disable=True)
                images = generate(
                    pipeline,
                    seeds=seeds,
                    num_inference_steps=sampler.num_inference_steps,
                    batch_size=batch_size,
                    eta=sampler.eta,
                    progress=progress,
                )
                samples[sampler.key][role] = images
                results["schedulers"][sampler.key][role] = byte_stats(jpeg.jpeg_sizes(images))
            del unet
    finally:
        progress.close()

    judge = load_judge(fetch_pipeline_folder(base)) if base else None
    for key, entry in results["schedulers"].items():
        if "base" in entry:
            entry["mean_change"] = entry["model"]["mean"] / entry["base"]["mean"] - 1
            entry["fidelity"] = fidelity_to_base(samples[key]["model"], samples[key]["base"], judge)
    return results, samples


def save_grids(results: dict, samples: Samples, grid_dir: Path, *, relative_to: Path | None = None) -> None:
    """Write one base-over-fine-tuned grid per scheduler (first seeds) and record its path in `results`."""
    grid_dir.mkdir(parents=True, exist_ok=True)
    for key, by_role in samples.items():
        rows = [by_role[role][:GRID_COLUMNS] for role in ("base", "model") if role in by_role]
        path = grid_dir / f"{key}.png"
        image_grid([image for row in rows for image in row], columns=len(rows[0]), gap=2).save(path)
        results["schedulers"][key]["grid"] = {
            "path": (path.relative_to(relative_to) if relative_to else path).as_posix(),
            "rows": [role for role in ("base", "model") if role in by_role],
            "seeds": results["seeds"][:GRID_COLUMNS],
        }


def write_evaluation(results: dict, samples: Samples, output: Path, *, grids: bool = True) -> Path:
    """Write the evaluation JSON (and, beside it, the base-over-model grids the card shows)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    if grids:
        save_grids(results, samples, output.parent / EVAL_IMAGES_DIR, relative_to=output.parent)
    output.write_text(json.dumps(results, indent=2) + "\n")
    return output


def push_eval_dataset(
    results: dict,
    samples: Samples,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = False,
) -> str:
    """Push every evaluation image with its byte size as a Hub dataset; return the commit URL.

    Columns: `image` (PNG), `model` (the model id as given, a local folder by its name), `role`
    ("model" or "base"), `scheduler`, `num_inference_steps`, `seed`, `jpeg_bytes`.
    """
    require_extra("datasets", extra="dataset", feature="ddpo-eval --push-dataset")
    from datasets import Dataset, Features, Value
    from datasets import Image as ImageFeature

    names = {role: display_name(results[role]) if results[role] else None for role in ("model", "base")}
    columns: dict[str, list] = {
        key: [] for key in ("image", "model", "role", "scheduler", "num_inference_steps", "seed", "jpeg_bytes")
    }
    for key, by_role in samples.items():
        entry = results["schedulers"][key]
        for role, images in by_role.items():
            for seed, image, size in zip(results["seeds"], images, entry[role]["jpeg_bytes"], strict=True):
                columns["image"].append(image)
                columns["model"].append(names[role])
                columns["role"].append(role)
                columns["scheduler"].append(key)
                columns["num_inference_steps"].append(entry["num_inference_steps"])
                columns["seed"].append(seed)
                columns["jpeg_bytes"].append(size)
    features = Features(
        {
            "image": ImageFeature(),
            "model": Value("string"),
            "role": Value("string"),
            "scheduler": Value("string"),
            "num_inference_steps": Value("int32"),
            "seed": Value("int64"),
            "jpeg_bytes": Value("int64"),
        }
    )
    dataset = Dataset.from_dict(columns, features=features)
    info = dataset.push_to_hub(
        repo_id,
        token=token,
        private=private,
        commit_message=f"ddpo-eval: {results['num_images']} images per model and scheduler of {names['model']}",
    )
    return str(info.commit_url)


def fidelity_text(entry: dict) -> str:
    """`fidelity.describe` of one scheduler's evaluation entry (empty without a base)."""
    return describe(entry.get("fidelity") or {})


def _run_sampler(model: str) -> tuple[str, int, float] | None:
    """(scheduler, num_steps, eta) of the run folder `model` trained with; None for other models."""
    if hub_repo_id(model) or not (Path(model) / CONFIG_NAME).is_file():
        return None
    config = load_run(model).config
    return str(config.get("scheduler", "ddim")), int(config.get("num_steps", 20)), float(config.get("eta", 1.0))


def default_base_model(model: str, *, revision: str | None = None) -> str | None:
    """The base a model was fine-tuned from: its run folder's record, else its card's `base_model`."""
    if not hub_repo_id(model) and (Path(model) / CONFIG_NAME).is_file():
        try:
            base = load_run(model).base_model_path
        except RunFolderError:
            base = None
        if base:
            return str(base)
    return read_base_model(model, revision=revision)


def evaluate_run(
    run_dir: Path,
    *,
    schedulers: Sequence[str],
    num_images: int,
    num_inference_steps: str | None = None,
    seed: int = 0,
    device: str | None = None,
) -> Path:
    """The end-of-run evaluation: the run against its base, written as the run folder's `eval_results.json`.

    Prints its cost (image-steps and, from the run's measured sampling speed, an estimated time) before it starts.
    """
    run = load_run(run_dir)
    base = default_base_model(str(run_dir))
    steps = parse_num_inference_steps(num_inference_steps, [name for name in schedulers if name != ROLLOUT])
    samplers = resolve_samplers(schedulers, steps, rollout=_run_sampler(str(run_dir)))
    cost = image_steps(samplers, num_images, 2 if base else 1)
    estimate = _estimated_seconds(run, cost)
    print(
        f"Evaluating {num_images} fixed-seed images of the fine-tuned model"
        + (" and its base" if base else "")
        + " with "
        + ", ".join(f"{sampler.name} {sampler.num_inference_steps} steps" for sampler in samplers)
        + f": {cost:,} image-steps"
        + (f", about {duration_text(estimate)} at this run's sampling speed." if estimate else "."),
        flush=True,
    )
    results, samples = run_evaluation(
        str(run_dir), base, schedulers=samplers, num_images=num_images, seed=seed, device=device
    )
    return write_evaluation(results, samples, Path(run_dir) / EVAL_RESULTS_NAME)


def _estimated_seconds(run, cost: int) -> float | None:
    """`cost` image-steps at the sampling speed the run's last epoch measured (per image and step)."""
    if not run.metrics or not run.metrics[-1].get("seconds_sampling"):
        return None
    processes = int((run.info.get("hardware") or {}).get("num_processes", 1))
    per_process = int(run.config.get("num_samples", 1)) // max(processes, 1)
    image_steps_sampled = per_process * int(run.config.get("num_steps", 1))
    return float(run.metrics[-1]["seconds_sampling"]) / max(image_steps_sampled, 1) * cost


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ddpo-eval",
        description="Measure the JPEG size of fixed-seed samples of a model and its base model, per scheduler.",
    )
    parser.add_argument("--model", required=True, help="Run folder, pipeline folder or Hub repo id.")
    parser.add_argument(
        "--base",
        help="Base model to compare with (default: the model's ddpo_config.json or model card `base_model`).",
    )
    parser.add_argument("--no-base", action="store_true", help="Evaluate the model alone.")
    parser.add_argument("--revision", help="Revision (branch, tag, commit) of --model on the Hub.")
    parser.add_argument(
        "--schedulers",
        default=",".join(DEFAULT_SCHEDULERS),
        help="Comma-separated: ddpm, ddim, pndm, and for a run folder 'rollout' (the sampler it trained on).",
    )
    parser.add_argument("--num-images", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0, help="Image i uses seed SEED+i, for both models.")
    parser.add_argument(
        "--num-inference-steps",
        help="One int for all schedulers or per scheduler, e.g. ddim=50,pndm=50,ddpm=1000 (default: 1000/50/50).",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=16,
        help="Images sampled together (default 16). 1 samples each alone, exactly as the Space draws it.",
    )
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu).")
    parser.add_argument(
        "--output",
        type=Path,
        help=f"JSON to write (default: MODEL/{EVAL_RESULTS_NAME} for a local folder, else ./{EVAL_RESULTS_NAME}).",
    )
    parser.add_argument("--no-grids", action="store_true", help=f"Do not write {EVAL_IMAGES_DIR}/<scheduler>.png.")
    parser.add_argument("--push-dataset", metavar="REPO_ID", help="Also push the images as a Hub dataset.")
    parser.add_argument("--dataset-private", action="store_true", help="Make the --push-dataset repo private.")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `ddpo-eval`."""
    args = _parser().parse_args(argv)
    schedulers = [name.strip().lower() for name in args.schedulers.split(",") if name.strip()]
    try:
        steps = parse_num_inference_steps(args.num_inference_steps, schedulers)
        base = None if args.no_base else (args.base or default_base_model(args.model, revision=args.revision))
        if base is None and not args.no_base:
            logger.warning("No base model given or recorded for %s: evaluating the model alone.", args.model)
        output = args.output or (
            Path(args.model) / EVAL_RESULTS_NAME if Path(args.model).is_dir() else Path(EVAL_RESULTS_NAME)
        )
        results, samples = run_evaluation(
            args.model,
            base,
            schedulers=schedulers,
            num_images=args.num_images,
            seed=args.seed,
            num_inference_steps=steps,
            batch_size=args.batch_size,
            device=args.device,
            revision=args.revision,
        )
    except (ModelLoadError, ValueError) as error:
        print(f"ddpo-eval: error: {error}", file=sys.stderr)
        return 2
    write_evaluation(results, samples, output, grids=not args.no_grids)
    for entry in results["schedulers"].values():
        line = f"{entry['name']} ({entry['num_inference_steps']} steps): mean JPEG {entry['model']['mean']:.0f} B"
        if "base" in entry:
            line += f" vs base {entry['base']['mean']:.0f} B ({entry['mean_change']:+.1%}), " + fidelity_text(entry)
        print(line)
    print(f"Wrote {output}")
    if args.push_dataset:
        try:
            url = push_eval_dataset(results, samples, args.push_dataset, private=args.dataset_private)
        except (HfHubHTTPError, OSError) as error:
            print(
                f"ddpo-eval: error: pushing the dataset {args.push_dataset!r} failed: {scrub_token(str(error))}",
                file=sys.stderr,
            )
            return 1
        print(f"Pushed the evaluation images to {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
