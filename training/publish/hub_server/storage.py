"""In-memory storage of the test Hub: repos are git-like histories of immutable snapshots.

A commit is a frozen mapping `path -> FileEntry` plus a parent link, so history, tags and reads at any
revision are real, and a failed request can never leave a half-applied commit behind. File contents live
once in a content store keyed by sha256. Everything here is plain Python: the HTTP layer is in `app.py`.
"""

from __future__ import annotations

import fnmatch
import hashlib
import itertools
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

REPO_TYPES = ("model", "dataset", "space")
SPACE_SDKS = ("gradio", "streamlit", "docker", "static")

# The patterns the Hub puts in the `.gitattributes` of a new repo: matching files are stored with LFS.
# fmt: off
DEFAULT_LFS_PATTERNS = (
    "*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gz", "*.h5", "*.joblib", "*.lfs.*", "*.mlmodel",
    "*.model", "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.ot", "*.parquet", "*.pb", "*.pickle", "*.pkl", "*.pt",
    "*.pth", "*.rar", "*.safetensors", "saved_model/**/*", "*.tar.*", "*.tar", "*.tflite", "*.tgz", "*.wasm",
    "*.xz", "*.zip", "*.zst", "*tfevents*",
)
# fmt: on
DEFAULT_GITATTRIBUTES = "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in DEFAULT_LFS_PATTERNS)


class HubError(Exception):
    """A failure the Hub reports to clients: HTTP status, optional `X-Error-Code` and a message."""

    def __init__(
        self, status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None, **body: Any
    ):
        super().__init__(message)
        self.status, self.message, self.code, self.headers, self.body = status, message, code, headers or {}, body


