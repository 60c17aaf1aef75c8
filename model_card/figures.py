"""The card's pictures, drawn with Pillow alone: a labelled before/after comparison and the training curves.

Pillow is already a dependency; a plotting library would be a heavy one for two small charts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from PIL import Image, ImageDraw, ImageFont

MIN_PANEL_WIDTH = 384
"""Tiny sample grids (16x16 models) are enlarged, pixel for pixel, to at least this width."""

_BACKGROUND = "white"
_INK = (32, 32, 32)
_GRID = (225, 225, 225)
_BLUE = (31, 119, 180)
_BLUE_BAND = (198, 219, 239)
_ORANGE = (214, 96, 39)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size)


def _enlarge(image: Image.Image, min_width: int = MIN_PANEL_WIDTH) -> Image.Image:
    """Scale up by a whole factor with nearest-neighbour so pixels stay sharp (no invented detail)."""
    factor = max(1, math.ceil(min_width / image.width))
    image = image.convert("RGB")
    return image if factor == 1 else image.resize((image.width * factor, image.height * factor), Image.NEAREST)


def side_by_side(panels: Sequence[tuple[str, Image.Image]], *, gap: int = 16) -> Image.Image:
    """Place images next to each other, each with a caption above it (e.g. base vs fine-tuned)."""
    font = _font(20)
    images = [_enlarge(image) for _, image in panels]
    height = max(image.height for image in images)
    caption = 36
    width = sum(image.width for image in images) + gap * (len(images) + 1)
    canvas = Image.new("RGB", (width, height + caption + gap), _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    x = gap
    for (label, _), image in zip(panels, images, strict=True):
        draw.text((x + image.width / 2, caption / 2 + 4), label, fill=_INK, font=font, anchor="mm")
        canvas.paste(image, (x, caption))
        x += image.width + gap
    return canvas


def labelled_rows(grid: Image.Image, labels: Sequence[str]) -> Image.Image:
    """Add a label to the left of each row of an evaluation grid (rows of equal height)."""
    font = _font(18)
    grid = _enlarge(grid, min_width=2 * MIN_PANEL_WIDTH)
    row_height = grid.height / len(labels)
    margin = 16 + max(int(font.getlength(label)) for label in labels)
    canvas = Image.new("RGB", (grid.width + margin + 8, grid.height), _BACKGROUND)
    canvas.paste(grid, (margin + 8, 0))
    draw = ImageDraw.Draw(canvas)
    for i, label in enumerate(labels):
        draw.text((margin, (i + 0.5) * row_height), label, fill=_INK, font=font, anchor="rm")
    return canvas


def nice_ticks(low: float, high: float, count: int = 5, *, integer: bool = False) -> list[float]:
    """Round tick values (1, 2, 2.5 or 5 times a power of ten; whole numbers if `integer`) covering [low, high]."""
    if high <= low:
        low, high = (low - 1, high + 1) if integer else (low - 0.5, high + 0.5)
    raw_step = (high - low) / max(count - 1, 1)
    power = 10 ** math.floor(math.log10(raw_step))
    mantissas = (1, 2, 5, 10) if integer else (1, 2, 2.5, 5, 10)
    step = next(m * power for m in mantissas if m * power >= raw_step)
    if integer:
        step = max(1, round(step))
    first, last = math.floor(low / step + 1e-9), math.ceil(high / step - 1e-9)
    return [round(i * step, 10) for i in range(first, last + 1)]


def _format_tick(value: float) -> str:
    return f"{value:.0f}" if float(value).is_integer() else f"{value:g}"


def _panel(
    canvas: Image.Image,
    box: tuple[int, int, int, int],
    *,
    xs: Sequence[float],
    ys: Sequence[float],
    band: Sequence[float] | None,
    color: tuple[int, int, int],
    title: str,
    y_label: str,
    x_label: str,
) -> None:
    """One line chart with axes, ticks, grid lines, axis labels and an optional ±band."""
    draw = ImageDraw.Draw(canvas)
    left, top, right, bottom = box
    small, medium = _font(14), _font(17)
    lows = [y - b for y, b in zip(ys, band, strict=True)] if band else list(ys)
    highs = [y + b for y, b in zip(ys, band, strict=True)] if band else list(ys)
    y_ticks = nice_ticks(min(lows), max(highs))
    x_low, x_high = (min(xs), max(xs)) if max(xs) > min(xs) else (min(xs) - 1, max(xs) + 1)
    x_ticks = [t for t in nice_ticks(x_low, x_high, count=8, integer=True) if x_low <= t <= x_high]
    y_low, y_high = y_ticks[0], y_ticks[-1]

    def px(x: float) -> float:
        pad = 14  # keep the first and last points off the frame
        return left + pad + (x - x_low) / (x_high - x_low) * (right - left - 2 * pad)

    def py(y: float) -> float:
        return bottom - (y - y_low) / (y_high - y_low) * (bottom - top)

    draw.text(((left + right) / 2, top - 26), title, fill=_INK, font=medium, anchor="mm")
    for tick in y_ticks:
        draw.line([(left, py(tick)), (right, py(tick))], fill=_GRID)
        draw.text((left - 8, py(tick)), _format_tick(tick), fill=_INK, font=small, anchor="rm")
    for tick in x_ticks:
        draw.line([(px(tick), bottom), (px(tick), bottom + 5)], fill=_INK)
        draw.text((px(tick), bottom + 8), _format_tick(tick), fill=_INK, font=small, anchor="mt")
    if band:
        upper = [(px(x), py(y)) for x, y in zip(xs, highs, strict=True)]
        lower = [(px(x), py(y)) for x, y in zip(xs, lows, strict=True)]
        draw.polygon(upper + lower[::-1], fill=_BLUE_BAND)
    points = [(px(x), py(y)) for x, y in zip(xs, ys, strict=True)]
    if len(points) > 1:
        draw.line(points, fill=color, width=3, joint="curve")
    for x, y in points:
        draw.ellipse([x - 3.5, y - 3.5, x + 3.5, y + 3.5], fill=color)
    draw.rectangle([left, top, right, bottom], outline=_INK)
    draw.text(((left + right) / 2, bottom + 34), x_label, fill=_INK, font=medium, anchor="mm")
    label = Image.new("RGBA", (int(bottom - top), 24), (0, 0, 0, 0))
    ImageDraw.Draw(label).text((label.width / 2, 12), y_label, fill=_INK, font=medium, anchor="mm")
    rotated = label.rotate(90, expand=True)
    canvas.paste(rotated, (left - 78, top), rotated)


def training_curves(rows: Sequence[dict]) -> Image.Image:
    """Reward (mean ± std) and mean JPEG size per epoch, from the run's metrics.jsonl rows."""
    epochs = [row["epoch"] for row in rows]
    width, panel_height = 900, 300
    canvas = Image.new("RGB", (width, 2 * panel_height + 120), _BACKGROUND)
    _panel(
        canvas,
        (110, 50, width - 30, 50 + panel_height - 90),
        xs=epochs,
        ys=[row["reward_mean"] for row in rows],
        band=[row.get("reward_std") or 0.0 for row in rows],
        color=_BLUE,
        title="Reward per epoch (mean ± std over the epoch's samples)",
        y_label="reward",
        x_label="epoch",
    )
    _panel(
        canvas,
        (110, 50 + panel_height + 40, width - 30, 2 * panel_height + 40),
        xs=epochs,
        ys=[row["jpeg_kb_mean"] for row in rows],
        band=None,
        color=_ORANGE,
        title="Mean JPEG size of the epoch's samples (quality 95)",
        y_label="JPEG size (kB)",
        x_label="epoch",
    )
    return canvas


