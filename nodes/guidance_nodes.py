"""Motion Guidance (a GUIDER for SamplerCustomAdvanced), Flow from File and Flow Alignment.

The guider is ComfyUI's ``CFGGuider`` whose ``predict_noise`` is one
``motionnft.guidance.guide_step`` per guided step: ComfyUI's denoised output is the "x0"
parameterisation at the level ``x = α·x0 + σ·ε`` with ``α = 1`` (ε, v and EDM models, which
ComfyUI samples in the variance-exploding form) or ``α = 1 − σ`` (flow models: FLUX, Qwen-Image,
SD3). All maths is in the library; this module binds it to ComfyUI's model, VAE and sampler.
"""

from __future__ import annotations

import copy
import logging
import math
import os

import torch
from comfy_api.latest import io, ui

import comfy.model_management
import comfy.model_sampling
import comfy.samplers
import folder_paths

from ..motionnft.flow import FLOW_FILE_SUFFIXES, flow_to_color, read_flow_file
from ..motionnft.guidance import GuidanceConfig, MotionEnergy, default_edit_mask, guide_step, guided_steps, noised
from ..motionnft.guidance.alignment import GUIDE_FLOWS, flow_alignment, guidance_flow
from ..motionnft.report import colorize
from .common import (
    CATEGORY,
    Flow,
    bchw_to_image,
    check_flow,
    check_mask,
    flow_estimator,
    flow_inputs,
    flow_model_inputs,
    image_to_bchw,
    resolve_weights,
)

CLEAN_ESTIMATE = "clean estimate only (less memory)"
GRADIENTS = {CLEAN_ESTIMATE: False, "through the model (paper)": True}


def normal_weights(module: torch.nn.Module) -> None:
    """Replace ``module``'s inference-tensor parameters and buffers by normal copies, in place.

    ComfyUI loads models inside ``torch.inference_mode()``, so their weights are inference
    tensors, which autograd refuses to save for a backward pass even when no gradient flows to
    them. A copy made with autograd on is a normal tensor; each one replaces its original (the
    old one is freed), so memory grows by one tensor at a time, not by a model. Once done, a
    module is skipped quickly (nothing left to replace).
    """
    with torch.inference_mode(False):
        for sub in module.modules():
            for name, value in list(sub._parameters.items()):
                if value is not None and value.is_inference():
                    sub._parameters[name] = torch.nn.Parameter(value.detach().clone(), requires_grad=False)
            for name, value in list(sub._buffers.items()):
                if value is not None and value.is_inference():
                    sub._buffers[name] = value.clone()


