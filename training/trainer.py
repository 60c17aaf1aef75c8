"""The algorithm-neutral trainer core: epochs of sample -> reward -> advantages -> update -> save, on accelerate.

An algorithm (`ddpo.DDPOTrainer`, `nft.NFTTrainer`) subclasses `Trainer` and supplies only what differs: the
policy that samples, what its update keeps of the rollouts, which steps it trains, the loss of one step. The
core owns the rest: set-up, the run folder, checkpoints and exact resume, rewards in a thread while the next
batch samples, advantages, the per-epoch fidelity on fixed seeds, the report. An epoch is three public phases,
`sample_epoch` -> `Rollouts`, `gather_rewards` -> `EpochRewards`, `update` -> `UpdateStats`, composed by
`run_epoch`. Evaluation and publishing are composed around the trainer (`workflow.run_training`), which hears about
each saved epoch through `on_epoch_saved`.
"""

from __future__ import annotations

import logging
import shutil
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from diffusers import UNet2DModel
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from .advantages import RewardStatTracker, compute_advantages
from .components import (
    adamw,
    add_lora_adapters,
    expected_processes,
    frozen_copy,
    make_accelerator,
    plain_unet,
    sample_shape,
)
from .config import TrainConfig
from .fixed_seeds import FixedSeeds
from .jpeg import jpeg_sizes
from .judge import load_judge
from .performance import compile_policy, enable_tf32, use_channels_last
from .phases import EpochRewards, Minibatch, Rollouts, SamplesT, StepLoss, UpdateStats
from .pipelines import fetch_pipeline_folder, load_unet_and_scheduler_config, resolve_model_path
from .report import hparams, metrics_row, progress_line
from .rewards import RewardOutput, load_reward, reward_in_background
from .run_folder import (
    CHECKPOINTS_DIR,
    RunFolderError,
    TrainingProgress,
    append_metrics,
    check_run_dir,
    clear_run_dir,
    damaged_checkpoint_message,
    grid_path,
    hardware,
    mark_checkpoint_complete,
    save_grid,
    save_pipeline,
    truncate_metrics,
    write_config,
    write_run_info,
)
from .sampling import Rollout, StochasticSampler, draw_normal
from .seeds import Purpose, generator

if TYPE_CHECKING:
    from .ddpo import DDPOTrainer

logger = logging.getLogger(__name__)


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the weights of that step were not applied."""


EpochSavedHook = Callable[[Path, int], None]
"""Called on the main process with (run folder, epoch) once an epoch's pipeline and checkpoint are saved."""


