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