_PALETTE = (
    (31, 119, 180),
    (214, 96, 39),
    (44, 160, 44),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
)


def cut_vs_ssim(
    curves: Mapping[str, Sequence[tuple[float, float]]],
    *,
    title: str = "JPEG cut against same-seed SSIM to the base",
    target: tuple[float, float] | None = None,
    x_label: str = "same-seed SSIM to the base model",
) -> Image.Image:
    """The fidelity frontier: one curve per method of (SSIM to base, JPEG cut in %) points, e.g. one per epoch.

    Up and to the right is better: more bytes saved while the pictures stay the base's. `target` marks a
    (minimum SSIM, minimum cut) corner with dashed lines. Any other same-seed figure where 1 means "as the base"
    (the share of subjects kept, say) can take SSIM's place, named by `x_label`.
    """
    width, height = 900, 560
    left, top, right, bottom = 110, 60, width - 250, height - 80
    canvas = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    small, medium = _font(14), _font(17)
    points = [point for curve in curves.values() for point in curve]
    xs = [x for x, _ in points] + ([target[0]] if target else []) + [1.0]
    ys = [y for _, y in points] + ([target[1]] if target else []) + [0.0]
    x_ticks, y_ticks = nice_ticks(min(xs), max(xs)), nice_ticks(min(ys), max(ys))

    def px(x: float) -> float:
        return left + (x - x_ticks[0]) / (x_ticks[-1] - x_ticks[0]) * (right - left)

    def py(y: float) -> float:
        return bottom - (y - y_ticks[0]) / (y_ticks[-1] - y_ticks[0]) * (bottom - top)

    draw.text(((left + right) / 2, top - 30), title, fill=_INK, font=medium, anchor="mm")
    for tick in y_ticks:
        draw.line([(left, py(tick)), (right, py(tick))], fill=_GRID)
        draw.text((left - 8, py(tick)), _format_tick(tick), fill=_INK, font=small, anchor="rm")
    for tick in x_ticks:
        draw.line([(px(tick), top), (px(tick), bottom)], fill=_GRID)
        draw.text((px(tick), bottom + 8), _format_tick(tick), fill=_INK, font=small, anchor="mt")
    if target:
        for i in range(0, int(right - left), 12):  # dashed guides at the target's SSIM and cut
            draw.line([(left + i, py(target[1])), (min(left + i + 6, right), py(target[1]))], fill=_INK)
        for i in range(0, int(bottom - top), 12):
            draw.line([(px(target[0]), top + i), (px(target[0]), min(top + i + 6, bottom))], fill=_INK)
    for index, (name, curve) in enumerate(curves.items()):
        color = _PALETTE[index % len(_PALETTE)]
        line = [(px(x), py(y)) for x, y in curve]
        if len(line) > 1:
            draw.line(line, fill=color, width=3, joint="curve")
        for x, y in line:
            draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=color)
        legend_y = top + 10 + 24 * index
        draw.rectangle([right + 20, legend_y - 6, right + 34, legend_y + 6], fill=color)
        draw.text((right + 42, legend_y), name, fill=_INK, font=small, anchor="lm")
    draw.rectangle([left, top, right, bottom], outline=_INK)
    draw.text(((left + right) / 2, bottom + 40), x_label, fill=_INK, font=medium, anchor="mm")
    label = Image.new("RGBA", (int(bottom - top), 24), (0, 0, 0, 0))
    ImageDraw.Draw(label).text((label.width / 2, 12), "JPEG cut vs base (%)", fill=_INK, font=medium, anchor="mm")
    rotated = label.rotate(90, expand=True)
    canvas.paste(rotated, (left - 78, top), rotated)
    return canvas