class MotionGuider(comfy.samplers.CFGGuider):
    """CFG guidance plus Motion Guidance towards a target flow on the guided steps."""

    def set_motion(self, vae, source: torch.Tensor, target_flow: torch.Tensor, mask: torch.Tensor | None,
                   flow_fn, config: GuidanceConfig) -> None:
        self.vae, self.source, self.target_flow, self.mask = vae, source, target_flow, mask
        self.flow_fn, self.motion_config = flow_fn, config
        self._energy = self._source_latent = None
        self._device = self._decoder = None
        self.losses: list[float] = []

    def outer_sample(self, *args, **kwargs):
        self.losses = []
        samples = super().outer_sample(*args, **kwargs)
        if self.losses:  # what a user (and the host test) reads to see guidance at work
            logging.info("MotionNFT Motion Guidance: %d guided steps; energy %.4f at the first, %.4f at the last%s",
                         len(self.losses), self.losses[0], self.losses[-1],
                         "" if all(map(math.isfinite, self.losses)) else " (not finite: the model predicted NaN)")
        return samples

    # ComfyUI calls this once per model evaluation of the sampler
    def predict_noise(self, x, timestep, model_options={}, seed=None):
        comfy.model_management.throw_exception_if_processing_interrupted()
        sigmas = model_options.get("transformer_options", {}).get("sample_sigmas")
        if not self._guided(timestep, sigmas):
            return self._keep_outside(super().predict_noise(x, timestep, model_options, seed), x)
        flow_model = isinstance(self.inner_model.model_sampling, comfy.model_sampling.CONST)
        sigma = timestep.float()
        alpha = 1.0 - sigma if flow_model else torch.ones_like(sigma)
        energy = self._energy_on(x.device)
        self._device = x.device
        if self.motion_config.grad_through_model:
            normal_weights(self.inner_model)

        def denoise(latent, times):
            return comfy.samplers.sampling_function(self.inner_model, latent, times, self.conds.get("negative"),
                                                    self.conds.get("positive"), self.cfg,
                                                    model_options=model_options, seed=seed)

        current = x
        for repeat in range(self.motion_config.recursions):
            guided = self._guide_step(current, timestep, alpha, sigma, denoise, energy)
            if repeat < self.motion_config.recursions - 1:  # re-noise the estimate to this level, predict again
                current = noised(guided.x0, torch.randn_like(guided.x0), alpha, sigma).to(x.dtype)
                comfy.model_management.throw_exception_if_processing_interrupted()
        if guided.correction is not None and float(alpha.min()) >= self.motion_config.min_alpha:
            self.losses.append(float(guided.loss.mean()))  # a level with signal: guided (NaN if the model gave NaN)
        return self._keep_outside(guided.output.to(x.dtype), x)

    def _guide_step(self, x, timestep, alpha, sigma, denoise, energy):
        try:
            return guide_step(x, timestep, alpha, sigma, denoise, self._decode, energy, self.motion_config,
                              prediction="x0")
        except RuntimeError as error:
            # ComfyUI's own FLUX code has steps without a backward (0.8's comfy_kitchen rope kernel,
            # 0.3's in-place rope): say so and how to go on, rather than a bare autograd message.
            if not (self.motion_config.grad_through_model and "autograd" in str(error)):
                raise
            raise ValueError(
                "gradient 'through the model (paper)': this model cannot be back-propagated in this ComfyUI "
                f"({str(error).splitlines()[0][:160]}); set gradient to 'clean estimate only (less memory)'") from None

    def _guided(self, timestep, sigmas) -> bool:
        if sigmas is None or len(sigmas) < 2:
            return True
        steps = len(sigmas) - 1
        index = int((sigmas[:-1].to(timestep.device) - timestep.flatten()[0]).abs().argmin())
        return guided_steps(steps, self.motion_config)[index]

    def _decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Model latents -> images ``(B, 3, H, W)`` in [0, 1], differentiable (``VAE.decode`` is not)."""
        vae = self.vae
        if self._decoder is None:
            # The VAE was loaded under ComfyUI's inference mode: its weights are inference tensors,
            # which autograd may not save. A copy made with autograd on holds normal ones (and
            # swapping the VAE's own parameters in place crashed the backward pass in 0.3 and 0.8).
            with torch.inference_mode(False):
                self._decoder = copy.deepcopy(vae.first_stage_model).requires_grad_(False)
        latent = self.inner_model.process_latent_out(latent).to(vae.device, vae.vae_dtype)
        return vae.process_output(self._decoder.decode(latent).float()).to(self._device)

    def _energy_on(self, device) -> MotionEnergy:
        if self._energy is None:
            comfy.model_management.load_models_gpu([self.vae.patcher])
            self._energy = MotionEnergy(self.source, self.target_flow, self.flow_fn, self.motion_config)
        return self._energy.to(device)

    def _keep_outside(self, denoised: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Outside the edit mask the clean estimate is the source's latent, so the result keeps it there."""
        if self.mask is None:
            return denoised
        if self._source_latent is None:
            latent = self.vae.encode(self.source.movedim(1, -1))
            self._source_latent = self.inner_model.process_latent_in(latent).to(x)
        mask = torch.nn.functional.interpolate(self.mask[:, None].float(), size=tuple(x.shape[-2:]), mode="area").to(x)
        source = self._source_latent
        # where nothing may change the source stands even if the model's estimate is not finite
        return torch.where(mask > 0, mask * denoised + (1 - mask) * source, source)


