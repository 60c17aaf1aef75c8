"""`HubServer`: the test Hub served by uvicorn in a background thread, with fault injection and inspection."""

from __future__ import annotations

import threading
import time
import uuid
from types import TracebackType

import uvicorn

from .app import HubConfig, create_app
from .faults import Fault, FaultInjector
from .storage import Commit, HubStore, Repo


class HubServer:
    """A Hub-compatible server on 127.0.0.1 for tests that use the real `huggingface_hub` client.

    `endpoint` is what `HF_ENDPOINT` must be (huggingface_hub reads it at import time), `token` is the write token
    of `user`. Use as a context manager or call `start()` / `stop()`.
    """

    def __init__(
        self,
        port: int = 0,
        *,
        user: str = "tester",
        token: str | None = None,
        orgs: tuple[str, ...] = (),
        lfs_threshold: int = 10 * 1024 * 1024,
        host: str = "127.0.0.1",
    ):
        self.config = HubConfig(user=user, orgs=orgs, **({"token": token} if token else {}))
        self.store = HubStore(lfs_threshold=lfs_threshold)
        self.faults = FaultInjector()
        self.app = create_app(self.store, self.config, self.faults)
        self.host, self.port = host, port
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def token(self) -> str:
        return self.config.token

    @property
    def user(self) -> str:
        return self.config.user

    # -- lifecycle -------------------------------------------------------------------------------------------
    def start(self, timeout: float = 15.0) -> HubServer:
        config = uvicorn.Config(
            self.app,
            host=self.host,
            port=self.port,
            http="h11",  # fault injection reaches the h11 transport to drop connections
            lifespan="off",
            log_config=None,  # leave logging alone: uvicorn's records propagate to pytest's log capture
            log_level="warning",
            timeout_graceful_shutdown=2,
            access_log=False,
            proxy_headers=False,
            timeout_keep_alive=60,  # longer than any test: no server-side close racing a reused connection
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="hub-server", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the test Hub did not start on {self.host}:{self.port}")
            time.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
        self._server = self._thread = None

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None):
        self.stop()

    # -- fault injection -------------------------------------------------------------------------------------
    def fail_next(
        self, kind: str = "commit", status: int = 500, *, times: int = 1, message: str = "", code: str | None = None
    ) -> None:
        """Answer the next `times` requests of `kind` (see `faults.classify`, or "any") with `status`, unprocessed.

        `code` becomes the `X-Error-Code` header (e.g. "RepoNotFound"). The client retries 408/429/5xx by itself on
        most endpoints (not on `commit`), sleeping 1, 2, 4... seconds: use `times` to outlast it.
        """
        message = message or f"Injected failure ({status}) on {kind}"
        self.faults.arm(Fault(kind, status, message, times, code=code))

    def drop_next(self, kind: str = "lfs", *, times: int = 1, after_processing: bool = False) -> None:
        """Drop the connection of the next `times` requests of `kind`, before they are processed (mid-body).

        With `after_processing`, the request is applied first and only its response is lost.
        """
        self.faults.arm(Fault(kind, None, times=times, after_processing=after_processing))

    def drop_next_upload(self, times: int = 1) -> None:
        """Drop the connection in the middle of the next LFS content upload(s)."""
        self.drop_next("lfs", times=times)

    def set_latency(self, seconds: float, kind: str = "any") -> None:
        """Delay every request of `kind` (or all) by `seconds` before handling it."""
        self.faults.set_latency(seconds, kind)

    def reset_faults(self) -> None:
        """Disarm faults and latency and zero the call counters (the fixtures do it after each test)."""
        self.faults.reset()

    def calls(self, kind: str) -> int:
        """How many requests of `kind` arrived since the last reset, failed or not."""
        return self.faults.calls[kind]

    # -- inspection (reads storage directly, bypassing HTTP and auth) --------------------------------------------
    def repo(self, repo_id: str, repo_type: str = "model") -> Repo:
        repo = self.store.get(repo_type, repo_id)
        if repo is None:
            raise KeyError(f"no {repo_type} repo {repo_id!r} on the test Hub")
        return repo

    def commits(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> list[Commit]:
        """Commits reachable from `revision`, newest first."""
        with self.store.lock:
            return self.repo(repo_id, repo_type).history(revision)

    def files(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> dict[str, bytes]:
        """The full content of the repo at `revision`."""
        with self.store.lock:
            commit = self.repo(repo_id, repo_type).resolve(revision)
            return {path: self.store.read(entry) for path, entry in commit.files.items()}

    def unique_repo_id(self, prefix: str = "repo") -> str:
        """A fresh `user/prefix-xxxxxxxx` id: the server lives for the whole session, repos are never reset."""
        return f"{self.user}/{prefix}-{uuid.uuid4().hex[:8]}"