class Trainer(ABC, Generic[SamplesT]):
    """Fine-tunes the UNet of a `DDPMPipeline` so that a reward of its images goes up; see the module docstring.

    `config` is read, never changed: the base model's resolved location goes into `run_info.json`.
    """

    step_stats: ClassVar[tuple[str, ...]]
    """The names of `StepLoss.stats`, averaged over each epoch into metrics.jsonl."""

    def __init__(
        self,
        config: TrainConfig,
        accelerator: Accelerator | None = None,
        *,
        on_epoch_saved: EpochSavedHook | None = None,
    ):
        self.config = config
        self.on_epoch_saved = on_epoch_saved
        self.run_dir = Path(config.output_dir)
        # Every refusal comes before anything is written, the Accelerator and the Hub repo included: a bad
        # setting, a fresh run into another run's folder, a resume that would change what the run trains.
        config.validate(accelerator.num_processes if accelerator is not None else expected_processes())
        self.checkpoint = check_run_dir(self.run_dir, config)
        """The checkpoint `train` resumes from; None for a fresh run."""
        self.accelerator = accelerator or make_accelerator(config)
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
        judge = load_judge(folder)  # the base's subject judge, if it ships one: the fixed seeds' subject figures
        source = resolve_model_path(config.base_model)
        self.base_model_path = str(Path(source).resolve()) if Path(source).exists() else source
        self.sampler = StochasticSampler.for_run(self.scheduler_config, config)
        cuda = self.accelerator.device.type == "cuda"
        if cuda and config.tf32:
            enable_tf32()
        self._channels_last = cuda and config.channels_last
        self.num_train_timesteps = max(1, int(config.timestep_fraction * len(self.trained_steps())))
        """Rollout steps each sample is trained on per inner epoch, drawn at random from `trained_steps`."""
        self.accelerator.gradient_accumulation_steps = config.gradient_accumulation_steps * self.num_train_timesteps
        # The frozen base: the KL leash's reference, the fidelity metrics' baseline and the epoch-0 grid. With
        # LoRA it is the trained UNet with its adapters disabled, so no second copy of the weights is kept.
        self.base_unet = None if config.use_lora else frozen_copy(unet, self.accelerator.device, self._channels_last)
        self.sample_shape = sample_shape(unet)
        self.compiled = False
        """Whether the policy runs compiled: `--compile`, where torch.compile can run here."""
        self.unet, self.optimizer, self.ema = self._prepare_model(unet)
        self.fixed_seeds = FixedSeeds(config, self.sampler, self.sample_shape, self.accelerator, judge, self.compiled)
        """The fixed-seed set: the sample grids, and the per-epoch fidelity to the base (and its subject judge's)."""
        self.progress = TrainingProgress()
        self.tracker = (
            RewardStatTracker(config.stat_tracking_buffer_size, config.stat_tracking_min_count)
            if config.stat_tracking
            else None
        )
        # The order of registration is the order of the checkpoint's files: an algorithm registers after these.
        self.accelerator.register_for_checkpointing(
            *[obj for obj in (self.progress, self.tracker, self.ema) if obj is not None]
        )
        self._nonfinite_losses = torch.zeros((), device=self.accelerator.device)  # since the epoch began

    # --- what an algorithm supplies ----------------------------------------------------------------------

    @abstractmethod
    def rollout_policy(self) -> Callable[..., torch.Tensor]:
        """The model that samples the epoch's rollouts, ready to sample."""

    @abstractmethod
    def trained_steps(self) -> torch.Tensor:
        """Indices of the rollout steps a sample may be trained on; raise ValueError if there are none."""

    @abstractmethod
    def collect(self, rollouts: list[Rollout]) -> SamplesT:
        """What the update keeps of this process's rollout batches, in sampling order."""

    @abstractmethod
    def loss(self, samples: SamplesT, batch: Minibatch) -> StepLoss:
        """The loss of one training step on `batch` (inside `accelerator.accumulate`)."""

    @abstractmethod
    def describe_update(self) -> str:
        """The start-up log's account of what the update trains on."""

    def after_update(self) -> None:
        """Called at the end of every epoch's update, after its last optimizer step; nothing by default."""

    # --- set-up -----------------------------------------------------------------------------------------

    def _prepare_model(self, unet: UNet2DModel) -> tuple[torch.nn.Module, torch.optim.Optimizer, EMAModel | None]:
        """The trained UNet (with LoRA adapters under `use_lora`), its optimizer and EMA, prepared by accelerate."""
        config = self.config
        if config.use_lora:
            unet = add_lora_adapters(unet, config)
        if self._channels_last:
            use_channels_last(unet)
        if config.compile:
            self.compiled = compile_policy(unet, self.accelerator.device)
        parameters = [parameter for parameter in unet.parameters() if parameter.requires_grad]
        optimizer = adamw(parameters, config)
        ema = EMAModel(parameters, decay=config.ema_decay) if config.use_ema else None
        unet, optimizer = self.accelerator.prepare(unet, optimizer)
        if ema is not None:
            ema.to(self.accelerator.device)
        return unet, optimizer, ema

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @contextmanager
    def frozen_base(self) -> Iterator[Callable[..., torch.Tensor]]:
        """The frozen base model's forward (no gradients): a second UNet, or with LoRA the adapters switched off."""
        with torch.no_grad():
            if self.base_unet is not None:
                yield self.base_unet
            else:
                peft_model = self.accelerator.unwrap_model(self.unet)
                with peft_model.disable_adapter():
                    yield peft_model

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
                raise RunFolderError(damaged_checkpoint_message(checkpoint, error)) from error
            logger.info("Resumed from %s (epoch %d).", checkpoint, self.progress.epoch)
        if self.is_main:
            if config.overwrite and checkpoint is None and (removed := clear_run_dir(self.run_dir)):
                logger.info("--overwrite: deleted the earlier run's %s in %s.", ", ".join(removed), self.run_dir)
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_config(self.run_dir, config, resumed_after=self.progress.epoch if checkpoint is not None else None)
            truncate_metrics(self.run_dir, self.progress.epoch)
            with self.frozen_base() as base:
                base_fixed = self.fixed_seeds.sample_base(base)
            if not grid_path(self.run_dir, 0).exists():
                save_grid(self.run_dir, 0, base_fixed.images[: config.grid_size])
        accelerator.init_trackers("ddpo", config=hparams(config))
        logger.info(
            "Training %s with %s for %d epochs: %d samples/epoch, %d-step %s rollouts, %s.",
            config.base_model,
            config.algorithm.upper(),
            config.epochs,
            config.num_samples,
            config.num_steps,
            config.scheduler,
            self.describe_update(),
        )
        with ThreadPoolExecutor(max_workers=2) as reward_pool:
            for epoch in range(self.progress.epoch + 1, config.epochs + 1):
                self.run_epoch(epoch, reward_pool)
        accelerator.wait_for_everyone()
        accelerator.end_training()
        return self.run_dir

    def run_epoch(self, epoch: int, reward_pool: Executor | None = None) -> dict[str, Any]:
        """One epoch: sample, reward, update, measure the fixed seeds, report and (every `save_every`) save.

        Args:
            epoch: the epoch to run, from 1; it seeds the epoch's draws (`seeds.Purpose`).
            reward_pool: where rewards run while the next batch samples (`sample_epoch`).

        Returns:
            The epoch's metrics row, as appended to metrics.jsonl on the main process.
        """
        config = self.config
        started = time.perf_counter()
        rollouts = self.sample_epoch(epoch, reward_pool)
        rewards = self.gather_rewards(rollouts)
        update = self.update(epoch, rollouts, rewards.advantages)

        saving = epoch % config.save_every == 0 or epoch == config.epochs
        grid = saving and (epoch % config.grid_every == 0 or epoch == config.epochs)
        unet = fixed = None
        fidelity_started = time.perf_counter()
        if self.is_main and (config.fidelity_num_images > 0 or saving):
            # A merged copy when EMA or LoRA is on: built once per epoch.
            unet = plain_unet(self.accelerator.unwrap_model(self.unet), self.ema, config.use_lora)
            if config.fidelity_num_images > 0 or grid:
                fixed = self.fixed_seeds.sample(unet, self.frozen_base if config.fidelity_num_images > 0 else None)
        fidelity = self.fixed_seeds.fidelity(fixed) if fixed is not None and config.fidelity_num_images > 0 else {}
        seconds_fidelity = time.perf_counter() - fidelity_started

        self.progress.epoch = epoch
        self.progress.wall_time_seconds += time.perf_counter() - started
        seconds = {
            "seconds": time.perf_counter() - started,
            "seconds_sampling": rollouts.seconds_sampling,
            "seconds_reward": rollouts.seconds_reward,
            "seconds_training": update.seconds,
            "seconds_fidelity": seconds_fidelity,
        }
        row = metrics_row(epoch, self.progress.global_step, rewards, update, fidelity, seconds)
        if self.is_main:
            self.accelerator.log(row, step=epoch)
            append_metrics(self.run_dir, row)
            tqdm.write(progress_line(row, config.epochs, self.step_stats))
        if saving:
            self._save(epoch, unet, fixed if grid else None)
        return row

    # --- the phases ------------------------------------------------------------------------------------

    def sample_epoch(self, epoch: int, reward_pool: Executor | None = None) -> Rollouts[SamplesT]:
        """Roll out this process's share of the epoch's samples with `rollout_policy`, and reward them.

        Args:
            epoch: the epoch, from 1: it seeds the initial and per-step noise of each batch.
            reward_pool: an executor the rewards run in, each batch's while the next one samples; without one
                each batch is rewarded as soon as it is sampled.

        Returns:
            The batches as the algorithm's update keeps them (`collect`), their rewards and JPEG sizes.
        """
        config, accelerator = self.config, self.accelerator
        rank = accelerator.process_index
        num_batches = config.num_samples // (config.sample_batch_size * accelerator.num_processes)
        unet = self.rollout_policy()
        rollouts: list[Rollout] = []
        pending: list[Future[RewardOutput]] = []
        started = time.perf_counter()
        for batch in tqdm(range(num_batches), desc=f"epoch {epoch} sampling", disable=not self.is_main, leave=False):
            noise_generator = generator(config.seed, Purpose.NOISE, epoch, rank, batch)
            noise = draw_normal((config.sample_batch_size, *self.sample_shape), noise_generator, accelerator.device)
            rollout = self.sampler.rollout(
                unet,
                noise,
                generator=generator(config.seed, Purpose.STEP_NOISE, epoch, rank, batch),
                autocast=accelerator.autocast,
                forward_batch_size=config.train_batch_size,
            )
            rollouts.append(rollout)
            pending.append(reward_in_background(self.reward_fn, rollout.images, reward_pool))
        if accelerator.device.type == "cuda":  # once per epoch: the seconds count the GPU's work, not its queue
            torch.cuda.synchronize(accelerator.device)
        seconds_sampling = time.perf_counter() - started
        waited = time.perf_counter()
        outputs = [future.result() for future in pending]
        seconds_reward = time.perf_counter() - waited
        jpeg_bytes = [
            info["jpeg_bytes"] if "jpeg_bytes" in info else np.asarray(jpeg_sizes(rollout.images), dtype=np.int64)
            for (_, info), rollout in zip(outputs, rollouts, strict=True)
        ]
        return Rollouts(
            samples=self.collect(rollouts),
            rewards=np.concatenate([values for values, _ in outputs]),
            jpeg_bytes=np.concatenate(jpeg_bytes),
            seconds_sampling=seconds_sampling,
            seconds_reward=seconds_reward,
        )

    def gather_rewards(self, rollouts: Rollouts[SamplesT]) -> EpochRewards:
        """Gather every process's rewards and turn them into advantages (moving the stat tracker, if on).

        Args:
            rollouts: this process's rollouts of the epoch (`sample_epoch`).

        Returns:
            The gathered rewards and JPEG sizes, and this process's samples' advantages.
        """
        accelerator = self.accelerator
        rewards = accelerator.gather(torch.as_tensor(rollouts.rewards, device=accelerator.device)).cpu().numpy()
        jpeg_bytes = accelerator.gather(torch.as_tensor(rollouts.jpeg_bytes, device=accelerator.device)).cpu().numpy()
        advantages = compute_advantages(rewards, self.config.adv_clip_max, self.tracker)
        size = len(rollouts.rewards)
        local = slice(accelerator.process_index * size, (accelerator.process_index + 1) * size)
        return EpochRewards(
            rewards=rewards,
            jpeg_bytes=jpeg_bytes,
            advantages=torch.as_tensor(advantages[local], dtype=torch.float32, device=accelerator.device),
        )

    def update(self, epoch: int, rollouts: Rollouts[SamplesT], advantages: torch.Tensor) -> UpdateStats:
        """The policy update of one epoch: `num_inner_epochs` shuffled passes over this process's samples.

        Minibatches keep the rows the sampler fed the UNet together, in the same positions, so an unchanged
        model re-scores them exactly; their order and each sample's `num_train_timesteps` are shuffled.

        Args:
            epoch: the epoch, from 1: it seeds the shuffle.
            rollouts: this process's rollouts of the epoch (`sample_epoch`).
            advantages: (N,) their advantages (`gather_rewards`), on the device.

        Returns:
            The `step_stats` averaged over the epoch's training steps and every process, and the seconds taken.
        """
        config, accelerator = self.config, self.accelerator
        started = time.perf_counter()
        rank, device = accelerator.process_index, accelerator.device
        trained = self.trained_steps()
        num_samples = len(rollouts.rewards)
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
            shuffle = generator(config.seed, Purpose.SHUFFLE, epoch, rank, inner)
            minibatch_order = torch.randperm(num_minibatches, generator=shuffle)
            step_order = torch.stack(
                [trained[torch.randperm(len(trained), generator=shuffle)] for _ in range(num_samples)]
            )[:, : self.num_train_timesteps].to(device)
            for minibatch in minibatch_order.tolist():
                start = minibatch * config.train_batch_size
                rows = torch.arange(start, start + config.train_batch_size, device=device)
                for column in range(self.num_train_timesteps):
                    batch = Minibatch(rows, step_order[rows, column], advantages[rows], epoch, position=count)
                    with accelerator.accumulate(self.unet):
                        step = self.loss(rollouts.samples, batch)
                        self._backward_and_step(step.loss, epoch)
                    self._after_step()
                    totals += step.stats
                    count += 1
                    bar.update()
        bar.close()
        self.after_update()
        # Every process runs the same number of steps, so the mean of the per-process means is the global mean.
        means = accelerator.reduce(totals / max(count, 1), reduction="mean").tolist()
        return UpdateStats(dict(zip(self.step_stats, means, strict=True)), time.perf_counter() - started)

    # --- inside the update -------------------------------------------------------------------------------

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
                save_grid(self.run_dir, epoch, fixed.images[: self.config.grid_size])
            write_run_info(
                self.run_dir,
                base_model_path=self.base_model_path,
                hardware=hardware(accelerator.device, accelerator.num_processes, self.config.mixed_precision),
                progress=self.progress,
            )
        accelerator.project_configuration.iteration = epoch
        checkpoint = accelerator.save_state()
        accelerator.wait_for_everyone()
        if self.is_main:
            mark_checkpoint_complete(Path(checkpoint), self.progress)
            if self.on_epoch_saved is not None:
                self.on_epoch_saved(self.run_dir, epoch)


def __getattr__(name: str) -> type[DDPOTrainer]:
    """`DDPOTrainer` from here too, where it lived before the algorithms became siblings (`ddpo.DDPOTrainer`)."""
    if name == "DDPOTrainer":
        from .ddpo import DDPOTrainer

        return DDPOTrainer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
