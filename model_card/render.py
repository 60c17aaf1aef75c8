"""Fill `template.md` from a training run folder: the model card README.md and its pictures.

Everything on the card comes from files the run wrote (`ddpo_config.json`, `run_info.json`,
`metrics.jsonl`, `samples/`) and, when present, `ddpo-eval`'s `eval_results.json`, so the card
describes the model that was actually trained. The metadata goes through `ModelCardData` so that
`ModelCard.load` reads it back unchanged.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import jinja2
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from PIL import Image

from ddpo_hub.training import jpeg
from ddpo_hub.training.humanize import duration_text
from ddpo_hub.training.pipelines import (
    BUNDLED_BASE_MODEL_KEY,
    ROLLOUT_SAMPLER_KEY,
    SCHEDULERS,
    bundled_models,
    display_name,
    hub_model_id,
    read_data_notice,
)
from ddpo_hub.training.run_folder import CARD_IMAGES_DIR, CARD_NAME, Run, load_run

from . import figures

TEMPLATE_PATH = Path(__file__).with_name("template.md")
DEFAULT_LICENSE = "apache-2.0"
BASE_TAGS = ("pytorch", "diffusers", "unconditional-image-generation", "reinforcement-learning")
"""Every card's tags; the algorithm (`ddpo`, `nft`) and the reward are added."""
ALGORITHMS = {
    "ddpo": {
        "key": "ddpo",
        "name": "DDPO",
        "long_name": "denoising diffusion policy optimization",
        "paper": "[Training Diffusion Models with Reinforcement Learning](https://arxiv.org/abs/2305.13301), "
        "Kevin Black, Michael Janner, Yilun Du, Ilya Kostrikov, Sergey Levine (2023).",
    },
    "nft": {
        "key": "nft",
        "name": "DiffusionNFT",
        "long_name": "negative-aware fine-tuning on the forward process, ported to epsilon prediction",
        "paper": "[DiffusionNFT: Online Diffusion Reinforcement with Forward Process]"
        "(https://arxiv.org/abs/2509.16117), Kaiwen Zheng et al. (2025).",
    },
}
FIDELITY_METRICS = {
    "ssim_to_base": "Same-seed SSIM to the base model",
    "diversity_vs_base": "Diversity vs base model",
    "colour_spread_vs_base": "Colour spread vs base model",
    "edge_sharpness_vs_base": "Edge sharpness vs base model",
    "subject_kept": "Share of seeds whose subject the base's judge still sees",
    "subject_rate": "Share of images the base's judge calls a subject",
    "kid_to_base": "KID to the base model in the judge's features",
}

SAMPLER_ORDER = ("rollout", "ddim", "pndm", "ddpm")
"""The results table's rows: the sampler the model was trained with first (the Space's default), then the stock
samplers (DDIM at eta 0, PNDM, DDPM), then any others."""

_SECRET_KEY = re.compile(r"token|secret|password", re.IGNORECASE)

REWARD_DESCRIPTIONS = {
    "jpeg_compressibility": (
        "JPEG compressibility",
        "each generated image is rewarded for how small its JPEG encoding is, so the model learns to "
        "generate images that compress well.",
    ),
    "jpeg_incompressibility": (
        "JPEG incompressibility",
        "each generated image is rewarded for how large its JPEG encoding is, so the model learns to "
        "generate images full of detail that compress badly.",
    ),
}


@dataclass(frozen=True)
class JpegSummary:
    """Mean JPEG size of one epoch's samples and its change against epoch 1 (the base model's samples)."""

    epoch: int
    kb: float
    base_kb: float

    @property
    def change(self) -> float:
        return self.kb / self.base_kb - 1 if self.base_kb else 0.0

    @property
    def change_text(self) -> str:
        """Whole percent with a sign, e.g. `-37%` (never `-0%`)."""
        return f"{int(round(self.change * 100)):+d}%"


def jpeg_summary(rows: Sequence[dict], epoch: int | None = None) -> JpegSummary | None:
    """The JPEG size of `epoch` (default: the last one) against epoch 1; None without those rows."""
    by_epoch = {int(row["epoch"]): row for row in rows if row.get("jpeg_kb_mean") is not None}
    if 1 not in by_epoch:
        return None
    epoch = max(by_epoch) if epoch is None else epoch
    if epoch not in by_epoch:
        return None
    kb, base_kb = float(by_epoch[epoch]["jpeg_kb_mean"]), float(by_epoch[1]["jpeg_kb_mean"])
    return JpegSummary(epoch=epoch, kb=kb, base_kb=base_kb)


