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
    pad, caption_h = 10, 22
    font, small = label_font(15), label_font(12)
    panels = _breakdown_panels(input_image, edited_image, target_image, result, index, panel_width)
    row_heights = [max((p.height if p else panel_width) for _, p in row) for row in panels]
    title_h = 52
    width = pad + 3 * (panel_width + pad)
    height = title_h + sum(h + caption_h + pad for h in row_heights) + pad
    canvas = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    _draw_breakdown_title(draw, result, record, pad, small)
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


def _breakdown_panels(input_image, edited_image, target_image, result: MotionReward, index: int,
                      panel_width: int) -> list[list[tuple[str, Image.Image | None]]]:
    """The breakdown's three rows of (caption, picture); ``None`` marks the bar chart of the terms."""
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
    return [
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


def _draw_breakdown_title(draw: ImageDraw.ImageDraw, result: MotionReward, record: dict, pad: int, small) -> None:
    """The verdict line and the constants the scores used."""
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


_KEPT = (40, 150, 70)
_REJECTED = (200, 50, 40)


def _fit_panel(rgb: np.ndarray | None, width: int, height: int) -> Image.Image:
    """A uint8 ``(h, w, 3)`` picture letterboxed into ``width`` x ``height`` (grey when missing)."""
    panel = Image.new("RGB", (width, height), (225, 225, 225))
    if rgb is not None and rgb.size:
        pil = Image.fromarray(np.ascontiguousarray(rgb))
        scale = min(width / pil.width, height / pil.height)
        size = (max(1, round(pil.width * scale)), max(1, round(pil.height * scale)))
        panel.paste(pil.resize(size, Image.BILINEAR), ((width - size[0]) // 2, (height - size[1]) // 2))
    return panel


def _wrap(text: str, width: int) -> list[str]:
    words, lines, line = text.split(), [], ""
    for word in words:
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return lines + ([line] if line else [])


def render_contact_sheet(results, panel_height: int = 144, title: str | None = None) -> torch.Tensor:
    """A contact sheet of mined pairs: one row per pair with its pictures and metrics.

    Each row shows the input frame, the target frame and the subject's motion (flow with
    the camera removed, colour-coded), then the verdict (KEPT in green, rejected in red
    with every reason), the timestamps, the main metrics and the prompt.

    Args:
        results: :class:`motionnft.mining.PairResult` objects mined with ``previews=True``.
        panel_height: height of each picture in pixels.
        title: a line above the rows (default: counts of kept and rejected pairs); with no
            results, the sheet is this line alone.
    Returns:
        ``(3, H, W)`` float32 in [0, 1].
    """
    results = list(results)
    if not results:
        if title is None:
            raise ValueError("render_contact_sheet: no pairs to show (give a title to draw an empty sheet)")
        sheet = Image.new("RGB", (640, 36), _BACKGROUND)
        ImageDraw.Draw(sheet).text((8, 10), title, fill=_INK, font=label_font(13))
        return torch.from_numpy(np.asarray(sheet, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()
    reference = next((r.preview["input"] for r in results if r.preview and "input" in r.preview), None)
    aspect = reference.shape[1] / reference.shape[0] if reference is not None else 16 / 9
    panel_width = max(32, round(panel_height * aspect))
    font = label_font(13)
    small = label_font(12)
    text_width = 380
    margin, row_gap, header = 8, 6, 28
    row_height = max(panel_height, 8 * 16)
    width = margin + 3 * (panel_width + margin) + text_width
    height = header + len(results) * (row_height + row_gap) + margin
    sheet = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    kept = sum(r.kept for r in results)
    draw.text((margin, 7), title or f"{len(results)} candidate pairs: {kept} kept, {len(results) - kept} rejected"
              "   (input | target | subject motion, camera removed)", fill=_INK, font=font)
    for row, result in enumerate(results):
        top = header + row * (row_height + row_gap)
        colour = _KEPT if result.kept else _REJECTED
        draw.rectangle((0, top, 3, top + row_height - 1), fill=colour)
        preview = result.preview or {}
        for column, key in enumerate(("input", "target", "motion")):
            left = margin + column * (panel_width + margin)
            sheet.paste(_fit_panel(preview.get(key), panel_width, panel_height), (left, top))
        left = margin + 3 * (panel_width + margin)
        verdict = "KEPT" if result.kept else "REJECTED"
        if result.existing:
            verdict += " (already in the dataset)"
        lines = [(f"{verdict}  {result.video}  {result.time_input:.2f} s -> {result.time_target:.2f} s", colour, font)]
        m = result.metrics
        if m:
            lines += [
                (f"motion {m['motion']:.3f}  moving {100 * m['moving_fraction']:.0f}%  camera {m['camera_motion']:.3f}", _INK, small),
                (f"occlusion {m['occlusion']:.2f}  cut {m['cut_score']:.2f}  background {m['background_fraction']:.2f}", _INK, small),
                (f"sharpness {m['sharpness']:.0f} (ratio {m['sharpness_ratio']:.2f})  light change {m['lighting_change']:.3f}", _INK, small),
                (f"brightness {m['brightness_input']:.2f}/{m['brightness_target']:.2f}  duplicate dist. "
                 + ("-" if m.get("duplicate_distance") is None else f"{m['duplicate_distance']:.2f}"), _INK, small),
            ]
        if result.judge:
            lines.append(("judge: " + "  ".join(f"{k} {v:.2f}" for k, v in result.judge.items()), _MUTED, small))
        if result.reasons:
            for text in _wrap("rejected: " + ", ".join(result.reasons), 58)[:3]:
                lines.append((text, _REJECTED, small))
        elif result.prompt:
            for text in _wrap(f'prompt: "{result.prompt}"', 58)[:2]:
                lines.append((text, _MUTED, small))
        else:
            lines.append(("prompt: (empty: to be written)", _MUTED, small))
        y = top + 2
        for text, fill, face in lines:
            draw.text((left, y), text, fill=fill, font=face)
            y += 16
    return torch.from_numpy(np.asarray(sheet, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()
