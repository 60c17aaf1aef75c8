"""`ddpo-train`: command-line flags generated from `DDPOConfig`, so every field is settable."""

from __future__ import annotations

import argparse
import logging
import sys
import types
import typing
from collections.abc import Sequence
from dataclasses import MISSING, fields

from training.config import PRESETS, DDPOConfig, field_docs, resolve_config
from training.pipelines import ModelLoadError


def _base_type(name: str) -> type:
    """The field's type without `| None`."""
    hint = typing.get_type_hints(DDPOConfig)[name]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    return hint


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ddpo-train",
        description="Fine-tune an unconditional diffusers DDPMPipeline with DDPO (Black et al. 2023).",
    )
    parser.add_argument("--config", help="TOML or YAML file of settings (flags given here override it).")
    docs = field_docs()
    for item in fields(DDPOConfig):
        flag = "--" + item.name.replace("_", "-")
        kind = _base_type(item.name)
        default = item.default if item.default is not MISSING else item.default_factory()
        help_text = docs.get(item.name, "")
        if item.name == "preset":
            help_text += f" One of: {', '.join(PRESETS)}."
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif typing.get_origin(kind) is list:
            parser.add_argument(flag, nargs="+", default=None, help=f"{help_text} Default: {' '.join(default)}.")
        else:
            parser.add_argument(flag, type=kind, default=None, help=f"{help_text} Default: {default}.")
    return parser


def parse_config(argv: Sequence[str] | None = None) -> DDPOConfig:
    """Defaults < preset < config file < flags."""
    args = vars(build_parser().parse_args(argv))
    config_file = args.pop("config")
    overrides = {key: value for key, value in args.items() if value is not None}
    return resolve_config(config_file=config_file, overrides=overrides)


def train_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `ddpo-train` and `python -m training`."""
    from training.hub import PushError
    from training.trainer import TrainingDivergedError, train

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        run_dir = train(parse_config(argv))
    except (ValueError, FileNotFoundError, ModelLoadError, TrainingDivergedError, PushError) as error:
        print(f"ddpo-train: error: {error}", file=sys.stderr)
        return 2
    print(f"Done. The fine-tuned pipeline, metrics and sample grids are in {run_dir}/")
    return 0
