"""The DDPO-IS loop (Black et al. 2023, Alg. 1 with PPO clipping) on accelerate.

Each epoch: sample trajectories with log-probabilities -> reward the final images -> normalise rewards
into advantages over the whole (gathered) batch -> a few clipped policy-gradient passes over random
timesteps of each trajectory -> save the pipeline, metrics and a resumable checkpoint.

The trainer only trains: evaluation and publishing are composed around it (`workflow.run_training`), which
hears about each saved epoch through `on_epoch_saved`.
"""

from __future__ import annotations

import copy
import logging
import os
import platform
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import ProjectConfiguration, set_seed
from diffusers import UNet2DModel
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from .advantages import RewardStatTracker, compute_advantages
from .config import DDPOConfig
from .fidelity import describe, fidelity_to_base
from .jpeg import jpeg_sizes
from .judge import load_judge
from .losses import gaussian_kl, ppo_clip_loss
from .performance import TrainingGraph, compile_policy, enable_tf32, use_channels_last
from .pipelines import fetch_pipeline_folder, load_unet_and_scheduler_config, resolve_model_path
from .rewards import RewardOutput, load_reward
from .run_folder import (
    CHECKPOINTS_DIR,
    LOGS_DIR,
    RunFolderError,
    TrainingProgress,
    append_metrics,
    check_run_dir,
    checkpoint_epoch,
    clear_run_dir,
    grid_path,
    image_grid,
    is_complete_checkpoint,
    mark_checkpoint_complete,
    save_pipeline,
    truncate_metrics,
    write_config,
    write_run_info,
)
from .sampling import Rollout, StochasticSampler, draw_normal

logger = logging.getLogger(__name__)


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the weights of that step were not applied."""


@dataclass
class EpochSamples:
    """One process's samples of an epoch, ready for the policy update."""

    latents: torch.Tensor  # (N, S + 1, C, H, W)
    log_probs: torch.Tensor  # (N, S)
    advantages: torch.Tensor  # (N,)


def _seed_for(*parts: int) -> int:
    """A well-mixed seed for one purpose (epoch, process, batch...), independent of global RNG state.

    Deriving every draw from the run seed and its position makes an interrupted-and-resumed run sample
    exactly what an uninterrupted one samples.
    """
    return int(np.random.SeedSequence([int(part) for part in parts]).generate_state(1)[0])


def _generator(*parts: int) -> torch.Generator:
    return torch.Generator().manual_seed(_seed_for(*parts))


NOISE, STEP_NOISE, SHUFFLE, GRID = range(4)


EpochSavedHook = Callable[[Path, int], None]
"""Called on the main process with (run folder, epoch) once an epoch's pipeline and checkpoint are saved."""


