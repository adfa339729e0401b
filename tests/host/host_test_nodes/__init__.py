"""Nodes for the host tests only (linked into a temporary custom_nodes; never shipped).

``HostTest_SaveModelWeights`` loads a MODEL the way sampling does (ComfyUI merges its
patches into the weights), then writes the named weights, as they are now, to a
safetensors file in the output folder, so a test can compare them with the maths.
"""

import os

import safetensors.torch

import comfy.model_management
import folder_paths


class SaveModelWeights:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL",),
            "keys": ("STRING", {"default": "", "multiline": True}),
            "filename": ("STRING", {"default": "weights.safetensors"}),
        }}

    RETURN_TYPES = ()
    FUNCTION = "save"
    OUTPUT_NODE = True
    CATEGORY = "testing"

    @classmethod
    def IS_CHANGED(cls, **kwargs):
        return float("nan")  # always run: the weights in memory depend on what ran before

    def save(self, model, keys, filename):
        comfy.model_management.load_models_gpu([model], force_patch_weights=True, force_full_load=True)
        state = model.model.diffusion_model.state_dict()  # keys as in the checkpoint file
        names = [k.strip() for k in keys.split(",") if k.strip()]
        missing = [k for k in names if k not in state]
        if missing:
            raise KeyError(f"not in the model: {missing}")
        weights = {k: state[k].detach().to("cpu").contiguous().clone() for k in names}
        path = os.path.join(folder_paths.get_output_directory(), filename)
        safetensors.torch.save_file(weights, path)
        return {"ui": {"weights": [{"filename": filename, "dtype": str(next(iter(weights.values())).dtype)}]}}


NODE_CLASS_MAPPINGS = {"HostTest_SaveModelWeights": SaveModelWeights}


class BadTensor:
    """An IMAGE, MASK or MOTIONNFT_FLOW that no well-behaved node makes: what the pack's nodes must
    refuse with a clear error (``kind``: empty, nan, inf, one_channel, four_channel, zero_size)."""

    KINDS = ("empty", "nan", "inf", "one_channel", "four_channel", "zero_size", "good")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"kind": (list(cls.KINDS),)}}

    RETURN_TYPES = ("IMAGE", "MASK", "MOTIONNFT_FLOW")
    FUNCTION = "make"
    CATEGORY = "testing"

    def make(self, kind):
        import torch

        height, width = 48, 64
        image, mask, flow = torch.rand(1, height, width, 3), torch.ones(1, height, width), torch.zeros(1, 2, height, width)
        if kind == "empty":
            image, mask, flow = image[:0], mask[:0], flow[:0]
        elif kind in ("nan", "inf"):
            value = float(kind)
            image[0, 5, 5, 1], mask[0, 5, 5], flow[0, 1, 5, 5] = value, value, value
        elif kind == "one_channel":
            image, flow = image[..., :1], flow[:, :1]
        elif kind == "four_channel":
            image, flow = torch.cat([image, image[..., :1]], dim=-1), torch.cat([flow, flow], dim=1)
        elif kind == "zero_size":
            image, mask, flow = image[:, :0, :0], mask[:, :0, :0], flow[:, :, :0, :0]
        return image, mask, flow


NODE_CLASS_MAPPINGS["HostTest_BadTensor"] = BadTensor


class FluxConditioning:
    """An empty FLUX conditioning (zero T5 tokens and pooled CLIP vector): a sampler needs one, and
    the host tests load no text encoder."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"tokens": ("INT", {"default": 4, "min": 1, "max": 256})}}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "make"
    CATEGORY = "testing"

    def make(self, tokens):
        import torch

        return ([[torch.zeros(1, tokens, 4096), {"pooled_output": torch.zeros(1, 768), "guidance": 2.5}]],)


NODE_CLASS_MAPPINGS["HostTest_FluxConditioning"] = FluxConditioning