def git_blob_oid(data: bytes) -> str:
    """The git object id of a blob, which the Hub exposes as `oid` / regular-file ETag."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class FileEntry:
    """One file of a snapshot. `git_oid` is the blob id of the content, or of the LFS pointer for LFS files."""

    sha256: str
    size: int
    lfs: bool
    git_oid: str

    @property
    def pointer_size(self) -> int:
        return len(lfs_pointer(self.sha256, self.size))


@dataclass(frozen=True)
class Commit:
    oid: str
    parent: str | None
    title: str
    message: str
    author: str
    date: datetime
    files: Mapping[str, FileEntry]


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    sdk: str | None = None
    gated: str | bool = False
    created_at: datetime = field(default_factory=now)
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    pull_requests: dict[int, str] = field(default_factory=dict)
    lfs_oids: set[str] = field(default_factory=set)  # LFS objects uploaded to this repo (committable)
    variables: dict[str, dict] = field(default_factory=dict)
    secrets: dict[str, dict] = field(default_factory=dict)
    space_stage: str = "RUNNING"  # Spaces never build here; tests may set another stage

    @property
    def namespace(self) -> str:
        return self.repo_id.split("/")[0]

    def resolve(self, revision: str) -> Commit:
        """Branch, tag, `refs/...` name, full commit id or unique prefix (>= 7 chars) -> commit."""
        name = revision.removeprefix("refs/heads/").removeprefix("refs/tags/")
        if name in self.branches:
            return self.commits[self.branches[name]]
        if name in self.tags:
            return self.commits[self.tags[name]]
        if revision.startswith("refs/pr/") and revision[8:].isdigit() and int(revision[8:]) in self.pull_requests:
            return self.commits[self.pull_requests[int(revision[8:])]]
        if len(revision) >= 7:
            matches = [oid for oid in self.commits if oid.startswith(revision.lower())]
            if len(matches) == 1:
                return self.commits[matches[0]]
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def history(self, revision: str) -> list[Commit]:
        """Commits reachable from `revision`, newest first."""
        commit: Commit | None = self.resolve(revision)
        out = []
        while commit is not None:
            out.append(commit)
            commit = self.commits[commit.parent] if commit.parent else None
        return out


@dataclass(frozen=True)
class Operation:
    """One line of a commit: `add` (with `entry`), `delete` (a file) or `delete_folder`."""

    kind: str
    path: str
    entry: FileEntry | None = None


class HubStore:
    """All repos and file contents. Methods take a lock so tests may inspect while the server runs."""

    def __init__(self, lfs_threshold: int = 10 * 1024 * 1024):
        self.lfs_threshold = lfs_threshold  # regular files above this size must go through LFS, as on the Hub
        self.repos: dict[tuple[str, str], Repo] = {}
        self.contents: dict[str, bytes] = {}  # sha256 -> bytes
        self.lock = threading.RLock()
        self._counter = itertools.count()

    # -- repos -----------------------------------------------------------------------------------------------
    def get(self, repo_type: str, repo_id: str) -> Repo | None:
        with self.lock:
            return self.repos.get((repo_type, repo_id))

    def create_repo(self, repo_type: str, repo_id: str, *, private: bool, author: str, sdk: str | None = None) -> Repo:
        """Create a repo with the Hub's "initial commit" (`.gitattributes`, and a README with the SDK for Spaces)."""
        with self.lock:
            if (repo_type, repo_id) in self.repos:
                raise HubError(409, f"You already created this {repo_type} repo")
            repo = Repo(repo_type=repo_type, repo_id=repo_id, private=private, sdk=sdk)
            initial = [Operation("add", ".gitattributes", self.put_content(DEFAULT_GITATTRIBUTES.encode(), lfs=False))]
            if repo_type == "space":
                readme = f"---\ntitle: {repo_id.split('/')[1]}\nemoji: 🚀\nsdk: {sdk}\npinned: false\n---\n"
                initial.append(Operation("add", "README.md", self.put_content(readme.encode(), lfs=False)))
            self.repos[(repo_type, repo_id)] = repo
            commit = self._new_commit(repo, None, initial, "initial commit", "", author)
            repo.branches["main"] = commit.oid
            return repo

    def delete_repo(self, repo_type: str, repo_id: str) -> None:
        with self.lock:
            self.repos.pop((repo_type, repo_id))

    # -- contents --------------------------------------------------------------------------------------------
    def put_content(self, data: bytes, *, lfs: bool) -> FileEntry:
        sha = hashlib.sha256(data).hexdigest()
        with self.lock:
            self.contents.setdefault(sha, data)
        oid = git_blob_oid(lfs_pointer(sha, len(data)) if lfs else data)
        return FileEntry(sha256=sha, size=len(data), lfs=lfs, git_oid=oid)

    def add_lfs_object(self, repo: Repo, data: bytes) -> None:
        """Store content uploaded through LFS; only then may a commit of this repo reference it."""
        sha = hashlib.sha256(data).hexdigest()
        with self.lock:
            self.contents.setdefault(sha, data)
            repo.lfs_oids.add(sha)

    def lfs_entry(self, repo: Repo, sha256: str, path: str) -> FileEntry:
        with self.lock:
            if sha256 not in repo.lfs_oids:
                raise HubError(400, f"LFS object {sha256} for '{path}' was never uploaded to {repo.repo_id}")
            size = len(self.contents[sha256])
        return FileEntry(sha256=sha256, size=size, lfs=True, git_oid=git_blob_oid(lfs_pointer(sha256, size)))

    def read(self, entry: FileEntry) -> bytes:
        with self.lock:
            return self.contents[entry.sha256]

    def upload_mode(self, repo: Repo, files: Mapping[str, FileEntry], path: str, size: int, sample: bytes) -> str:
        """The Hub's rule: LFS if `.gitattributes` says so, if the file is large, or if it looks binary."""
        patterns = []
        if ".gitattributes" in files:
            text = self.read(files[".gitattributes"]).decode(errors="replace")
            patterns = [line.split()[0] for line in text.splitlines() if "filter=lfs" in line and line.split()]
        name = path.rsplit("/", 1)[-1]
        if any(fnmatch.fnmatch(path if "/" in pat else name, pat) for pat in patterns):
            return "lfs"
        return "lfs" if size >= self.lfs_threshold or b"\0" in sample else "regular"

    # -- commits ---------------------------------------------------------------------------------------------
    def commit(
        self,
        repo: Repo,
        branch: str,
        operations: Iterable[Operation],
        *,
        title: str,
        message: str,
        author: str,
        parent_commit: str | None = None,
        create_pr: bool = False,
    ) -> Commit:
        """Apply `operations` on top of `branch` atomically: either a new commit is created, or nothing changes.

        With `create_pr`, the commit goes to a new `refs/pr/N` ref instead of moving the branch.
        """
        with self.lock:
            name = branch.removeprefix("refs/heads/")
            is_pr = name.startswith("refs/pr/") and name[8:].isdigit() and int(name[8:]) in repo.pull_requests
            if name not in repo.branches and not is_pr:
                raise HubError(404, f"Invalid rev id: {branch} (commits go to a branch)", "RevisionNotFound")
            head = repo.resolve(name)
            if parent_commit is not None and not head.oid.startswith(parent_commit.lower()):
                raise HubError(412, "A commit has happened since. Please refresh and try again.")
            commit = self._new_commit(repo, head, operations, title, message, author)
            if create_pr:
                repo.pull_requests[len(repo.pull_requests) + 1] = commit.oid
            elif is_pr:
                repo.pull_requests[int(name[8:])] = commit.oid
            else:
                repo.branches[name] = commit.oid
            return commit

    def _new_commit(
        self, repo: Repo, parent: Commit | None, operations: Iterable[Operation], title: str, message: str, author: str
    ) -> Commit:
        files = dict(parent.files) if parent else {}
        for op in operations:
            if op.kind == "add":
                assert op.entry is not None
                files[op.path] = op.entry
            elif op.kind == "delete":
                if files.pop(op.path, None) is None:
                    raise HubError(404, f"A file with this name doesn't exist: {op.path}", "EntryNotFound")
            else:
                prefix = op.path.rstrip("/") + "/"
                doomed = [p for p in files if p.startswith(prefix)]
                if not doomed:
                    raise HubError(404, f"A folder with this name doesn't exist: {op.path}", "EntryNotFound")
                for path in doomed:
                    del files[path]
        date = now()
        seed = f"{parent.oid if parent else ''}\n{title}\n{date.isoformat()}\n{next(self._counter)}\n"
        seed += "".join(f"{p}\0{e.git_oid}\n" for p, e in sorted(files.items()))
        commit = Commit(
            oid=hashlib.sha1(seed.encode()).hexdigest(),
            parent=parent.oid if parent else None,
            title=title,
            message=message,
            author=author,
            date=date,
            files=MappingProxyType(files),
        )
        repo.commits[commit.oid] = commit
        return commit
