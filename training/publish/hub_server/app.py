"""The test Hub's HTTP API: the subset of the Hugging Face Hub that the real `huggingface_hub` client speaks.

Routes mirror the Hub's: `/api/{models,datasets,spaces}/{namespace}/{name}/...` for the JSON API,
`/[datasets/|spaces/]{namespace}/{name}/resolve/{revision}/{path}` for downloads, and
`/[datasets/|spaces/]{namespace}/{name}.git/info/lfs/objects/batch` for the LFS batch API, whose upload actions
point back at this server (`/lfs-upload/{sha256}?signature=...`, unauthenticated like a pre-signed S3 URL).
Errors carry `X-Error-Code` / `X-Error-Message` headers, which `huggingface_hub.utils.hf_raise_for_status` turns
into `RepositoryNotFoundError`, `RevisionNotFoundError`, `EntryNotFoundError`, `GatedRepoError`, ...

Two ASGI wrappers sit in front of FastAPI: `faults.FaultMiddleware` (failures, dropped connections and latency
armed by tests) and `_KeepEncodedSlashes` (the client quotes revisions and tree paths with `safe=""`, so
`refs/pr/1` arrives as one path segment `refs%2Fpr%2F1`; routing must not split it).
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import unquote

import yaml
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from .faults import FaultInjector, FaultMiddleware
from .storage import REPO_TYPES, SPACE_SDKS, Commit, FileEntry, HubError, HubStore, Operation, Repo, now

URL_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_PLURALS = {"models": "model", "datasets": "dataset", "spaces": "space"}


@dataclass
class HubConfig:
    """Who the Hub knows: one user (whose token grants write access to its namespace and `orgs`)."""

    user: str = "tester"
    token: str = field(default_factory=lambda: "hf_test_" + secrets.token_hex(16))
    orgs: tuple[str, ...] = ()


def error_response(
    status: int, message: str, code: str | None = None, headers: Mapping[str, str] | None = None, **body: Any
) -> Response:
    message = message.encode("ascii", "replace").decode()  # header values must be latin-1
    all_headers = {"X-Error-Message": message, **(headers or {})}
    if code:
        all_headers["X-Error-Code"] = code
    return JSONResponse({"error": message, **body}, status_code=status, headers=all_headers)


class _KeepEncodedSlashes:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("raw_path"):
            raw = re.sub(rb"%2[fF]", b"%252F", scope["raw_path"])
            scope = dict(scope, path=unquote(raw.decode("ascii", "replace")))
        await self.app(scope, receive, send)


def _unslash(value: str) -> str:
    return value.replace("%2F", "/")


# -- JSON shapes -----------------------------------------------------------------------------------------------


def iso(date: datetime) -> str:
    return date.strftime("%Y-%m-%dT%H:%M:%S.") + f"{date.microsecond // 1000:03d}Z"


def _file_json(path: str, entry: FileEntry) -> dict:
    data: dict[str, Any] = {"type": "file", "oid": entry.git_oid, "size": entry.size, "path": path}
    if entry.lfs:
        data["lfs"] = {"oid": entry.sha256, "size": entry.size, "pointerSize": entry.pointer_size}
    return data


def _dir_json(path: str, files: Mapping[str, FileEntry]) -> dict:
    listing = "".join(f"{p}\0{e.git_oid}\n" for p, e in sorted(files.items()) if p.startswith(path + "/"))
    return {"type": "directory", "oid": hashlib.sha1(listing.encode()).hexdigest(), "size": 0, "path": path}


def _tree(files: Mapping[str, FileEntry], base: str, recursive: bool) -> list[dict]:
    prefix = f"{base}/" if base else ""
    seen: set[str] = set()
    out = []
    for path in sorted(files):
        if not path.startswith(prefix):
            continue
        parts = path[len(prefix) :].split("/")
        for depth in range(1, len(parts) if recursive else min(2, len(parts))):
            folder = prefix + "/".join(parts[:depth])
            if folder not in seen:
                seen.add(folder)
                out.append(_dir_json(folder, files))
        if recursive or len(parts) == 1:
            out.append(_file_json(path, files[path]))
    if base and not out:
        raise HubError(404, f"Entry not found: {base}", "EntryNotFound")
    return out


def _card_data(store: HubStore, commit: Commit) -> dict | None:
    """The YAML front matter of README.md, which the Hub serves as `cardData`."""
    entry = commit.files.get("README.md")
    if entry is None:
        return None
    match = re.match(r"\A---\s*\n(.*?)\n---\s*(\n|\Z)", store.read(entry).decode(errors="replace"), re.DOTALL)
    try:
        card = yaml.safe_load(match.group(1)) if match else None
    except yaml.YAMLError:
        return None
    return card if isinstance(card, dict) else None


def _runtime_json(repo: Repo) -> dict:
    hardware = {"current": "cpu-basic", "requested": "cpu-basic"}
    return {"stage": repo.space_stage, "hardware": hardware, "storage": None, "gcTimeout": 172800}


def _info_json(store: HubStore, repo: Repo, commit: Commit, blobs: bool) -> dict:
    siblings = []
    for path, entry in sorted(commit.files.items()):
        sibling: dict[str, Any] = {"rfilename": path}
        if blobs:
            sibling.update(size=entry.size, blobId=entry.git_oid)
            if entry.lfs:
                sibling["lfs"] = {"sha256": entry.sha256, "size": entry.size, "pointerSize": entry.pointer_size}
        siblings.append(sibling)
    card = _card_data(store, commit) or {}
    data: dict[str, Any] = {
        "_id": hashlib.sha1(f"{repo.repo_type}/{repo.repo_id}".encode()).hexdigest()[:24],
        "id": repo.repo_id,
        "author": repo.namespace,
        "sha": commit.oid,
        "private": repo.private,
        "gated": repo.gated,
        "disabled": False,
        "createdAt": iso(repo.created_at),
        "lastModified": iso(commit.date),
        "likes": 0,
        "tags": list(card.get("tags") or []),
        "siblings": siblings,
        "usedStorage": sum(entry.size for entry in commit.files.values()),
    }
    if card:
        data["cardData"] = card
    if repo.repo_type == "model":
        data.update(downloads=0, library_name=card.get("library_name"), pipeline_tag=card.get("pipeline_tag"))
    elif repo.repo_type == "dataset":
        data["downloads"] = 0
    else:
        data.update(sdk=repo.sdk, runtime=_runtime_json(repo))
    return data


def _ignored(path: str, gitignore: str) -> bool:
    """A small subset of .gitignore matching: enough for the `shouldIgnore` answer of the preupload endpoint."""
    for pattern in (line.strip() for line in gitignore.splitlines()):
        if not pattern or pattern.startswith(("#", "!")):
            continue
        if pattern.endswith("/"):
            if f"/{path}".find(f"/{pattern.strip('/')}/") >= 0:
                return True
        elif fnmatch.fnmatch(path, pattern.lstrip("/")) or fnmatch.fnmatch(path.rsplit("/", 1)[-1], pattern):
            return True
    return False


def _check_path(path: Any) -> str:
    if not isinstance(path, str) or not path or path.startswith("/") or ".." in path.split("/"):
        raise HubError(400, f"Invalid path in repo: {path!r}")
    if path == ".git" or path.startswith(".git/"):
        raise HubError(400, f"Invalid path in repo: {path!r}")
    return path


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """`bytes=a-b`, `bytes=a-` or `bytes=-n` -> (start, end inclusive); None if unsatisfiable."""
    match = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", header)
    if not match or match.groups() == ("", ""):
        return None
    start, end = match.groups()
    if start == "":
        first, last = max(size - int(end), 0), size - 1
    else:
        first, last = int(start), min(int(end), size - 1) if end else size - 1
    return (first, last) if first <= last and first < size else None


# -- the app ---------------------------------------------------------------------------------------------------


def create_app(store: HubStore, config: HubConfig, faults: FaultInjector | None = None) -> ASGIApp:
    """The Hub as an ASGI app (FastAPI behind the fault and slash-preserving wrappers)."""
    api = FastAPI(title="ddpo-hub test Hub", openapi_url=None, docs_url=None, redoc_url=None)
    pending_uploads: dict[str, tuple[str, str, str, int]] = {}  # signature -> (repo type, repo id, sha256, size)

    @api.exception_handler(HubError)
    async def _on_hub_error(request: Request, exc: HubError) -> Response:
        return error_response(exc.status, exc.message, exc.code, exc.headers, **exc.body)

    def user_of(request: Request) -> str | None:
        """None when anonymous; a wrong token is rejected outright, as on the Hub."""
        authorization = request.headers.get("authorization")
        if not authorization:
            return None
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or token.strip() != config.token:
            raise HubError(401, "Invalid credentials in Authorization header")
        return config.user

    def require_user(request: Request) -> str:
        user = user_of(request)
        if user is None:
            raise HubError(401, "Authentication required: send 'Authorization: Bearer <token>'")
        return user

    def repo_of(request: Request, repo_type: str, ns: str, name: str, *, write: bool = False) -> tuple[Repo, str]:
        """The repo if this request may see it (and write to it): 401/404 `RepoNotFound` like the Hub otherwise."""
        user = user_of(request)
        repo = store.get(repo_type, f"{ns}/{name}")
        if repo is None or (repo.private and user is None):
            status = 401 if user is None else 404
            raise HubError(status, f"Repository not found: {repo_type} {ns}/{name}", "RepoNotFound")
        if write:
            user = require_user(request)
            if repo.namespace not in (config.user, *config.orgs):
                raise HubError(403, f"You don't have write access to {repo.repo_id}")
        return repo, user or ""

    def repo_type_of(plural: str) -> str:
        if plural not in _PLURALS:
            raise HubError(404, f"Unknown repo type: {plural}")
        return _PLURALS[plural]

    def url_of(request: Request, repo: Repo) -> str:
        return f"{str(request.base_url).rstrip('/')}/{URL_PREFIXES[repo.repo_type]}{repo.repo_id}"

    async def json_body(request: Request) -> dict:
        body = await request.body()
        try:
            data = json.loads(body) if body.strip() else {}
        except json.JSONDecodeError as err:
            raise HubError(400, f"Invalid JSON body: {err}") from err
        if not isinstance(data, dict):
            raise HubError(400, "JSON body must be an object")
        return data

    # -- account and repos -----------------------------------------------------------------------------------
    @api.get("/api/whoami-v2")
    async def whoami(request: Request) -> dict:
        user = require_user(request)
        return {
            "type": "user",
            "name": user,
            "fullname": "Test User",
            "email": f"{user}@example.com",
            "emailVerified": True,
            "isPro": False,
            "orgs": [{"type": "org", "name": org} for org in config.orgs],
            "auth": {"type": "access_token", "accessToken": {"displayName": "tests", "role": "write"}},
        }

    @api.post("/api/repos/create")
    async def create_repo(request: Request) -> dict:
        user = require_user(request)
        body = await json_body(request)
        repo_type, name = body.get("type") or "model", body.get("name")
        namespace = body.get("organization") or user
        if repo_type not in REPO_TYPES or not isinstance(name, str) or not re.fullmatch(r"[\w.-]{1,96}", name):
            raise HubError(400, f"Invalid repo type or name: {repo_type!r} {name!r}")
        if namespace not in (user, *config.orgs):
            raise HubError(403, f"You don't have the rights to create a {repo_type} under the namespace {namespace}")
        sdk = body.get("sdk")
        if repo_type == "space" and sdk not in SPACE_SDKS:
            raise HubError(400, f"Invalid Space SDK: {sdk!r}, expected one of {SPACE_SDKS}")
        private = body.get("visibility", "private" if body.get("private") else "public") != "public"
        repo_id = f"{namespace}/{name}"
        try:
            repo = store.create_repo(repo_type, repo_id, private=private, author=user, sdk=sdk)
        except HubError as err:  # with exist_ok=True, the client reads `url` from the 409 answer
            err.body["url"] = f"{str(request.base_url).rstrip('/')}/{URL_PREFIXES[repo_type]}{repo_id}"
            raise
        for kind in ("variables", "secrets"):
            for item in body.get(kind) or []:
                getattr(repo, kind)[item["key"]] = {**item, "updatedAt": iso(now())}
        return {"url": url_of(request, repo), "name": repo.repo_id, "id": repo.repo_id}

    @api.delete("/api/repos/delete")
    async def delete_repo(request: Request) -> dict:
        body = await json_body(request)
        repo_type = body.get("type") or "model"
        ns = body.get("organization") or require_user(request)
        repo, _ = repo_of(request, repo_type, ns, str(body.get("name")), write=True)
        store.delete_repo(repo.repo_type, repo.repo_id)
        return {}

    @api.post("/api/validate-yaml")
    async def validate_yaml(request: Request) -> Response:
        content = str((await json_body(request)).get("content", ""))
        match = re.match(r"\A---\s*\n(.*?)\n---\s*(\n|\Z)", content, re.DOTALL)
        try:
            if match and not isinstance(yaml.safe_load(match.group(1)) or {}, dict):
                raise yaml.YAMLError("metadata must be a YAML mapping")
        except yaml.YAMLError as err:
            errors = [{"message": f"Invalid YAML metadata: {err}"}]
            return JSONResponse({"errors": errors, "warnings": []}, status_code=400)
        return JSONResponse({"errors": [], "warnings": []})

    @api.get("/api/{types}/{ns}/{name}")
    @api.get("/api/{types}/{ns}/{name}/revision/{revision}")
    async def repo_info(request: Request, types: str, ns: str, name: str, revision: str = "main") -> dict:
        repo, _ = repo_of(request, repo_type_of(types), ns, name)
        blobs = request.query_params.get("blobs", "").lower() in ("1", "true")
        return _info_json(store, repo, repo.resolve(_unslash(revision)), blobs)

    @api.put("/api/{types}/{ns}/{name}/settings")
    async def settings(request: Request, types: str, ns: str, name: str) -> dict:
        repo, _ = repo_of(request, repo_type_of(types), ns, name, write=True)
        body = await json_body(request)
        with store.lock:
            if "visibility" in body or "private" in body:
                repo.private = body.get("visibility", "private" if body.get("private") else "public") != "public"
            if "gated" in body:
                repo.gated = body["gated"]
        return {}

    # -- upload: preupload, LFS, commit ----------------------------------------------------------------------
    @api.post("/api/{types}/{ns}/{name}/preupload/{revision}")
    async def preupload(request: Request, types: str, ns: str, name: str, revision: str) -> dict:
        repo, _ = repo_of(request, repo_type_of(types), ns, name, write=True)
        body = await json_body(request)
        head = repo.resolve(_unslash(revision))
        gitignore = body.get("gitIgnore")
        if gitignore is None and ".gitignore" in head.files:
            gitignore = store.read(head.files[".gitignore"]).decode(errors="replace")
        files = []
        for item in body.get("files") or []:
            path, size = _check_path(item.get("path")), int(item.get("size", 0))
            mode = store.upload_mode(repo, head.files, path, size, base64.b64decode(item.get("sample", "")))
            existing = head.files.get(path)
            # The client compares this with its own oid (sha256 for LFS, git blob id otherwise) to skip no-ops.
            oid = None if existing is None else existing.sha256 if existing.lfs else existing.git_oid
            files.append(
                {"path": path, "uploadMode": mode, "shouldIgnore": _ignored(path, gitignore or ""), "oid": oid}
            )
        return {"files": files, "commitOid": head.oid}

    async def lfs_batch(request: Request, ns: str, name: str) -> Response:
        repo, _ = repo_of(request, _type_from_url(request), ns, name, write=True)
        body = await json_body(request)
        if body.get("operation") != "upload":
            raise HubError(422, "Only the 'upload' operation of the LFS batch API is supported here")
        base, objects = str(request.base_url).rstrip("/"), []
        for obj in body.get("objects") or []:
            oid, size = obj.get("oid"), obj.get("size")
            if not isinstance(oid, str) or not re.fullmatch(r"[0-9a-f]{64}", oid) or not isinstance(size, int):
                objects.append({"oid": str(oid), "size": int(size or 0), "error": {"code": 422, "message": "Invalid"}})
                continue
            if oid in repo.lfs_oids:  # already there: no action, the client skips the upload
                objects.append({"oid": oid, "size": size})
                continue
            signature = secrets.token_urlsafe(16)
            with store.lock:
                pending_uploads[signature] = (repo.repo_type, repo.repo_id, oid, size)
            actions = {
                "upload": {"href": f"{base}/lfs-upload/{oid}?signature={signature}", "expires_in": 3600},
                "verify": {"href": f"{url_of(request, repo)}.git/info/lfs/objects/verify", "expires_in": 3600},
            }
            objects.append({"oid": oid, "size": size, "authenticated": True, "actions": actions})
        content = json.dumps({"transfer": "basic", "objects": objects, "hash_algo": "sha256"})
        return Response(content, media_type="application/vnd.git-lfs+json")

    async def lfs_verify(request: Request, ns: str, name: str) -> dict:
        repo, _ = repo_of(request, _type_from_url(request), ns, name, write=True)
        body = await json_body(request)
        entry = store.lfs_entry(repo, str(body.get("oid")), "<verify>")
        if entry.size != body.get("size"):
            raise HubError(400, f"LFS object {entry.sha256} has size {entry.size}, not {body.get('size')}")
        return {"success": True}

    for prefix in ("/datasets", "/spaces", ""):
        api.add_api_route(prefix + "/{ns}/{name}.git/info/lfs/objects/batch", lfs_batch, methods=["POST"])
        api.add_api_route(prefix + "/{ns}/{name}.git/info/lfs/objects/verify", lfs_verify, methods=["POST"])

    @api.put("/lfs-upload/{oid}")
    async def lfs_upload(request: Request, oid: str, signature: str = "") -> Response:
        with store.lock:
            target = pending_uploads.get(signature)
        if target is None or target[2] != oid:
            raise HubError(403, "Invalid or expired upload signature")
        repo_type, repo_id, _, size = target
        hasher, chunks = hashlib.sha256(), []
        async for chunk in request.stream():
            hasher.update(chunk)
            chunks.append(chunk)
        data = b"".join(chunks)
        if len(data) != size or hasher.hexdigest() != oid:
            raise HubError(400, f"Uploaded content does not match the announced sha256/size ({len(data)} != {size})")
        repo = store.get(repo_type, repo_id)
        if repo is None:
            raise HubError(404, f"Repository not found: {repo_type} {repo_id}", "RepoNotFound")
        store.add_lfs_object(repo, data)
        with store.lock:
            pending_uploads.pop(signature, None)
        return Response(headers={"ETag": f'"{oid}"'})

    @api.post("/api/{types}/{ns}/{name}/commit/{revision}")
    async def commit(request: Request, types: str, ns: str, name: str, revision: str) -> dict:
        repo, user = repo_of(request, repo_type_of(types), ns, name, write=True)
        try:
            lines = [json.loads(line) for line in (await request.body()).splitlines() if line.strip()]
        except json.JSONDecodeError as err:
            raise HubError(400, f"Invalid NDJSON commit payload: {err}") from err
        header = next((line["value"] for line in lines if line.get("key") == "header"), None)
        if not isinstance(header, dict) or not header.get("summary"):
            raise HubError(400, "The commit payload needs a header line with a summary")
        operations = [_operation(repo, line) for line in lines if line.get("key") != "header"]
        create_pr = request.query_params.get("create_pr", "").lower() in ("1", "true")
        new = store.commit(
            repo,
            _unslash(revision),
            operations,
            title=header["summary"],
            message=header.get("description") or "",
            author=user,
            parent_commit=header.get("parentCommit"),
            create_pr=create_pr,
        )
        url = url_of(request, repo)
        pr_url = None
        if create_pr:
            pr_url = f"{url}/discussions/{next(n for n, oid in repo.pull_requests.items() if oid == new.oid)}"
        return {
            "success": True,
            "commitOid": new.oid,
            "commitUrl": f"{url}/commit/{new.oid}",
            "hookOutput": "",
            "pullRequestUrl": pr_url,
        }

    def _operation(repo: Repo, line: dict) -> Operation:
        key, value = line.get("key"), line.get("value") or {}
        path = _check_path(value.get("path"))
        if key == "file":
            content = value.get("content", "")
            data = base64.b64decode(content) if value.get("encoding") == "base64" else content.encode()
            if len(data) > store.lfs_threshold:
                raise HubError(
                    400, f"'{path}' is larger than {store.lfs_threshold} bytes: it must be uploaded with LFS"
                )
            return Operation("add", path, store.put_content(data, lfs=False))
        if key == "lfsFile":
            return Operation("add", path, store.lfs_entry(repo, str(value.get("oid")), path))
        if key == "deletedFile":
            return Operation("delete", path)
        if key == "deletedFolder":
            return Operation("delete_folder", path)
        raise HubError(400, f"Unknown commit operation: {key!r}")

    # -- reading: tree, paths-info, refs, commits, files -----------------------------------------------------
    @api.get("/api/{types}/{ns}/{name}/tree/{revision}")
    @api.get("/api/{types}/{ns}/{name}/tree/{revision}/{path:path}")
    async def tree(request: Request, types: str, ns: str, name: str, revision: str, path: str = "") -> list[dict]:
        repo, _ = repo_of(request, repo_type_of(types), ns, name)
        recursive = request.query_params.get("recursive", "").lower() in ("1", "true")
        return _tree(repo.resolve(_unslash(revision)).files, _unslash(path).strip("/"), recursive)

    @api.post("/api/{types}/{ns}/{name}/paths-info/{revision}")
    async def paths_info(request: Request, types: str, ns: str, name: str, revision: str) -> list[dict]:
        repo, _ = repo_of(request, repo_type_of(types), ns, name)
        files = repo.resolve(_unslash(revision)).files
        form = await request.form()
        out = []
        for path in (str(p).strip("/") for p in form.getlist("paths")):
            if path in files:
                out.append(_file_json(path, files[path]))
            elif any(p.startswith(path + "/") for p in files):
                out.append(_dir_json(path, files))
        return out

    @api.get("/api/{types}/{ns}/{name}/refs")
    async def refs(request: Request, types: str, ns: str, name: str) -> dict:
        repo, _ = repo_of(request, repo_type_of(types), ns, name)
        with store.lock:
            data: dict[str, Any] = {
                "branches": [
                    {"name": b, "ref": f"refs/heads/{b}", "targetCommit": o} for b, o in repo.branches.items()
                ],
                "converts": [],
                "tags": [{"name": t, "ref": f"refs/tags/{t}", "targetCommit": o} for t, o in repo.tags.items()],
            }
            if request.query_params.get("include_prs"):
                data["pullRequests"] = [
                    {"name": f"refs/pr/{n}", "ref": f"refs/pr/{n}", "targetCommit": o}
                    for n, o in repo.pull_requests.items()
                ]
        return data

    @api.get("/api/{types}/{ns}/{name}/commits/{revision}")
    async def commits(request: Request, types: str, ns: str, name: str, revision: str) -> list[dict]:
        repo, _ = repo_of(request, repo_type_of(types), ns, name)
        return [
            {
                "id": c.oid,
                "title": c.title,
                "message": c.message,
                "authors": [{"user": c.author, "avatar": None}],
                "date": iso(c.date),
            }
            for c in repo.history(_unslash(revision))
        ]

    @api.post("/api/{types}/{ns}/{name}/branch/{branch}")
    async def create_branch(request: Request, types: str, ns: str, name: str, branch: str) -> dict:
        repo, _ = repo_of(request, repo_type_of(types), ns, name, write=True)
        start = (await json_body(request)).get("startingPoint") or "main"
        with store.lock:
            if _unslash(branch) in repo.branches:
                raise HubError(409, f"Reference already exists: refs/heads/{_unslash(branch)}")
            repo.branches[_unslash(branch)] = repo.resolve(start).oid
        return {}

    @api.delete("/api/{types}/{ns}/{name}/branch/{branch}")
    async def delete_branch(request: Request, types: str, ns: str, name: str, branch: str) -> dict:
        repo, _ = repo_of(request, repo_type_of(types), ns, name, write=True)
        with store.lock:
            if _unslash(branch) == "main":
                raise HubError(403, "The default branch cannot be deleted")
            if repo.branches.pop(_unslash(branch), None) is None:
                raise HubError(404, f"Invalid rev id: {_unslash(branch)}", "RevisionNotFound")
        return {}

    @api.post("/api/{types}/{ns}/{name}/tag/{revision}")
    async def create_tag(request: Request, types: str, ns: str, name: str, revision: str) -> dict:
        repo, _ = repo_of(request, repo_type_of(types), ns, name, write=True)
        tag = (await json_body(request)).get("tag")
        if not isinstance(tag, str) or not tag:
            raise HubError(400, "Missing tag name")
        with store.lock:
            target = repo.resolve(_unslash(revision))
            if tag in repo.tags:
                raise HubError(409, f"Tag already exists: {tag}")
            repo.tags[tag] = target.oid
        return {}

    @api.delete("/api/{types}/{ns}/{name}/tag/{tag}")
    async def delete_tag(request: Request, types: str, ns: str, name: str, tag: str) -> dict:
        repo, _ = repo_of(request, repo_type_of(types), ns, name, write=True)
        with store.lock:
            if repo.tags.pop(_unslash(tag), None) is None:
                raise HubError(404, f"Invalid rev id: {_unslash(tag)}", "RevisionNotFound")
        return {}

    async def resolve(request: Request, ns: str, name: str, revision: str, path: str) -> Response:
        repo, user = repo_of(request, _type_from_url(request), ns, name)
        if repo.gated and not user:
            raise HubError(401, f"Access to {repo.repo_id} is restricted: you must be authenticated", "GatedRepo")
        head = repo.resolve(_unslash(revision))
        entry = head.files.get(path)
        if entry is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": head.oid})
        data = store.read(entry)
        headers = {
            "X-Repo-Commit": head.oid,
            "ETag": f'"{entry.sha256 if entry.lfs else entry.git_oid}"',
            "Accept-Ranges": "bytes",
        }
        if entry.lfs:
            headers.update({"X-Linked-Etag": f'"{entry.sha256}"', "X-Linked-Size": str(entry.size)})
        range_header = request.headers.get("range")
        if range_header is None:
            return Response(data, headers=headers, media_type="application/octet-stream")
        span = _parse_range(range_header, len(data))
        if span is None:
            raise HubError(416, "Requested range not satisfiable", headers={"Content-Range": f"bytes */{len(data)}"})
        headers["Content-Range"] = f"bytes {span[0]}-{span[1]}/{len(data)}"
        return Response(data[span[0] : span[1] + 1], 206, headers, media_type="application/octet-stream")

    for prefix in ("/datasets", "/spaces", ""):
        api.add_api_route(prefix + "/{ns}/{name}/resolve/{revision}/{path:path}", resolve, methods=["GET", "HEAD"])

    # -- Spaces: variables, secrets, runtime -----------------------------------------------------------------
    @api.get("/api/spaces/{ns}/{name}/variables")
    async def get_variables(request: Request, ns: str, name: str) -> dict:
        repo, _ = repo_of(request, "space", ns, name, write=True)
        return repo.variables

    @api.get("/api/spaces/{ns}/{name}/secrets")
    async def get_secrets(request: Request, ns: str, name: str) -> dict:
        repo, _ = repo_of(request, "space", ns, name, write=True)
        return {key: {k: v for k, v in item.items() if k != "value"} for key, item in repo.secrets.items()}

    @api.post("/api/spaces/{ns}/{name}/{kind}")
    async def add_variable_or_secret(request: Request, ns: str, name: str, kind: str) -> dict:
        store_of = _space_store(request, ns, name, kind)
        body = await json_body(request)
        if not isinstance(body.get("key"), str) or not isinstance(body.get("value"), str):
            raise HubError(400, "Expected a JSON body with string 'key' and 'value'")
        with store.lock:
            store_of[body["key"]] = {**body, "updatedAt": iso(now())}
        return {} if kind == "secrets" else store_of

    @api.delete("/api/spaces/{ns}/{name}/{kind}")
    async def delete_variable_or_secret(request: Request, ns: str, name: str, kind: str) -> dict:
        store_of = _space_store(request, ns, name, kind)
        with store.lock:
            store_of.pop(str((await json_body(request)).get("key")), None)
        return {} if kind == "secrets" else store_of

    def _space_store(request: Request, ns: str, name: str, kind: str) -> dict[str, dict]:
        if kind not in ("variables", "secrets"):
            raise HubError(404, f"Not found: {kind}")
        repo, _ = repo_of(request, "space", ns, name, write=True)
        return repo.variables if kind == "variables" else repo.secrets

    @api.get("/api/spaces/{ns}/{name}/runtime")
    async def runtime(request: Request, ns: str, name: str) -> dict:
        repo, _ = repo_of(request, "space", ns, name)
        return _runtime_json(repo)

    return FaultMiddleware(_KeepEncodedSlashes(api), faults or FaultInjector())


def _type_from_url(request: Request) -> str:
    """Downloads and LFS URLs carry the repo type as a `datasets/` or `spaces/` prefix (none for models)."""
    return {"datasets": "dataset", "spaces": "space"}.get(request.url.path.split("/")[1], "model")
