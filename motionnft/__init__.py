"""MotionNFT: motion-centric image editing — optical flow, the MotionNFT motion reward, MAS.

The library runs headless (no ComfyUI imports). Submodules:

- :mod:`motionnft.flow`   optical-flow estimators, colour coding, warping, occlusion, ``.flo`` I/O
- :mod:`motionnft.reward` the MotionNFT motion-alignment reward and the MAS metric
- :mod:`motionnft.image`  image files <-> ``(B, 3, H, W)`` float tensors in [0, 1]
- :mod:`motionnft.report` the reward-breakdown figure
- :mod:`motionnft.synthetic` procedurally drawn motion scenes with exact ground-truth flow
- :mod:`motionnft.models` FLUX.1 Kontext / Qwen-Image-Edit adapters on diffusers (``train`` extra)
- :mod:`motionnft.sampling`, :mod:`motionnft.nft`, :mod:`motionnft.training` the MotionNFT trainer
  (:mod:`motionnft.train` its entry point)
- :mod:`motionnft.lora` LoRA weights and the safetensors files ComfyUI and diffusers load
"""

__version__ = "0.1.0"
