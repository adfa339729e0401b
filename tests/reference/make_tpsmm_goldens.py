"""Run the official Thin-Plate-Spline Motion Model code on seeded random weights and store its
outputs as the goldens that ``tests/test_animation_tpsmm.py`` checks ``motionnft.animation`` against.

The official code is not part of this project and is never imported by it or by the tests.
To regenerate:

1. A Python with torch, numpy, PyYAML, tqdm, safetensors and scipy (``demo.relative_kp``
   uses ``scipy.spatial.ConvexHull``); ``--extra-path`` appends folders to ``sys.path`` (e.g.
   a ``pip install --target`` folder holding scipy).
2. A checkout of https://github.com/yoyo-nb/Thin-Plate-Spline-Motion-Model (MIT), anywhere
   outside this repository.
3. From the repository root::

       <python> tests/reference/make_tpsmm_goldens.py --tpsmm-repo ../refs/Thin-Plate-Spline-Motion-Model

Every network is built by the official constructors with the tiny configuration
(``motionnft.animation.TPSMMConfig.tiny()``: K = 3 transforms, small hourglass and generator,
64 x 64 frames) and, for one variant, single-mask at scale 0.5. Weights are not stored: like
``make_flow_goldens.py`` they are ``learned_flow_fixtures.seeded_state_dict(layout, seed)``, a
deterministic function of the official key layout and a seed, because the two ResNet-18
backbones alone are 90 MB and the goldens must stay small. The exception is the dense motion
network's anti-aliasing kernel (``down.weight``), a fixed Gaussian that is kept and stored.
Each ``tests/data/tpsmm_goldens/<name>.safetensors`` holds the inputs, the official outputs,
and in its metadata the seed, the official layout (every key and shape: the test requires
this project's modules to have exactly these) and the configuration.

torchvision: the official keypoint detector and background predictor call
``torchvision.models.resnet18(pretrained=False)``. torchvision often cannot be imported next to
a given torch (it cannot in this project's CI venv), so when the import fails a stand-in
module ``torchvision.models`` is put in ``sys.modules`` whose ``resnet18`` is
:class:`StandInResNet18` below: torchvision's ResNet-18 (same module names, so the same keys)
written out independently of ``motionnft.animation.resnet``. Where torchvision imports, the
real one is used; regenerating there checks the ResNet against torchvision itself. The other
modules ``demo.py`` imports at its top (matplotlib, imageio, scikit-image) are used only by its
command-line part, so empty stand-ins replace them when absent.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import types
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from learned_flow_fixtures import layout_of, reference_code, seeded_state_dict  # noqa: E402

from motionnft.animation.config import TPSMMConfig  # noqa: E402

GOLDEN_DIR = ROOT / "tests" / "data" / "tpsmm_goldens"
SIZE = 64
BATCH = 2
SEEDS = {"kp_detector": 101, "bg_predictor": 102, "dense_motion_network": 103, "inpainting_network": 104,
         "avd_network": 105, "tps": 106, "single_mask": 107, "pipeline": 108}
OFFICIAL_MODULES = ("modules", "demo")


class _StandInBlock(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = (nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
                           if stride != 1 or inplanes != planes else None)

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class StandInResNet18(nn.Module):
    """torchvision's ``resnet18()`` architecture and names (BasicBlock x [2, 2, 2, 2])."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(_StandInBlock(64, 64, 1), _StandInBlock(64, 64, 1))
        self.layer2 = nn.Sequential(_StandInBlock(64, 128, 2), _StandInBlock(128, 128, 1))
        self.layer3 = nn.Sequential(_StandInBlock(128, 256, 2), _StandInBlock(256, 256, 1))
        self.layer4 = nn.Sequential(_StandInBlock(256, 512, 2), _StandInBlock(512, 512, 1))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def install_stand_ins() -> list[str]:
    """Put stand-ins in ``sys.modules`` for what cannot be imported; returns their names."""
    installed = []
    try:
        import torchvision  # noqa: F401
    except Exception:  # torchvision built for another torch raises more than ImportError
        vision, models = types.ModuleType("torchvision"), types.ModuleType("torchvision.models")
        models.resnet18 = lambda pretrained=False, **_: StandInResNet18()
        vision.models = models
        sys.modules.update({"torchvision": vision, "torchvision.models": models})
        installed.append("torchvision")
    for name, attributes in (("matplotlib", {"use": lambda *a, **k: None}), ("imageio", {}),
                             ("skimage", {"img_as_ubyte": None}), ("skimage.transform", {"resize": None})):
        try:
            __import__(name)
        except ImportError:
            module = types.ModuleType(name)
            module.__dict__.update(attributes)
            sys.modules[name] = module
            installed.append(name)
    return installed


def official_kwargs(config: TPSMMConfig) -> dict[str, dict]:
    """The official YAML ``model_params`` sections for a configuration."""
    return {
        "common_params": dict(num_tps=config.num_tps, num_channels=config.num_channels, bg=config.bg,
                              multi_mask=config.multi_mask),
        "generator_params": dataclasses.asdict(config.generator),
        "dense_motion_params": {k: v for k, v in dataclasses.asdict(config.dense_motion).items() if k != "kp_variance"},
        "avd_network_params": dataclasses.asdict(config.avd),
    }


