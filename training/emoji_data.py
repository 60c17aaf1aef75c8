"""Build the emoji data set behind the bundled `tiny-emoji-32` base and its subject judge.

Pictures with a subject (faces, people, animals) are what a user looks at when judging a fine-tune, and the
Noto emoji art is the one such set reachable offline: the npm package `emoji-datasource-google` ships it as
64x64 RGBA PNGs with `emoji.json`, which names each emoji's category and subcategory. This module fetches the
pinned package with the ordinary npm client (at build time only, integrity checked), composites every face,
person and animal on white, resizes it to the model's size and labels it by group:

    python -m ddpo_hub.training.emoji_data --output data/emoji-32.npz

Nothing here runs at training, evaluation or test time: those read the `.npz` this writes (or the bundled
models trained from it). The art is Apache-2.0 (`ART_NOTICE`), which every model trained on it repeats.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import subprocess
import tarfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

PACKAGE = "emoji-datasource-google"
VERSION = "16.0.0"
INTEGRITY = "sha512-ZRexfzs7MVoLnmzZmNsO4TKhnAJp5D++Vm6PpUpH/jEQQlemp3l88CjZ+DoZ2faM9R4QxZkOPJCoT8DlPhfQ3A=="
"""The registry's `dist.integrity` of the pinned tarball: a tarball that hashes otherwise is refused."""
IMAGE_FOLDER = "package/img/google/64/"

ART_NOTICE = (
    "Trained on the Noto Emoji art by Google (Apache License 2.0, https://github.com/googlefonts/noto-emoji), "
    f"as packaged in the npm package {PACKAGE}@{VERSION} (data MIT, Copyright (c) 2013 Cal Henderson)."
)
"""The licence and attribution that the base model's README, every card fine-tuned from it and the Space repeat."""

GROUPS = ("face", "person", "animal")
"""Subject groups, in label order: the judge's classes are these plus `NO_SUBJECT`."""
NO_SUBJECT = "none"


def group_of(category: str, subcategory: str) -> str | None:
    """The subject group of an emoji from its `emoji.json` category, or None for everything else.

    Faces are the smileys (`face-*`, not hearts or cat faces), people are `person*` (not hands or families),
    animals are `animal-*` (not plants).
    """
    if category == "Smileys & Emotion" and subcategory.startswith("face-"):
        return "face"
    if category == "People & Body" and subcategory.startswith("person"):
        return "person"
    if category == "Animals & Nature" and subcategory.startswith("animal-"):
        return "animal"
    return None


@dataclass(frozen=True)
class EmojiRecord:
    """One emoji picture: its PNG's file name, its group, and the emoji it varies (skin tones share `base`)."""

    image: str
    group: str
    base: str


def emoji_records(entries: Iterable[Mapping]) -> list[EmojiRecord]:
    """Every face, person and animal picture in `emoji.json`'s entries, skin-tone variants included, sorted."""
    records = []
    for entry in entries:
        group = group_of(entry["category"], entry["subcategory"])
        if group is None or not entry.get("has_img_google", True):
            continue
        records.append(EmojiRecord(entry["image"], group, entry["image"]))
        for variation in (entry.get("skin_variations") or {}).values():
            if variation.get("has_img_google", True):
                records.append(EmojiRecord(variation["image"], group, entry["image"]))
    return sorted(records, key=lambda record: record.image)


def composite_on_white(png: Image.Image, size: int) -> Image.Image:
    """An RGBA emoji laid on white and resized to `size`x`size` (Lanczos): what the model learns to draw."""
    rgba = png.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    flat = Image.alpha_composite(white, rgba).convert("RGB")
    return flat if flat.size == (size, size) else flat.resize((size, size), Image.Resampling.LANCZOS)


def balance_weights(labels: np.ndarray, num_groups: int) -> np.ndarray:
    """Sampling weights that give every group present the same share: 1,600 people must not drown 118 faces."""
    counts = np.bincount(labels, minlength=num_groups)
    present = np.count_nonzero(counts)
    return (1.0 / (present * counts[labels])).astype(np.float64)


