"""ComfyUI nodes of the MotionNFT pack (V3 schema). Thin: parse inputs, call motionnft, preview."""

from comfy_api.latest import ComfyExtension, io

from .animation_nodes import AnimateImage
from .drag_nodes import DragToFlow
from .flowdiffusion_nodes import FlowDiffusionEdit
from .flow_nodes import FlowToImage, FlowToOpticalFlow, OpticalFlow, OpticalFlowToFlow, WarpImageByFlow
from .guidance_nodes import FlowAlignment, FlowFromFile, MotionGuidance
from .judge_nodes import JudgeEditNode
from .lora_nodes import LoadMotionLoraKontext, LoadMotionLoraQwenImageEdit
from .mining_nodes import MinePairs
from .reward_nodes import MotionRewardNode

NODES: list[type[io.ComfyNode]] = [
    OpticalFlow,
    FlowToImage,
    WarpImageByFlow,
    FlowToOpticalFlow,
    OpticalFlowToFlow,
    MotionRewardNode,
    JudgeEditNode,
    LoadMotionLoraKontext,
    LoadMotionLoraQwenImageEdit,
    MinePairs,
    DragToFlow,
    FlowDiffusionEdit,
    FlowFromFile,
    MotionGuidance,
    FlowAlignment,
    AnimateImage,
]


class MotionNFTExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> MotionNFTExtension:
    return MotionNFTExtension()