def seeded(module: nn.Module, seed: int) -> tuple[nn.Module, dict[str, list[int]]]:
    """Load seeded weights into an official module (keeping a Gaussian ``down.weight``); eval mode."""
    state = module.state_dict()
    layout = layout_of(state)
    weights = seeded_state_dict(layout, seed)
    if "down.weight" in state:
        weights["down.weight"] = state["down.weight"]
    module.load_state_dict(weights)
    return module.eval(), layout


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(count: int, seed: int, size: int = SIZE) -> torch.Tensor:
    """Smooth random images ``(count, 3, size, size)`` in [0, 1]."""
    coarse = torch.rand(count, 3, size // 8 + 1, size // 8 + 1, generator=generator(seed))
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=True)


def keypoints(count: int, seed: int, spread: float = 0.7) -> tuple[torch.Tensor, torch.Tensor]:
    """Source keypoints ``(count, K·5, 2)`` in (-spread, spread) and driving ones near them."""
    source = (torch.rand(count, TINY.num_keypoints, 2, generator=generator(seed)) * 2 - 1) * spread
    return source, source + 0.1 * torch.randn(source.shape, generator=generator(seed + 1))


def save(out: Path, name: str, tensors: dict[str, torch.Tensor], layouts: dict[str, dict], seeds: dict[str, int],
         config: TPSMMConfig) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tensors = {key: value.detach().float().contiguous() for key, value in tensors.items()}
    metadata = {"layouts": json.dumps(layouts), "seeds": json.dumps(seeds),
                "config": json.dumps(dataclasses.asdict(config)), "source": "yoyo-nb/Thin-Plate-Spline-Motion-Model"}
    save_file(tensors, str(out / f"{name}.safetensors"), metadata=metadata)
    print(f"{name}: {len(tensors)} tensors, " + ", ".join(f"{k} {len(v)} keys" for k, v in layouts.items()))


TINY = TPSMMConfig.tiny()
SINGLE_MASK = dataclasses.replace(TINY, multi_mask=False,
                                  dense_motion=dataclasses.replace(TINY.dense_motion, scale_factor=0.5))


def build(config: TPSMMConfig, seeds: dict[str, int]):
    """The official networks for ``config`` with seeded weights, and their layouts."""
    from modules.avd_network import AVDNetwork
    from modules.bg_motion_predictor import BGMotionPredictor
    from modules.dense_motion import DenseMotionNetwork
    from modules.inpainting_network import InpaintingNetwork
    from modules.keypoint_detector import KPDetector

    params = official_kwargs(config)
    common = params["common_params"]
    builders = {
        "kp_detector": lambda: KPDetector(**common),
        "bg_predictor": BGMotionPredictor,
        "dense_motion_network": lambda: DenseMotionNetwork(**common, **params["dense_motion_params"]),
        "inpainting_network": lambda: InpaintingNetwork(**params["generator_params"], **common),
        "avd_network": lambda: AVDNetwork(num_tps=config.num_tps, **params["avd_network_params"]),
    }
    networks, layouts = {}, {}
    for name, seed in seeds.items():
        torch.manual_seed(seed)  # constructors draw their own init before the seeded weights replace it
        networks[name], layouts[name] = seeded(builders[name](), seed)
    return networks, layouts


def dense_and_inpainting(out: Path, config: TPSMMConfig, seeds: dict[str, int], prefix: str,
                         batch: int, with_warped_maps: bool) -> None:
    networks, layouts = build(config, seeds)
    dense, inpaint = networks["dense_motion_network"], networks["inpainting_network"]
    data_seed = seeds["dense_motion_network"]
    source = images(batch, data_seed)
    kp_source, kp_driving = keypoints(batch, data_seed)
    bg_param = torch.eye(3).repeat(batch, 1, 1)
    bg_param[:, :2] += 0.05 * torch.randn(batch, 2, 3, generator=generator(data_seed + 2))
    tensors = {"source": source, "kp_source": kp_source, "kp_driving": kp_driving, "bg_param": bg_param,
               "buffer.down.weight": dense.state_dict()["down.weight"]}
    for tag, bg in (("bg", bg_param), ("nobg", None)):
        motion = dense(source_image=source, kp_driving={"fg_kp": kp_driving}, kp_source={"fg_kp": kp_source},
                       bg_param=bg)
        tensors[f"{tag}.deformation"] = motion["deformation"]
        tensors[f"{tag}.contribution_maps"] = motion["contribution_maps"]
        tensors[f"{tag}.deformed_source"] = motion["deformed_source"]
        for index, mask in enumerate(motion["occlusion_map"]):
            tensors[f"{tag}.occlusion_map.{index}"] = mask
    save(out, f"{prefix}dense_motion_network", tensors, {"dense_motion_network": layouts["dense_motion_network"]},
         {"dense_motion_network": seeds["dense_motion_network"]}, config)

    # The generator's inputs are the official dense motion just computed (with background).
    motion = dense(source_image=source, kp_driving={"fg_kp": kp_driving}, kp_source={"fg_kp": kp_source},
                   bg_param=bg_param)
    result = inpaint(source, motion)
    tensors = {"source": source, "deformation": motion["deformation"], "prediction": result["prediction"], "deformed": result["deformed"]}
    for index, mask in enumerate(motion["occlusion_map"]):
        tensors[f"occlusion_map.{index}"] = mask
    for index, features in enumerate(result["warped_encoder_maps"] if with_warped_maps else []):
        tensors[f"warped_encoder_maps.{index}"] = features
    save(out, f"{prefix}inpainting_network", tensors, {"inpainting_network": layouts["inpainting_network"]},
         {"inpainting_network": seeds["inpainting_network"]}, config)


