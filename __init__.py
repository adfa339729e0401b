"""MotionNFT for ComfyUI: motion-centric image editing nodes.

Cloned into ``ComfyUI/custom_nodes/``, this folder is the pack: ComfyUI imports this file,
calls ``comfy_entrypoint`` for the nodes and serves ``js/`` to the front end.
"""

import importlib.util

WEB_DIRECTORY = "./js"

# Tools outside ComfyUI (pytest collecting the repository, linters) import this file too;
# the nodes need ComfyUI's API, so they are only loaded where it exists.
if importlib.util.find_spec("comfy_api") is not None:
    from .nodes import comfy_entrypoint

    __all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