def _wall_time(seconds: float | None) -> str:
    return "not recorded" if seconds is None else duration_text(float(seconds))


def _display_model(value: str | None) -> str:
    """How the card names a model: Hub ids as links, local folders by name only (no machine paths)."""
    if not value:
        return "an unknown base model"
    if hub_model_id(value):
        return f"[`{value}`](/{value})"
    if value in bundled_models():
        return f"`{value}` (bundled with ddpo-hub)"
    return f"`{display_name(value)}` (a local model)"


def _public_value(key: str, value: object) -> str:
    """A hyperparameter as a Markdown table cell; local paths shortened, secrets hidden."""
    if _SECRET_KEY.search(key) and value:
        text = "***"
    elif isinstance(value, str):
        text = f"`{Path(value).name}` (local path)" if os.path.isabs(value) else f"`{value}`"
    else:
        text = f"`{json.dumps(value)}`"
    return text.replace("|", "\\|")


def _number(value: object, spec: str = ".4g") -> str:
    return "—" if value is None else format(value, spec)


def _bytes(value: float | None) -> str:
    return "—" if value is None else f"{value:,.1f}"


def _seed_range(seeds: Sequence[int]) -> str:
    if not seeds:
        return "—"
    contiguous = list(seeds) == list(range(seeds[0], seeds[0] + len(seeds)))
    if len(seeds) == 1:
        return str(seeds[0])
    return f"{seeds[0]}–{seeds[-1]}" if contiguous else ", ".join(map(str, seeds))


def _hardware(info: dict) -> str:
    hardware = info.get("hardware") or {}
    if not hardware:
        return "not recorded"
    processes = hardware.get("num_processes", 1)
    parts = [f"{hardware.get('device', 'unknown device')}", f"{processes} process{'es' if processes != 1 else ''}"]
    if hardware.get("mixed_precision") is not None:
        parts.append(f"mixed precision `{hardware['mixed_precision']}`")
    return ", ".join(parts)


def _reward_tag(reward: str) -> str:
    """The reward's name as a Hub tag (a custom `module:function` reward becomes `module-function`)."""
    return re.sub(r"[^a-z0-9_.-]+", "-", reward.lower()).strip("-") or "custom-reward"


def eval_results_entries(evaluation: dict) -> list[EvalResult]:
    """model-index entries: mean and median JPEG bytes of the fine-tuned model, one dataset per scheduler."""
    entries = []
    for key, entry in evaluation["schedulers"].items():
        steps = entry["num_inference_steps"]
        common = dict(
            task_type="unconditional-image-generation",
            task_name="Unconditional Image Generation",
            dataset_type="ddpo-eval-fixed-seed-samples",
            dataset_name=f"{evaluation['num_images']} fixed-seed samples, {entry['name']} {steps} steps",
            dataset_config=key,
            dataset_args={
                "scheduler": key,
                "num_inference_steps": steps,
                "num_images": evaluation["num_images"],
                "seed": evaluation["seed"],
            },
        )
        for statistic in ("mean", "median"):
            entries.append(
                EvalResult(
                    **common,
                    metric_type=f"jpeg_bytes_{statistic}",
                    metric_name=f"{statistic.capitalize()} JPEG bytes (quality {evaluation['jpeg']['quality']})",
                    metric_value=round(float(entry["model"][statistic]), 1),
                )
            )
        for key, name in FIDELITY_METRICS.items():
            if key in (entry.get("fidelity") or {}):
                entries.append(
                    EvalResult(
                        **common, metric_type=key, metric_name=name, metric_value=round(entry["fidelity"][key], 4)
                    )
                )
    return entries


def _training_eval_results(run: Run) -> list[EvalResult]:
    """Without `ddpo-eval`: the last epoch's mean JPEG size of the training samples (honestly labelled)."""
    summary = jpeg_summary(run.metrics)
    if summary is None:
        return []
    scheduler = str(run.config.get("scheduler", "ddim")).lower()
    return [
        EvalResult(
            task_type="unconditional-image-generation",
            task_name="Unconditional Image Generation",
            dataset_type="ddpo-training-samples",
            dataset_name=f"Training samples of epoch {summary.epoch} ({scheduler.upper()})",
            dataset_config=scheduler,
            metric_type="jpeg_kb_mean",
            metric_name="Mean JPEG kB of the epoch's training samples",
            metric_value=round(summary.kb, 3),
        )
    ]


