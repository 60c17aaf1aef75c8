"""The subject judge: a small classifier that says whether a picture still shows a face, a person or an animal.

Same-seed SSIM rewards anything pixel-aligned with the base, which is exactly what a blur is; it cannot tell a
picture that lost its subject from one that kept it. The judge can: it is trained on the emoji data set
(`training/emoji_data.py`) against a "no subject" class of flat colour fields, gradients, noise, photograph
crops and plain shapes on white, and never sees a blurred or generated picture, so what it says about a
fine-tune's samples is not something it was taught to forgive. It ships inside the base model's folder
(`subject_judge/`), so a model fine-tuned from that base is judged by it, and a user's own base simply has no
judge (its figures are then absent, not zero). Train it with

    python -m ddpo_hub.training.judge --emoji-data data/emoji-32.npz \\
        --output training/base_models/tiny-emoji-32/subject_judge
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from PIL import Image, ImageDraw
from torch import nn

from .emoji_data import GROUPS, NO_SUBJECT, EmojiDataset

CLASSES = (*GROUPS, NO_SUBJECT)
"""The judge's output classes, in logit order."""
JUDGE_FOLDER = "subject_judge"
"""The judge's subfolder in a base model's folder."""


class SubjectJudge(nn.Module, PyTorchModelHubMixin):
    """A four-stage CNN on 32x32 RGB in [0, 1]: `features` (the penultimate layer, for KID) and class logits."""

    def __init__(self, channels: Sequence[int] = (24, 48, 96), feature_dim: int = 64, num_classes: int = 4):
        super().__init__()
        layers: list[nn.Module] = []
        width_in = 3
        for width in channels:
            layers += [
                nn.Conv2d(width_in, width, 3, padding=1),
                nn.GroupNorm(8, width),
                nn.SiLU(),
                nn.Conv2d(width, width, 3, padding=1),
                nn.GroupNorm(8, width),
                nn.SiLU(),
                nn.AvgPool2d(2),
            ]
            width_in = width
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.embed = nn.Sequential(nn.Linear(width_in, feature_dim), nn.SiLU())
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(N, feature_dim) penultimate features of (N, 3, H, W) images in [0, 1]."""
        return self.embed(self.body(images * 2.0 - 1.0))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))

    @torch.no_grad()
    def classify(self, images: torch.Tensor) -> torch.Tensor:
        """(N,) class indices into `CLASSES`."""
        return self(images).argmax(dim=1)


def load_judge(model_folder: str | os.PathLike | None) -> SubjectJudge | None:
    """The judge shipped in a base model's folder, in eval mode, or None when that base has none."""
    if model_folder is None or not (Path(model_folder) / JUDGE_FOLDER / "model.safetensors").is_file():
        return None
    return SubjectJudge.from_pretrained(Path(model_folder) / JUDGE_FOLDER).eval()


def draw_shapes(size: int, rng: np.random.Generator) -> Image.Image:
    """One to three plain ellipses or rectangles on white: a blob is not a face, however yellow."""
    image = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(1, 4))):
        left, top = rng.uniform(0, 0.6, size=2) * size
        width, height = rng.uniform(0.2, 0.9, size=2) * size
        box = (left, top, min(left + width, size - 1), min(top + height, size - 1))
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        (draw.ellipse if rng.random() < 0.6 else draw.rectangle)(box, fill=colour)
    return image


def no_subject_images(count: int, size: int = 32, seed: int = 0) -> np.ndarray:
    """(count, size, size, 3) uint8 pictures without a subject, a fifth of each kind, deterministic for a seed:
    flat colour fields, linear gradients, smooth and fine noise, photograph crops, plain shapes on white."""
    from .pretrain_base import PHOTOS, crop_box, load_photo, render_crop  # scikit-image's photographs

    rng = np.random.default_rng(seed)
    photos = [Image.fromarray(load_photo(name)) for name in PHOTOS]
    ramp = np.linspace(0.0, 1.0, size)
    images = []
    for index in range(count):
        kind = index % 5
        if kind == 0:
            image = np.broadcast_to(rng.integers(0, 256, size=3), (size, size, 3))
        elif kind == 1:
            angle = rng.uniform(0, 2 * np.pi)
            position = np.cos(angle) * ramp[None, :] + np.sin(angle) * ramp[:, None]
            position = (position - position.min()) / max(np.ptp(position), 1e-6)
            start, end = rng.integers(0, 256, size=(2, 3))
            image = start + position[..., None] * (end - start)
        elif kind == 2:
            grid = int(rng.choice([2, 4, 8, 16, size]))
            coarse = rng.normal(rng.uniform(40, 215, size=3), rng.uniform(10, 80), size=(grid, grid, 3))
            small = Image.fromarray(np.clip(coarse, 0, 255).astype(np.uint8))
            image = np.asarray(small.resize((size, size), Image.Resampling.BICUBIC))
        elif kind == 3:
            photo = photos[int(rng.integers(len(photos)))]
            image = np.asarray(render_crop(photo, *crop_box(photo.width, photo.height, size, rng), size))
        else:
            image = np.asarray(draw_shapes(size, rng))
        images.append(np.clip(image, 0, 255).astype(np.uint8))
    return np.stack(images)


