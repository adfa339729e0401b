"""Motion Reward: the MotionNFT reward and MAS of edits, with the breakdown figure."""

from __future__ import annotations

import torch
from comfy_api.latest import io, ui

from ..motionnft.flow import flow_to_color
from ..motionnft.image import resize_image
from ..motionnft.report import colorize, render_reward_breakdown
from ..motionnft.reward import VARIANTS, MotionReward, MotionRewardConfig, motion_reward
from .common import (
    CATEGORY,
    bchw_to_image,
    flow_estimator,
    flow_inputs,
    flow_model_inputs,
    image_to_bchw,
    progress_callback,
)


def first_sample_maps(result: MotionReward) -> torch.Tensor:
    """``(4, 3, H, W)``: the two flows on one colour scale, the magnitude and direction error maps."""
    flows = torch.cat((result.flow_edit[:1], result.flow_target[:1])).detach().float().cpu()
    peak = float(flows.norm(dim=1).amax().clamp_min(1e-6))
    colours = flow_to_color(flows, peak)
    magnitude = result.terms.magnitude_map[0]
    magnitude = colorize(magnitude, result.config.distance_min, max(float(magnitude.max()), 0.05))
    direction = colorize(result.terms.direction_map[0], 0.0, 1.0)
    active = (result.terms.direction_weight[0].detach().float().cpu() > 0).float()
    direction = direction * (0.25 + 0.75 * active) + 0.45 * (1 - active)
    return torch.cat((colours, magnitude.unsqueeze(0), direction.unsqueeze(0)))


def summarize(result: MotionReward) -> str:
    """One line per sample with every term, then the constants."""
    lines = []
    for index, r in enumerate(result.records()):
        failure = " (hard failure: the edit does not move)" if r["mas_hard_failure"] else ""
        lines.append(
            f"#{index + 1}: reward {r['reward']:.1f} (continuous {r['reward_continuous']:.3f}) | "
            f"D_mag {r['d_mag']:.4f}  D_dir {r['d_dir']:.4f}  M_move {r['m_move']:.4f}  D {r['combined']:.4f} | "
            f"MAS {r['mas']:.2f}{failure}"
        )
    config, mas = result.config, result.mas.config
    lines.append(
        f"variant {config.variant}; D = {config.weight_magnitude:g} D_mag + {config.weight_direction:g} D_dir + "
        f"{config.weight_movement:g} M_move; {mas.describe()}"
    )
    return "\n".join(lines)


class MotionRewardNode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MotionNFT_MotionReward",
            display_name="Motion Reward (MotionNFT)",
            category=CATEGORY,
            description=(
                "Scores how well an edit reproduces the motion of a ground-truth target: the "
                "MotionNFT reward (0-1, in steps of 0.2) and MAS (0-100), from the optical flow "
                "input->edited against input->ground truth. Input and ground truth are resized "
                "to the edited image's size. For a batch, the outputs are batch means."
            ),
            inputs=[
                io.Image.Input("input_image", tooltip="The original image the edit started from."),
                io.Image.Input("edited_image", tooltip="The edit(s) to score; a batch scores each."),
                io.Image.Input("target_image", display_name="ground_truth", tooltip="How the edit should look."),
                *flow_inputs(),
                io.Combo.Input(
                    "variant", options=list(VARIANTS), default="code",
                    tooltip="code = the released MotionNFT training code (published numbers); paper = the printed formula.",
                ),
                *flow_model_inputs(),
            ],
            outputs=[
                io.Float.Output(display_name="reward"),
                io.Float.Output(display_name="mas"),
                io.Image.Output(display_name="breakdown"),
                io.String.Output(display_name="summary"),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(
        cls, input_image, edited_image, target_image, backend, preset, variant, weights="auto", precision="fp32"
    ) -> io.NodeOutput:
        source = image_to_bchw("input_image", input_image)
        edited = image_to_bchw("edited_image", edited_image)
        target = image_to_bchw("target_image", target_image)
        estimator = flow_estimator(backend, preset, weights, precision)
        result = motion_reward(
            source, edited, target,
            estimator=estimator,
            config=MotionRewardConfig(variant=variant),
            progress=progress_callback(2 * edited.shape[0]),
        )
        size = tuple(edited.shape[-2:])
        source, target = resize_image(source, size), resize_image(target, size)
        figures = torch.stack(
            [
                render_reward_breakdown(
                    source[min(i, source.shape[0] - 1)], edited[i], target[min(i, target.shape[0] - 1)], result, index=i
                )
                for i in range(len(result))
            ]
        )
        summary = summarize(result)
        breakdown = bchw_to_image(figures)
        reward = float(result.reward.mean())
        mas = float(result.mas.score.mean())
        preview = ui.PreviewImage(breakdown, cls=cls).as_dict()
        maps = ui.PreviewImage(bchw_to_image(first_sample_maps(result)), cls=cls).as_dict()["images"]
        return io.NodeOutput(
            reward, mas, breakdown, summary,
            ui={
                **preview,
                "text": [summary],
                "motionnft_reward": result.records(),
                # flow edit, flow ground truth, magnitude error, direction error (first sample)
                "motionnft_maps": maps,
            },
        )
