"""`python -m ddpo_hub.training.publish_job`: train a preset, evaluate it, publish the model, its card and the Space.

This is the whole job of `.github/workflows/train-and-publish.yml` (which only passes inputs and the HF_TOKEN
secret) and of `make demo` (with `--local-hub`), so the CI job can be run and tested on any machine. Flags this
job does not know are passed on to `ddpo-train`, e.g. `--num-samples 8` or `--base-model ./my-ddpm`.

Without a token (HF_TOKEN or a stored login) the job trains and evaluates, says that publishing was skipped and
exits 0: forks have no secrets. huggingface_hub reads HF_ENDPOINT when it is imported, so everything that imports
it is imported inside the functions below, after `--local-hub` has pointed HF_ENDPOINT at its server.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import TrainConfig

SKIPPED_NOTICE = "HF_TOKEN is not set: trained and evaluated, publishing skipped"


class PublishedModelMismatchError(RuntimeError):
    """The model loaded back from the Hub is not the one this run trained."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ddpo_hub.training.publish_job",
        description="Train a preset with DDPO, evaluate it with ddpo-eval, push the model and its card to the Hub "
        "and deploy the demo Space. Unknown flags are passed on to ddpo-train.",
        allow_abbrev=False,  # an abbreviation would swallow a ddpo-train flag
    )
    parser.add_argument("--preset", default="tiny", help="ddpo-train preset (default: tiny).")
    parser.add_argument("--output-dir", type=Path, help="Run folder (default: the preset's).")
    parser.add_argument("--epochs", type=int, help="Epochs to train (default: the preset's).")
    parser.add_argument("--model-repo", help="Hub model repo to push to (default: <user>/ddpo-<preset>).")
    parser.add_argument("--space-id", help="Space to deploy (default: <user>/ddpo-demo).")
    parser.add_argument("--no-space", action="store_true", help="Push the model but do not deploy the Space.")
    parser.add_argument("--private", action="store_true", help="Create new repos as private.")
    parser.add_argument("--eval-num-images", type=int, default=32, help="Images per model and scheduler (default: 32).")
    parser.add_argument(
        "--local-hub", action="store_true", help="Publish to a Hub server started on 127.0.0.1 for this job."
    )
    return parser


@contextmanager
def _step(title: str) -> Iterator[None]:
    """One titled stage: a collapsible group in GitHub's log, a plain heading elsewhere."""
    github = os.environ.get("GITHUB_ACTIONS") == "true"
    print(f"::group::{title}" if github else f"==> {title}", flush=True)
    try:
        yield
    finally:
        if github:
            print("::endgroup::", flush=True)


@contextmanager
def local_hub() -> Iterator[object]:
    """Serve the test Hub on a free port of 127.0.0.1 and point huggingface_hub, a fresh HF_HOME and HF_TOKEN at it."""
    if "huggingface_hub" in sys.modules:
        raise RuntimeError("--local-hub must start before huggingface_hub is imported: run it in a fresh process.")
    from .extras import require_extra

    for module in ("fastapi", "uvicorn"):
        require_extra(module, extra="local-hub", feature="--local-hub")
    from .publish.hub_server import HubServer

    with HubServer() as server, tempfile.TemporaryDirectory(prefix="ddpo-local-hub-") as home:
        # A fresh HF_HOME: the loopback repos never land in the user's cache, the user's login is never used.
        # Upload bars of kilobyte files would drown the demo's few lines.
        settings = {
            "HF_ENDPOINT": server.endpoint,
            "HF_HOME": home,
            "HF_TOKEN": server.token,
            "HF_HUB_DISABLE_XET": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        }
        saved = {name: os.environ.get(name) for name in settings}
        os.environ.update(settings)
        print(f"Local Hub server at {server.endpoint} (user {server.user!r}), stopped when the job ends.")
        try:
            yield server
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def _mean_change(results: dict) -> str:
    """`DDIM (50 steps): 1234 B -> 987 B (-20.0%, SSIM to base ...)` per scheduler, from eval_results.json."""
    from .evaluate import fidelity_text

    parts = []
    for entry in results["schedulers"].values():
        model = f"{entry['model']['mean']:.0f} B"
        sizes = (
            f"{entry['base']['mean']:.0f} B -> {model} ({entry['mean_change']:+.1%}, {fidelity_text(entry)})"
            if "base" in entry
            else model
        )
        parts.append(f"{entry['name']} ({entry['num_inference_steps']} steps): {sizes}")
    return "; ".join(parts)


def check_published_weights(repo_id: str, run_dir: Path) -> None:
    """Load the pushed model the way users do and make sure it holds exactly the run folder's UNet."""
    import torch
    from diffusers import DDPMPipeline, UNet2DModel

    loaded = DDPMPipeline.from_pretrained(repo_id).unet.state_dict()
    local = UNet2DModel.from_pretrained(run_dir / "unet").state_dict()
    if loaded.keys() != local.keys() or not all(torch.equal(loaded[key], local[key]) for key in local):
        raise PublishedModelMismatchError(f"The UNet loaded from {repo_id!r} differs from the one in {run_dir}.")


def build_config(args: argparse.Namespace, train_argv: Sequence[str], model_repo: str | None) -> TrainConfig:
    """The run's `TrainConfig`: the job's flags and the passed-on ddpo-train flags (e.g. `--eval-schedulers`)."""
    from .cli import parse_config

    flags = ["--preset", args.preset, *(["--output-dir", str(args.output_dir)] if args.output_dir else [])]
    flags += [*(["--epochs", str(args.epochs)] if args.epochs else [])]
    flags += ["--eval-num-images", str(args.eval_num_images), *train_argv]
    if model_repo:  # pushed every `push_every` epochs, and the last one with the evaluation on its card
        flags += ["--push-to-hub", model_repo, *(["--hub-private"] if args.private else [])]
    return parse_config(flags)