class DDPOTrainer:
    """Fine-tunes the UNet of a `DDPMPipeline` with DDPO so that a reward of its images goes up.

    `config` is read, never changed: the base model's resolved location goes into `run_info.json`.
    """

    def __init__(
        self,
        config: DDPOConfig,
        accelerator: Accelerator | None = None,
        *,
        on_epoch_saved: EpochSavedHook | None = None,
    ):
        self.config = config
        self.on_epoch_saved = on_epoch_saved
        self.run_dir = Path(config.output_dir)
        # Every refusal comes before anything is written, the Accelerator and the Hub repo included: a bad
        # setting, a fresh run into another run's folder, a resume that would change what the run trains.
        config.validate(accelerator.num_processes if accelerator is not None else _expected_processes())
        self.checkpoint = check_run_dir(self.run_dir, config)
        """The checkpoint `train` resumes from; None for a fresh run."""
        if accelerator is None:
            # accelerate keeps one process-wide state; a second run in the same process (a notebook, the
            # publish job, tests) may ask for another precision. The distributed set-up itself is kept.
            AcceleratorState._reset_state(reset_partial_state=False)
        self.accelerator = accelerator or Accelerator(
            cpu=_several_processes_without_gpu(),
            mixed_precision=config.mixed_precision,
            log_with="tensorboard",
            project_config=ProjectConfiguration(
                project_dir=str(self.run_dir),
                logging_dir=str(self.run_dir / LOGS_DIR),
                automatic_checkpoint_naming=True,
                total_limit=config.checkpoints_total_limit,
            ),
        )
        config.validate(self.accelerator.num_processes)
        if config.mixed_precision == "fp16" and self.accelerator.device.type == "cpu":
            raise ValueError(
                "--mixed-precision fp16 needs a GPU: accelerate does not autocast to fp16 on the CPU, so the run "
                "would silently be fp32. Use --mixed-precision bf16 or no on a CPU."
            )
        self.reward_fn = load_reward(config.reward)
        with self.accelerator.main_process_first():
            folder = fetch_pipeline_folder(config.base_model, revision=config.base_model_revision)
            unet, self.scheduler_config = load_unet_and_scheduler_config(folder)
        self.judge = load_judge(folder)
        """The base's subject judge, if it ships one: the subject figures of the fixed seeds."""
        source = resolve_model_path(config.base_model)
        self.base_model_path = str(Path(source).resolve()) if Path(source).exists() else source
        self.sampler = StochasticSampler.for_run(self.scheduler_config, config)
        cuda = self.accelerator.device.type == "cuda"
        if cuda and config.tf32:
            enable_tf32()
        self._channels_last = cuda and config.channels_last
        self.num_train_timesteps = max(1, int(config.timestep_fraction * self._trainable_steps()))
        self.accelerator.gradient_accumulation_steps = config.gradient_accumulation_steps * self.num_train_timesteps
        # The frozen base: the KL leash's reference, the fidelity metrics' baseline and the epoch-0 grid. With
        # LoRA it is the trained UNet with its adapters disabled, so no second copy of the weights is kept.
        self.base_unet = (
            None if config.use_lora else copy.deepcopy(unet).requires_grad_(False).eval().to(self.accelerator.device)
        )
        if self.base_unet is not None and self._channels_last:
            use_channels_last(self.base_unet)
        self.compiled = False
        """Whether the policy runs compiled: `--compile`, where torch.compile can run here."""
        self.unet, self.optimizer, self.ema = self._prepare_model(unet)
        self._base_fixed: Rollout | None = None  # the base's fixed-seed samples, drawn once per process start
        self._base_fixed_bytes: np.ndarray | None = None  # and their JPEG sizes, encoded once
        self.progress = TrainingProgress()
        self.tracker = (
            RewardStatTracker(config.stat_tracking_buffer_size, config.stat_tracking_min_count)
            if config.stat_tracking
            else None
        )
        self.accelerator.register_for_checkpointing(
            *[obj for obj in (self.progress, self.tracker, self.ema) if obj is not None]
        )
        self.sample_shape = (unet.config.in_channels, *_spatial_size(unet))
        self._nonfinite_losses = torch.zeros((), device=self.accelerator.device)  # since the epoch began

    # --- set-up -----------------------------------------------------------------------------------------

    def _prepare_model(self, unet: UNet2DModel):
        config = self.config
        if config.use_lora:
            from peft import LoraConfig, get_peft_model

            unet.requires_grad_(False)
            unet = get_peft_model(
                unet,
                LoraConfig(
                    r=config.lora_rank,
                    lora_alpha=config.lora_alpha,
                    target_modules=config.lora_target_modules,
                    init_lora_weights="gaussian",
                ),
            )
        if self._channels_last:
            use_channels_last(unet)
        if config.compile:
            self.compiled = compile_policy(unet, self.accelerator.device)
        parameters = [parameter for parameter in unet.parameters() if parameter.requires_grad]
        optimizer = torch.optim.AdamW(
            parameters,
            lr=config.learning_rate,
            betas=(config.adam_beta1, config.adam_beta2),
            weight_decay=config.adam_weight_decay,
            eps=config.adam_epsilon,
        )
        ema = EMAModel(parameters, decay=config.ema_decay) if config.use_ema else None
        unet, optimizer = self.accelerator.prepare(unet, optimizer)
        if ema is not None:
            ema.to(self.accelerator.device)
        return unet, optimizer, ema

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def _trainable_steps(self) -> int:
        """Steps each trajectory can be trained on: DDPO needs a stochastic step above `min_train_std`."""
        config = self.config
        trainable_steps = int(self.sampler.trainable.sum())
        if trainable_steps == 0:
            raise ValueError(
                f"No step of the {config.num_steps}-step {config.scheduler} sampler has a noise std above "
                f"--min-train-std {config.min_train_std} and at most --max-train-std {config.max_train_std} (the "
                f"largest is {self.sampler.step_std.max():.4f}); widen that range, or raise --eta or --num-steps."
            )
        return trainable_steps

    def _rollout_unet(self) -> Callable[..., torch.Tensor]:
        """The policy that samples the epoch's trajectories, ready to sample: DDPO samples on-policy.

        Compiled, it samples through the training graph, in train mode with gradients on, as re-scoring runs
        it: a graph of its own (eval mode, no gradients) would round differently and move the ratios off 1.
        """
        unet = self.accelerator.unwrap_model(self.unet)
        return TrainingGraph(unet.train()) if self.compiled else unet.eval()

    @contextmanager
    def _base_model(self) -> Iterator[Callable[..., torch.Tensor]]:
        """The frozen base model's forward (no gradients): a second UNet, or with LoRA the adapters switched off."""
        with torch.no_grad():
            if self.base_unet is not None:
                yield self.base_unet
            else:
                peft_model = self.accelerator.unwrap_model(self.unet)
                with peft_model.disable_adapter():
                    yield peft_model

    def _plain_unet(self) -> UNet2DModel:
        """The model as users load it: EMA weights if kept, LoRA merged in, no DDP or peft wrappers."""
        unet = self.accelerator.unwrap_model(self.unet)
        if self.ema is None and not self.config.use_lora:
            return unet
        unet = copy.deepcopy(unet)
        if self.ema is not None:
            self.ema.copy_to([parameter for parameter in unet.parameters() if parameter.requires_grad])
        if self.config.use_lora:
            unet = unet.merge_and_unload()
        return unet

    # --- the loop --------------------------------------------------------------------------------------

    def train(self) -> Path:
        """Run (or resume) the configured epochs; returns the run folder."""
        config, accelerator = self.config, self.accelerator
        set_seed(config.seed, device_specific=True)
        checkpoint = self.checkpoint
        if checkpoint is not None:
            try:
                accelerator.load_state(str(checkpoint))
            except Exception as error:  # a truncated or damaged file: say which checkpoint, and what to do
                raise RunFolderError(_damaged_checkpoint_message(checkpoint, error)) from error
            logger.info("Resumed from %s (epoch %d).", checkpoint, self.progress.epoch)
        if self.is_main:
            if config.overwrite and checkpoint is None and (removed := clear_run_dir(self.run_dir)):
                logger.info("--overwrite: deleted the earlier run's %s in %s.", ", ".join(removed), self.run_dir)
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_config(self.run_dir, config, resumed_after=self.progress.epoch if checkpoint is not None else None)
            truncate_metrics(self.run_dir, self.progress.epoch)
            with self._base_model() as base:
                self._base_fixed = self._sample_fixed_set(base)
            self._base_fixed_bytes = np.asarray(jpeg_sizes(self._base_fixed.images[: config.fidelity_num_images]))
            if not grid_path(self.run_dir, 0).exists():
                self._save_grid(0, self._base_fixed)
        accelerator.init_trackers("ddpo", config=_scalar_items(config.to_dict()))
        excluded = torch.nonzero(~self.sampler.trainable).squeeze(1).tolist()
        logger.info(
            "Training %s for %d epochs: %d samples/epoch, %d-step %s rollouts, %d of %d trainable steps "
            "trained per sample; not trained (deterministic, or noise std <= --min-train-std %g "
            "or > --max-train-std %g): %s.",
            config.base_model,
            config.epochs,
            config.num_samples,
            config.num_steps,
            config.scheduler,
            self.num_train_timesteps,
            int(self.sampler.trainable.sum()),
            config.min_train_std,
            config.max_train_std,
            ", ".join(f"{index} (std {self.sampler.step_std[index]:.4f})" for index in excluded) or "none",
        )
        with ThreadPoolExecutor(max_workers=2) as reward_pool:
            for epoch in range(self.progress.epoch + 1, config.epochs + 1):
                self._run_epoch(epoch, reward_pool)
        accelerator.wait_for_everyone()
        accelerator.end_training()
        return self.run_dir

    def _run_epoch(self, epoch: int, reward_pool: ThreadPoolExecutor) -> None:
        config, accelerator = self.config, self.accelerator
        started = time.perf_counter()
        samples, rewards, jpeg_bytes, seconds_sampling, seconds_reward = self._sample_epoch(epoch, reward_pool)

        gathered_rewards = accelerator.gather(torch.as_tensor(rewards, device=accelerator.device)).cpu().numpy()
        gathered_bytes = accelerator.gather(torch.as_tensor(jpeg_bytes, device=accelerator.device)).cpu().numpy()
        advantages = compute_advantages(gathered_rewards, config.adv_clip_max, self.tracker)
        local = slice(accelerator.process_index * len(rewards), (accelerator.process_index + 1) * len(rewards))
        samples.advantages = torch.as_tensor(advantages[local], dtype=torch.float32, device=accelerator.device)

        training_started = time.perf_counter()
        stats = self._train_epoch(epoch, samples)
        seconds_training = time.perf_counter() - training_started

        saving = epoch % config.save_every == 0 or epoch == config.epochs
        grid = saving and (epoch % config.grid_every == 0 or epoch == config.epochs)
        unet = fixed = None
        fidelity_started = time.perf_counter()
        if self.is_main and (config.fidelity_num_images > 0 or saving):
            unet = self._plain_unet()  # a merged copy when EMA or LoRA is on: build it once per epoch
            if config.fidelity_num_images > 0 or grid:
                fixed = self._sample_fixed_set(unet, with_kl=config.fidelity_num_images > 0)
        fidelity = self._fidelity(fixed) if fixed is not None and config.fidelity_num_images > 0 else {}
        seconds_fidelity = time.perf_counter() - fidelity_started

        self.progress.epoch = epoch
        self.progress.wall_time_seconds += time.perf_counter() - started
        row = {
            "epoch": epoch,
            "global_step": self.progress.global_step,
            "reward_mean": float(gathered_rewards.mean()),
            "reward_std": float(gathered_rewards.std()),
            "jpeg_kb_mean": float(gathered_bytes.mean() / 1000),
            "jpeg_bytes_mean": float(gathered_bytes.mean()),
            **stats,
            **fidelity,
            "seconds": round(time.perf_counter() - started, 3),
            "seconds_sampling": round(seconds_sampling, 3),
            "seconds_reward": round(seconds_reward, 3),
            "seconds_training": round(seconds_training, 3),
            "seconds_fidelity": round(seconds_fidelity, 3),
        }
        if self.is_main:
            accelerator.log(row, step=epoch)
        if self.is_main:
            append_metrics(self.run_dir, row)
            costs = (
                f", fixed seeds {row['jpeg_change_vs_base']:+.1%} JPEG at {describe(row)}"
                + (f", KL to base {row['kl_to_base']:.2e}" if "kl_to_base" in row else "")
                if fidelity
                else ""
            )
            step_stats = ", ".join(f"{name} {row[name]:.3g}" for name in self.step_stats)
            tqdm.write(
                f"epoch {epoch}/{config.epochs}: reward {row['reward_mean']:.4f} ± {row['reward_std']:.4f}, "
                f"JPEG {row['jpeg_kb_mean']:.3f} kB, {step_stats}"
                f"{costs}, {row['seconds']:.1f}s (sample {seconds_sampling:.1f}, train {seconds_training:.1f})"
            )
        if saving:
            self._save(epoch, unet, fixed if grid else None)

    # --- sampling and rewards -----------------------------------------------------------------------

    def _sample_epoch(self, epoch: int, reward_pool: ThreadPoolExecutor):
        """Roll out this process's share of the epoch; rewards are computed while the next batch samples."""
        config, accelerator = self.config, self.accelerator
        rank = accelerator.process_index
        num_batches = config.num_samples // (config.sample_batch_size * accelerator.num_processes)
        unet = self._rollout_unet()
        rollouts: list[Rollout] = []
        pending: list[Future[RewardOutput]] = []
        started = time.perf_counter()
        for batch in tqdm(range(num_batches), desc=f"epoch {epoch} sampling", disable=not self.is_main, leave=False):
            noise_generator = _generator(config.seed, NOISE, epoch, rank, batch)
            noise = draw_normal((config.sample_batch_size, *self.sample_shape), noise_generator, accelerator.device)
            rollout = self.sampler.rollout(
                unet,
                noise,
                generator=_generator(config.seed, STEP_NOISE, epoch, rank, batch),
                autocast=accelerator.autocast,
                forward_batch_size=config.train_batch_size,
            )
            rollouts.append(rollout)
            pending.append(reward_pool.submit(_reward_when_copied, self.reward_fn, *_copy_to_host(rollout.images)))
        if accelerator.device.type == "cuda":  # once per epoch: the seconds count the GPU's work, not its queue
            torch.cuda.synchronize(accelerator.device)
        seconds_sampling = time.perf_counter() - started
        waited = time.perf_counter()
        outputs = [future.result() for future in pending]
        seconds_reward = time.perf_counter() - waited
        rewards = np.concatenate([values for values, _ in outputs])
        jpeg_bytes = np.concatenate(
            [
                info["jpeg_bytes"] if "jpeg_bytes" in info else _jpeg_bytes(rollout)
                for (_, info), rollout in zip(outputs, rollouts, strict=True)
            ]
        )
        return self._epoch_samples(rollouts), rewards, jpeg_bytes, seconds_sampling, seconds_reward

    def _epoch_samples(self, rollouts: list[Rollout]) -> EpochSamples:
        """What the update needs of the rollouts: DDPO re-scores every recorded step."""
        return EpochSamples(
            latents=torch.cat([rollout.latents for rollout in rollouts]),
            log_probs=torch.cat([rollout.log_probs for rollout in rollouts]),
            advantages=torch.empty(0),
        )

    # --- the policy update ----------------------------------------------------------------------------

    def _train_epoch(self, epoch: int, samples: EpochSamples) -> dict[str, float]:
        config, accelerator = self.config, self.accelerator
        rank, device = accelerator.process_index, accelerator.device
        trainable = self._train_step_candidates()
        num_samples = samples.latents.shape[0]
        num_minibatches = num_samples // config.train_batch_size
        totals = torch.zeros(len(self.step_stats), device=device)  # synced once per epoch
        count = 0
        self._nonfinite_losses.zero_()
        self.unet.train()
        bar = tqdm(
            total=config.num_inner_epochs * num_minibatches * self.num_train_timesteps,
            desc=f"epoch {epoch} training",
            disable=not self.is_main,
            leave=False,
        )
        for inner in range(config.num_inner_epochs):
            # Minibatches keep the rows the sampler fed the UNet together, in the same positions, so an
            # unchanged model re-scores them exactly; their order and each sample's timesteps are shuffled.
            generator = _generator(config.seed, SHUFFLE, epoch, rank, inner)
            minibatch_order = torch.randperm(num_minibatches, generator=generator)
            step_order = torch.stack(
                [trainable[torch.randperm(len(trainable), generator=generator)] for _ in range(num_samples)]
            )[:, : self.num_train_timesteps].to(device)
            for minibatch in minibatch_order.tolist():
                start = minibatch * config.train_batch_size
                rows = torch.arange(start, start + config.train_batch_size, device=device)
                for column in range(self.num_train_timesteps):
                    step_index = step_order[rows, column]
                    totals += self._train_step(samples, rows, step_index, epoch)
                    count += 1
                    bar.update()
        bar.close()
        # Every process runs the same number of steps, so the mean of the per-process means is the global mean.
        means = accelerator.reduce(totals / max(count, 1), reduction="mean").tolist()
        return dict(zip(self.step_stats, means, strict=True))

    step_stats = ("loss", "approx_kl", "clipfrac", "kl_penalty")
    """What `_train_step` returns, averaged over the epoch into metrics.jsonl."""

    def _train_step_candidates(self) -> torch.Tensor:
        """Step indices a trajectory may be trained on: DDPO's stochastic steps within the std range."""
        return torch.nonzero(self.sampler.trainable).squeeze(1)

    def _train_step(
        self, samples: EpochSamples, rows: torch.Tensor, step_index: torch.Tensor, epoch: int
    ) -> torch.Tensor:
        """One PPO-clipped policy-gradient step on one timestep of a minibatch; returns (loss, kl, clipfrac)."""
        config, accelerator = self.config, self.accelerator
        sample = samples.latents[rows, step_index]
        next_sample = samples.latents[rows, step_index + 1]
        old_log_prob = samples.log_probs[rows, step_index]
        advantages = samples.advantages[rows]
        with accelerator.accumulate(self.unet):
            if config.kl_coef > 0:  # the base's step policy first, so disabling LoRA adapters never meets the graph
                with self._base_model() as base:
                    base_mean = self.sampler.predict_mean(base, sample, step_index, accelerator.autocast)
            mean = self.sampler.predict_mean(self.unet, sample, step_index, accelerator.autocast)
            log_prob = self.sampler.log_prob(next_sample, mean, step_index)
            policy = ppo_clip_loss(log_prob, old_log_prob, advantages, config.clip_range)
            loss = policy.loss
            kl = torch.zeros((), device=mean.device)
            if config.kl_coef > 0:
                kl = gaussian_kl(mean, base_mean, self.sampler.step_tables(mean.device).std[step_index]).mean()
                loss = loss + config.kl_coef * kl
            self._backward_and_step(loss, epoch)
        self._after_step()
        return torch.stack([loss.detach(), policy.approx_kl, policy.clipfrac, kl.detach()])

    def _backward_and_step(self, loss: torch.Tensor, epoch: int) -> None:
        """Inside `accelerator.accumulate`: back-propagate; on a sync step check, clip and apply the gradients."""
        accelerator = self.accelerator
        self._nonfinite_losses += (~torch.isfinite(loss.detach())).float()
        accelerator.backward(loss)
        if accelerator.sync_gradients:
            self._check_finite(epoch)
            accelerator.clip_grad_norm_(self.unet.parameters(), self.config.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad()

    def _after_step(self) -> None:
        """After an optimizer step: count it and move the EMA weights."""
        if self.accelerator.sync_gradients:
            self.progress.global_step += 1
            if self.ema is not None:
                self.ema.step([parameter for parameter in self.unet.parameters() if parameter.requires_grad])

    def _check_finite(self, epoch: int) -> None:
        """Stop before a NaN/inf loss reaches the weights; every process stops together.

        Checked once per optimizer step (one host sync), just before the accumulated gradients are applied.
        """
        bad = self._nonfinite_losses
        if self.accelerator.num_processes > 1:
            bad = self.accelerator.reduce(bad.clone(), reduction="sum")
        num_bad = int(bad.item())
        if num_bad:
            last = self.progress.epoch
            where = f"checkpoint_{last} in {self.run_dir / CHECKPOINTS_DIR}" if last else "none: no epoch completed"
            raise TrainingDivergedError(
                f"The {self.config.algorithm.upper()} loss became NaN or infinite during epoch {epoch} "
                f"({num_bad} of the steps accumulated for one optimizer step); training stopped before applying them. "
                f"The last good checkpoint is {where} (the run folder's pipeline is from epoch {last}). "
                "Resume with --resume latest and a lower --learning-rate or --mixed-precision no."
            )

    # --- outputs -----------------------------------------------------------------------------------------

    @property
    def _fixed_set_size(self) -> int:
        """Images of the fixed-seed set: the fidelity images and the grid's (the first `grid_size`)."""
        return max(self.config.fidelity_num_images, self.config.grid_size)

    @torch.no_grad()
    def _sample_fixed_set(self, unet: Callable[..., torch.Tensor], *, with_kl: bool = False) -> Rollout:
        """The fixed-seed samples (same initial and per-step noise every time), so epochs pair up seed by seed.

        `with_kl` also records each step's KL to the base model's step policy.
        """
        if hasattr(unet, "eval"):
            unet.eval()
        seed, device, size = self.config.seed, self.accelerator.device, self._fixed_set_size
        noise = torch.randn((size, *self.sample_shape), generator=_generator(seed, GRID, 0))
        parts = []
        # Eager even when compiled: its batch sizes and eval mode are not training's, and would compile graphs of
        # their own (no ratio is taken of these samples).
        with torch.compiler.set_stance("force_eager") if self.compiled else nullcontext():
            for start in range(0, size, self.config.sample_batch_size):
                stop = min(start + self.config.sample_batch_size, size)
                with self._base_model() if with_kl else nullcontext() as base:
                    parts.append(
                        self.sampler.rollout(
                            unet,
                            noise[start:stop].to(device),
                            generator=_generator(seed, GRID, 1, start),
                            autocast=self.accelerator.autocast,
                            reference=base,
                        )
                    )
        return Rollout(
            latents=torch.cat([part.latents[:, -1:] for part in parts]),  # the images are all that is kept
            timesteps=parts[0].timesteps,
            log_probs=torch.cat([part.log_probs for part in parts]),
            trainable=parts[0].trainable,
            kl_to_reference=torch.cat([part.kl_to_reference for part in parts]) if with_kl else None,
        )

    def _fidelity(self, fixed: Rollout) -> dict[str, float]:
        """What this epoch's model costs, on the fixed seeds against the base's images of the same seeds."""
        size = self.config.fidelity_num_images
        images, base_images = fixed.images[:size], self._base_fixed.images[:size]
        sizes, base_sizes = np.asarray(jpeg_sizes(images)), self._base_fixed_bytes
        # Over the trained steps, as the leash sees it: the near-deterministic ones divide by a tiny std.
        # A deterministic sampler (NFT with eta 0) has no step policies and so no KL: the key is left out.
        kl = fixed.kl_to_reference[:size][:, self.sampler.trainable.to(fixed.kl_to_reference.device)]
        return {
            "fidelity_jpeg_bytes_mean": float(sizes.mean()),
            "jpeg_change_vs_base": float(sizes.mean() / base_sizes.mean() - 1),
            **fidelity_to_base(images, base_images, self.judge),
            **({"kl_to_base": float(kl.mean())} if kl.numel() else {}),
        }

    def _save_grid(self, epoch: int, fixed: Rollout) -> None:
        path = grid_path(self.run_dir, epoch)
        path.parent.mkdir(parents=True, exist_ok=True)
        image_grid(fixed.images[: self.config.grid_size]).save(path)

    def _save(self, epoch: int, unet: UNet2DModel | None, fixed: Rollout | None) -> None:
        """Pipeline, grid and run facts first (main process), then the checkpoint that marks the epoch complete."""
        accelerator = self.accelerator
        stale = self.run_dir / CHECKPOINTS_DIR / f"checkpoint_{epoch}"
        if self.is_main and stale.exists():
            # Left by a save that was interrupted, or by the timeline a resume from an earlier checkpoint
            # replaced: accelerate refuses to save over it. Removed before the barrier every process passes.
            shutil.rmtree(stale)
        accelerator.wait_for_everyone()
        if self.is_main:
            save_pipeline(unet, self.scheduler_config, self.run_dir)
            if fixed is not None:
                self._save_grid(epoch, fixed)
            write_run_info(
                self.run_dir, base_model_path=self.base_model_path, hardware=self._hardware(), progress=self.progress
            )
        accelerator.project_configuration.iteration = epoch
        checkpoint = accelerator.save_state()
        accelerator.wait_for_everyone()
        if self.is_main:
            mark_checkpoint_complete(Path(checkpoint), self.progress)
            if self.on_epoch_saved is not None:
                self.on_epoch_saved(self.run_dir, epoch)

    def _hardware(self) -> dict:
        device = self.accelerator.device
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{device.type} ({_cpu_name()})"
        return {
            "device": name,
            "num_processes": self.accelerator.num_processes,
            "mixed_precision": self.config.mixed_precision,
            "torch_threads": torch.get_num_threads(),
        }


def _expected_processes() -> int:
    """The process count `Accelerator` will find (`accelerate launch` sets WORLD_SIZE), known before creating it."""
    return max(1, int(os.environ.get("WORLD_SIZE", "1")))


def _damaged_checkpoint_message(checkpoint: Path, error: BaseException) -> str:
    others = sorted(
        (
            path
            for path in checkpoint.parent.glob("checkpoint_*")
            if path != checkpoint and is_complete_checkpoint(path)
        ),
        key=checkpoint_epoch,
    )
    hint = (
        f"resume from the newest other complete one with --resume {others[-1]}"
        if others
        else "no other complete checkpoint is left: start over with --overwrite"
    )
    detail = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return (
        f"Checkpoint {checkpoint} could not be loaded ({type(error).__name__}{': ' + detail if detail else ''}): "
        f"one of its files is damaged or truncated. {hint[0].upper()}{hint[1:]}."
    )


def _several_processes_without_gpu() -> bool:
    """`accelerate launch --multi_gpu --num_processes N` on a CPU-only machine: use gloo, not N solo runs."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()


def _spatial_size(unet: UNet2DModel) -> tuple[int, int]:
    size = unet.config.sample_size
    return (size, size) if isinstance(size, int) else tuple(size)


def _copy_to_host(tensor: torch.Tensor) -> tuple[torch.Tensor, torch.cuda.Event | None]:
    """Start copying a GPU tensor to pinned host memory; returns the copy and the event that marks it done.

    `.cpu()` would make the host wait for the GPU to finish the batch before queueing the next one's kernels.
    """
    if tensor.device.type != "cuda":
        return tensor.cpu(), None
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    host.copy_(tensor, non_blocking=True)
    copied = torch.cuda.Event()
    copied.record()
    return host, copied


def _reward_when_copied(
    reward_fn: Callable[[torch.Tensor], RewardOutput], images: torch.Tensor, copied: torch.cuda.Event | None
) -> RewardOutput:
    """In the reward thread: wait for the images' copy to the host (`_copy_to_host`), then reward them."""
    if copied is not None:
        copied.synchronize()
    return reward_fn(images)


def _jpeg_bytes(rollout: Rollout) -> np.ndarray:
    return np.asarray(jpeg_sizes(rollout.images), dtype=np.int64)


def _cpu_name() -> str:
    return platform.processor() or platform.machine()


def _scalar_items(values: dict) -> dict:
    """TensorBoard hparams accept scalars and strings only."""
    return {key: value if isinstance(value, (int, float, str, bool)) else str(value) for key, value in values.items()}


def train(config: DDPOConfig) -> Path:
    """Fine-tune with DDPO as configured; returns the run folder."""
    return DDPOTrainer(config).train()