def per_network(out: Path) -> None:
    from modules.util import TPS

    seeds = {name: SEEDS[name] for name in ("kp_detector", "bg_predictor", "avd_network")}
    networks, layouts = build(TINY, seeds)
    image = images(BATCH, SEEDS["kp_detector"])
    save(out, "kp_detector", {"image": image, "fg_kp": networks["kp_detector"](image)["fg_kp"]},
         {"kp_detector": layouts["kp_detector"]}, {"kp_detector": SEEDS["kp_detector"]}, TINY)
    source, driving = images(BATCH, SEEDS["bg_predictor"]), images(BATCH, SEEDS["bg_predictor"] + 1)
    save(out, "bg_predictor", {"source": source, "driving": driving,
                               "bg_param": networks["bg_predictor"](source, driving)},
         {"bg_predictor": layouts["bg_predictor"]}, {"bg_predictor": SEEDS["bg_predictor"]}, TINY)
    kp_source, kp_driving = keypoints(4, SEEDS["avd_network"])
    rec = networks["avd_network"]({"fg_kp": kp_source}, {"fg_kp": kp_driving})["fg_kp"]
    save(out, "avd_network", {"kp_source": kp_source, "kp_driving": kp_driving, "fg_kp": rec},
         {"avd_network": layouts["avd_network"]}, {"avd_network": SEEDS["avd_network"]}, TINY)

    kp_source, kp_driving = keypoints(BATCH, SEEDS["tps"], spread=1.0)
    groups = (BATCH, TINY.num_tps, 5, 2)
    transform = TPS(mode="kp", bs=BATCH, kp_1=kp_driving.view(groups), kp_2=kp_source.view(groups))
    grid = transform.transform_frame(torch.zeros(BATCH, 3, 16, 24))  # not square: catches x/y swaps
    save(out, "tps", {"kp_source": kp_source, "kp_driving": kp_driving, "grid": grid}, {}, {}, TINY)


def pipeline(out: Path) -> None:
    """``demo.make_animation`` (standard and relative modes) on a source and two driving frames."""
    import demo

    seeds = {name: SEEDS["pipeline"] + offset for offset, name in
             enumerate(("kp_detector", "dense_motion_network", "inpainting_network"))}
    networks, layouts = build(TINY, seeds)
    source = images(1, SEEDS["pipeline"])[0]
    driving = images(2, SEEDS["pipeline"] + 10)
    tensors = {"source": source[None], "driving": driving}
    for mode in ("standard", "relative"):
        frames = demo.make_animation(source.permute(1, 2, 0).numpy(), [f.permute(1, 2, 0).numpy() for f in driving],
                                     networks["inpainting_network"], networks["kp_detector"],
                                     networks["dense_motion_network"], None, device="cpu", mode=mode)
        tensors[f"{mode}.prediction"] = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2)
    save(out, "pipeline", tensors, layouts, seeds, TINY)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tpsmm-repo", type=Path, required=True, help="checkout of yoyo-nb/Thin-Plate-Spline-Motion-Model")
    parser.add_argument("--extra-path", type=Path, action="append", default=[],
                        help="folder appended to sys.path (e.g. one holding scipy)")
    parser.add_argument("--out", type=Path, default=GOLDEN_DIR)
    args = parser.parse_args(argv)
    sys.path += [str(path.resolve()) for path in args.extra_path]
    torch.set_num_threads(1)
    torch.set_grad_enabled(False)
    print("stand-ins:", install_stand_ins() or "none")
    with reference_code(args.tpsmm_repo.resolve(), fresh=OFFICIAL_MODULES):
        per_network(args.out)
        dense_and_inpainting(args.out, TINY, {"dense_motion_network": SEEDS["dense_motion_network"],
                                              "inpainting_network": SEEDS["inpainting_network"]}, "",
                             batch=1, with_warped_maps=True)
        dense_and_inpainting(args.out, SINGLE_MASK, {"dense_motion_network": SEEDS["single_mask"],
                                                     "inpainting_network": SEEDS["single_mask"] + 1}, "single_mask_",
                             batch=1, with_warped_maps=False)
        pipeline(args.out)
    total = sum(path.stat().st_size for path in args.out.glob("*.safetensors"))
    print(f"{args.out}: {total / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
