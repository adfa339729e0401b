"""Seeing flow: the Middlebury colour coding, its colour-wheel legend, and arrows."""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .flo import valid_flow_mask

# Middlebury colour wheel (Baker et al., "A Database and Evaluation Methodology for
# Optical Flow", 2011): six ramps between primaries and secondaries, sampled more
# densely where the eye separates hues better. Each ramp: (length, channel that changes,
# +1 rising / -1 falling, the two channels held at 255).
_WHEEL_RAMPS = ((15, 1, +1, (0,)),   # red -> yellow
                (6, 0, -1, (1,)),    # yellow -> green
                (4, 2, +1, (1,)),    # green -> cyan
                (11, 1, -1, (2,)),   # cyan -> blue
                (13, 0, +1, (2,)),   # blue -> magenta
                (6, 2, -1, (0,)))    # magenta -> red


def color_wheel() -> torch.Tensor:
    """The 55 Middlebury wheel colours, ``(55, 3)`` float in [0, 1], 8-bit quantised."""
    rows = []
    for length, channel, sign, held in _WHEEL_RAMPS:
        ramp = torch.zeros(length, 3, dtype=torch.float64)
        step = torch.floor(255 * torch.arange(length, dtype=torch.float64) / length)
        ramp[:, channel] = step if sign > 0 else 255 - step
        for other in held:
            ramp[:, other] = 255
        rows.append(ramp)
    return torch.cat(rows) / 255


def flow_to_color(flow: torch.Tensor, max_magnitude: float | torch.Tensor | None = None) -> torch.Tensor:
    """Middlebury colour coding of a flow batch.

    Hue is the direction (right = red, down = yellow, left = cyan, up = blue-violet),
    saturation the magnitude relative to ``max_magnitude``; vectors longer than it are
    darkened. Unknown pixels (non-finite or > 1e9) are black.

    Args:
        flow: ``(B, 2, H, W)`` in pixels.
        max_magnitude: pixels mapped to full saturation; ``None`` or ``<= 0`` takes each
            image's own largest known magnitude. A ``(B,)`` tensor sets one per image.
    Returns:
        ``(B, 3, H, W)`` float32 in [0, 1].
    """
    if flow.ndim != 4 or flow.shape[1] != 2:
        raise ValueError(f"flow_to_color: expected a flow of shape (B, 2, H, W), got {tuple(flow.shape)}")
    flow = flow.detach().to(torch.float64)
    valid = valid_flow_mask(flow)
    u = torch.where(valid, flow[:, 0], torch.zeros_like(flow[:, 0]))
    v = torch.where(valid, flow[:, 1], torch.zeros_like(flow[:, 1]))
    magnitude = torch.sqrt(u * u + v * v)
    batch = flow.shape[0]
    if max_magnitude is None or (not torch.is_tensor(max_magnitude) and max_magnitude <= 0):
        limit = magnitude.reshape(batch, -1).amax(dim=1)
    else:
        limit = torch.as_tensor(max_magnitude, dtype=torch.float64, device=flow.device).expand(batch)
    limit = limit.clamp_min(1e-9).view(batch, 1, 1)
    radius = magnitude / limit
    wheel = color_wheel().to(flow.device)
    ncols = wheel.shape[0]
    angle = torch.atan2(-v, -u) / math.pi
    position = (angle + 1) / 2 * (ncols - 1)
    k0 = position.floor().long().clamp(0, ncols - 1)
    k1 = torch.where(k0 + 1 == ncols, torch.zeros_like(k0), k0 + 1)
    frac = (position - k0).unsqueeze(-1)
    color = (1 - frac) * wheel[k0] + frac * wheel[k1]
    radius = radius.unsqueeze(-1)
    color = torch.where(radius <= 1, 1 - radius * (1 - color), color * 0.75)
    color = color * valid.unsqueeze(-1)
    return color.permute(0, 3, 1, 2).to(torch.float32).clamp(0, 1)


