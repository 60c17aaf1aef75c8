"""The emoji data builder on a handful of PNGs it is given here: nothing is downloaded."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from ddpo_hub.training.emoji_data import (
    GROUPS,
    IMAGE_FOLDER,
    EmojiDataset,
    build_dataset,
    composite_on_white,
    emoji_records,
    fetch_package,
    group_of,
    integrity_of,
    read_package,
)


def png_bytes(colour: tuple[int, int, int, int], size: int = 64) -> bytes:
    """A `size`x`size` RGBA PNG: a centred opaque square of `colour` on a transparent field."""
    image = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    image.paste(Image.new("RGBA", (size // 2, size // 2), colour), (size // 4, size // 4))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


ENTRIES = [
    {"image": "face.png", "category": "Smileys & Emotion", "subcategory": "face-smiling"},
    {"image": "heart.png", "category": "Smileys & Emotion", "subcategory": "heart"},
    {
        "image": "person.png",
        "category": "People & Body",
        "subcategory": "person-role",
        "skin_variations": {"1F3FB": {"image": "person-light.png"}, "1F3FF": {"image": "person-dark.png"}},
    },
    {"image": "hand.png", "category": "People & Body", "subcategory": "hand-fingers-open"},
    {"image": "dog.png", "category": "Animals & Nature", "subcategory": "animal-mammal"},
    {"image": "rose.png", "category": "Animals & Nature", "subcategory": "plant-flower"},
    {"image": "nofile.png", "category": "Animals & Nature", "subcategory": "animal-bird"},
]
PNGS = {
    name: png_bytes(colour)
    for name, colour in {
        "face.png": (250, 200, 0, 255),
        "heart.png": (220, 0, 0, 255),
        "person.png": (240, 190, 150, 255),
        "person-light.png": (250, 220, 200, 255),
        "person-dark.png": (90, 60, 40, 255),
        "hand.png": (240, 190, 150, 255),
        "dog.png": (120, 80, 40, 255),
        "rose.png": (200, 0, 60, 255),
    }.items()
}


def test_groups_are_faces_people_and_animals_only():
    assert group_of("Smileys & Emotion", "face-concerned") == "face"
    assert group_of("Smileys & Emotion", "cat-face") is None
    assert group_of("People & Body", "person-sport") == "person"
    assert group_of("People & Body", "family") is None
    assert group_of("Animals & Nature", "animal-marine") == "animal"
    assert group_of("Animals & Nature", "plant-other") is None
    records = emoji_records(ENTRIES)
    assert [(r.image, r.group, r.base) for r in records] == [
        ("dog.png", "animal", "dog.png"),
        ("face.png", "face", "face.png"),
        ("nofile.png", "animal", "nofile.png"),
        ("person-dark.png", "person", "person.png"),
        ("person-light.png", "person", "person.png"),
        ("person.png", "person", "person.png"),
    ]


def test_composite_lays_the_art_on_white_and_resizes():
    image = composite_on_white(Image.open(io.BytesIO(png_bytes((10, 20, 30, 255)))), 32)
    pixels = np.asarray(image)
    assert image.mode == "RGB" and image.size == (32, 32)
    assert (pixels[:4, :4] == 255).all()  # the transparent border is white
    assert (pixels[12:20, 12:20] == (10, 20, 30)).all()  # the opaque square keeps its colour
    half = Image.new("RGBA", (64, 64), (0, 0, 0, 128))  # half-transparent black on white is mid grey
    assert np.abs(np.asarray(composite_on_white(half, 64)).astype(int) - 127).max() <= 1


def test_dataset_labels_balances_and_is_deterministic(tmp_path):
    dataset = build_dataset(emoji_records(ENTRIES), PNGS, size=16)
    assert dataset.images.shape == (5, 16, 16, 3) and dataset.images.dtype == np.uint8
    assert list(dataset.names) == ["dog.png", "face.png", "person-dark.png", "person-light.png", "person.png"]
    assert [GROUPS[label] for label in dataset.labels] == ["animal", "face", "person", "person", "person"]
    # Each group draws a third of the samples, however many pictures it holds.
    assert dataset.weights.sum() == pytest.approx(1.0)
    for group in range(len(GROUPS)):
        assert dataset.weights[dataset.labels == group].sum() == pytest.approx(1 / 3)
    assert set(dataset.bases[dataset.labels == GROUPS.index("person")]) == {"person.png"}
    again = build_dataset(emoji_records(list(reversed(ENTRIES))), dict(reversed(PNGS.items())), size=16)
    path = tmp_path / "emoji.npz"
    again.save(path)
    reloaded = EmojiDataset.load(path)
    for field in ("images", "labels", "names", "bases", "weights"):
        np.testing.assert_array_equal(getattr(reloaded, field), getattr(dataset, field))


def package_tarball(path):
    """A tarball laid out as the npm package is: emoji.json beside the 64x64 PNG folder."""
    with tarfile.open(path, "w:gz") as archive:
        for name, data in [("package/emoji.json", json.dumps(ENTRIES).encode())] + [
            (IMAGE_FOLDER + name, data) for name, data in PNGS.items()
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def test_package_is_read_and_a_tarball_with_another_hash_is_refused(tmp_path):
    tarball = package_tarball(tmp_path / "emoji-datasource-google-16.0.0.tgz")
    entries, pngs = read_package(tarball)
    assert entries == ENTRIES and pngs == PNGS
    with pytest.raises(ValueError, match="integrity") as error:
        fetch_package(tmp_path)  # the cached file is not the pinned package: refused, not used
    assert integrity_of(tarball) in str(error.value)
    assert tarball.read_bytes()  # and left in place for the user to inspect
