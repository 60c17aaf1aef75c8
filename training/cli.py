"""The entry points: `ddpo-train` (flags generated from `TrainConfig`, so every field is settable) and `ddpo-card`.

They parse and report; what a training run does (train, evaluate, card, publish) is `workflow.run_training`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import types
import typing
from collections.abc import Sequence
from dataclasses import MISSING, fields
from pathlib import Path

from .config import PRESETS, TrainConfig, choices, resolve_config
from .pipelines import ModelLoadError
from .workflow import run_training


def _base_type(name: str) -> type:
    """The field's type without `| None`."""
    hint = typing.get_type_hints(TrainConfig)[name]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    return hint


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ddpo-train",
        description="Fine-tune an unconditional diffusers DDPMPipeline with DDPO (Black et al. 2023) or DiffusionNFT.",
    )
    parser.add_argument("--config", help="TOML or YAML file of settings (flags given here override it).")
    for item in fields(TrainConfig):
        flag = "--" + item.name.replace("_", "-")
        kind = _base_type(item.name)
        default = item.default if item.default is not MISSING else item.default_factory()
        help_text = item.metadata["help"]
        if item.name == "preset":
            help_text += f" One of: {', '.join(PRESETS)}."
        # A fixed set of values is shown as argparse shows `choices`, but checked by `validate`: every bad setting
        # gets its one-line error, from a flag, a config file or the Python API alike.
        values = choices(item.name)
        metavar = "{" + ",".join(values) + "}" if values else None
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif typing.get_origin(kind) is list:
            help_text += f" Default: {' '.join(default)}."
            parser.add_argument(flag, nargs="+", default=None, metavar=metavar, help=help_text)
        else:
            help_text += f" Default: {default}."
            parser.add_argument(flag, type=str if values else kind, default=None, metavar=metavar, help=help_text)
    return parser


def parse_config(argv: Sequence[str] | None = None) -> TrainConfig:
    """Defaults < preset < config file < flags."""
    args = vars(build_parser().parse_args(argv))
    config_file = args.pop("config")
    overrides = {key: value for key, value in args.items() if value is not None}
    return resolve_config(config_file=config_file, overrides=overrides)


def train_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `ddpo-train` and `python -m ddpo_hub.training`."""
    from .publish.hub import PushError
    from .trainer import TrainingDivergedError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        run_dir = run_training(parse_config(argv))
    except (ValueError, ImportError, FileNotFoundError, ModelLoadError, TrainingDivergedError, PushError) as error:
        print(f"ddpo-train: error: {error}", file=sys.stderr)
        return 2
    print(f"Done. The fine-tuned pipeline, metrics and sample grids are in {run_dir}/")
    return 0


def _card_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ddpo-card",
        description=(
            "Write RUN_DIR/README.md and RUN_DIR/images/ from the run's config, metrics, samples and "
            "eval_results.json (from ddpo-eval), and optionally push them to the Hub."
        ),
    )
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="A ddpo-train run folder.")
    parser.add_argument(
        "--push-to-hub",
        metavar="REPO_ID",
        help="Upload the card as one commit; if the run's last epoch was never published, push it (model and card).",
    )
    parser.add_argument("--hub-revision", metavar="BRANCH", help="Branch to push to (created if missing).")
    parser.add_argument("--hub-private", action="store_true", help="Create the repo as private if it is new.")
    return parser


def card_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `ddpo-card`: (re)write a run's model card and optionally publish it."""
    from ddpo_hub.model_card.render import write_card

    from .publish.hub import HubPublisher, PushError
    from .run_folder import RunFolderError

    args = _card_parser().parse_args(argv)
    try:
        readme = write_card(args.run_dir, args.run_dir, repo_id=args.push_to_hub)
    except (RunFolderError, OSError, json.JSONDecodeError) as error:
        print(f"ddpo-card: error: {error}", file=sys.stderr)
        return 2
    print(f"Wrote {readme}")
    if args.push_to_hub:
        try:
            with HubPublisher(args.push_to_hub, private=args.hub_private, revision=args.hub_revision) as publisher:
                publisher.push_pending(args.run_dir)  # every epoch that failed or was cut short, oldest first
                publisher.wait()
                publisher.push_latest(args.run_dir)
        except (PushError, ValueError) as error:
            print(f"ddpo-card: error: {error}", file=sys.stderr)
            return 1
        print(f"Pushed to {args.push_to_hub}" + (f" (branch {args.hub_revision})" if args.hub_revision else ""))
    return 0
