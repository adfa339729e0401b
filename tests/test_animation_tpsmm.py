"""The TPSMM networks against the official code's outputs, checkpoint loading, and animation.

The goldens in tests/data/tpsmm_goldens were made by tests/reference/make_tpsmm_goldens.py
from the official yoyo-nb/Thin-Plate-Spline-Motion-Model code on seeded random weights
(``seeded_state_dict(layout, seed)``); the official code is not needed here.
"""

from __future__ import annotations

import dataclasses
import gc
import itertools
import json
import weakref
from pathlib import Path

import pytest
import torch
from learned_flow_fixtures import seeded_state_dict
from safetensors import safe_open

from motionnft.animation import (
    TPSMM,
    AVDConfig,
    AVDNetwork,
    BackgroundPredictor,
    DenseMotion,
    DenseMotionConfig,
    DenseMotionNetwork,
    InpaintingConfig,
    InpaintingNetwork,
    KeypointDetector,
    TPSMMConfig,
    animate,
    convex_hull_area,
    deformation_to_flow,
    fit_tps,
    infer_config,
    load_official_checkpoint,
    read_official_state_dicts,
    relative_keypoints,
    save_converted,
    tps_grids,
)
from motionnft.animation.layers import coordinate_grid

GOLDENS = Path(__file__).resolve().parent / "data" / "tpsmm_goldens"
TOLERANCE = 1e-4

torch.set_num_threads(1)


