"""Publishing a run on the Hub: one commit per pushed epoch, tagged `epoch-N`, uploaded in the background.

The trainer decides when to push; this module decides how. Each push stages the pipeline files and a
freshly rendered model card in the run folder's `hub_queue/` (so the trainer may overwrite the run folder at
once), records the epoch in the push ledger (`hub_ledger.py`), then one `HfApi.create_commit` with those files
runs on the api's background thread, followed by the tag. Only an allow-list of pipeline files is staged, so
accelerate state (`checkpoints/`), logs and optimizer files can never reach the repo.

huggingface_hub retries its own preupload and LFS requests, not `create_repo`, `create_commit` or
`create_tag`: those are retried here with backoff on transient failures (HTTP 408, 429, 5xx, dropped
connections), and a commit retried after its answer was lost is first looked up by its marker. Permanent
failures (401, 403, 404, a bad repo id) fail at once. Errors surface in `HubPublisher.wait` as `PushError`,
whose message never contains the token; the ledger keeps every epoch not yet tagged for the next run or
`ddpo-card --push-to-hub`.
"""

from __future__ import annotations

import logging
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from huggingface_hub import CommitOperationAdd, HfApi
from huggingface_hub.errors import HfHubHTTPError, HFValidationError
from huggingface_hub.utils import validate_repo_id

from ddpo_hub.model_card.render import jpeg_summary, write_card

from ..run_folder import RunFolderError, load_run, read_metrics
from .hub_ledger import COMMITTED, STAGED, TAGGED, PushEntry, PushLedger, new_marker
from .redaction import scrub_token

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


T = TypeVar("T")

TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
"""HTTP statuses worth another try: the ones huggingface_hub's own `http_backoff` retries."""


@dataclass(frozen=True)
class Retry:
    """How a Hub call that failed transiently is repeated: `attempts` tries in all, waits doubling up to `max_wait`."""

    attempts: int = 5
    first_wait: float = 1.0
    max_wait: float = 16.0

    def waits(self) -> Iterator[float]:
        """The pause before each retry (one fewer than `attempts`)."""
        for retry in range(self.attempts - 1):
            yield min(self.max_wait, self.first_wait * 2**retry)


@dataclass
class _Push:
    """One queued push: what it is (for messages) and its background future."""

    what: str
    epoch: int | None
    run_dir: Path
    future: Future


