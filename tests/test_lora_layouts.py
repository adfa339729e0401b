"""The layout table: every layout's writer gives keys its reader reads back to the same maths."""

from __future__ import annotations

import pytest
import torch
from lora_fixtures import flux_diffusers_shapes, make_pairs, qwen_shapes

from motionnft.lora import LAYOUTS, LoraModule, LoraWeights, export_state_dict, layout_key, lora_from_state_dict


def lora(base: str) -> LoraWeights:
    shapes = flux_diffusers_shapes(8, double=(0, 18), single=(0, 37)) if base == "flux" else qwen_shapes(8, (0, 59))
    shapes["proj_out"] = (16, 8)  # a top-level module, whose flattened name has no block index
    pairs = make_pairs(shapes, 4)
    modules = {name: LoraModule(down, up, 8.0) for name, (down, up) in pairs.items()}
    modules["proj_out"].alpha = 2.0  # another alpha: folded into B where a layout keeps one alpha or none
    return LoraWeights(modules, base)


@pytest.mark.parametrize("base", ["flux", "qwen_image"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_each_layout_writes_what_it_reads(base, layout):
    original = lora(base)
    back = lora_from_state_dict(export_state_dict(original, layout), base=base)
    # Without the header key, this project's keys read as the layout they borrow.
    expected = {"flux": "diffusers", "qwen_image": "ai-toolkit"}[base] if layout == "motionnft" else layout
    assert back.layout == expected and back.ignored_keys == []
    assert set(back.modules) == set(original.modules)
    for name, module in original.modules.items():
        torch.testing.assert_close(back.modules[name].delta(torch.float64), module.delta(torch.float64),
                                   rtol=1e-6, atol=1e-9, msg=name)


def test_the_written_layout_is_the_motionnft_row():
    original = lora("qwen_image")
    default, named = export_state_dict(original), export_state_dict(original, "motionnft")
    assert default.keys() == named.keys() and all(torch.equal(default[k], named[k]) for k in default)
    assert layout_key("motionnft", "proj_out", "alpha", "flux") == "transformer.proj_out.alpha"
    assert layout_key("kohya", "transformer_blocks.0.attn.to_q", "down", "flux") == (
        "lora_unet_transformer_blocks_0_attn_to_q.lora_down.weight")
    assert layout_key("peft", "proj_out", "alpha", "flux") is None
    with pytest.raises(ValueError, match="layout"):
        layout_key("comfy", "proj_out", "down", "flux")