def card_data(run: Run, *, repo_id: str | None, evaluation: dict | None, license: str) -> ModelCardData:
    """The card's YAML metadata."""
    reward = str(run.config.get("reward", "custom"))
    results = eval_results_entries(evaluation) if evaluation else _training_eval_results(run)
    base = run.config.get("base_model")
    # A bundled base has no Hub id: the card names it by its bundled name, which the Space and ddpo-eval resolve.
    bundled = {BUNDLED_BASE_MODEL_KEY: base} if base in bundled_models() else {}
    return ModelCardData(
        license=license,
        library_name="diffusers",
        pipeline_tag="unconditional-image-generation",
        base_model=hub_model_id(base),
        tags=[*BASE_TAGS, str(run.config.get("algorithm", "ddpo")), _reward_tag(reward)],
        model_name=_model_name(run, repo_id),
        eval_results=results or None,
        **bundled,
        **{ROLLOUT_SAMPLER_KEY: run.rollout_sampler.card_value()},
    )


def _model_name(run: Run, repo_id: str | None) -> str:
    return repo_id.split("/")[-1] if repo_id else run.run_dir.resolve().name


def _figures(run: Run, evaluation: dict | None, eval_root: Path) -> dict[str, Callable[[], Image.Image]]:
    """The pictures this run can show, by file name under images/, each drawn on demand."""
    drawn: dict[str, Callable[[], Image.Image]] = {}
    if len(run.samples) >= 2:
        (first_epoch, first), (last_epoch, last) = run.samples[0], run.samples[-1]
        drawn["before_after.png"] = lambda: figures.side_by_side(
            [(_epoch_label(first_epoch), Image.open(first)), (_epoch_label(last_epoch), Image.open(last))]
        )
    if run.metrics and all("reward_mean" in row and "jpeg_kb_mean" in row for row in run.metrics):
        drawn["training_curves.png"] = lambda: figures.training_curves(run.metrics)
    if run.metrics and all("ssim_to_base" in row and "jpeg_change_vs_base" in row for row in run.metrics):
        points = [(1.0, 0.0)] + [(row["ssim_to_base"], -100 * row["jpeg_change_vs_base"]) for row in run.metrics]
        drawn["frontier.png"] = lambda: figures.cut_vs_ssim({"this run (epoch 0 = base)": points})
    if run.metrics and all("subject_kept" in row and "jpeg_change_vs_base" in row for row in run.metrics):
        kept = [(1.0, 0.0)] + [(row["subject_kept"], -100 * row["jpeg_change_vs_base"]) for row in run.metrics]
        drawn["subject_frontier.png"] = lambda: figures.cut_vs_ssim(
            {"this run (epoch 0 = base)": kept},
            title="JPEG cut against the share of seeds that keep their subject",
            x_label="subject kept (the base's judge, same seeds)",
        )
    for key, entry in (evaluation or {}).get("schedulers", {}).items():
        grid = entry.get("grid")
        if grid and (eval_root / grid["path"]).is_file():
            labels = ["Base" if role == "base" else "Fine-tuned" for role in grid["rows"]]
            path = eval_root / grid["path"]
            drawn[f"eval_{key}.png"] = lambda path=path, labels=labels: figures.labelled_rows(Image.open(path), labels)
    return drawn


def _subject_rate(figures: dict) -> str:
    """`0.91 (base 0.95)`, or a dash without a judge."""
    if "subject_rate" not in figures:
        return _number(None)
    return f"{figures['subject_rate']:.2f} (base {figures['base_subject_rate']:.2f})"


def _epoch_label(epoch: int) -> str:
    return "Base model (epoch 0)" if epoch == 0 else f"After {epoch} epoch{'s' if epoch != 1 else ''}"