@dataclass(frozen=True)
class JudgeSplit:
    """Images (N, H, W, 3) uint8 and labels (indices into `CLASSES`) of one split."""

    images: np.ndarray
    labels: np.ndarray


def split_by_emoji(dataset: EmojiDataset, held_out: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks (train, test): a `held_out` share of each group's emoji, all skin tones of one emoji on the
    same side, so the test measures emoji the judge never saw."""
    rng = np.random.default_rng(seed)
    test = np.zeros(len(dataset.labels), dtype=bool)
    for group in range(len(GROUPS)):
        bases = np.unique(dataset.bases[dataset.labels == group])
        chosen = rng.choice(bases, size=max(1, round(held_out * len(bases))), replace=False)
        test |= (dataset.labels == group) & np.isin(dataset.bases, chosen)
    return ~test, test


def to_unit_tensor(images: np.ndarray) -> torch.Tensor:
    """(N, 3, H, W) float32 in [0, 1] from (N, H, W, 3) uint8."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0


def shift_on_white(batch: torch.Tensor, generator: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """Each image moved by up to `max_shift` pixels each way, the uncovered border white (the emoji canvas)."""
    padded = F.pad(batch, (max_shift,) * 4, value=1.0)
    size = batch.shape[-1]
    offsets = torch.randint(0, 2 * max_shift + 1, (len(batch), 2), generator=generator)
    return torch.stack([p[:, y : y + size, x : x + size] for p, (y, x) in zip(padded, offsets.tolist(), strict=True)])


def train_judge(
    subjects: JudgeSplit,
    none: np.ndarray,
    subject_weights: np.ndarray,
    *,
    steps: int = 1500,
    batch_size: int = 128,
    learning_rate: float = 2e-3,
    seed: int = 0,
) -> SubjectJudge:
    """Half of each batch subjects (drawn by `subject_weights`: the groups balanced), half no-subject pictures;
    random flips and small shifts on white. Returns the judge in eval mode."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    judge = SubjectJudge(num_classes=len(CLASSES))
    optimizer = torch.optim.AdamW(judge.parameters(), lr=learning_rate, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=learning_rate, total_steps=steps)
    subject_images, none_images = to_unit_tensor(subjects.images), to_unit_tensor(none)
    subject_labels = torch.from_numpy(subjects.labels)
    weights = torch.from_numpy(subject_weights)
    none_label = CLASSES.index(NO_SUBJECT)
    judge.train()
    for _ in range(steps):
        pick = torch.multinomial(weights, batch_size // 2, replacement=True, generator=generator)
        pick_none = torch.randint(0, len(none_images), (batch_size - batch_size // 2,), generator=generator)
        batch = torch.cat([shift_on_white(subject_images[pick], generator), none_images[pick_none]])
        labels = torch.cat([subject_labels[pick], torch.full((len(pick_none),), none_label)])
        flip = torch.rand(len(batch), generator=generator) < 0.5
        batch = torch.where(flip[:, None, None, None], batch.flip(-1), batch)
        loss = F.cross_entropy(judge(batch), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    return judge.eval()


def accuracy_by_class(judge: SubjectJudge, split: JudgeSplit) -> dict[str, float]:
    """Share of each class's images classified correctly, and `all` (the mean over the classes present)."""
    predicted = judge.classify(to_unit_tensor(split.images)).numpy()
    scores = {
        name: float(np.mean(predicted[split.labels == index] == index))
        for index, name in enumerate(CLASSES)
        if np.any(split.labels == index)
    }
    return {**scores, "all": float(np.mean(list(scores.values())))}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--emoji-data", type=Path, default=Path("data/emoji-32.npz"))
    parser.add_argument("--output", type=Path, required=True, help="the judge's folder, e.g. BASE/subject_judge")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--none-images", type=int, default=6000, help="no-subject pictures to train on")
    parser.add_argument("--held-out", type=float, default=0.2, help="share of each group's emoji kept for the test")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    dataset = EmojiDataset.load(args.emoji_data)
    size = dataset.images.shape[1]
    train_mask, test_mask = split_by_emoji(dataset, args.held_out, args.seed)
    none_train = no_subject_images(args.none_images, size, seed=args.seed)
    none_test = no_subject_images(args.none_images // 4, size, seed=args.seed + 1_000_003)
    weights = dataset.weights[train_mask] / dataset.weights[train_mask].sum()
    subjects = JudgeSplit(dataset.images[train_mask], dataset.labels[train_mask])
    judge = train_judge(subjects, none_train, weights, steps=args.steps, seed=args.seed)
    test = JudgeSplit(
        np.concatenate([dataset.images[test_mask], none_test]),
        np.concatenate([dataset.labels[test_mask], np.full(len(none_test), CLASSES.index(NO_SUBJECT))]),
    )
    accuracy = accuracy_by_class(judge, test)
    judge.save_pretrained(args.output)
    parameters = sum(p.numel() for p in judge.parameters())
    print(
        f"judge: {parameters} parameters, {args.steps} steps in {time.perf_counter() - start:.0f}s; held-out "
        f"accuracy ({int(test_mask.sum())} emoji never seen, {len(none_test)} no-subject pictures): "
        + ", ".join(f"{name} {value:.3f}" for name, value in accuracy.items())
    )


if __name__ == "__main__":
    main()