class HubPublisher:
    """Push a run's epochs to one Hub model repo (and branch), each as one tagged commit, in the background.

    Use `push_epoch` after each epoch to publish, `push_pending` to finish the pushes an earlier process left
    in the run's ledger, and `wait` before the process exits. Epochs already tagged on the Hub are skipped.
    """

    def __init__(
        self,
        repo_id: str,
        *,
        token: str | None = None,
        private: bool = False,
        revision: str | None = None,
        replace_earlier_run: bool = False,
        retry: Retry = Retry(),
    ) -> None:
        """`replace_earlier_run`: a fresh run pushing to a repo that an earlier run tagged; its `epoch-N` tags
        are deleted (its commits stay in the history) so this run's epochs are pushed and tagged. A resumed
        run leaves it False and skips the epochs already tagged."""
        self.repo_id = repo_id
        self.revision = revision
        self.retry = retry
        self._api = HfApi(token=token)
        self._token = token
        self._pending: list[_Push] = []
        self._pushed: set[int] = set()
        self._ledgers: dict[Path, PushLedger] = {}
        try:
            validate_repo_id(repo_id)
        except HFValidationError as error:
            raise PushError(
                f"--push-to-hub {repo_id!r} is not a Hub repo id: {error} Use `owner/name`, e.g. `you/ddpo-tiny`.",
                repo_id=repo_id,
            ) from None
        try:
            self._call("create the repo", lambda: self._api.create_repo(repo_id, private=private, exist_ok=True))
            if revision:
                self._call(
                    "create the branch", lambda: self._api.create_branch(repo_id, branch=revision, exist_ok=True)
                )
            self._pushed = self._call("list the tags", self._tagged_epochs)
            if replace_earlier_run and self._pushed:
                logger.warning("%s holds an earlier run: moving its tags to this run's epochs.", self._where)
                for epoch in sorted(self._pushed):
                    self._call("delete a tag", lambda epoch=epoch: self._api.delete_tag(repo_id, tag=epoch_tag(epoch)))
                self._pushed = set()
        except Exception as error:  # any failure becomes one readable, token-free error (`from None`: no chain)
            raise self._error(f"Preparing the Hub repo {self._where}", error) from None

    @property
    def _where(self) -> str:
        return f"{self.repo_id!r}" + (f" (branch {self.revision!r})" if self.revision else "")

    def _tagged_epochs(self) -> set[int]:
        refs = self._api.list_repo_refs(self.repo_id)
        return {int(match.group(1)) for ref in refs.tags if (match := _EPOCH_TAG.match(ref.name))}

    def _ledger(self, run_dir: Path) -> PushLedger:
        key = Path(run_dir).resolve()
        if key not in self._ledgers:
            self._ledgers[key] = PushLedger(run_dir)
        return self._ledgers[key]

    def pushed_epochs(self) -> set[int]:
        """Epochs published so far: the repo's `epoch-N` tags plus pushes finished in this process."""
        try:
            self._pushed |= self._call("list the tags", self._tagged_epochs)
        except Exception as error:
            raise self._error(f"Listing the pushed epochs of {self._where}", error) from None
        return set(self._pushed)

    def _queued(self) -> set[int]:
        return {push.epoch for push in self._pending if push.epoch is not None and not push.future.done()}

    def push_epoch(self, run_dir: Path, epoch: int) -> Future:
        """Stage the run's pipeline and card now, upload them as one commit in the background, tag `epoch-N`.

        Returns the upload's future (its result: the commit id; already done with None when the epoch was
        pushed before). The run folder's pipeline may be changed as soon as this returns.
        """
        if epoch in self._pushed or epoch in self._queued():
            logger.info("Epoch %d is already on %s: not pushing it again.", epoch, self._where)
            return _done(None)
        run_dir = Path(run_dir)
        ledger = self._ledger(run_dir)
        entry = PushEntry(
            repo_id=self.repo_id,
            revision=self.revision,
            epoch=epoch,
            marker=new_marker(),
            title=commit_title(read_metrics(run_dir), epoch),
            description=f"DDPO training run `{run_dir.name}`, model after {epoch} epochs (tag `{epoch_tag(epoch)}`).",
        )

        def stage_files(folder: Path) -> None:
            stage_pipeline(run_dir, folder)
            write_card(run_dir, folder, repo_id=self.repo_id)

        ledger.stage(entry, stage_files)
        return self._submit(lambda: self._publish(ledger, entry), what=f"epoch {epoch}", epoch=epoch, run_dir=run_dir)

    def push_pending(self, run_dir: Path, *, up_to: int | None = None) -> list[Future]:
        """Queue, oldest first, every epoch the run's ledger holds for this repo and branch but not yet tagged.

        `up_to`: the epoch a resumed run continues from; staged epochs after it are discarded, as the resume
        trains them again. Staged folders that no push needs any more are deleted.
        """
        run_dir = Path(run_dir)
        ledger = self._ledger(run_dir)
        ledger.remove_stale_staging()
        unfinished = ledger.unfinished(self.repo_id, self.revision)
        replaced = [entry for entry in unfinished if up_to is not None and entry.epoch > up_to]
        if replaced:
            logger.info(
                "Dropping the staged pushes of epochs %s: the resumed run trains them again.",
                ", ".join(str(entry.epoch) for entry in replaced),
            )
            ledger.discard(replaced)
        tagged = self.pushed_epochs()
        futures = []
        for entry in unfinished:
            if entry in replaced or entry.epoch in self._queued():
                continue
            if entry.epoch in tagged:
                ledger.update(entry, state=TAGGED, tag=epoch_tag(entry.epoch))
                continue
            if entry.state == STAGED and not ledger.staging_dir(entry).is_dir():
                logger.warning("The staged files of epoch %d are gone: it cannot be pushed any more.", entry.epoch)
                ledger.discard([entry])
                continue
            logger.info("Epoch %d of %s never reached %s: pushing it now.", entry.epoch, run_dir, self._where)
            futures.append(
                self._submit(
                    lambda entry=entry: self._publish(ledger, entry),
                    what=f"epoch {entry.epoch}",
                    epoch=entry.epoch,
                    run_dir=run_dir,
                )
            )
        return futures

    def push_card(self, run_dir: Path) -> Future:
        """Regenerate the run's model card and upload README.md and images/ as one commit (no tag)."""
        run_dir = Path(run_dir)
        run = load_run(run_dir)
        staging = self._ledger(run_dir).queue / f"card-{uuid.uuid4().hex}"
        staging.mkdir(parents=True)
        try:
            write_card(run_dir, staging, repo_id=self.repo_id)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        title = f"Update model card (epoch {run.epochs_completed})"

        def commit_card() -> str:
            try:
                return self._commit(staging, title, "Regenerated by ddpo-card.", what="the model card")
            finally:
                shutil.rmtree(staging, ignore_errors=True)

        return self._submit(commit_card, what="the model card", epoch=None, run_dir=run_dir)

    def push_latest(self, run_dir: Path) -> Future:
        """Publish the run's latest state: its last epoch if that was never pushed or queued, else the card (after
        the queued pushes: uploads run in order), so the Hub ends with the card as the run folder has it now."""
        epoch = load_run(run_dir).epochs_completed
        if epoch and epoch not in self.pushed_epochs() and epoch not in self._queued():
            return self.push_epoch(run_dir, epoch)
        return self.push_card(run_dir)

    def _submit(self, job: Callable[[], str], *, what: str, epoch: int | None, run_dir: Path) -> Future:
        future = self._api.run_as_future(job)

        def record(done: Future) -> None:
            if epoch is not None and done.exception() is None:
                self._pushed.add(epoch)

        future.add_done_callback(record)
        self._pending.append(_Push(what=what, epoch=epoch, run_dir=run_dir, future=future))
        logger.info("Pushing %s to %s in the background.", what, self._where)
        return future

    def _publish(self, ledger: PushLedger, entry: PushEntry) -> str:
        """Runs on the api's background thread: commit the staged epoch (once), then tag that commit."""
        if entry.commit is None:
            landed = (
                self._call("look up earlier commits", lambda: self._marked_commit(entry.marker))
                if entry.attempted
                else None
            )
            if landed is None:
                ledger.update(entry, attempted=True)
                landed = self._commit(
                    ledger.staging_dir(entry),
                    entry.title,
                    f"{entry.description}\n\n{entry.marker}",
                    what=f"epoch {entry.epoch}",
                    marker=entry.marker,
                )
            else:
                logger.info("Epoch %d's commit had landed on %s before: tagging it.", entry.epoch, self._where)
            ledger.update(entry, state=COMMITTED, commit=landed)
        tag = epoch_tag(entry.epoch)
        self._call(
            f"tag epoch {entry.epoch}",
            lambda: self._api.create_tag(
                self.repo_id, tag=tag, tag_message=entry.title, revision=entry.commit, exist_ok=True
            ),
        )
        ledger.update(entry, state=TAGGED, tag=tag)
        return entry.commit

    def _commit(self, staging: Path, title: str, description: str, *, what: str, marker: str | None = None) -> str:
        """One commit of every staged file; after a transient failure, a commit holding `marker` counts as landed."""

        def commit() -> str:
            operations = [  # built afresh for every attempt: a failed attempt leaves its operations half-done
                CommitOperationAdd(path_in_repo=path.relative_to(staging).as_posix(), path_or_fileobj=path)
                for path in sorted(staging.rglob("*"))
                if path.is_file()
            ]
            info = self._api.create_commit(
                self.repo_id, operations, commit_message=title, commit_description=description, revision=self.revision
            )
            return info.oid

        recover = None if marker is None else (lambda: self._marked_commit(marker))
        return self._call(f"commit {what}", commit, recover=recover)

    def _marked_commit(self, marker: str) -> str | None:
        """The id of the commit on our branch whose description holds `marker`, if one landed."""
        commits = self._api.list_repo_commits(self.repo_id, revision=self.revision)
        return next((commit.commit_id for commit in commits if marker in (commit.message or "")), None)

    def _call(self, what: str, call: Callable[[], T], *, recover: Callable[[], T | None] | None = None) -> T:
        """`call()`, retried with backoff while it fails transiently; `recover()` may find it had succeeded."""
        waits = self.retry.waits()
        while True:
            try:
                return call()
            except Exception as error:
                wait = next(waits, None) if is_transient(error) else None
                if wait is None:
                    raise
                logger.warning(
                    "Could not %s on %s (%s); retrying in %.3g s.", what, self._where, self._detail(error), wait
                )
            time.sleep(wait)
            if recover is not None and (found := self._call(f"check whether {what} landed", recover)) is not None:
                return found

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
        epochs = [push.epoch for push, _ in failures if push.epoch is not None]
        kept = f" and keeps epoch {', '.join(map(str, epochs))} staged for the Hub" if epochs else ""
        message = "\n".join(messages) + (
            f"\nThe local run folder {str(run_dir)!r} is intact{kept}; rerun `ddpo-card {run_dir} --push-to-hub "
            f"{self.repo_id}" + (f" --hub-revision {self.revision}" if self.revision else "") + "` or resume the run "
            "to publish every epoch that did not arrive."
        )
        status = next((_status(error) for _, error in failures if _status(error) is not None), None)
        raise PushError(scrub_token(message, self._token), repo_id=self.repo_id, epochs=epochs, status_code=status)

    def __enter__(self) -> HubPublisher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.wait()

    def _detail(self, error: BaseException) -> str:
        """`HTTP <status>: <server message>` or `the connection to the Hub failed (...)`, token masked."""
        status = _status(error)
        if status is not None:
            cause = _http_error(error)
            server = getattr(cause, "server_message", None) or str(cause).splitlines()[0]
            detail = f"HTTP {status}: {server}"
            if status in (401, 403):
                detail += (
                    " (check HF_TOKEN or `hf auth login`: the token needs write access to "
                    f"{self.repo_id.split('/')[0]!r})"
                )
            if not isinstance(error, HfHubHTTPError):  # e.g. the LFS upload's "Error while uploading 'x'"
                detail = f"{str(error).splitlines()[0].rstrip('.')}: {detail}"
        else:
            text = str(error).strip().rstrip(".")
            detail = f"{type(error).__name__}: {text}" if text else type(error).__name__
            if _is_network_error(error):
                detail = f"the connection to the Hub failed ({detail})"
        return scrub_token(detail, self._token)

    def _describe(self, action: str, error: BaseException) -> str:
        """`<action> failed: <detail>.`, token masked."""
        return scrub_token(f"{action} failed: {self._detail(error)}.", self._token)

    def _error(self, action: str, error: BaseException) -> PushError:
        return PushError(self._describe(action, error), repo_id=self.repo_id, status_code=_status(error))


def _done(value: object) -> Future:
    done: Future = Future()
    done.set_result(value)
    return done


def _chain(error: BaseException) -> Iterator[BaseException]:
    """The error and what caused it (huggingface_hub wraps LFS failures in a RuntimeError)."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def _http_error(error: BaseException) -> HfHubHTTPError | None:
    """The HTTP error with a response behind `error`, if any (itself or what caused it)."""
    return next((e for e in _chain(error) if isinstance(e, HfHubHTTPError) and e.response is not None), None)


def _status(error: BaseException) -> int | None:
    cause = _http_error(error)
    return None if cause is None else cause.response.status_code


def is_transient(error: BaseException) -> bool:
    """A failure another try may cure: a transient HTTP status or a transport failure, anywhere in the chain."""
    status = _status(error)
    return status in TRANSIENT_STATUS if status is not None else any(map(_is_network_error, _chain(error)))


def _is_network_error(error: BaseException) -> bool:
    """Transport failures (refused, dropped, timed out) from the HTTP stack huggingface_hub happens to use."""
    package = type(error).__module__.split(".")[0]
    return isinstance(error, (ConnectionError, TimeoutError)) or package in _HTTP_PACKAGES