def load_golden(name: str) -> tuple[dict[str, torch.Tensor], dict]:
    with safe_open(str(GOLDENS / f"{name}.safetensors"), "pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        metadata = handle.metadata()
    return tensors, {key: json.loads(value) for key, value in metadata.items() if key != "source"}


def config_from(metadata: dict) -> TPSMMConfig:
    raw = dict(metadata["config"])
    return TPSMMConfig(**{**raw, "generator": InpaintingConfig(**raw["generator"]),
                          "dense_motion": DenseMotionConfig(**raw["dense_motion"]), "avd": AVDConfig(**raw["avd"])})


def build(name: str, config: TPSMMConfig) -> torch.nn.Module:
    return {
        "kp_detector": lambda: KeypointDetector(config.num_tps, config.num_channels),
        "bg_predictor": lambda: BackgroundPredictor(config.num_channels),
        "avd_network": lambda: AVDNetwork(config.num_tps, config.avd.id_bottle_size, config.avd.pose_bottle_size),
        "dense_motion_network": lambda: DenseMotionNetwork(config.dense_motion, config.num_tps, config.num_channels,
                                                           config.multi_mask),
        "inpainting_network": lambda: InpaintingNetwork(config.generator, config.num_channels, config.multi_mask),
    }[name]()


def official_weights(module: torch.nn.Module, name: str, metadata: dict, tensors: dict) -> torch.nn.Module:
    """Load the golden's seeded weights strictly: the keys and shapes must be the official ones."""
    layout = metadata["layouts"][name]
    ours = {key: list(value.shape) for key, value in module.state_dict().items()}
    assert ours == layout, f"{name}: key layout differs from the official one: " \
        f"missing {sorted(set(layout) - set(ours))}, unexpected {sorted(set(ours) - set(layout))}"
    weights = seeded_state_dict(layout, metadata["seeds"][name])
    if "down.weight" in layout:
        # The anti-aliasing Gaussian is not random: ours must equal the official buffer.
        assert torch.allclose(module.state_dict()["down.weight"], tensors["buffer.down.weight"], atol=1e-7)
        weights["down.weight"] = tensors["buffer.down.weight"]
    result = module.load_state_dict(weights, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    return module.eval()


def network(name: str, golden: str | None = None) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    tensors, metadata = load_golden(golden or name)
    return official_weights(build(name, config_from(metadata)), name, metadata, tensors), tensors


def max_difference(ours: torch.Tensor, official: torch.Tensor) -> float:
    assert ours.shape == official.shape, (ours.shape, official.shape)
    return float((ours - official).abs().max())


def test_golden_folder_is_small():
    assert sum(path.stat().st_size for path in GOLDENS.glob("*")) < 2_000_000


def test_tps_grid_matches_official():
    tensors, metadata = load_golden("tps")
    config = config_from(metadata)
    groups = (tensors["kp_source"].shape[0], config.num_tps, 5, 2)
    grid = tps_grids(tensors["kp_driving"].view(groups), tensors["kp_source"].view(groups), 16, 24)
    assert max_difference(grid, tensors["grid"]) < TOLERANCE


@torch.no_grad()
def test_keypoint_detector_matches_official():
    detector, tensors = network("kp_detector")
    assert max_difference(detector(tensors["image"]), tensors["fg_kp"]) < TOLERANCE


@torch.no_grad()
def test_background_predictor_matches_official():
    predictor, tensors = network("bg_predictor")
    assert max_difference(predictor(tensors["source"], tensors["driving"]), tensors["bg_param"]) < TOLERANCE


@torch.no_grad()
def test_avd_network_matches_official():
    avd, tensors = network("avd_network")
    assert max_difference(avd(tensors["kp_source"], tensors["kp_driving"]), tensors["fg_kp"]) < TOLERANCE


@pytest.mark.parametrize("golden", ["dense_motion_network", "single_mask_dense_motion_network"])
@pytest.mark.parametrize("tag", ["bg", "nobg"])
@torch.no_grad()
def test_dense_motion_matches_official(golden, tag):
    dense, tensors = network("dense_motion_network", golden)
    motion = dense(tensors["source"], tensors["kp_driving"], tensors["kp_source"],
                   tensors["bg_param"] if tag == "bg" else None)
    assert max_difference(motion.deformation, tensors[f"{tag}.deformation"]) < TOLERANCE
    assert max_difference(motion.contribution_maps, tensors[f"{tag}.contribution_maps"]) < TOLERANCE
    assert max_difference(motion.deformed_source, tensors[f"{tag}.deformed_source"]) < TOLERANCE
    official_masks = [tensors[f"{tag}.occlusion_map.{i}"] for i in range(4) if f"{tag}.occlusion_map.{i}" in tensors]
    assert len(motion.occlusion_maps) == len(official_masks)
    for ours, official in zip(motion.occlusion_maps, official_masks):
        assert max_difference(ours, official) < TOLERANCE


@pytest.mark.parametrize("golden", ["inpainting_network", "single_mask_inpainting_network"])
@torch.no_grad()
def test_inpainting_matches_official(golden):
    inpainting, tensors = network("inpainting_network", golden)
    masks = [tensors[f"occlusion_map.{i}"] for i in range(4) if f"occlusion_map.{i}" in tensors]
    motion = DenseMotion(tensors["deformation"], torch.empty(0), masks, torch.empty(0))
    result = inpainting(tensors["source"], motion, warped_features=True)
    assert max_difference(result.prediction, tensors["prediction"]) < TOLERANCE
    assert max_difference(result.deformed_source, tensors["deformed"]) < TOLERANCE
    official_maps = [tensors[key] for key in sorted(k for k in tensors if k.startswith("warped_encoder_maps."))]
    for ours, official in zip(result.warped_features, official_maps):
        assert max_difference(ours, official) < TOLERANCE


def pipeline_model() -> tuple[TPSMM, dict[str, torch.Tensor]]:
    tensors, metadata = load_golden("pipeline")
    config = config_from(metadata)
    model = TPSMM(dataclasses.replace(config, bg=False))
    for name in ("kp_detector", "dense_motion_network", "inpainting_network"):
        module = getattr(model, name)
        weights = seeded_state_dict(metadata["layouts"][name], metadata["seeds"][name])
        if name == "dense_motion_network":
            weights["down.weight"] = module.state_dict()["down.weight"]
        module.load_state_dict(weights, strict=True)
    return model.eval(), tensors


@pytest.mark.parametrize("mode", ["standard", "relative"])
def test_animate_matches_official_demo(mode):
    model, tensors = pipeline_model()
    frames = list(animate(tensors["source"], iter(tensors["driving"]), model, mode=mode))
    assert max_difference(torch.cat(frames), tensors[f"{mode}.prediction"]) < TOLERANCE


def pass_through(model: TPSMM) -> TPSMM:
    """Every pixel visible and moved by the background transform alone: the generator returns
    the source warped by the background grid (the identity without a background predictor)."""
    with torch.no_grad():
        for conv in model.dense_motion_network.occlusion:
            conv.weight.zero_()
            conv.bias.fill_(30.0)
        maps = model.dense_motion_network.maps
        maps.weight.zero_()
        maps.bias.copy_(torch.tensor([30.0] + [0.0] * model.config.num_tps))
    return model


def test_relative_animation_of_a_still_source_returns_the_source():
    torch.manual_seed(0)
    model = pass_through(TPSMM(TPSMMConfig.tiny()).eval())
    source = torch.rand(1, 3, 64, 64)
    frames = list(animate(source, itertools.repeat(source[0], 3), model, mode="relative"))
    kp = model.kp_detector(source)
    assert torch.equal(relative_keypoints(kp, kp, kp), kp)  # no displacement, whatever the hull
    for frame in frames:
        assert frame.shape == source.shape and not frame.requires_grad
        assert float((frame - source).abs().max()) < 1e-4


def test_animate_streams_one_frame_at_a_time_and_keeps_none():
    torch.manual_seed(0)
    model = TPSMM(TPSMMConfig.tiny()).eval()
    source = torch.rand(1, 3, 64, 64)
    read = []

    def endless_video():
        for index in itertools.count():
            read.append(index)
            yield torch.rand(3, 64, 64)

    frames = animate(source, endless_video(), model)
    assert iter(frames) is frames and not read  # a generator: nothing runs before the first frame is asked for
    previous = None
    for count, frame in enumerate(itertools.islice(frames, 4), start=1):
        assert len(read) == count  # one driving frame read per frame made
        if previous is not None:
            gc.collect()
            assert previous() is None  # the generator holds no reference to frames it gave out
        previous = weakref.ref(frame)
        del frame
    assert torch.is_grad_enabled()  # the caller's grad mode is untouched between frames


def test_progress_reports_and_cancels():
    model = TPSMM(TPSMMConfig.tiny()).eval()
    source = torch.rand(1, 3, 64, 64)
    calls = []

    def progress(done, total):
        calls.append((done, total))
        if done == 2:
            raise InterruptedError("cancelled")

    frames = animate(source, [source[0]] * 5, model, progress=progress)
    with pytest.raises(InterruptedError):
        list(frames)
    assert calls == [(1, 5), (2, 5)]


def test_animate_checks_its_inputs():
    model = TPSMM(TPSMMConfig.tiny()).eval()
    with pytest.raises(ValueError, match="mode"):
        next(animate(torch.rand(1, 3, 64, 64), [], model, mode="sideways"))
    with pytest.raises(ValueError, match="multiples of"):
        next(animate(torch.rand(1, 3, 60, 64), [torch.rand(3, 60, 64)], model))
    with pytest.raises(ValueError, match="AVD"):
        next(animate(torch.rand(1, 3, 64, 64), [], model, mode="avd"))


def test_convex_hull_area_and_movement_scale():
    square = torch.tensor([[[0.0, 0.0], [2.0, 0.0], [2.0, 2.0], [0.0, 2.0], [1.0, 1.0], [1.0, 0.0]]])
    assert float(convex_hull_area(square)) == pytest.approx(4.0)
    assert float(convex_hull_area(torch.tensor([[[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]]]))) == 0.0
    # a driving hull twice the source's size halves the motion
    kp_source = square * 0.5
    moved = relative_keypoints(kp_source, square + 0.2, square)
    assert torch.allclose(moved - kp_source, torch.full_like(square, 0.1))


def test_tps_of_an_affine_motion_and_flow_units():
    kp = torch.rand(1, 2, 5, 2) * 2 - 1
    shift = torch.tensor([0.1, -0.2])
    grid = tps_grids(kp, kp + shift, 8, 10)
    # the ridge on the affine block shrinks even an exact affine motion a little (official maths)
    assert torch.allclose(grid, coordinate_grid(8, 10) + shift, atol=0.2)
    flow = deformation_to_flow(coordinate_grid(8, 10)[None] + shift)
    assert torch.allclose(flow[:, 0], torch.full((1, 8, 10), 0.1 * 4.5), atol=1e-5)
    assert torch.allclose(flow[:, 1], torch.full((1, 8, 10), -0.2 * 3.5), atol=1e-5)


def test_tps_gradcheck():
    driving = (torch.rand(1, 1, 5, 2, dtype=torch.float64) * 2 - 1).requires_grad_()
    source = (driving.detach() + 0.1 * torch.randn_like(driving)).requires_grad_()
    assert torch.autograd.gradcheck(lambda d, s: tps_grids(d, s, 3, 4), (driving, source))
    kernel, affine = fit_tps(driving.detach(), source.detach())
    assert kernel.dtype == torch.float64 and affine.shape == (1, 1, 3, 2)


def official_like_checkpoint(model: TPSMM, path: Path) -> None:
    """What the official Logger.save_cpk writes: state dicts, optimiser states, the epoch."""
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-4, betas=(0.5, 0.999))
    model.inpainting_network.final.bias.grad = torch.ones_like(model.inpainting_network.final.bias)
    optimizer.step()
    payload = {name: getattr(model, name).state_dict() for name in
               ("inpainting_network", "kp_detector", "bg_predictor", "dense_motion_network", "avd_network")}
    payload.update(optimizer=optimizer.state_dict(), optimizer_bg_predictor=optimizer.state_dict(), epoch=99)
    torch.save(payload, path)


def test_load_official_checkpoint_with_weights_only(tmp_path):
    torch.manual_seed(0)
    model = TPSMM(TPSMMConfig.tiny(), with_avd=True).eval()
    path = tmp_path / "vox.pth.tar"
    official_like_checkpoint(model, path)
    loaded = load_official_checkpoint(path, config=TPSMMConfig.tiny())
    assert loaded.avd_network is not None and not loaded.training
    inferred = load_official_checkpoint(path)  # architecture read from the shapes
    assert dataclasses.replace(inferred.config, frame_size=64) == TPSMMConfig.tiny()
    for other in (loaded, inferred):
        for key, value in model.state_dict().items():
            assert torch.equal(other.state_dict()[key], value), key

    converted = tmp_path / "vox.safetensors"
    save_converted(read_official_state_dicts(path), converted)
    again = load_official_checkpoint(converted, config=TPSMMConfig.tiny())
    source = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        kp = model.kp_detector(source)
        assert torch.equal(again(source, kp, kp * 0.9).prediction, model(source, kp, kp * 0.9).prediction)


def test_load_checks_keys_and_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.pth.tar"):
        load_official_checkpoint(tmp_path / "nowhere.pth.tar")
    model = TPSMM(TPSMMConfig.tiny())
    path = tmp_path / "mgif.pth.tar"
    torch.save({name: getattr(model, name).state_dict() for name in
                ("inpainting_network", "kp_detector", "dense_motion_network")}, path)
    with pytest.raises(ValueError, match="bg_predictor: absent"):
        load_official_checkpoint(path, config=TPSMMConfig.tiny())  # tiny has bg=True
    wrong = dataclasses.replace(TPSMMConfig.tiny(), bg=False, num_tps=4)
    with pytest.raises(ValueError, match="missing|size mismatch"):
        load_official_checkpoint(path, config=wrong)


@pytest.mark.parametrize("preset", ["vox", "taichi", "ted", "mgif"])
def test_presets_are_recovered_from_checkpoint_shapes(preset):
    config = getattr(TPSMMConfig, preset)()
    with torch.device("meta"):
        model = TPSMM(config, with_avd=True)
    networks = {name: getattr(model, name).state_dict() for name in
                ("kp_detector", "dense_motion_network", "inpainting_network", "bg_predictor", "avd_network")
                if getattr(model, name) is not None}
    assert infer_config(networks, config.frame_size) == config
    assert sum(p.numel() for p in model.kp_detector.parameters()) == 11_176_512 + 512 * 100 + 100  # torchvision ResNet-18 features + a 100-wide fc
