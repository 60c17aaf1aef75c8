"""What `ddpo-train` does, as one Python call: train, then evaluate, write the card and publish.

The trainer only trains; the parts around it are composed here, in the order data flows: run folder ->
evaluation -> card -> Hub.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .config import Algorithm, TrainConfig

if TYPE_CHECKING:
    from .trainer import Trainer


def trainer_class(algorithm: Algorithm) -> type[Trainer]:
    """The trainer of `--algorithm`: `DDPOTrainer` or `NFTTrainer` (one core, run folder and outputs)."""
    if algorithm == "nft":
        from .nft import NFTTrainer

        return NFTTrainer
    from .ddpo import DDPOTrainer

    return DDPOTrainer


def check_eval_settings(config: TrainConfig) -> None:
    """Resolve the end-of-run evaluation's samplers now, so a bad `--eval-*` setting fails before training."""
    from .evaluate import ROLLOUT, parse_num_inference_steps, resolve_samplers

    schedulers = config.eval_schedulers
    steps = parse_num_inference_steps(config.eval_num_inference_steps, [name for name in schedulers if name != ROLLOUT])
    resolve_samplers(schedulers, steps, rollout=(config.scheduler, config.num_steps, config.eta))


def run_training(config: TrainConfig) -> Path:
    """Train, then evaluate (`eval_num_images` > 0) and publish (`push_to_hub`): what `ddpo-train` does.

    Publishing is composed around the trainer: intermediate epochs are pushed as the trainer saves them
    (every `push_every`), the last one after the evaluation so that its card carries the results.
    """
    publisher = None

    def push_saved_epoch(run_dir: Path, epoch: int) -> None:
        if publisher is not None and epoch % config.push_every == 0 and epoch != config.epochs:
            publisher.push_epoch(run_dir, epoch)

    trainer = trainer_class(config.algorithm)(config, on_epoch_saved=push_saved_epoch)
    if config.eval_num_images > 0:  # the evaluation runs after training: its settings are checked before
        check_eval_settings(config)
    if config.push_to_hub and trainer.is_main:  # before training: a bad repo or token fails fast
        from .publish.hub import HubPublisher
        from .run_folder import checkpoint_epoch

        publisher = HubPublisher(
            config.push_to_hub,
            private=config.hub_private,
            revision=config.hub_revision,
            replace_earlier_run=trainer.checkpoint is None,
        )
        if trainer.checkpoint is not None:  # epochs an earlier process staged but never published go first
            publisher.push_pending(trainer.run_dir, up_to=checkpoint_epoch(trainer.checkpoint))
    try:
        run_dir = trainer.train()
        finished = trainer.progress.epoch == config.epochs
        if finished and trainer.is_main and config.eval_num_images > 0:
            from .evaluate import evaluate_run

            evaluate_run(
                run_dir,
                schedulers=config.eval_schedulers,
                num_inference_steps=config.eval_num_inference_steps,
                num_images=config.eval_num_images,
                seed=config.seed,
                device=str(trainer.accelerator.device),
            )
        if finished and trainer.is_main:
            from ddpo_hub.model_card.render import write_card

            write_card(run_dir, run_dir, repo_id=config.push_to_hub)
        if finished and publisher is not None:  # the last epoch, or (already pushed) the card with the evaluation
            publisher.push_latest(run_dir)
    finally:
        if publisher is not None:
            publisher.wait()  # uploads run in the background; a failure raises PushError here
    return run_dir