def _evaluation_context(evaluation: dict, image_names: set[str]) -> dict:
    rows = []
    ordered = sorted(evaluation["schedulers"].items(), key=lambda item: _sampler_rank(item[0]))
    for key, entry in ordered:
        base = entry.get("base") or {}
        grid = entry.get("grid")
        rows.append(
            {
                "name": f"{entry['name']}, eta 0" if key == "ddim" else entry["name"],
                "steps": entry["num_inference_steps"],
                "num_images": evaluation["num_images"],
                "seeds": _seed_range(evaluation["seeds"]),
                "base_mean": _bytes(base.get("mean")),
                "base_median": _bytes(base.get("median")),
                "model_mean": _bytes(entry["model"]["mean"]),
                "model_median": _bytes(entry["model"]["median"]),
                "change": f"{entry['mean_change']:+.1%}" if "mean_change" in entry else "—",
                "ssim": _number((entry.get("fidelity") or {}).get("ssim_to_base"), ".2f"),
                "diversity": _number((entry.get("fidelity") or {}).get("diversity_vs_base"), ".2f"),
                "colour_spread": _number((entry.get("fidelity") or {}).get("colour_spread_vs_base"), ".2f"),
                "edges": _number((entry.get("fidelity") or {}).get("edge_sharpness_vs_base"), ".2f"),
                "subject_kept": _number((entry.get("fidelity") or {}).get("subject_kept"), ".2f"),
                "subject_rate": _subject_rate(entry.get("fidelity") or {}),
                "kid": _number((entry.get("fidelity") or {}).get("kid_to_base"), ".3f"),
                "grid": f"{CARD_IMAGES_DIR}/eval_{key}.png" if f"eval_{key}.png" in image_names else None,
                "grid_seeds": _seed_range(grid["seeds"]) if grid else "",
            }
        )
    return {
        "rows": rows,
        "trained_first": "rollout" in evaluation["schedulers"],
        "judged": any("subject_kept" in (entry.get("fidelity") or {}) for entry in evaluation["schedulers"].values()),
        "num_images": evaluation["num_images"],
        "seeds": _seed_range(evaluation["seeds"]),
        "jpeg_quality": evaluation["jpeg"]["quality"],
        "base": _display_model(evaluation.get("base")) if evaluation.get("base") else "not evaluated",
    }


def _sampler_rank(key: str) -> int:
    return SAMPLER_ORDER.index(key) if key in SAMPLER_ORDER else len(SAMPLER_ORDER)


def _steps(evaluation: dict | None) -> dict[str, int]:
    steps = {name.lower(): choice.default_steps for name, choice in SCHEDULERS.items()}
    for key, entry in (evaluation or {}).get("schedulers", {}).items():
        steps[key] = entry["num_inference_steps"]
    return steps


