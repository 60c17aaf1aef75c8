"""Fault injection for the test Hub: failures, dropped connections and latency, armed by tests.

`FaultMiddleware` wraps the whole ASGI app, so an injected failure never reaches the handlers: the repo is left
exactly as it was, which is what tests of "a failed push loses no data" rely on. Requests are matched by kind
(`classify`), and every request is counted per kind so tests can assert how often the client called.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send


@dataclass
class Fault:
    kind: str  # a request kind from `classify`, or "any"
    status: int | None  # None: drop the connection instead of answering
    message: str = "Injected failure"
    times: int = 1
    after_processing: bool = False  # drop only after the request was applied (the response is lost)
    code: str | None = None  # X-Error-Code, e.g. "RepoNotFound", for the client to raise a typed error


class FaultInjector:
    """Faults and latency armed by tests, consumed by matching requests; also counts requests per kind."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.faults: list[Fault] = []
        self.latency: dict[str, float] = {}
        self.calls: Counter[str] = Counter()

    def arm(self, fault: Fault) -> None:
        with self._lock:
            self.faults.append(fault)

    def take(self, kind: str) -> Fault | None:
        with self._lock:
            self.calls[kind] += 1
            for fault in self.faults:
                if fault.kind in (kind, "any"):
                    fault.times -= 1
                    if fault.times <= 0:
                        self.faults.remove(fault)
                    return fault
        return None

    def set_latency(self, seconds: float, kind: str = "any") -> None:
        with self._lock:
            self.latency[kind] = seconds

    def delay(self, kind: str) -> float:
        with self._lock:
            return self.latency.get(kind, self.latency.get("any", 0.0))

    def reset(self) -> None:
        with self._lock:
            self.faults.clear()
            self.latency.clear()
            self.calls.clear()


_API_ACTION = re.compile(r"^/api/(?:models|datasets|spaces)/[^/]+/[^/]+/([a-z-]+)(?:/|$)")
_API_INFO = re.compile(r"^/api/(?:models|datasets|spaces)/[^/]+/[^/]+/?$")


def classify(method: str, path: str) -> str:
    """The kind of a request, as used by fault injection and call counters.

    Kinds: create_repo, delete_repo, whoami, validate_yaml, info, preupload, lfs_batch, lfs (the LFS content PUT),
    lfs_verify, commit, tree, paths_info, refs, commits, branch, tag, settings, variables, secrets, runtime,
    resolve (HEAD and GET of a file), other.
    """
    if path.startswith("/lfs-upload/"):
        return "lfs"
    if path.endswith(".git/info/lfs/objects/batch"):
        return "lfs_batch"
    if path.endswith(".git/info/lfs/objects/verify"):
        return "lfs_verify"
    if path in ("/api/repos/create", "/api/repos/delete"):
        return path.rsplit("/", 1)[1] + "_repo"
    if path.startswith("/api/whoami"):
        return "whoami"
    if path == "/api/validate-yaml":
        return "validate_yaml"
    if match := _API_ACTION.match(path):
        return "info" if match.group(1) == "revision" else match.group(1).replace("-", "_")
    if _API_INFO.match(path):
        return "info"
    if "/resolve/" in path and not path.startswith("/api/"):
        return "resolve"
    return "other"


async def _drop_connection(receive: Receive, send: Send) -> None:
    """Abort the TCP connection without an answer, as a flaky network would.

    ASGI has no message for this, so reach uvicorn's transport through its `send` method (h11 protocol).
    """
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if transport is None:
        raise RuntimeError("dropping a connection needs the app to run under uvicorn with http='h11'")
    transport.abort()
    while (await receive())["type"] != "http.disconnect":
        pass


class FaultMiddleware:
    def __init__(self, app: ASGIApp, faults: FaultInjector):
        self.app, self.faults = app, faults

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        kind = classify(scope["method"], scope["path"])
        fault = self.faults.take(kind)  # counted on arrival: a test sees a slowed request while it waits
        if delay := self.faults.delay(kind):
            await asyncio.sleep(delay)
        if fault is None:
            await self.app(scope, receive, send)
        elif fault.status is not None:
            while (await receive()).get("more_body"):  # read the body so the connection stays usable
                pass
            message = fault.message.encode("ascii", "replace").decode()  # header values must be latin-1
            headers = {"X-Error-Message": message, **({"X-Error-Code": fault.code} if fault.code else {})}
            await JSONResponse({"error": message}, fault.status, headers)(scope, receive, send)
        elif fault.after_processing:

            async def swallow(message: Any) -> None:
                pass

            await self.app(scope, receive, swallow)
            await _drop_connection(receive, send)
        else:
            await receive()  # let the start of the body arrive: the connection drops mid-upload
            await _drop_connection(receive, send)
