"""Publish the demo: `python -m ddpo_hub.space.deploy --space-id me/ddpo-demo --model-id me/ddpo-tiny`.

Creates (or updates) a Gradio Space on the Hub named by `HF_ENDPOINT` (huggingface.co by default), sets its
`MODEL_ID` variable and uploads, in one commit, the app with the `ddpo_hub.space` and `ddpo_hub.training` modules
it imports (under `ddpo_hub/`, so `app.py` imports them as it does from an install) and the bundled default model.
Those copies exist only in the Space repo, so our tree keeps one version of each. The Space card's front
matter is fitted to the model (its size and image size, read from its UNet config without its weights).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import UNet2DModel
from huggingface_hub import CommitOperationAdd, HfApi, SpaceCard

from ddpo_hub import training
from ddpo_hub.training.pipelines import (
    LARGE_MODEL_PARAMETERS,
    TINY_BASE_MODEL,
    bundled_models,
    hub_model_id,
    read_base_model,
    read_data_notice,
    resolve_model_path,
)

SPACE_DIR = Path(__file__).resolve().parent
APP_FILES = ("app.py", "requirements.txt")
SPACE_MODULES = ("__init__.py", "serving.py", "access.py")
"""The modules beside `app.py` that it imports, copied to `ddpo_hub/space/` in the Space repo."""
TRAINING_MODULES = ("__init__.py", "jpeg.py", "pipelines.py", "fidelity.py", "judge.py", "emoji_data.py", "humanize.py")
"""The part of the `ddpo_hub.training` package that `app.py` imports."""
SPACE_PACKAGE_DIR = "ddpo_hub/training"
"""Where those modules go in the Space repo (a namespace package `ddpo_hub`, as installed)."""
SHORT_DESCRIPTION_LENGTH = 60
"""The Hub's limit on a Space's `short_description`."""
LARGE_MODEL_HARDWARE = "t4-small"
"""Suggested for UNets of `LARGE_MODEL_PARAMETERS` or more: the free CPU serves them, with fewer default steps."""


@dataclass(frozen=True)
class ModelFacts:
    """What the Space card says about the served model: its UNet's size and the images it makes."""

    parameters: int
    image_size: int

    @property
    def suggested_hardware(self) -> str:
        return "cpu-basic" if self.parameters < LARGE_MODEL_PARAMETERS else LARGE_MODEL_HARDWARE

    @property
    def short_description(self) -> str:
        text = f"A {self.image_size}px DDPM tuned by DDPO for smaller JPEGs, vs its base"
        return text[:SHORT_DESCRIPTION_LENGTH]


def model_facts(model_id: str, *, token: str | None = None) -> ModelFacts:
    """The served model's parameter count and image size, from its UNet config (no weights are fetched)."""
    config = UNet2DModel.load_config(resolve_model_path(model_id), subfolder="unet", token=token)
    with torch.device("meta"):  # shapes only: counting 114 M parameters allocates nothing
        unet = UNet2DModel.from_config(config)
    size = unet.config.sample_size
    return ModelFacts(parameters=unet.num_parameters(), image_size=size if isinstance(size, int) else size[0])


def space_card(model_id: str, base_model: str | None, facts: ModelFacts) -> str:
    """`space/README.md` fitted to the model: `models:` (Hub ids only) links the served model and its base,
    `suggested_hardware` and `short_description` follow its size, and the card states what it serves."""
    card = SpaceCard((SPACE_DIR / "README.md").read_text(encoding="utf-8"))
    card.data.models = [model for model in (model_id, base_model) if hub_model_id(model)]
    card.data.suggested_hardware = facts.suggested_hardware
    card.data.short_description = facts.short_description
    base = f"`{base_model}`" if base_model else "no base model (its card names none)"
    card.text = card.text.replace("{served_model}", f"`{model_id}`").replace("{base_model}", base)
    card.text = card.text.replace("{parameters}", f"{facts.parameters / 1e6:.2f} M").replace(
        "{image_size}", str(facts.image_size)
    )
    notice = read_data_notice(bundled_models().get(base_model or ""))  # the bundled base's data attribution
    if notice:
        card.text += f"\n## Training data\n\n{notice}\n"
    return str(card)


def space_files(model_id: str, base_model: str | None, facts: ModelFacts) -> list[CommitOperationAdd]:
    """Every file of the Space repo: the app, the modules it imports and the bundled default model."""
    package_dir = Path(training.__file__).resolve().parent
    operations = [CommitOperationAdd("README.md", space_card(model_id, base_model, facts).encode())]
    operations += [CommitOperationAdd(name, SPACE_DIR / name) for name in APP_FILES]
    operations += [CommitOperationAdd(f"ddpo_hub/space/{name}", SPACE_DIR / name) for name in SPACE_MODULES]
    operations += [CommitOperationAdd(f"{SPACE_PACKAGE_DIR}/{name}", package_dir / name) for name in TRAINING_MODULES]
    bundled = sorted(path for path in TINY_BASE_MODEL.rglob("*") if path.is_file())
    operations += [
        CommitOperationAdd(f"{SPACE_PACKAGE_DIR}/{path.relative_to(package_dir).as_posix()}", path) for path in bundled
    ]
    return operations


def deploy(space_id: str, model_id: str, *, token: str | None = None, private: bool | None = None) -> str:
    """Create or update the Space serving `model_id` and return its URL."""
    api = HfApi(token=token)
    base_model = read_base_model(model_id, token=token)
    facts = model_facts(model_id, token=token)
    url = api.create_repo(space_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
    # Set before the upload, so the build the upload starts already serves the model.
    api.add_space_variable(space_id, "MODEL_ID", model_id, description="Model the demo serves by default")
    api.create_commit(
        space_id,
        repo_type="space",
        operations=space_files(model_id, base_model, facts),
        commit_message=f"Deploy the DDPO demo for {model_id}",
    )
    return str(url)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space-id", required=True, help="Space repo to create or update, e.g. me/ddpo-demo.")
    parser.add_argument("--model-id", required=True, help="Hub id of the fine-tuned model the Space serves.")
    parser.add_argument("--token", help="Hub token with write access (default: HF_TOKEN or the saved login).")
    parser.add_argument("--private", action="store_true", default=None, help="Create the Space as private.")
    args = parser.parse_args(argv)
    print(deploy(args.space_id, args.model_id, token=args.token, private=args.private))


if __name__ == "__main__":
    main()
