"""ComfyUI nodes of the MotionNFT pack (V3 schema). Thin: parse inputs, call motionnft, preview."""

from comfy_api.latest import ComfyExtension, io

from .flow_nodes import FlowToImage, OpticalFlow, WarpImageByFlow
from .mining_nodes import MinePairs
from .reward_nodes import MotionRewardNode

NODES: list[type[io.ComfyNode]] = [OpticalFlow, FlowToImage, WarpImageByFlow, MotionRewardNode, MinePairs]


class MotionNFTExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> MotionNFTExtension:
    return MotionNFTExtension()
