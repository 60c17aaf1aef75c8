"""The push ledger: which epochs of a run went to which Hub repo, and which are still on their way.

A pushed epoch moves through three states, each written to `hub_pushes.json` in the run folder before the
next step starts, so a killed or failed push is picked up where it stopped:

    staged     its pipeline and card are copied to `hub_queue/` (the run folder may change at once)
    committed  the commit landed; its id is known, the `epoch-N` tag may be missing
    tagged     done: the staged copy is deleted

Every epoch's commit carries a marker (`ddpo-hub-push: <id>`) in its description: after a commit whose answer
was lost, the publisher finds the landed commit by its marker and tags it instead of committing twice.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from ..run_folder import PUSH_LEDGER_NAME, PUSH_QUEUE_DIR

STAGED, COMMITTED, TAGGED = "staged", "committed", "tagged"
MARKER_PREFIX = "ddpo-hub-push:"


@dataclass
class PushEntry:
    """One epoch on its way to one repo and branch."""

    repo_id: str
    revision: str | None
    epoch: int
    marker: str
    """`ddpo-hub-push: <id>`, written into the commit description."""
    title: str
    description: str
    state: str = STAGED
    commit: str | None = None
    tag: str | None = None
    attempted: bool = False
    """A commit was sent at least once, so it may have landed without its answer reaching us."""

    def targets(self, repo_id: str, revision: str | None) -> bool:
        return self.repo_id == repo_id and (self.revision or None) == (revision or None)


class PushLedger:
    """`hub_pushes.json` and `hub_queue/` of one run folder; safe to update from the upload thread."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / PUSH_LEDGER_NAME
        self.queue = self.run_dir / PUSH_QUEUE_DIR
        self._lock = threading.Lock()
        self.entries: list[PushEntry] = self._read()

    def _read(self) -> list[PushEntry]:
        if not self.path.is_file():
            return []
        try:
            rows = json.loads(self.path.read_text())["pushes"]
            return [PushEntry(**row) for row in rows]
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as error:
            raise ValueError(
                f"Could not read {self.path}, the record of this run's Hub pushes ({error}). Delete it to publish "
                "the run's latest epoch only."
            ) from None

    def _write(self) -> None:
        """Atomically: a kill leaves the old ledger or the new one, never half of one."""
        partial = self.path.with_name(self.path.name + ".partial")
        partial.write_text(json.dumps({"pushes": [asdict(entry) for entry in self.entries]}, indent=2) + "\n")
        os.replace(partial, self.path)

    def find(self, repo_id: str, revision: str | None, epoch: int) -> PushEntry | None:
        with self._lock:
            return next((e for e in self.entries if e.epoch == epoch and e.targets(repo_id, revision)), None)

    def unfinished(self, repo_id: str, revision: str | None) -> list[PushEntry]:
        """Entries for this repo and branch that are not tagged yet, oldest epoch first."""
        with self._lock:
            found = [e for e in self.entries if e.state != TAGGED and e.targets(repo_id, revision)]
        return sorted(found, key=lambda entry: entry.epoch)

    def staging_dir(self, entry: PushEntry) -> Path:
        return self.queue / entry.marker.removeprefix(MARKER_PREFIX).strip()

    def stage(self, entry: PushEntry, stage_files: Callable[[Path], None]) -> PushEntry:
        """Copy an epoch's files with `stage_files(folder)` into the queue, then record the entry as staged.

        An entry for the same repo, branch and epoch is replaced (its marker kept: a resumed run re-creates an
        epoch bit for bit, and a commit of the earlier attempt may have landed).
        """
        earlier = self.find(entry.repo_id, entry.revision, entry.epoch)
        if earlier is not None:
            entry.marker, entry.attempted = earlier.marker, earlier.attempted
        folder = self.staging_dir(entry)
        partial = folder.with_name(folder.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        try:
            stage_files(partial)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(partial, folder)
        with self._lock:
            self.entries = [e for e in self.entries if e is not earlier] + [entry]
            self._write()
        return entry

    def update(self, entry: PushEntry, **changes: object) -> None:
        with self._lock:
            for name, value in changes.items():
                setattr(entry, name, value)
            self._write()
        if entry.state == TAGGED:
            shutil.rmtree(self.staging_dir(entry), ignore_errors=True)

    def discard(self, entries: list[PushEntry]) -> None:
        """Forget entries that will never be pushed (a resume replaced their epochs) and their staged files."""
        with self._lock:
            self.entries = [e for e in self.entries if all(e is not gone for gone in entries)]
            self._write()
        for entry in entries:
            shutil.rmtree(self.staging_dir(entry), ignore_errors=True)

    def remove_stale_staging(self) -> list[Path]:
        """Delete staged folders no unfinished entry needs (a kill mid-staging, a card push cut short)."""
        if not self.queue.is_dir():
            return []
        with self._lock:
            needed = {self.staging_dir(entry) for entry in self.entries if entry.state == STAGED}
        stale = [path for path in self.queue.iterdir() if path not in needed]
        for path in stale:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        return stale


def new_marker() -> str:
    return f"{MARKER_PREFIX} {uuid.uuid4().hex}"