def label_font(size: int) -> ImageFont.ImageFont:
    """PIL's built-in font at ``size`` pixels (the fixed bitmap font on old Pillow)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def flow_legend(size: int = 128, max_magnitude: float | None = None) -> torch.Tensor:
    """The colour-wheel legend: the colour of every flow vector inside a disc.

    The disc's centre is zero motion, its rim a vector of length ``max_magnitude``
    pointing from the centre; the background is white. With ``max_magnitude`` given, a
    caption states it in pixels below the wheel.

    Returns:
        ``(3, H, size)`` float32 in [0, 1]; ``H = size`` without a caption.
    """
    if size < 16:
        raise ValueError(f"flow_legend: size must be at least 16 pixels, got {size}")
    centre = (size - 1) / 2
    radius = size / 2 - 2
    coords = torch.arange(size, dtype=torch.float32) - centre
    ys, xs = torch.meshgrid(coords, coords, indexing="ij")
    disc = torch.stack((xs, ys)).unsqueeze(0) / radius
    wheel = flow_to_color(disc, max_magnitude=1.0)[0]
    inside = (xs.pow(2) + ys.pow(2)).sqrt() <= radius
    legend = torch.where(inside, wheel, torch.ones_like(wheel))
    pil = Image.fromarray((legend.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    draw.ellipse((centre - radius, centre - radius, centre + radius, centre + radius), outline=(60, 60, 60))
    draw.line((centre - 3, centre, centre + 3, centre), fill=(60, 60, 60))
    draw.line((centre, centre - 3, centre, centre + 3), fill=(60, 60, 60))
    if max_magnitude is not None:
        font = label_font(max(10, size // 10))
        caption = f"rim = {max_magnitude:.3g} px"
        box = draw.textbbox((0, 0), caption, font=font)
        text_h = box[3] - box[1] + 6
        canvas = Image.new("RGB", (size, size + text_h), (255, 255, 255))
        canvas.paste(pil, (0, 0))
        ImageDraw.Draw(canvas).text(
            ((size - (box[2] - box[0])) / 2, size + 2 - box[1]), caption, fill=(20, 20, 20), font=font
        )
        pil = canvas
    return torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


def draw_flow_arrows(
    image: torch.Tensor,
    flow: torch.Tensor,
    spacing: int = 24,
    scale: float = 1.0,
    color: tuple[float, float, float] = (1.0, 1.0, 1.0),
    thickness: int = 1,
    min_length: float = 0.5,
) -> torch.Tensor:
    """Draw flow arrows on a grid over an image.

    Args:
        image: ``(B, 3, H, W)`` float in [0, 1] to draw on (not modified).
        flow: ``(B, 2, H, W)`` in pixels (a batch of 1 broadcasts).
        spacing: grid step in pixels between arrows.
        scale: arrow length per pixel of motion.
        color: RGB in [0, 1]; drawn with a dark outline so it reads on any background.
        min_length: vectors shorter than this many pixels are not drawn.
    Returns:
        ``(B, 3, H, W)`` float32 copy with the arrows.
    """
    if spacing < 1:
        raise ValueError(f"draw_flow_arrows: spacing must be >= 1, got {spacing}")
    if image.shape[-2:] != flow.shape[-2:]:
        raise ValueError(f"image is {tuple(image.shape[-2:])} but flow is {tuple(flow.shape[-2:])} (H, W)")
    if flow.shape[0] == 1 and image.shape[0] > 1:
        flow = flow.expand(image.shape[0], -1, -1, -1)
    elif image.shape[0] == 1 and flow.shape[0] > 1:
        image = image.expand(flow.shape[0], -1, -1, -1)
    canvas = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    vectors = flow.detach().float().cpu().numpy()
    height, width = canvas.shape[1:3]
    fg = tuple(int(round(c * 255)) for c in color)
    outline = (0, 0, 0) if sum(color) > 1.5 else (255, 255, 255)
    out = []
    for index in range(canvas.shape[0]):
        picture = np.ascontiguousarray(canvas[index])
        for y in range(spacing // 2, height, spacing):
            for x in range(spacing // 2, width, spacing):
                dx, dy = vectors[index, 0, y, x], vectors[index, 1, y, x]
                if not (np.isfinite(dx) and np.isfinite(dy)) or math.hypot(dx, dy) < min_length:
                    continue
                tip = (int(round(x + dx * scale)), int(round(y + dy * scale)))
                cv2.arrowedLine(picture, (x, y), tip, outline, thickness + 2, cv2.LINE_AA, tipLength=0.3)
                cv2.arrowedLine(picture, (x, y), tip, fg, thickness, cv2.LINE_AA, tipLength=0.3)
        out.append(torch.from_numpy(picture))
    return torch.stack(out).permute(0, 3, 1, 2).float() / 255.0