class MotionGuidance(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        defaults = GuidanceConfig()
        return io.Schema(
            node_id="MotionNFT_MotionGuidance",
            display_name="Motion Guidance (MotionNFT)",
            category=CATEGORY,
            description=(
                "A guider for SamplerCustomAdvanced that steers the sampler so the flow from source_image to the "
                "result matches target_flow (Motion Guidance, Geng & Owens 2024). Works with epsilon and flow "
                "models (SD 1.x/SDXL, FLUX, Qwen-Image). The latent must have the source image's size."
            ),
            inputs=[
                io.Model.Input("model"),
                io.Vae.Input("vae", tooltip="The model's VAE: the clean estimate is decoded with it to measure flow."),
                io.Conditioning.Input("positive"),
                io.Conditioning.Input("negative"),
                io.Float.Input("cfg", default=1.0, min=0.0, max=100.0, step=0.1, round=0.01),
                io.Image.Input("source_image", tooltip="The image whose pixels the target flow moves."),
                Flow.Input("target_flow", tooltip="Where each source pixel should go, pixels of source_image."),
                io.Combo.Input("flow_network", options=list(GUIDE_FLOWS), default="correlation",
                               tooltip="Differentiable flow that guides. correlation needs no weights (small "
                               "images); raft_small / raft_large / unimatch load weights from models/optical_flow."),
                io.Float.Input("flow_weight", default=defaults.flow_weight, min=0.0, max=1000.0, step=0.1),
                io.Float.Input("colour_weight", default=defaults.colour_weight, min=0.0, max=10000.0, step=1.0),
                io.Float.Input("scale", default=defaults.scale, min=0.0, max=100000.0, step=1.0,
                               tooltip="Gradient scale (the paper's 300)."),
                io.Int.Input("recursions", default=defaults.recursions, min=1, max=20,
                             tooltip="Denoiser passes per guided step (the paper: 10)."),
                io.Float.Input("start", default=defaults.start, min=0.0, max=1.0, step=0.01,
                               tooltip="First guided step, as a fraction of the schedule."),
                io.Float.Input("end", default=defaults.end, min=0.0, max=1.0, step=0.01,
                               tooltip="Guidance stops at this fraction of the schedule."),
                io.Combo.Input("gradient", options=list(GRADIENTS), default=CLEAN_ESTIMATE,
                               tooltip="Back-propagate only through the VAE decoder and flow network (default: far "
                               "less memory, and works with every model) or also through the diffusion model (the "
                               "paper; ComfyUI's FLUX code has no backward for some of its kernels)."),
                io.Mask.Input("mask", optional=True, tooltip="Where the image may change; outside, the source is kept. "
                              "Without one: where the flow moves pixels and where they land, grown by 1/20 of the "
                              "shorter side (guidance is much less reliable on the whole image); connect a white "
                              "mask to let every pixel change."),
                flow_model_inputs()[0],
            ],
            outputs=[io.Guider.Output()],
        )

    @classmethod
    def execute(cls, model, vae, positive, negative, cfg, source_image, target_flow, flow_network, flow_weight,
                colour_weight, scale, recursions, start, end, gradient, mask=None, weights="auto") -> io.NodeOutput:
        source = image_to_bchw("source_image", source_image)[:1]
        flow = check_flow("target_flow", target_flow).float()[:1]
        if tuple(flow.shape[-2:]) != tuple(source.shape[-2:]):
            raise ValueError(f"target_flow is {flow.shape[-1]}x{flow.shape[-2]} but source_image is "
                             f"{source.shape[-1]}x{source.shape[-2]}: the flow must describe the source's pixels "
                             "(make it from this image, or resize both)")
        if not start < end:
            raise ValueError(f"start ({start}) must be below end ({end})")
        config = GuidanceConfig().replace(flow_weight=flow_weight, colour_weight=colour_weight, scale=scale,
                                          recursions=recursions, start=start, end=end,
                                          grad_through_model=GRADIENTS[gradient])
        device = comfy.model_management.get_torch_device()
        flow_fn = guidance_flow(flow_network, resolve_weights(weights), device=device)
        guider = MotionGuider(model)
        guider.set_conds(positive, negative)
        guider.set_cfg(cfg)
        if mask is None:
            edit_mask = default_edit_mask(flow)[:, 0]
        else:
            edit_mask = check_mask("mask", mask, tuple(source.shape[-2:]))[:1]
        guider.set_motion(vae, source, flow, edit_mask, flow_fn, config)
        return io.NodeOutput(guider)


class FlowFromFile(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        files = sorted(f for f in os.listdir(folder_paths.get_input_directory())
                       if f.lower().endswith(FLOW_FILE_SUFFIXES)) if os.path.isdir(folder_paths.get_input_directory()) else []
        return io.Schema(
            node_id="MotionNFT_FlowFromFile",
            display_name="Flow from File (MotionNFT)",
            category=CATEGORY,
            description="Load a flow: Middlebury .flo, or NumPy .npy/.npz in (H, W, 2) or (2, H, W) layout, in pixels.",
            inputs=[
                io.Combo.Input("file", options=files or ["(no .flo/.npy/.npz in the input folder)"],
                               tooltip="A file of ComfyUI's input folder."),
                io.String.Input("path", default="", optional=True,
                                tooltip="Or any path on this machine (takes precedence when set)."),
            ],
            outputs=[Flow.Output(display_name="flow"), io.Image.Output(display_name="preview")],
        )

    @classmethod
    def _path(cls, file: str, path: str = "") -> str:
        if path.strip():
            return os.path.expanduser(path.strip())
        return os.path.join(folder_paths.get_input_directory(), file)

    @classmethod
    def fingerprint_inputs(cls, file, path=""):
        target = cls._path(file, path)
        return os.path.getmtime(target) if os.path.isfile(target) else float("nan")

    @classmethod
    def execute(cls, file, path="") -> io.NodeOutput:
        target = cls._path(file, path)
        if not os.path.isfile(target):
            raise FileNotFoundError(f"flow file not found: {target} (looked in the input folder "
                                    f"{folder_paths.get_input_directory()} and at the path given)")
        flow = read_flow_file(target)[None]
        picture = flow_to_color(flow)
        return io.NodeOutput(flow, bchw_to_image(picture))


class FlowAlignment(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MotionNFT_FlowAlignment",
            display_name="Flow Alignment (MotionNFT)",
            category=CATEGORY,
            description=(
                "How well results follow a target flow, without a ground-truth image: the flow from source to each "
                "result against the target (end-point error in the moved and static regions, motion reward, MAS) "
                "and a per-pixel error map."
            ),
            inputs=[
                io.Image.Input("source_image"),
                io.Image.Input("result", tooltip="The edit(s) to score; a batch scores each."),
                Flow.Input("target_flow", tooltip="The intended flow, pixels of source_image."),
                *flow_inputs(),
                *flow_model_inputs(),
                io.Float.Input("max_error", default=0.0, min=0.0, max=1000.0, step=0.5,
                               tooltip="Error (pixels) shown as the hottest colour; 0 = the largest error."),
            ],
            outputs=[
                io.Float.Output(display_name="epe_moved"), io.Float.Output(display_name="epe_static"),
                io.Float.Output(display_name="reward"), io.Float.Output(display_name="mas"),
                io.Image.Output(display_name="error_map"), io.String.Output(display_name="summary"),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, source_image, result, target_flow, backend, preset, max_error, weights="auto",
                precision="fp32") -> io.NodeOutput:
        source = image_to_bchw("source_image", source_image)[:1]
        edits = image_to_bchw("result", result)
        flow = check_flow("target_flow", target_flow).float()[:1]
        alignment = flow_alignment(source.cpu(), edits.cpu(), flow.cpu(),
                                   flow_estimator(backend, preset, weights, precision))
        peak = max_error if max_error > 0 else max(float(alignment.error_map.max()), 1e-3)
        maps = torch.stack([colorize(m, 0.0, peak) for m in alignment.error_map])
        errors, reward = alignment.errors, alignment.reward
        lines = [f"result {i}: {alignment.summary(i)}" for i in range(edits.shape[0])]
        summary = "\n".join(lines) + f"\nerror map: 0 to {peak:.2f} px"
        logging.info("MotionNFT Flow Alignment: %s", summary.replace("\n", "; "))
        return io.NodeOutput(float(errors.moved.mean()), float(errors.static.mean()),
                             float(reward.reward_continuous.mean()), float(reward.mas.score.mean()), bchw_to_image(maps),
                             summary, ui={"text": [summary], **ui.PreviewImage(bchw_to_image(maps), cls=cls).as_dict()})
