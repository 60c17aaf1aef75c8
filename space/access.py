"""Which models a visitor of the Space may load, and what of the server they may see.

Visitors may name Hub repo ids (checked before any lookup, and fetched from the Hub only) and the bundled
models; a local folder is served only when the operator named it, under its folder's name: no server path
reaches a visitor. Every refusal is a `gr.Error` whose sentence the visitor can act on.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
from huggingface_hub import constants
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import validate_repo_id

from ddpo_hub.training.pipelines import ModelLoadError, bundled_models, display_name, is_local_path

MAX_REPO_PART_LENGTH = 96
"""The Hub's limit on a repo name (and here on its namespace too): longer ids are refused unread."""
MAX_REVISION_LENGTH = 200
_REVISION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]*")
"""Branches, tags (`epoch-10`), commit hashes and `refs/pr/N`: what git refs and the Hub allow, bar oddities."""
APP_ROOT = Path(__file__).resolve().parents[1]
"""The installed project (the checkout, or the Space's copy of the package): never named to visitors."""
_ABSOLUTE_PATH = re.compile(r"(?<![\w:/.~-])(?:~|[A-Za-z]:)?[/\\][^\s'\"`,;)]+")


@dataclass(frozen=True)
class ServedModel:
    """A model the Space agreed to serve: what visitors see, and what is loaded (never shown to them)."""

    label: str
    """The name in the dropdown, the table and messages: a Hub id, a bundled name or a local folder's name."""
    source: str
    """What is loaded: the Hub id, the bundled name or the server folder."""
    hub: bool
    """Loaded from the Hub only: `source` is never looked up on the file system."""


def local_label(folder: str, taken: Sequence[str] = ()) -> str:
    """A local folder's name for visitors (its `display_name`, numbered if `taken`): the path stays on the server."""
    name = display_name(folder) or "model"
    label, number = name, 1
    while label in taken:
        number += 1
        label = f"{name}-{number}"
    return label


def hub_id_error(model: str) -> str | None:
    """Why `model` is not a Hub repo id the Space may fetch (None when it is one). Reads nothing on disk."""
    parts = model.split("/")
    if len(model) > 2 * MAX_REPO_PART_LENGTH + 1 or any(len(part) > MAX_REPO_PART_LENGTH for part in parts):
        return (
            f"A Hub model id ('user/model') has at most {MAX_REPO_PART_LENGTH} characters in each part; "
            f"the one entered has {len(model):,} characters."
        )
    try:
        if not model.isascii():
            raise HFValidationError("not ASCII")
        validate_repo_id(model)
    except HFValidationError:
        return (
            "Enter a Hub model id such as 'user/model' (letters, digits, '-', '_' and '.'; no '..' or '--'); "
            "server folders are not served."
        )
    return None


def scrub_paths(message: str, folders: Mapping[str, str] | None = None) -> str:
    """`message` as a visitor may see it: served `folders` (path -> label) by their labels, other server paths
    hidden. Pure string work: nothing is looked up on disk."""
    replacements = dict(folders or {})
    replacements[constants.HF_HUB_CACHE] = "the model cache"
    replacements[str(APP_ROOT)] = "the app"
    replacements[tempfile.gettempdir()] = "a temporary folder"
    for path in sorted(replacements, key=len, reverse=True):
        message = message.replace(path, replacements[path])
    return _ABSOLUTE_PATH.sub("<a server path>", message)


def visitor_message(error: ModelLoadError, label: str) -> str | None:
    """A sentence a visitor can act on for load failures whose full text is for the operator (the Hub being
    unreachable or failing, a library's loading error); None when the error's own text already is one."""
    cause = error.__cause__
    if isinstance(cause, LocalEntryNotFoundError):
        return f"{label} cannot be fetched right now: the Hub does not answer this Space. Try again in a while."
    if isinstance(cause, RepositoryNotFoundError | GatedRepoError | RevisionNotFoundError):
        return None
    if isinstance(cause, HfHubHTTPError):
        return f"The Hub answered this Space's request for {label} with an error. Try again in a while."
    if isinstance(cause, OSError | ValueError):
        return f"{label} could not be loaded: its files are not a diffusers UNet2DModel pipeline this Space can run."
    return None


