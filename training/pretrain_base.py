"""Pretrain the small unconditional DDPM that ships with the project (`training.pipelines.TINY_BASE_MODEL`).

The Hub is out of reach from our machines, so `--preset tiny` needs a base model that lives in the repo.
This script builds a texture data set from the photographs bundled with scikit-image (no download), trains a
CPU-sized `UNet2DModel` with the standard DDPM noise-prediction loss, and saves the EMA weights as a
`DDPMPipeline` folder. See `training/base_models/README.md` for the exact runs that produced the shipped model:

    OMP_WAIT_POLICY=PASSIVE python -m ddpo_hub.training.pretrain_base --output-dir training/base_models/tiny-textures-32

(the defaults are the settings of its first stage), then a second stage that continues it (`--init-from`) with
half of each batch at t < 100 (`--low-timestep-fraction`). Passive OpenMP waiting keeps 2 threads fast on a
shared machine.
scikit-image is needed only here, to build the data set; it is in the `dev` extra.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from PIL import Image
from tqdm.auto import tqdm

from .emoji_data import EmojiDataset
from .extras import require_extra

if TYPE_CHECKING:
    import datasets

PHOTOS: dict[str, float] = {
    # Colour photographs: objects, faces, fur, food, sky, microscopy, star fields.
    **dict.fromkeys(("astronaut", "chelsea", "coffee", "rocket", "stereo_motorcycle"), 1.0),
    **dict.fromkeys(("hubble_deep_field", "immunohistochemistry", "retina"), 1.0),
    # Greyscale photographs, kept grey and drawn half as often: busy textures and smooth scenes.
    **dict.fromkeys(("brick", "grass", "gravel", "camera", "coins", "moon"), 0.5),
}
"""`skimage.data` photographs that ship inside the package (they load without a network), with sampling weights."""

MIN_SCALE, MAX_SCALE = 0.15, 0.6
"""Downscale range before cropping: a crop then shows texture or part of an object, not a few flat pixels."""


def load_photo(name: str) -> np.ndarray:
    """One bundled scikit-image photograph as an (H, W, 3) uint8 array."""
    from skimage import data  # imported here: scikit-image is only needed to (re)build the data set

    image = getattr(data, name)()
    if isinstance(image, tuple):  # stereo_motorcycle returns (left, right, disparity)
        image = image[0]
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return np.ascontiguousarray(image[..., :3].astype(np.uint8))


def crop_box(width: int, height: int, size: int, rng: np.random.Generator) -> tuple[tuple[int, int, int, int], bool]:
    """Where to crop a `width`x`height` photo for one `size`x`size` crop, and whether to mirror it.

    The window is `size / scale` pixels for a log-uniform `scale`: cropping it and resizing it to `size` is the
    same as downscaling the whole photo first, only much cheaper. Only random draws happen here, so a data set
    can be planned in order (deterministic for a seed) and resized in parallel.
    """
    scale = math.exp(rng.uniform(math.log(MIN_SCALE), math.log(MAX_SCALE)))
    window = min(round(size / scale), width, height)
    left = int(rng.integers(0, width - window + 1))
    top = int(rng.integers(0, height - window + 1))
    return (left, top, left + window, top + window), bool(rng.random() < 0.5)


def render_crop(photo: Image.Image, box: tuple[int, int, int, int], mirror: bool, size: int) -> Image.Image:
    """The `box` of `photo` resized to `size`x`size` (Lanczos), mirrored left-right if asked."""
    crop = photo.resize((size, size), Image.Resampling.LANCZOS, box=box)
    return crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if mirror else crop


def build_texture_dataset(num_images: int, size: int = 32, seed: int = 0) -> datasets.Dataset:
    """Random crops of the bundled photographs (drawn by `PHOTOS` weight), deterministic for a seed.

    The crops are resized in a thread pool (Pillow releases the GIL while resampling), which changes nothing
    but the wall time: every random draw is made first, in order, from one generator.
    """
    require_extra("datasets", extra="dataset", feature="Building the texture data set")
    import datasets

    rng = np.random.default_rng(seed)
    names = list(PHOTOS)
    weights = np.array([PHOTOS[name] for name in names])
    sources = [Image.fromarray(load_photo(name)) for name in names]
    picks = rng.choice(len(names), size=num_images, p=weights / weights.sum())
    plans = [(sources[pick], *crop_box(sources[pick].width, sources[pick].height, size, rng)) for pick in picks]
    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
        images = list(pool.map(lambda plan: render_crop(*plan, size), plans))
    table = {"image": images, "source": [names[pick] for pick in picks]}
    return datasets.Dataset.from_dict(table).cast_column("image", datasets.Image())


def dataset_to_tensor(dataset: datasets.Dataset) -> torch.Tensor:
    """All images as one uint8 (N, 3, H, W) tensor: the set is small, and indexing a tensor is fast."""
    arrays = [np.asarray(image.convert("RGB")) for image in dataset["image"]]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def make_unet(size: int = 32, block_out_channels: Sequence[int] = (16, 32, 64, 64)) -> UNet2DModel:
    """A small UNet sized for CPU: cheap full-resolution level, attention only in the 4x4 mid block."""
    levels = len(block_out_channels)
    return UNet2DModel(
        sample_size=size,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=tuple(block_out_channels),
        down_block_types=("DownBlock2D",) * levels,
        up_block_types=("UpBlock2D",) * levels,
        norm_num_groups=8,
        attention_head_dim=min(32, block_out_channels[-1]),
    )


def make_scheduler() -> DDPMScheduler:
    """The noise schedule of google/ddpm-celebahq-256 (linear betas, 1000 steps, clipped x0)."""
    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.0001,
        beta_end=0.02,
        beta_schedule="linear",
        variance_type="fixed_small",
        clip_sample=True,
        prediction_type="epsilon",
    )


LR_SCHEDULERS = ("cosine", "linear", "constant", "constant_with_warmup")  # diffusers' names that need no extra options


def train(
    unet: UNet2DModel,
    scheduler: DDPMScheduler,
    images: torch.Tensor,
    *,
    steps: int,
    batch_size: int = 64,
    learning_rate: float = 5e-4,
    warmup_steps: int = 200,
    ema_max_decay: float = 0.999,
    seed: int = 0,
    log_every: int = 100,
    device: str = "cpu",
    time_limit: float | None = None,
    low_timestep_fraction: float = 0.0,
    low_timestep_max: int = 100,
    lr_scheduler: str = "cosine",
    weights: torch.Tensor | None = None,
) -> list[float]:
    """Train `unet` to predict the noise added to `images` (uint8); leaves the EMA weights in `unet`.

    Timesteps are uniform, except that a `low_timestep_fraction` of each batch is drawn from t < `low_timestep_max`
    instead: uniform draws give the last denoising steps only a few percent of the training, and those steps
    decide whether a flat image comes out flat or grainy (`benchmarks/jpeg_floor.py`).

    Returns the loss of every step. Random horizontal flips are applied on top of the crops' own. Every
    random draw comes from one CPU generator, so a GPU run sees the same batches and noise as a CPU run.
    `time_limit` (seconds) ends training early on a shared or lent machine; the learning-rate schedule still
    spans `steps`, so such a run is a shorter prefix of the full one, and it says so. `lr_scheduler` is a name
    from `LR_SCHEDULERS`; a constant rate suits a continuation that should keep learning to its last step.
    `weights` (one per image) draws images by weight instead of uniformly: the emoji set's balanced groups.
    """
    num_train_timesteps = scheduler.config.num_train_timesteps
    if not 0.0 <= low_timestep_fraction <= 1.0:
        raise ValueError(f"low_timestep_fraction must be between 0 and 1, got {low_timestep_fraction}")
    if not 1 <= low_timestep_max <= num_train_timesteps:
        raise ValueError(f"low_timestep_max must be between 1 and {num_train_timesteps}, got {low_timestep_max}")
    if lr_scheduler not in LR_SCHEDULERS:
        raise ValueError(f"unknown lr_scheduler {lr_scheduler!r}; choose one of {', '.join(LR_SCHEDULERS)}")
    generator = torch.Generator().manual_seed(seed)
    unet.to(device)
    images = images.to(device)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=learning_rate, weight_decay=1e-4)
    lr_schedule = get_scheduler(lr_scheduler, optimizer, num_warmup_steps=warmup_steps, num_training_steps=steps)
    ema = EMAModel(unet.parameters(), decay=ema_max_decay, use_ema_warmup=True, power=3 / 4)
    unet.train()
    losses: list[torch.Tensor] = []  # kept on the device: reading each one would wait for the GPU every step
    start = time.perf_counter()
    progress = tqdm(range(steps), desc="pretrain", mininterval=5.0)
    # On a GPU the draws go to pinned memory and are copied without waiting, so the host never stalls on the
    # GPU and draws the next batch while the current one trains.
    pin = torch.device(device).type == "cuda"
    for step in progress:
        if weights is None:
            index = torch.randint(0, len(images), (batch_size,), generator=generator, pin_memory=pin)
        else:
            index = torch.multinomial(weights, batch_size, replacement=True, generator=generator)
            index = index.pin_memory() if pin else index
        clean = images[index.to(device, non_blocking=pin)].float() / 127.5 - 1.0
        flip = torch.rand(batch_size, generator=generator, pin_memory=pin).to(device, non_blocking=pin) < 0.5
        clean = torch.where(flip[:, None, None, None], clean.flip(-1), clean)
        noise = torch.randn(clean.shape, generator=generator, pin_memory=pin).to(device, non_blocking=pin)
        timesteps = torch.randint(0, num_train_timesteps, (batch_size,), generator=generator)
        if low_timestep_fraction > 0:  # drawn only when asked, so runs without it keep their random stream
            low = torch.rand(batch_size, generator=generator) < low_timestep_fraction
            timesteps = torch.where(
                low, torch.randint(0, low_timestep_max, (batch_size,), generator=generator), timesteps
            )
        timesteps = timesteps.pin_memory() if pin else timesteps
        timesteps = timesteps.to(device, non_blocking=pin)
        noisy = scheduler.add_noise(clean, noise, timesteps)
        loss = F.mse_loss(unet(noisy, timesteps).sample, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        lr_schedule.step()
        ema.step(unet.parameters())
        losses.append(loss.detach())
        if (step + 1) % log_every == 0 or step + 1 == steps:
            recent = torch.stack(losses[-log_every:]).mean().item()
            progress.set_postfix(loss=f"{recent:.4f}")
            tqdm.write(f"step {step + 1}/{steps} loss {recent:.4f} elapsed {time.perf_counter() - start:.0f}s")
            if time_limit is not None and time.perf_counter() - start > time_limit and step + 1 < steps:
                tqdm.write(f"stopped at step {step + 1} of {steps}: --time-limit {time_limit:g}s reached")
                break
    ema.copy_to(unet.parameters())
    unet.to("cpu").eval()
    return torch.stack(losses).tolist()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", type=Path, default=Path("training/base_models/tiny-textures-32"))
    parser.add_argument(
        "--emoji-data",
        type=Path,
        help="train on this emoji data set (`python -m ddpo_hub.training.emoji_data`), groups balanced, "
        "instead of texture crops",
    )
    parser.add_argument("--num-images", type=int, default=30_000, help="size of the crop data set")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--channels", type=int, nargs="+", default=[16, 32, 64, 64], help="UNet block widths")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=6e-4)
    parser.add_argument("--warmup-steps", type=int, default=200)
    parser.add_argument("--ema-max-decay", type=float, default=0.999)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--time-limit", type=float, help="stop after this many seconds of training (checked per log)")
    parser.add_argument(
        "--init-from",
        type=Path,
        help="continue from this DDPMPipeline folder's UNet instead of a new one (--channels unused)",
    )
    parser.add_argument(
        "--low-timestep-fraction", type=float, default=0.0, help="share of each batch drawn from t < --low-timestep-max"
    )
    parser.add_argument("--low-timestep-max", type=int, default=100)
    parser.add_argument("--lr-scheduler", choices=LR_SCHEDULERS, default="cosine", help="diffusers' schedule name")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    weights = None
    if args.emoji_data:
        emoji = EmojiDataset.load(args.emoji_data)
        images = torch.from_numpy(emoji.images).permute(0, 3, 1, 2).contiguous()
        weights = torch.from_numpy(emoji.weights)
        print(f"data set: {len(images)} emoji of {images.shape[-1]}x{images.shape[-1]} from {args.emoji_data}")
    else:
        images = dataset_to_tensor(build_texture_dataset(args.num_images, args.size, args.seed))
        print(f"data set: {len(images)} crops of {args.size}x{args.size} in {time.perf_counter() - start:.0f}s")
    if args.init_from:
        unet = UNet2DModel.from_pretrained(args.init_from, subfolder="unet")
    else:
        unet = make_unet(images.shape[-1], args.channels)
    print(f"UNet: {sum(p.numel() for p in unet.parameters()) / 1e6:.2f}M parameters")
    scheduler = make_scheduler()
    train(
        unet,
        scheduler,
        images,
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        warmup_steps=args.warmup_steps,
        ema_max_decay=args.ema_max_decay,
        seed=args.seed,
        device=args.device,
        time_limit=args.time_limit,
        low_timestep_fraction=args.low_timestep_fraction,
        low_timestep_max=args.low_timestep_max,
        lr_scheduler=args.lr_scheduler,
        weights=weights,
    )
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(args.output_dir, safe_serialization=True)
    print(f"saved {args.output_dir} after {time.perf_counter() - start:.0f}s")


if __name__ == "__main__":
    main()