@dataclass(frozen=True)
class EmojiDataset:
    """Images (N, H, W, 3) uint8 on white, their group labels (indices into `GROUPS`), PNG names, base emoji
    names (skin-tone variants share one: split by it so no variant leaks across a held-out split) and balanced
    sampling weights summing to 1."""

    images: np.ndarray
    labels: np.ndarray
    names: np.ndarray
    bases: np.ndarray
    weights: np.ndarray

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(
            path, images=self.images, labels=self.labels, names=self.names, bases=self.bases, weights=self.weights
        )

    @classmethod
    def load(cls, path: Path) -> EmojiDataset:
        if not Path(path).is_file():
            raise FileNotFoundError(
                f"No emoji data set at {path}: build it with `python -m ddpo_hub.training.emoji_data --output {path}`."
            )
        with np.load(path) as data:
            return cls(**{name: data[name] for name in ("images", "labels", "names", "bases", "weights")})


def build_dataset(records: Sequence[EmojiRecord], pngs: Mapping[str, bytes], size: int = 32) -> EmojiDataset:
    """Composite and resize every record's PNG; records whose PNG is missing from the package are skipped."""
    kept = [record for record in records if record.image in pngs]
    images = np.stack([np.asarray(composite_on_white(Image.open(io.BytesIO(pngs[r.image])), size)) for r in kept])
    labels = np.array([GROUPS.index(record.group) for record in kept], dtype=np.int64)
    return EmojiDataset(
        images=images,
        labels=labels,
        names=np.array([record.image for record in kept]),
        bases=np.array([record.base for record in kept]),
        weights=balance_weights(labels, len(GROUPS)),
    )


def integrity_of(path: Path) -> str:
    """npm's subresource-integrity string (sha512, base64) of a file."""
    return "sha512-" + base64.b64encode(hashlib.sha512(path.read_bytes()).digest()).decode()


def fetch_package(cache_dir: Path) -> Path:
    """The pinned tarball in `cache_dir`, fetched with `npm pack` if absent; refused unless its hash matches."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    tarball = cache_dir / f"{PACKAGE}-{VERSION}.tgz"
    if not tarball.is_file():
        subprocess.run(
            ["npm", "pack", f"{PACKAGE}@{VERSION}", "--pack-destination", str(cache_dir), "--silent"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    if (found := integrity_of(tarball)) != INTEGRITY:
        raise ValueError(f"{tarball} is not {PACKAGE}@{VERSION}: integrity {found}, expected {INTEGRITY}.")
    return tarball


def read_package(tarball: Path) -> tuple[list[dict], dict[str, bytes]]:
    """`emoji.json`'s entries and the 64x64 PNGs (file name -> bytes) from the package tarball."""
    pngs: dict[str, bytes] = {}
    entries: list[dict] = []
    with tarfile.open(tarball, "r:gz") as archive:
        for member in archive:
            if member.name == "package/emoji.json":
                entries = json.load(archive.extractfile(member))
            elif member.name.startswith(IMAGE_FOLDER) and member.name.endswith(".png"):
                pngs[member.name.removeprefix(IMAGE_FOLDER)] = archive.extractfile(member).read()
    if not entries:
        raise ValueError(f"{tarball} holds no package/emoji.json")
    return entries, pngs


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=Path("data/emoji-32.npz"))
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--cache-dir", type=Path, default=Path("data/npm"), help="where the npm tarball is kept")
    args = parser.parse_args(argv)
    entries, pngs = read_package(fetch_package(args.cache_dir))
    dataset = build_dataset(emoji_records(entries), pngs, args.size)
    dataset.save(args.output)
    counts = ", ".join(f"{np.sum(dataset.labels == i)} {group}" for i, group in enumerate(GROUPS))
    print(f"wrote {args.output}: {len(dataset.images)} images of {args.size}x{args.size} ({counts})")


if __name__ == "__main__":
    main()