def train_and_evaluate(config: TrainConfig) -> Path:
    """`ddpo-train`'s whole run: train, evaluate against the base, write the card (and push, with a repo)."""
    from .workflow import run_training

    title = f"Train, evaluate and card: preset {config.preset}, {config.epochs} epochs, base model {config.base_model}"
    with _step(title + (f", pushed to {config.push_to_hub}" if config.push_to_hub else "")):
        return Path(run_training(config))


def publish(run_dir: Path, model_repo: str, space_id: str | None, *, token: str, private: bool) -> None:
    """Check that the pushed model is the run's, then deploy the Space."""
    from ddpo_hub.space.deploy import deploy

    with _step(f"Check: {model_repo} loads with DDPMPipeline.from_pretrained and holds this run's weights"):
        check_published_weights(model_repo, run_dir)
    if space_id:
        with _step(f"Deploy: the Space {space_id}, serving {model_repo}"):
            deploy(space_id, model_repo, token=token, private=private or None)


def results_summary(run_dir: Path) -> list[str]:
    """Where the run is and how its JPEG sizes moved, from metrics.jsonl and eval_results.json."""
    from .run_folder import load_run

    lines = [f"Run folder: {run_dir}/ (samples/, metrics.jsonl, eval_results.json, eval_images/, README.md)"]
    run = load_run(run_dir)
    if rows := run.metrics:  # epoch 1 samples the base model, before any update
        first, last = rows[0], rows[-1]
        lines.append(
            f"Training samples, mean JPEG: {first['jpeg_bytes_mean']:.0f} B at epoch 1 -> "
            f"{last['jpeg_bytes_mean']:.0f} B at epoch {last['epoch']}"
        )
    if results := run.eval_results:
        lines.append(f"Evaluation, mean JPEG of base -> fine-tuned: {_mean_change(results)}")
    return lines


def hub_summary(model_repo: str, space_id: str | None, *, token: str) -> list[str]:
    """What the Hub now holds: the model repo's commits and tags, the Space's files and MODEL_ID."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    commits = api.list_repo_commits(model_repo)
    tags = sorted((ref.name for ref in api.list_repo_refs(model_repo).tags), key=lambda name: (len(name), name))
    lines = [
        f"Model {api.endpoint}/{model_repo}: {len(commits)} commits, tags {', '.join(tags) or 'none'}; "
        "DDPMPipeline.from_pretrained loads the run's exact weights"
    ]
    if space_id:
        files = api.list_repo_files(space_id, repo_type="space")
        model_id = api.get_space_variables(space_id)["MODEL_ID"].value
        top = ", ".join(name for name in files if "/" not in name)
        lines.append(f"Space {api.endpoint}/spaces/{space_id}: {len(files)} files ({top}, ...), MODEL_ID={model_id}")
    return lines


def run(args: argparse.Namespace, train_argv: Sequence[str]) -> int:
    """The job; returns its exit code (0 also when publishing is skipped for want of a token)."""
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError

    from .pipelines import ModelLoadError
    from .publish.hub import PushError
    from .publish.redaction import scrub_token
    from .trainer import TrainingDivergedError

    token = get_token()
    model_repo = space_id = None
    try:
        if token:  # resolve the repo ids, and so check the token, before spending hours on training
            user = HfApi(token=token).whoami()["name"]
            model_repo = args.model_repo or f"{user}/ddpo-{args.preset}"
            space_id = None if args.no_space else args.space_id or f"{user}/ddpo-demo"
        config = build_config(args, train_argv, model_repo)
        run_dir = train_and_evaluate(config)
        summary = results_summary(run_dir)
        if not token:
            _report([*summary, SKIPPED_NOTICE])
            if os.environ.get("GITHUB_ACTIONS") == "true":  # also as an annotation on the workflow run's page
                print(f"::notice title=Publishing skipped::{SKIPPED_NOTICE}", flush=True)
            return 0
        publish(run_dir, model_repo, space_id, token=token, private=args.private)
        return _report(summary + hub_summary(model_repo, space_id, token=token))
    except (ValueError, ImportError, FileNotFoundError, ModelLoadError, TrainingDivergedError) as error:
        print(f"publish_job: error: {error}", file=sys.stderr)
        return 2
    except (
        PushError,
        HfHubHTTPError,
        PublishedModelMismatchError,
    ) as error:  # PushError's message is already token-free
        print(f"publish_job: error: {scrub_token(str(error), token)}", file=sys.stderr)
        return 1


def _report(lines: Sequence[str]) -> int:
    """Print the summary (and add it to the GitHub job summary when there is one)."""
    print("\n".join(lines), flush=True)
    if path := os.environ.get("GITHUB_STEP_SUMMARY"):
        with open(path, "a", encoding="utf-8") as summary:
            summary.write("### DDPO train and publish\n\n" + "".join(f"- {line}\n" for line in lines))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: `python -m ddpo_hub.training.publish_job --preset tiny [--local-hub] [ddpo-train flags]`."""
    args, train_argv = build_parser().parse_known_args(argv)
    with ExitStack() as stack:
        if args.local_hub:
            stack.enter_context(local_hub())
        return run(args, train_argv)


if __name__ == "__main__":
    sys.exit(main())
