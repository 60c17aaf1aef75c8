"""`ddpo-card RUN_DIR [--push-to-hub REPO_ID]`: (re)write a run's model card and optionally publish it."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from model_card.render import RunFolderError, write_card
from training.hub import HubPublisher, PushError


def _parser() -> argparse.ArgumentParser:
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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `ddpo-card`."""
    args = _parser().parse_args(argv)
    try:
        readme = write_card(args.run_dir, args.run_dir, repo_id=args.push_to_hub)
    except (RunFolderError, OSError, json.JSONDecodeError) as error:
        print(f"ddpo-card: error: {error}", file=sys.stderr)
        return 2
    print(f"Wrote {readme}")
    if args.push_to_hub:
        try:
            with HubPublisher(args.push_to_hub, private=args.hub_private, revision=args.hub_revision) as publisher:
                publisher.push_latest(args.run_dir)
        except PushError as error:
            print(f"ddpo-card: error: {error}", file=sys.stderr)
            return 1
        print(f"Pushed to {args.push_to_hub}" + (f" (branch {args.hub_revision})" if args.hub_revision else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
