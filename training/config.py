"""`TrainConfig`: every setting of a run, documented once; presets, config files and CLI flags all feed it.

Precedence, lowest first: the dataclass defaults, the preset, the config file, command-line flags.
The run folder (`run_folder.write_config`) saves the resolved config as `ddpo_config.json`. Each field's
`help` metadata is its documentation and its `ddpo-train` flag's help; a field with a fixed set of values
is typed `Literal[...]`, which `validate` and the flag's help read.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import yaml

from .extras import require_extra

Algorithm = Literal["ddpo", "nft"]
"""`ddpo`: policy gradients through per-step log-probabilities; `nft`: DiffusionNFT on forward-noised images."""
MixedPrecision = Literal["no", "fp16", "bf16"]
RolloutScheduler = Literal["ddim", "ddpm"]
EvalScheduler = Literal["rollout", "ddpm", "ddim", "pndm"]
"""What `eval_schedulers` may name (see `evaluate.resolve_samplers`)."""


def setting(default: Any, help: str) -> Any:
    """A config field and its documentation; a list default is copied for each config."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """A fine-tuning run of an unconditional diffusers `DDPMPipeline` with DDPO or DiffusionNFT (`algorithm`)."""

    # --- run ---
    preset: str | None = setting(
        None,
        "Named starting point (`tiny`, `tiny-nft`, `tiny-textures` or `celebahq-256`); other settings override it.",
    )
    base_model: str = setting(
        "tiny-emoji-32",
        "The pipeline to fine-tune: a bundled model name, a local `DDPMPipeline` folder or a Hub repo id.",
    )
    base_model_revision: str | None = setting(None, "Hub revision (branch, tag or commit) of `base_model`.")
    output_dir: str = setting(
        "runs/ddpo", "Run folder: the latest pipeline, metrics, sample grids, TensorBoard logs and checkpoints."
    )
    seed: int = setting(
        0, "Seeds every random choice of the run; with the same seed a CPU run is reproducible bit for bit."
    )
    epochs: int = setting(40, "Number of sample-then-train epochs.")
    resume: str | None = setting(
        None, "`latest` (the newest checkpoint in `output_dir`) or a checkpoint folder to resume from."
    )
    overwrite: bool = setting(
        False,
        "Start afresh in an `output_dir` that holds another run, deleting that run's files first (the pipeline, "
        "metrics, grids, logs, checkpoints, evaluation and card; other files stay). Without it such a run is refused.",
    )
    mixed_precision: MixedPrecision = setting("no", "`no`, `fp16` or `bf16` (through accelerate's autocast).")
    compile: bool = setting(
        False,
        "`torch.compile` the trained UNet with static shapes. Rollouts are sampled through the same compiled graph "
        "that re-scores them (train mode, gradients on), so importance ratios stay exactly 1. A logged no-op where "
        "torch.compile cannot run (no C++ compiler or Triton, an unsupported platform); the first steps of a run "
        "wait for the compilation.",
    )
    channels_last: bool = setting(
        True,
        "On CUDA, keep the UNets' convolution weights in channels_last (NHWC) memory format, which tensor cores read "
        "without transposes (the first convolution turns the input to it); outputs and saved weights keep the usual "
        "layout.",
    )
    tf32: bool = setting(
        True,
        "On CUDA, run fp32 matmuls and convolutions on TF32 tensor cores (under bf16 autocast only the few ops it "
        "leaves in fp32).",
    )

    algorithm: Algorithm = setting(
        "ddpo", "`ddpo` (Black et al. 2023) or `nft` (DiffusionNFT, Zheng et al. 2025: likelihood-free, any sampler)."
    )

    # --- reward ---
    reward: str = setting(
        "jpeg_compressibility",
        "`jpeg_compressibility`, `jpeg_incompressibility` or `module:function` (images in [-1, 1] -> floats).",
    )

    # --- sampling ---
    scheduler: RolloutScheduler = setting(
        "ddim", "Stochastic reverse process used for rollouts: `ddim` (with `eta`) or `ddpm` (ancestral sampling)."
    )
    num_steps: int = setting(20, "Denoising steps per rollout.")
    eta: float = setting(1.0, "DDIM stochasticity in (0, 1]; 1.0 is the paper's setting. Ignored by `ddpm`.")
    num_samples: int = setting(32, "Images sampled per epoch, over all processes.")
    sample_batch_size: int = setting(16, "Images per sampling forward pass, per process.")

    # --- policy update ---
    train_batch_size: int = setting(
        16, "Samples per training forward pass, per process; must divide `sample_batch_size`."
    )
    gradient_accumulation_steps: int = setting(
        1, "Training minibatches per optimizer step (each step also accumulates over the trained timesteps)."
    )
    num_inner_epochs: int = setting(1, "Passes over each epoch's samples.")
    timestep_fraction: float = setting(
        1.0, "Fraction of each trajectory's trainable steps trained on, chosen at random per sample."
    )
    min_train_std: float = setting(
        0.05,
        "Steps whose noise std is at most this are not trained on (0 trains every stochastic step). A step's "
        "log-prob gradient grows as 1/std while noise that small barely moves the reward: on DDPM schedules the last "
        "stochastic step (std ~0.01) would otherwise swamp the update with noise.",
    )
    max_train_std: float = setting(
        1.0,
        "Steps whose noise std is above this are not trained on either (1 trains every step up to the first). "
        "Below 1, only the later, less noisy steps learn: they set fine detail and grain, not the composition and "
        "colours of the picture, which the earlier steps decide.",
    )
    clip_range: float = setting(1e-4, "PPO clip range of the importance ratio.")
    adv_clip_max: float = setting(5.0, "Advantages are clipped to [-adv_clip_max, adv_clip_max].")
    stat_tracking: bool = setting(
        False, "Normalise rewards with running statistics of recent epochs instead of this epoch's batch alone."
    )
    stat_tracking_buffer_size: int = setting(256, "Rewards kept by the running-statistics tracker.")
    stat_tracking_min_count: int = setting(
        32, "Below this many tracked rewards the tracker falls back to the batch's own statistics."
    )
    nft_beta: float = setting(
        1.0, "NFT: how far the implicit positive and negative policies lie from the old policy (the paper's beta)."
    )
    nft_old_decay_rate: float = setting(
        0.001,
        "NFT: the old (sampling) policy is an EMA of the trained one with decay min(rate x step, max), per epoch.",
    )
    nft_old_decay_max: float = setting(
        0.5, "NFT: the largest EMA decay of the old policy (the paper's schedule: rate 0.001, max 0.5)."
    )
    kl_coef: float = setting(
        0.0,
        "Weight of the KL leash: the closed-form KL between the current and the frozen base model's Gaussian step "
        "policies, added to the loss on every trained step (DPOK, Flow-GRPO). 0 trains on the reward alone.",
    )
    learning_rate: float = setting(3e-4, "AdamW learning rate.")
    adam_beta1: float = setting(0.9, "AdamW's decay of its running mean of the gradients.")
    adam_beta2: float = setting(0.999, "AdamW's decay of its running mean of the squared gradients.")
    adam_weight_decay: float = setting(1e-4, "AdamW's (decoupled) weight decay.")
    adam_epsilon: float = setting(1e-8, "AdamW's epsilon, added to the root of the squared-gradient mean.")
    max_grad_norm: float = setting(1.0, "Gradient-norm clip applied at every optimizer step.")
    use_ema: bool = setting(
        False, "Keep an exponential moving average of the weights and save it as the published model."
    )
    ema_decay: float = setting(0.999, "Decay of the weights' moving average (`use_ema`), per optimizer step.")
    use_lora: bool = setting(False, "Train LoRA adapters (merged into the saved UNet) instead of all weights.")
    lora_rank: int = setting(8, "Rank of the LoRA adapters (`use_lora`).")
    lora_alpha: int = setting(8, "LoRA's scale numerator: the adapters' update is scaled by lora_alpha / lora_rank.")
    lora_target_modules: list[str] = setting(
        ["conv1", "conv2", "to_q", "to_k", "to_v", "to_out.0"],
        "Module names LoRA adapts: the ResNet convolutions and the attention projections.",
    )

    # --- outputs ---
    save_every: int = setting(
        1, "Save the pipeline and an accelerate checkpoint every N epochs (and always at the end)."
    )
    checkpoints_total_limit: int = setting(3, "Accelerate checkpoints kept; older ones are deleted.")
    grid_every: int = setting(
        5, "Save a sample grid from fixed seeds every N epochs (and before the first one and at the end)."
    )
    grid_size: int = setting(16, "Images in each sample grid.")
    fidelity_num_images: int = setting(
        16,
        "Fixed-seed images sampled after every epoch, with the base model's from the same noise, for the fidelity "
        "metrics in metrics.jsonl (ssim_to_base, diversity_vs_base, colour_spread_vs_base, kl_to_base); 0 turns "
        "them off. The first `grid_size` of them are the sample grid.",
    )
    eval_num_images: int = setting(
        0, "When positive, evaluate the final model against its base on this many fixed-seed images."
    )
    eval_schedulers: list[EvalScheduler] = setting(
        ["rollout", "ddim", "pndm"],
        "Samplers of the end-of-run evaluation: `rollout` (the sampler trained on, as a stock pipeline), `ddim`, "
        "`pndm` (50 steps) or `ddpm` (1000 steps: 20x the cost of the others).",
    )
    eval_num_inference_steps: str | None = setting(
        None, "Steps of the evaluated stock schedulers, as ddpo-eval's `--num-inference-steps` (e.g. `ddpm=250`)."
    )

    # --- Hub ---
    push_to_hub: str | None = setting(None, "Hub repo id to publish checkpoints and the model card to.")
    hub_private: bool = setting(False, "Create the Hub repo as private.")
    push_every: int = setting(5, "Push every N epochs (and at the end).")
    hub_revision: str | None = setting(None, "Branch to push to (created when missing).")

    def validate(self, num_processes: int = 1) -> None:
        """Reject settings that cannot work, with a message naming the field and what is allowed."""
        positive = (
            "epochs",
            "num_steps",
            "num_samples",
            "sample_batch_size",
            "train_batch_size",
            "gradient_accumulation_steps",
            "num_inner_epochs",
            "save_every",
            "grid_every",
            "push_every",
            "checkpoints_total_limit",
            "grid_size",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"--{_flag(name)} must be a positive integer, got {getattr(self, name)}.")
        for name in ("learning_rate", "clip_range", "adv_clip_max", "max_grad_norm", "adam_epsilon"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):  # NaN compares false with everything: test it by name
                raise ValueError(f"--{_flag(name)} must be a finite positive number, got {value}.")
        for name in ("adam_beta1", "adam_beta2", "ema_decay"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:  # also rejects NaN
                raise ValueError(f"--{_flag(name)} must be in [0, 1), got {value}.")
        if not (math.isfinite(self.adam_weight_decay) and self.adam_weight_decay >= 0):
            raise ValueError(
                f"--adam-weight-decay must be 0 or a finite positive number, got {self.adam_weight_decay}."
            )
        if self.overwrite and self.resume is not None:
            raise ValueError(
                "--overwrite starts the run afresh, deleting the old one, and --resume continues it: give one of them."
            )
        for item in fields(self):
            allowed, value = choices(item.name), getattr(self, item.name)
            if allowed and not isinstance(value, list) and value not in allowed:
                raise ValueError(f"--{_flag(item.name)} must be {_either(allowed)}, got {value!r}.")
        if self.algorithm == "ddpo" and self.scheduler == "ddim" and not 0.0 < self.eta <= 1.0:
            raise ValueError(f"--eta must be in (0, 1] for DDPO's stochastic DDIM rollouts, got {self.eta}.")
        if self.algorithm == "nft" and not 0.0 <= self.eta <= 1.0:
            raise ValueError(f"--eta must be in [0, 1] (0: deterministic DDIM rollouts), got {self.eta}.")
        if self.compile and self.use_lora:
            raise ValueError(
                "--compile does not support --use-lora yet: exact re-scoring through peft's adapter layers (and its "
                "switching them off for the base model) under torch.compile is untested; drop one of them."
            )
        if self.algorithm == "nft" and self.use_lora:
            raise ValueError("--algorithm nft trains all weights: its old policy is a full EMA copy; drop --use-lora.")
        if not 0.0 < self.nft_beta <= 1.0 or not 0.0 <= self.nft_old_decay_max < 1.0 or self.nft_old_decay_rate < 0:
            raise ValueError(
                "--nft-beta must be in (0, 1], --nft-old-decay-max in [0, 1) and --nft-old-decay-rate at least 0."
            )
        if not 0.0 < self.timestep_fraction <= 1.0:
            raise ValueError(f"--timestep-fraction must be in (0, 1], got {self.timestep_fraction}.")
        if not 0.0 <= self.min_train_std < 1.0:
            raise ValueError(f"--min-train-std must be in [0, 1), got {self.min_train_std}.")
        if not self.min_train_std < self.max_train_std <= 1.0:
            raise ValueError(
                f"--max-train-std must be above --min-train-std ({self.min_train_std}) and at most 1, "
                f"got {self.max_train_std}."
            )
        if not (math.isfinite(self.kl_coef) and self.kl_coef >= 0):
            raise ValueError(f"--kl-coef must be 0 (off) or positive, got {self.kl_coef}.")
        if self.fidelity_num_images == 1 or self.fidelity_num_images < 0:
            raise ValueError(
                f"--fidelity-num-images must be 0 (off) or at least 2 (diversity compares pairs), "
                f"got {self.fidelity_num_images}."
            )
        allowed = choices("eval_schedulers")
        unknown = sorted(set(name.lower() for name in self.eval_schedulers) - set(allowed))
        if unknown:
            raise ValueError(
                f"--eval-schedulers: unknown {', '.join(map(repr, unknown))}; choose from {', '.join(allowed)}."
            )
        if self.eval_num_images < 0:
            raise ValueError(f"--eval-num-images must be 0 (no evaluation) or positive, got {self.eval_num_images}.")
        if self.use_lora:
            if self.lora_rank <= 0 or self.lora_alpha <= 0:
                raise ValueError(
                    f"--lora-rank and --lora-alpha must be positive integers, "
                    f"got {self.lora_rank} and {self.lora_alpha}."
                )
            require_extra("peft", extra="lora", feature="LoRA training (--use-lora)")
        per_round = self.sample_batch_size * num_processes
        if self.num_samples % per_round:
            raise ValueError(
                f"--num-samples ({self.num_samples}) must be a multiple of --sample-batch-size "
                f"({self.sample_batch_size}) x processes ({num_processes}) = {per_round}."
            )
        if self.sample_batch_size % self.train_batch_size:
            raise ValueError(
                f"--train-batch-size ({self.train_batch_size}) must divide --sample-batch-size "
                f"({self.sample_batch_size}): training re-scores the sampler's UNet batches exactly."
            )
        minibatches = self.num_samples // num_processes // self.train_batch_size
        if minibatches % self.gradient_accumulation_steps:
            raise ValueError(
                f"--gradient-accumulation-steps ({self.gradient_accumulation_steps}) must divide the "
                f"{minibatches} training minibatches of each process per epoch, so no gradient spills over."
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


DDPOConfig = TrainConfig
"""The name `TrainConfig` had before NFT joined DDPO; run folders keep its file name, `ddpo_config.json`."""


CPU_UPDATE: dict[str, Any] = dict(
    num_samples=128,
    sample_batch_size=32,
    train_batch_size=32,
    gradient_accumulation_steps=4,
    timestep_fraction=0.5,
    min_train_std=0.2,
    learning_rate=3e-5,
    clip_range=1e-4,
)
"""The tiny presets' update: one small optimizer step per epoch on 128 samples, each trained on half its
timesteps, the least noisy steps (std < 0.2) left out (benchmarks/README.md, "Tuning the tiny preset")."""

PRESETS: dict[str, dict[str, Any]] = {
    # The embedded default: the bundled 32x32 emoji DDPM (faces, people, animals), a full run in a few minutes
    # on 2 CPU cores. How it got its settings: benchmarks/README.md, "The tiny preset on the emoji base".
    "tiny": CPU_UPDATE
    | dict(base_model="tiny-emoji-32", output_dir="runs/tiny", epochs=6, num_steps=20, eta=1.0, kl_coef=0.0)
    | dict(grid_every=3, push_every=3),
    # The texture base without a subject (the `tiny` preset before the emoji base): DDPO on a KL leash.
    # Its tuning history is in benchmarks/README.md ("Tuning history of the tiny preset").
    "tiny-textures": CPU_UPDATE
    | dict(base_model="tiny-textures-32", output_dir="runs/tiny-textures", epochs=5, num_steps=40, eta=1.0)
    | dict(kl_coef=0.1, grid_every=5, push_every=2),
    # google/ddpm-celebahq-256 as in the DDPO paper and alcazar90/ddpo-celebahq: DDIM 40 steps, eta 1.
    "celebahq-256": dict(
        base_model="google/ddpm-celebahq-256",
        output_dir="runs/celebahq",
        epochs=50,
        num_steps=40,
        eta=1.0,
        num_samples=64,
        sample_batch_size=8,
        train_batch_size=4,
        gradient_accumulation_steps=4,
        timestep_fraction=0.5,
        learning_rate=1e-5,
        clip_range=1e-4,
        adv_clip_max=5.0,
        mixed_precision="bf16",
        use_ema=False,
        grid_every=5,
        grid_size=8,
        fidelity_num_images=8,  # the grid's 8 seeds x 40 steps x 2 UNets per epoch: ~10% of an epoch's UNet calls
        push_every=5,
        eval_num_images=64,
    ),
}


# DiffusionNFT on the same base and budget as `tiny`, from benchmarks/frontier.py's `nft-eta1` row: it learns
# along the same cut-vs-fidelity curve as DDPO, so `tiny` stays DDPO (eta 0 rollouts lose diversity faster).
PRESETS["tiny-nft"] = PRESETS["tiny"] | dict(output_dir="runs/tiny-nft", algorithm="nft", kl_coef=0.0)


def _flag(name: str) -> str:
    return name.replace("_", "-")


def field_names() -> list[str]:
    return [f.name for f in fields(TrainConfig)]


def choices(name: str) -> tuple[str, ...]:
    """The values a setting typed `Literal[...]` (or a list of them) may take; () for an open-ended one."""
    hint = typing.get_type_hints(TrainConfig)[name]
    if typing.get_origin(hint) is list:
        (hint,) = typing.get_args(hint)
    return typing.get_args(hint) if typing.get_origin(hint) is Literal else ()


def _either(values: tuple[str, ...]) -> str:
    """'a', 'b' or 'c'."""
    quoted = [repr(value) for value in values]
    return f"{', '.join(quoted[:-1])} or {quoted[-1]}"


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML or YAML config file into a dict of `TrainConfig` fields (dashes or underscores)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Config file {str(path)!r} does not exist.")
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(path.read_text())
        elif path.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(path.read_text()) or {}
        else:
            raise ValueError(f"Config file {str(path)!r} must end in .toml, .yaml or .yml.")
    except (tomllib.TOMLDecodeError, yaml.YAMLError, UnicodeDecodeError) as error:
        detail = " ".join(str(error).split())
        raise ValueError(f"Config file {str(path)!r} is not valid {path.suffix[1:].upper()}: {detail}") from None
    if not isinstance(data, dict):
        raise ValueError(f"Config file {str(path)!r} must hold a mapping of settings, not {type(data).__name__}.")
    data = {key.replace("-", "_"): value for key, value in data.items()}
    unknown = sorted(set(data) - set(field_names()))
    if unknown:
        raise ValueError(f"Unknown setting(s) in {str(path)!r}: {', '.join(unknown)}.")
    return data


def resolve_config(
    *, preset: str | None = None, config_file: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> TrainConfig:
    """Layer the preset, the config file and explicit overrides on top of the defaults."""
    file_values = read_config_file(config_file) if config_file else {}
    overrides = dict(overrides or {})
    preset = overrides.pop("preset", None) or file_values.pop("preset", None) or preset
    values: dict[str, Any] = {}
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"Unknown preset {preset!r}; choose one of {', '.join(PRESETS)}.")
        values.update(PRESETS[preset])
    values.update(file_values)
    values.update(overrides)
    return TrainConfig(preset=preset, **values)