def _render(run: Run, *, repo_id: str | None, evaluation: dict | None, license: str | None) -> tuple[ModelCard, dict]:
    license = license or run.config.get("license") or DEFAULT_LICENSE
    eval_root = run.run_dir
    drawn = _figures(run, evaluation, eval_root)
    reward = str(run.config.get("reward", "custom"))
    reward_title, reward_description = REWARD_DESCRIPTIONS.get(reward, (f"the `{reward}` reward", "a custom reward."))
    summary = jpeg_summary(run.metrics)
    base = run.config.get("base_model")
    reward_queries = "not recorded"
    if isinstance(run.config.get("num_samples"), int) and run.epochs_completed:
        total = run.config["num_samples"] * run.epochs_completed
        reward_queries = f"{total:,} ({run.config['num_samples']:,} samples per epoch × {run.epochs_completed} epochs)"
    data = card_data(run, repo_id=repo_id, evaluation=evaluation, license=license)
    algorithm = ALGORITHMS.get(str(run.config.get("algorithm", "ddpo")), ALGORITHMS["ddpo"])
    context = {
        "card_data": data.to_yaml(),
        "title": f"{_model_name(run, repo_id)}: {algorithm['name']} fine-tune for {reward_title}",
        "algorithm": algorithm,
        "kl_coef": run.config.get("kl_coef") or None,
        "model_name": f"`{_model_name(run, repo_id)}`",
        "base_link": _display_model(base),
        "reward": reward,
        "reward_description": reward_description,
        "headline": None
        if summary is None
        else {
            "last_epoch": summary.epoch,
            "base_kb": f"{summary.base_kb:.2f}",
            "last_kb": f"{summary.kb:.2f}",
            "change": summary.change_text,
        },
        "before_after": f"{CARD_IMAGES_DIR}/before_after.png" if "before_after.png" in drawn else None,
        "before_after_left": _epoch_label(run.samples[0][0]).lower() if run.samples else "",
        "before_after_right": _epoch_label(run.samples[-1][0]).lower() if run.samples else "",
        "jpeg_quality": jpeg.JPEG_QUALITY,
        "jpeg_subsampling": jpeg.JPEG_SUBSAMPLING,
        "usage_id": repo_id or f"path/to/{_model_name(run, repo_id)}",
        "steps": _steps(evaluation),
        "evaluation": _evaluation_context(evaluation, set(drawn)) if evaluation else None,
        "training_scheduler": str(run.config.get("scheduler", "ddim")).upper(),
        "trained_sampler": run.rollout_sampler.text,
        "curve": f"{CARD_IMAGES_DIR}/training_curves.png" if "training_curves.png" in drawn else None,
        "frontier": f"{CARD_IMAGES_DIR}/frontier.png" if "frontier.png" in drawn else None,
        "subject_frontier": f"{CARD_IMAGES_DIR}/subject_frontier.png" if "subject_frontier.png" in drawn else None,
        "data_notice": read_data_notice(run.base_model_path),
        "judged_epochs": bool(run.metrics) and all("subject_kept" in row for row in run.metrics),
        "fidelity_images": run.config.get("fidelity_num_images"),
        "metrics_rows": [
            {
                "epoch": row["epoch"],
                "reward_mean": _number(row.get("reward_mean")),
                "reward_std": _number(row.get("reward_std")),
                "jpeg_kb_mean": _number(row.get("jpeg_kb_mean")),
                "loss": _number(row.get("loss")),
                "approx_kl": _number(row.get("approx_kl")),
                "clipfrac": _number(row.get("clipfrac")),
                "ssim_to_base": _number(row.get("ssim_to_base"), ".3f"),
                "diversity_vs_base": _number(row.get("diversity_vs_base"), ".3f"),
                "colour_spread_vs_base": _number(row.get("colour_spread_vs_base"), ".3f"),
                "edge_sharpness_vs_base": _number(row.get("edge_sharpness_vs_base"), ".3f"),
                "subject_kept": _number(row.get("subject_kept"), ".3f"),
                "kid_to_base": _number(row.get("kid_to_base"), ".3g"),
                "kl_to_base": _number(row.get("kl_to_base"), ".3g"),
                "seconds": _number(row.get("seconds"), ".1f"),
            }
            for row in run.metrics
        ],
        "epochs_completed": run.epochs_completed,
        "reward_queries": reward_queries,
        "hardware": _hardware(run.info),
        "wall_time": _wall_time(run.info.get("wall_time_seconds")),
        "hyperparameters": [(key, _public_value(key, value)) for key, value in run.config.items()],
        "setting_changes": [
            {
                "epoch": row["from_epoch"],
                "changes": "; ".join(
                    f"`{key}` {_public_value(key, old)} → {_public_value(key, new)}"
                    for key, (old, new) in row["changes"].items()
                ),
            }
            for row in run.config_history
        ],
        "versions": list((run.info.get("versions") or {}).items()),
    }
    environment = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)
    text = environment.from_string(TEMPLATE_PATH.read_text(encoding="utf-8")).render(**context)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return ModelCard(text), drawn


def render_card(
    run_dir: Path,
    *,
    repo_id: str | None = None,
    eval_results: dict | None = None,
    license: str | None = None,
) -> ModelCard:
    """The model card of a run.

    `eval_results` defaults to the run folder's eval_results.json (if any); `license` to the config's
    `license` key, else apache-2.0.
    """
    run = load_run(run_dir)
    evaluation = eval_results if eval_results is not None else run.eval_results
    card, _ = _render(run, repo_id=repo_id, evaluation=evaluation, license=license)
    return card


def write_card(
    run_dir: Path,
    out_dir: Path,
    *,
    repo_id: str | None = None,
    eval_results: dict | None = None,
    license: str | None = None,
) -> Path:
    """Write out_dir/README.md and the pictures it shows (out_dir/images/*.png); return the README path."""
    run = load_run(run_dir)
    evaluation = eval_results if eval_results is not None else run.eval_results
    card, drawn = _render(run, repo_id=repo_id, evaluation=evaluation, license=license)
    out_dir = Path(out_dir)
    if drawn:
        (out_dir / CARD_IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    for name, draw in drawn.items():
        draw().save(out_dir / CARD_IMAGES_DIR / name)
    readme = out_dir / CARD_NAME
    card.save(readme)
    return readme
