"""The reward-breakdown figure: what the motion reward saw and how it scored it."""

from __future__ import annotations

import cv2
import numpy as np
import torch
from PIL import Image, ImageDraw

from .flow.viz import label_font, flow_legend, flow_to_color
from .image import tensor_to_pil
from .reward import MotionReward

_BACKGROUND = (250, 250, 250)
_INK = (25, 25, 25)
_MUTED = (110, 110, 110)


def colorize(values: torch.Tensor, low: float, high: float, colormap: int = cv2.COLORMAP_INFERNO) -> torch.Tensor:
    """Map an ``(H, W)`` scalar field to an RGB ``(3, H, W)`` image in [0, 1] (low -> dark)."""
    scaled = ((values.detach().float().cpu() - low) / max(high - low, 1e-12)).clamp(0, 1)
    bgr = cv2.applyColorMap((scaled.numpy() * 255).round().astype(np.uint8), colormap)
    return torch.from_numpy(bgr[..., ::-1].copy()).permute(2, 0, 1).float() / 255.0


def _panel(image: torch.Tensor, width: int) -> Image.Image:
    pil = tensor_to_pil(image)
    height = max(1, round(pil.height * width / pil.width))
    return pil.resize((width, height), Image.BILINEAR)


def render_reward_breakdown(
    input_image: torch.Tensor,
    edited_image: torch.Tensor,
    target_image: torch.Tensor,
    result: MotionReward,
    index: int = 0,
    panel_width: int = 256,
) -> torch.Tensor:
    """A figure of one sample's motion reward.

    Rows: the three images; the two flows (shared colour scale) and the colour legend;
    the per-pixel magnitude error, the direction error (dimmed where the ground truth is
    static, i.e. outside the direction mask) and bars for every term.

    Args:
        input_image, edited_image, target_image: ``(3, H, W)`` or ``(1, 3, H, W)`` in [0, 1]
            (any sizes; each is fitted to the panel width).
        result: the :class:`~motionnft.reward.MotionReward` with its flows.
        index: which sample of ``result`` to draw.
    Returns:
        ``(3, H', W')`` float32 in [0, 1].
    """
    if result.flow_edit is None or result.flow_target is None:
        raise ValueError("render_reward_breakdown needs a MotionReward that carries its flows")
    if not 0 <= index < len(result):
        raise IndexError(f"sample {index} out of range for a batch of {len(result)}")
    record = result.records()[index]
    flow_edit = result.flow_edit[index : index + 1].detach().float().cpu()
    flow_target = result.flow_target[index : index + 1].detach().float().cpu()
    peak = float(torch.cat((flow_edit, flow_target)).norm(dim=1).amax().clamp_min(1e-6))
    terms = result.terms
    magnitude_map = terms.magnitude_map[index].detach().float().cpu()
    direction_map = terms.direction_map[index].detach().float().cpu()
    direction_weight = terms.direction_weight[index].detach().float().cpu()
    d_min = result.config.distance_min
    magnitude_high = max(float(magnitude_map.max()), 0.05)
    direction_rgb = colorize(direction_map, 0.0, 1.0)
    active = (direction_weight > 0).float()
    direction_rgb = direction_rgb * (0.25 + 0.75 * active) + 0.45 * (1 - active)

    pad, caption_h = 10, 22
    font, small = label_font(15), label_font(12)
    panels = [
        [
            ("input", _panel(input_image, panel_width)),
            ("edited", _panel(edited_image, panel_width)),
            ("ground truth", _panel(target_image, panel_width)),
        ],
        [
            ("flow input -> edited", _panel(flow_to_color(flow_edit, peak), panel_width)),
            ("flow input -> ground truth", _panel(flow_to_color(flow_target, peak), panel_width)),
            ("flow colours", _panel(flow_legend(160, peak), panel_width * 2 // 3)),
        ],
        [
            (f"magnitude error {d_min:.3f} to {magnitude_high:.2f}", _panel(colorize(magnitude_map, d_min, magnitude_high), panel_width)),
            ("direction error 0 to 1 (masked)", _panel(direction_rgb, panel_width)),
            ("terms", None),
        ],
    ]
    row_heights = [max((p.height if p else panel_width) for _, p in row) for row in panels]
    title_h = 52
    width = pad + 3 * (panel_width + pad)
    height = title_h + sum(h + caption_h + pad for h in row_heights) + pad
    canvas = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    verdict = " (hard failure: the edit does not move)" if record["mas_hard_failure"] else ""
    draw.text(
        (pad, pad),
        f"motion reward {record['reward']:.1f}   continuous {record['reward_continuous']:.3f}   "
        f"MAS {record['mas']:.1f}{verdict}",
        fill=_INK,
        font=label_font(17),
    )
    draw.text(
        (pad, pad + 22),
        f"variant {result.config.variant}; D = {result.config.weight_magnitude:g}·D_mag + "
        f"{result.config.weight_direction:g}·D_dir + {result.config.weight_movement:g}·M_move; "
        f"MAS alpha={result.mas.config.alpha:g} d_min={result.mas.config.d_min:.4g} d_max={result.mas.config.d_max:g}",
        fill=_MUTED,
        font=small,
    )
    top = title_h
    for row, row_height in zip(panels, row_heights):
        for column, (caption, picture) in enumerate(row):
            left = pad + column * (panel_width + pad)
            draw.text((left, top + 3), caption, fill=_INK, font=font)
            if picture is not None:
                canvas.paste(picture, (left, top + caption_h))
            else:
                _draw_bars(draw, record, left, top + caption_h, panel_width, row_height, small)
        top += row_height + caption_h + pad
    array = np.asarray(canvas, dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def _draw_bars(draw: ImageDraw.ImageDraw, record: dict, left: int, top: int, width: int, height: int, font) -> None:
    bars = [
        ("D_mag", record["d_mag"], (222, 120, 40)),
        ("D_dir", record["d_dir"], (222, 120, 40)),
        ("M_move", record["m_move"], (222, 120, 40)),
        ("D", record["combined"], (180, 60, 40)),
        ("r_cont", record["reward_continuous"], (50, 130, 200)),
        ("reward", record["reward"], (30, 90, 170)),
        ("MAS/100", record["mas"] / 100.0, (40, 150, 90)),
    ]
    label_w, value_w = 58, 52
    step = min(32, height // len(bars))
    bar_w = width - label_w - value_w
    for row, (label, value, color) in enumerate(bars):
        y = top + row * step
        draw.text((left, y + 4), label, fill=_INK, font=font)
        draw.rectangle((left + label_w, y + 4, left + label_w + bar_w, y + step - 6), outline=(200, 200, 200))
        filled = int(round(bar_w * min(max(value, 0.0), 1.0)))
        if filled > 0:
            draw.rectangle((left + label_w, y + 4, left + label_w + filled, y + step - 6), fill=color)
        draw.text((left + label_w + bar_w + 6, y + 4), f"{value:.3f}", fill=_INK, font=font)
