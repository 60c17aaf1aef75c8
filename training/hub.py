"""Publishing a run on the Hub: one commit per pushed epoch, tagged `epoch-N`, uploaded in the background.

The trainer decides when to push; this module decides how. Each push copies the pipeline files and a
freshly rendered model card into a temporary folder (so the trainer may overwrite the run folder at
once), then one `HfApi.create_commit` with those files runs on the api's background thread, followed by
the tag. Only an allow-list of pipeline files is staged, so accelerate state (`checkpoints/`), logs and
optimizer files can never reach the repo. Errors surface in `HubPublisher.wait` as `PushError`, whose
message never contains the token.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import CommitInfo, CommitOperationAdd, HfApi
from huggingface_hub.errors import HfHubHTTPError

from ddpo_hub.model_card.render import jpeg_summary, write_card
from ddpo_hub.training.redaction import scrub_token
from ddpo_hub.training.run_folder import RunFolderError, load_run, read_metrics

logger = logging.getLogger(__name__)

PIPELINE_FILES = ("model_index.json", "unet/*.json", "unet/*.safetensors", "scheduler/*.json")
"""What a pushed epoch holds besides the card: the `DDPMPipeline` folder, safetensors weights only."""

_EPOCH_TAG = re.compile(r"^epoch-(\d+)$")
_HTTP_PACKAGES = {"httpx", "httpx2", "httpcore", "httpcore2", "requests", "urllib3"}


class PushError(RuntimeError):
    """A push to the Hub failed. The message says what, where and how to publish later; it never holds the token."""

    def __init__(self, message: str, *, repo_id: str, epochs: Sequence[int] = (), status_code: int | None = None):
        super().__init__(message)
        self.repo_id = repo_id
        self.epochs = list(epochs)
        self.status_code = status_code


def epoch_tag(epoch: int) -> str:
    """The tag of a pushed epoch, e.g. `epoch-12`."""
    return f"epoch-{epoch}"


def commit_title(rows: Sequence[dict], epoch: int) -> str:
    """`Epoch 12: mean JPEG 8.41 kB (-37% vs base)` from metrics.jsonl rows; epoch 1's samples are the base's."""
    summary = jpeg_summary(rows, epoch)
    if summary is None:
        return f"Epoch {epoch}"
    return f"Epoch {epoch}: mean JPEG {summary.kb:.2f} kB ({summary.change_text} vs base)"


def stage_pipeline(run_dir: Path, target: Path) -> list[Path]:
    """Copy the run's pipeline files (PIPELINE_FILES) into `target`; return the copies.

    Real copies, not hard links: `save_pretrained` rewrites weight files in place, which would change a
    hard-linked staged file while it uploads.
    """
    run_dir = Path(run_dir)
    sources = [path for pattern in PIPELINE_FILES for path in sorted(run_dir.glob(pattern)) if path.is_file()]
    names = {path.relative_to(run_dir).as_posix() for path in sources}
    missing = [
        need
        for need, present in (
            ("model_index.json", "model_index.json" in names),
            ("unet/config.json", "unet/config.json" in names),
            ("unet/*.safetensors", any(name.startswith("unet/") and name.endswith(".safetensors") for name in names)),
            ("scheduler/scheduler_config.json", any(name.startswith("scheduler/") for name in names)),
        )
        if not present
    ]
    if missing:
        raise RunFolderError(f"{run_dir} holds no complete DDPMPipeline to push: missing {', '.join(missing)}.")
    copies = []
    for source in sources:
        destination = target / source.relative_to(run_dir)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, destination)
        copies.append(destination)
    return copies


@dataclass
class _Push:
    """One queued push: what it is (for messages) and its background future."""

    what: str
    epoch: int | None
    run_dir: Path
    future: Future


class HubPublisher:
    """Push a run's epochs to one Hub model repo (and branch), each as one tagged commit, in the background.

    Use `push_epoch` after each epoch to publish, `wait` before the process exits. Resumed runs skip the
    epochs already tagged on the Hub.
    """

    def __init__(
        self,
        repo_id: str,
        *,
        token: str | None = None,
        private: bool = False,
        revision: str | None = None,
        replace_earlier_run: bool = False,
    ) -> None:
        """`replace_earlier_run`: a fresh run pushing to a repo that an earlier run tagged; its `epoch-N` tags
        are deleted (its commits stay in the history) so this run's epochs are pushed and tagged. A resumed
        run leaves it False and skips the epochs already tagged."""
        self.repo_id = repo_id
        self.revision = revision
        self._api = HfApi(token=token)
        self._token = token
        self._pending: list[_Push] = []
        self._pushed: set[int] = set()
        try:
            self._api.create_repo(repo_id, private=private, exist_ok=True)
            if revision:
                self._api.create_branch(repo_id, branch=revision, exist_ok=True)
            self._pushed = self._tagged_epochs()
            if replace_earlier_run and self._pushed:
                logger.warning("%s holds an earlier run: moving its tags to this run's epochs.", self._where)
                for epoch in sorted(self._pushed):
                    self._api.delete_tag(repo_id, tag=epoch_tag(epoch))
                self._pushed = set()
        except Exception as error:  # any failure becomes one readable, token-free error (`from None`: no chain)
            raise self._error(f"Preparing the Hub repo {self._where}", error) from None

    @property
    def _where(self) -> str:
        return f"{self.repo_id!r}" + (f" (branch {self.revision!r})" if self.revision else "")

    def _tagged_epochs(self) -> set[int]:
        refs = self._api.list_repo_refs(self.repo_id)
        return {int(match.group(1)) for ref in refs.tags if (match := _EPOCH_TAG.match(ref.name))}

    def pushed_epochs(self) -> set[int]:
        """Epochs published so far: the repo's `epoch-N` tags plus pushes finished in this process."""
        try:
            self._pushed |= self._tagged_epochs()
        except Exception as error:
            raise self._error(f"Listing the pushed epochs of {self._where}", error) from None
        return set(self._pushed)

    def push_epoch(self, run_dir: Path, epoch: int) -> Future:
        """Stage the run's pipeline and card now, upload them as one commit in the background, tag `epoch-N`.

        Returns the upload's future (already done, with None, when the epoch was pushed before). The
        run folder may be changed as soon as this returns.
        """
        queued = {push.epoch for push in self._pending if not push.future.done()}
        if epoch in self._pushed or epoch in queued:
            logger.info("Epoch %d is already on %s: not pushing it again.", epoch, self._where)
            done: Future = Future()
            done.set_result(None)
            return done
        run_dir = Path(run_dir)
        staging = Path(tempfile.mkdtemp(prefix="ddpo-push-"))
        try:
            stage_pipeline(run_dir, staging)
            write_card(run_dir, staging, repo_id=self.repo_id)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        title = commit_title(read_metrics(run_dir), epoch)
        description = f"DDPO training run `{run_dir.name}`, model after {epoch} epochs (tag `{epoch_tag(epoch)}`)."
        return self._submit(staging, title, description, tag=epoch_tag(epoch), epoch=epoch, run_dir=run_dir)

    def push_card(self, run_dir: Path) -> Future:
        """Regenerate the run's model card and upload README.md and images/ as one commit (no tag)."""
        run_dir = Path(run_dir)
        run = load_run(run_dir)
        staging = Path(tempfile.mkdtemp(prefix="ddpo-card-"))
        try:
            write_card(run_dir, staging, repo_id=self.repo_id)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        title = f"Update model card (epoch {run.epochs_completed})"
        return self._submit(staging, title, "Regenerated by ddpo-card.", tag=None, epoch=None, run_dir=run_dir)

    def push_latest(self, run_dir: Path) -> Future:
        """Publish the run's latest state: its last epoch if that was never pushed (e.g. it failed), else the card."""
        epoch = load_run(run_dir).epochs_completed
        if epoch and epoch not in self.pushed_epochs():
            return self.push_epoch(run_dir, epoch)
        return self.push_card(run_dir)

    def _submit(
        self, staging: Path, title: str, description: str, *, tag: str | None, epoch: int | None, run_dir: Path
    ) -> Future:
        future = self._api.run_as_future(self._commit, staging, title, description, tag)

        def record(done: Future) -> None:
            if epoch is not None and done.exception() is None:
                self._pushed.add(epoch)

        future.add_done_callback(record)
        what = f"epoch {epoch}" if epoch is not None else "the model card"
        self._pending.append(_Push(what=what, epoch=epoch, run_dir=run_dir, future=future))
        logger.info("Pushing %s to %s in the background: %s", what, self._where, title)
        return future

    def _commit(self, staging: Path, title: str, description: str, tag: str | None) -> CommitInfo:
        """Runs on the api's background thread: one commit with every staged file, then the tag on that commit."""
        try:
            operations = [
                CommitOperationAdd(path_in_repo=path.relative_to(staging).as_posix(), path_or_fileobj=path)
                for path in sorted(staging.rglob("*"))
                if path.is_file()
            ]
            info = self._api.create_commit(
                self.repo_id,
                operations,
                commit_message=title,
                commit_description=description,
                revision=self.revision,
            )
            if tag is not None:
                self._api.create_tag(self.repo_id, tag=tag, tag_message=title, revision=info.oid, exist_ok=True)
            return info
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def wait(self) -> None:
        """Block until every queued push has finished; raise one `PushError` describing all that failed."""
        failures = []
        for push in self._pending:
            error = push.future.exception()
            if error is not None:
                failures.append((push, error))
            elif push.epoch is not None:
                self._pushed.add(push.epoch)
        self._pending.clear()
        if not failures:
            return
        messages = [
            self._describe(f"Pushing {push.what} to the Hub repo {self._where}", error) for push, error in failures
        ]
        run_dir = failures[-1][0].run_dir
        message = "\n".join(messages) + (
            f"\nThe local run folder {str(run_dir)!r} is intact; rerun `ddpo-card {run_dir} --push-to-hub "
            f"{self.repo_id}" + (f" --hub-revision {self.revision}" if self.revision else "") + "` or resume the run "
            "to publish its latest state."
        )
        status = next((_status(error) for _, error in failures if _status(error) is not None), None)
        epochs = [push.epoch for push, _ in failures if push.epoch is not None]
        raise PushError(scrub_token(message, self._token), repo_id=self.repo_id, epochs=epochs, status_code=status)

    def __enter__(self) -> HubPublisher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.wait()

    def _describe(self, action: str, error: BaseException) -> str:
        """`<action> failed: <HTTP status and server message | connection error>.`, token masked."""
        status = _status(error)
        if status is not None:
            server = getattr(error, "server_message", None) or str(error).splitlines()[0]
            detail = f"HTTP {status}: {server}"
            if status in (401, 403):
                detail += (
                    " (check HF_TOKEN or `hf auth login`: the token needs write access to "
                    f"{self.repo_id.split('/')[0]!r})"
                )
        else:
            text = str(error).strip().rstrip(".")
            detail = f"{type(error).__name__}: {text}" if text else type(error).__name__
            if _is_network_error(error):
                detail = f"the connection to the Hub failed ({detail})"
        return scrub_token(f"{action} failed: {detail}.", self._token)

    def _error(self, action: str, error: BaseException) -> PushError:
        return PushError(self._describe(action, error), repo_id=self.repo_id, status_code=_status(error))


def _status(error: BaseException) -> int | None:
    if isinstance(error, HfHubHTTPError) and error.response is not None:
        return error.response.status_code
    return None


def _is_network_error(error: BaseException) -> bool:
    """Transport failures (refused, dropped, timed out) from the HTTP stack huggingface_hub happens to use."""
    package = type(error).__module__.split(".")[0]
    return isinstance(error, (ConnectionError, TimeoutError)) or package in _HTTP_PACKAGES
