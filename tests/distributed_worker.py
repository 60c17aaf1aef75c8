"""Run by `accelerate launch` in tests: trains, then each rank writes its final weights and rewards."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from ddpo_hub.training.cli import parse_config
from ddpo_hub.training.rewards import jpeg_compressibility
from ddpo_hub.training.workflow import trainer_class

_jpeg = jpeg_compressibility()


def recording_reward(images: torch.Tensor):
    """The JPEG reward, also appended to a per-rank file so the test can check what was gathered."""
    rewards, _ = _jpeg(images)
    with open(Path(os.environ["DDPO_TEST_OUT"]) / f"rewards_rank{os.environ['RANK']}.jsonl", "a") as file:
        file.write(json.dumps(rewards.tolist()) + "\n")
    return rewards


if __name__ == "__main__":
    config = parse_config(sys.argv[1:])
    trainer = trainer_class(config.algorithm)(config)
    trainer.train()
    weights = trainer.accelerator.unwrap_model(trainer.unet).state_dict()
    torch.save(weights, Path(os.environ["DDPO_TEST_OUT"]) / f"weights_rank{trainer.accelerator.process_index}.pt")