@dataclass
class Access:
    """The models the operator named (the default, an optional allow-list) and what a visitor's id resolves to.

    The lookups are of in-memory names: no file-system call is made for anything but the operator's own models,
    and Hub ids go to the Hub only.
    """

    default_label: str = ""
    allowed: set[str] = field(default_factory=set)
    """When not empty, the only models visitors may pick (with the default and the bases their cards name)."""
    local: dict[str, str] = field(default_factory=dict)
    """Label -> server folder, for the folders the operator named: the only folders a visitor can reach."""
    shown_as: dict[str, str] = field(default_factory=dict)
    """Those folders' paths as given and resolved -> label: what error messages show instead."""
    bundled: frozenset[str] = field(default_factory=lambda: frozenset(bundled_models()))

    @classmethod
    def for_operator(cls, default_model: str, allowed_models: Sequence[str] = ()) -> Access:
        """The access of a Space started on `default_model`, restricted to `allowed_models` when given."""
        access = cls()
        access.default_label = access.operator_model(default_model)
        if allowed_models:
            access.allowed = {access.default_label, *map(access.operator_model, allowed_models)}
        return access

    def operator_model(self, model: str) -> str:
        """The label of a model the operator named; a local folder gets a display name."""
        if model in self.bundled or not is_local_path(model):
            return model
        label = local_label(model, taken=[*self.local, *self.bundled])
        self.local[label] = model
        self.shown_as[model] = self.shown_as[str(Path(model).resolve())] = label
        return label

    def served(self, model: str) -> tuple[str, bool]:
        """(source, hub only) of a model id already accepted, as the model cache keys it (for estimates)."""
        return self.local.get(model, model), model not in self.local and model not in self.bundled

    def resolve(self, model: str, revision: str | None) -> ServedModel:
        """What a visitor's model id names, or a `gr.Error`."""
        if model in self.local:
            served = ServedModel(model, self.local[model], hub=False)
        elif self.allowed and model not in self.allowed:
            raise gr.Error(f"This Space only serves these models: {', '.join(sorted(self.allowed))}.")
        elif model in self.bundled:
            served = ServedModel(model, model, hub=False)
        elif error := hub_id_error(model):
            raise gr.Error(error)
        else:
            served = ServedModel(model, model, hub=True)
        if revision and not served.hub:
            raise gr.Error(f"{served.label} is one of this Space's own models: revisions only apply to Hub repos.")
        if revision and (len(revision) > MAX_REVISION_LENGTH or not _REVISION.fullmatch(revision) or ".." in revision):
            raise gr.Error(
                "Enter a revision as a branch, a tag (such as epoch-10) or a commit hash: letters, digits, "
                f"'.', '_', '-' and '/', at most {MAX_REVISION_LENGTH} characters."
            )
        return served

    def resolve_base(self, base_model: str, model: ServedModel) -> ServedModel | None:
        """The base a card names: a Hub id or bundled model, or (in the card of the operator's own local
        model only) a folder, shown by its name. None when the Space does not serve it."""
        if base_model in self.bundled:
            return ServedModel(base_model, base_model, hub=False)
        if not hub_id_error(base_model):
            return ServedModel(base_model, base_model, hub=True)
        if not model.hub and model.source not in self.bundled and is_local_path(base_model):
            return ServedModel(local_label(base_model, taken=[*self.local, *self.bundled]), base_model, hub=False)
        return None

    def load_error(self, error: ModelLoadError, served: ServedModel) -> gr.Error:
        """The `gr.Error` a visitor sees for a model that did not load: no server path in it."""
        folders = self.shown_as if served.hub else {served.source: served.label, **self.shown_as}
        return gr.Error(visitor_message(error, served.label) or scrub_paths(str(error), folders))
