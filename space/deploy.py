"""Publish the demo: `python -m ddpo_hub.space.deploy --space-id me/ddpo-demo --model-id me/ddpo-tiny`.

Creates (or updates) a Gradio Space on the Hub named by `HF_ENDPOINT` (huggingface.co by default), sets its
`MODEL_ID` variable and uploads, in one commit, the app with the `ddpo_hub.training` modules it imports (under
`ddpo_hub/training/`, so `app.py` imports them as it does from an install) and the bundled default model.
Those copies exist only in the Space repo, so our tree keeps one version of each.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi, SpaceCard

from ddpo_hub import training
from ddpo_hub.training.pipelines import TINY_BASE_MODEL, read_base_model

SPACE_DIR = Path(__file__).resolve().parent
APP_FILES = ("app.py", "requirements.txt")
TRAINING_MODULES = ("__init__.py", "jpeg.py", "pipelines.py", "fidelity.py")
"""The part of the `ddpo_hub.training` package that `app.py` imports."""
SPACE_PACKAGE_DIR = "ddpo_hub/training"
"""Where those modules go in the Space repo (a namespace package `ddpo_hub`, as installed)."""


def space_card(model_id: str, base_model: str | None) -> str:
    """`space/README.md` whose `models:` names the served model and its base, so the Hub links them."""
    card = SpaceCard((SPACE_DIR / "README.md").read_text(encoding="utf-8"))
    card.data.models = [model for model in (model_id, base_model) if model]
    return str(card)


def space_files(model_id: str, base_model: str | None) -> list[CommitOperationAdd]:
    """Every file of the Space repo: the app, the modules it imports and the bundled default model."""
    package_dir = Path(training.__file__).resolve().parent
    operations = [CommitOperationAdd("README.md", space_card(model_id, base_model).encode())]
    operations += [CommitOperationAdd(name, SPACE_DIR / name) for name in APP_FILES]
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
    url = api.create_repo(space_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
    # Set before the upload, so the build the upload starts already serves the model.
    api.add_space_variable(space_id, "MODEL_ID", model_id, description="Model the demo serves by default")
    api.create_commit(
        space_id,
        repo_type="space",
        operations=space_files(model_id, base_model),
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
