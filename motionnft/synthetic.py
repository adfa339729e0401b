"""Procedurally drawn motion scenes with exact ground-truth flow.

A textured figure (head, body, one arm) stands on a textured background. A
:class:`FigurePose` places the body and sets the arm angle; :func:`render_scene` draws
the pose and :func:`scene_flow` gives the exact flow between two poses. Every texture is
attached to its part, so the parts' pixels really move and flow estimators can track
them. These scenes are the project's built-in sample (``motionnft demo``) and its test
data: no files or weights needed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from .flow.warp import pixel_grid


@dataclass(frozen=True)
class FigurePose:
    """Where the figure is and what its arm does.

    Attributes:
        x, y: body centre as fractions of the image width and height.
        arm_angle: degrees from hanging straight down, counter-clockwise as seen
            (90 = pointing right, 180 = straight up).
    """

    x: float = 0.42
    y: float = 0.62
    arm_angle: float = 20.0

    def moved(self, dx: float = 0.0, dy: float = 0.0, arm: float = 0.0) -> "FigurePose":
        """This pose shifted by ``(dx, dy)`` (fractions of the size) and the arm turned by ``arm``°."""
        return replace(self, x=self.x + dx, y=self.y + dy, arm_angle=self.arm_angle + arm)


@dataclass(frozen=True)
class _Geometry:
    centre: torch.Tensor  # (2,) pixels
    body_radii: tuple[float, float]
    head_centre: torch.Tensor
    head_radius: float
    shoulder: torch.Tensor
    arm_axis: torch.Tensor  # unit vector along the arm
    arm_normal: torch.Tensor
    arm_length: float
    arm_half_width: float


def _geometry(pose: FigurePose, height: int, width: int) -> _Geometry:
    unit = min(height, width)
    centre = torch.tensor([pose.x * width, pose.y * height], dtype=torch.float64)
    rx, ry = 0.13 * unit, 0.22 * unit
    head_radius = 0.095 * unit
    head_centre = centre + torch.tensor([0.0, -(ry + head_radius * 0.9)], dtype=torch.float64)
    shoulder = centre + torch.tensor([0.55 * rx, -0.62 * ry], dtype=torch.float64)
    theta = math.radians(pose.arm_angle)
    axis = torch.tensor([math.sin(theta), math.cos(theta)], dtype=torch.float64)
    normal = torch.tensor([-axis[1], axis[0]], dtype=torch.float64)
    return _Geometry(centre, (rx, ry), head_centre, head_radius, shoulder, axis, normal, 0.34 * unit, 0.045 * unit)


def _part_coordinates(geometry: _Geometry, points: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """For each part: (inside mask (H, W), part-frame coordinates (2, H, W))."""
    rel_body = points - geometry.centre.view(2, 1, 1)
    rx, ry = geometry.body_radii
    body = (rel_body[0] / rx) ** 2 + (rel_body[1] / ry) ** 2 <= 1
    rel_head = points - geometry.head_centre.view(2, 1, 1)
    head = rel_head.pow(2).sum(0) <= geometry.head_radius**2
    rel_arm = points - geometry.shoulder.view(2, 1, 1)
    along = (rel_arm * geometry.arm_axis.view(2, 1, 1)).sum(0)
    across = (rel_arm * geometry.arm_normal.view(2, 1, 1)).sum(0)
    arm = (along >= -geometry.arm_half_width) & (along <= geometry.arm_length) & (across.abs() <= geometry.arm_half_width)
    # Body and head move together: one rigid frame centred on the body.
    return {
        "arm": (arm, torch.stack((along, across))),
        "torso": (body | head, rel_body),
    }


def _sinusoid_texture(coords: torch.Tensor, seed: int, unit: float) -> torch.Tensor:
    """A smooth colour texture as a function of part-frame coordinates ``(2, H, W)`` -> ``(3, H, W)``."""
    generator = torch.Generator().manual_seed(seed)
    base = 0.25 + 0.5 * torch.rand(3, generator=generator, dtype=torch.float64)
    out = base.view(3, 1, 1).expand(3, *coords.shape[1:]).clone()
    for _ in range(6):
        wavelength = unit * (0.04 + 0.10 * torch.rand(1, generator=generator, dtype=torch.float64))
        direction = torch.rand(1, generator=generator, dtype=torch.float64) * 2 * math.pi
        phase = torch.rand(1, generator=generator, dtype=torch.float64) * 2 * math.pi
        amplitude = 0.05 + 0.07 * torch.rand(3, generator=generator, dtype=torch.float64)
        k = 2 * math.pi / wavelength
        wave = torch.sin(k * (coords[0] * torch.cos(direction) + coords[1] * torch.sin(direction)) + phase)
        out = out + amplitude.view(3, 1, 1) * wave
    return out.clamp(0, 1)


def background(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """Smooth multi-scale colour noise with a floor gradient, ``(3, H, W)`` float32 in [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    out = torch.zeros(1, 3, height, width, dtype=torch.float64)
    for octave, weight in ((4, 0.45), (9, 0.30), (23, 0.18), (61, 0.10)):
        grid = torch.rand(1, 3, octave, max(2, round(octave * width / height)), generator=generator, dtype=torch.float64)
        out += weight * F.interpolate(grid, size=(height, width), mode="bicubic", align_corners=False)
    out = out[0] / 1.03
    floor = torch.linspace(0, 1, height, dtype=torch.float64).view(1, height, 1).clamp_min(0.7) - 0.7
    out = out * (1 - floor) + 0.3 * floor
    return out.clamp(0, 1).float()


def plain_background(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """One random colour with a gentle vertical ramp, ``(3, H, W)`` float32 in [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    colour = 0.15 + 0.7 * torch.rand(3, 1, 1, generator=generator, dtype=torch.float64)
    ramp = torch.linspace(-0.08, 0.08, height, dtype=torch.float64).view(1, height, 1)
    return (colour + ramp).expand(3, height, width).clamp(0, 1).float()


SCENE_STYLES = {
    # name: (background, texture wavelength scale)
    "textured": (background, 1.0),
    # For the tiny model: a plain background and 2.5x coarser part textures leave little
    # besides the figure to learn, so a 2 M-parameter transformer can learn it on a CPU.
    "plain": (plain_background, 2.5),
}


def render_scene(pose: FigurePose, size: tuple[int, int] = (256, 256), seed: int = 0,
                 style: str = "textured") -> torch.Tensor:
    """Draw the figure in ``pose`` over the background; ``(3, H, W)`` float32 in [0, 1].

    ``seed`` chooses the background and the parts' textures (same seed = same scene);
    ``style`` one of :data:`SCENE_STYLES`.
    """
    if style not in SCENE_STYLES:
        raise ValueError(f"scene style {style!r}: expected one of {', '.join(SCENE_STYLES)}")
    draw_background, texture_scale = SCENE_STYLES[style]
    height, width = size
    unit = min(height, width) * texture_scale
    points = pixel_grid(height, width, dtype=torch.float64)[0]
    image = draw_background(height, width, seed).double()
    parts = _part_coordinates(_geometry(pose, height, width), points)
    for index, name in enumerate(("torso", "arm")):  # the arm is drawn over the torso
        inside, coords = parts[name]
        texture = _sinusoid_texture(coords, seed * 7919 + index + 1, unit)
        image = torch.where(inside.unsqueeze(0), texture, image)
    return image.float()


def scene_flow(pose_a: FigurePose, pose_b: FigurePose, size: tuple[int, int] = (256, 256)) -> torch.Tensor:
    """Exact flow from the scene in ``pose_a`` to the scene in ``pose_b``: ``(2, H, W)`` pixels.

    Background pixels have zero flow; each visible part pixel of frame A moves rigidly
    with its part.
    """
    height, width = size
    points = pixel_grid(height, width, dtype=torch.float64)[0]
    geo_a, geo_b = _geometry(pose_a, height, width), _geometry(pose_b, height, width)
    parts = _part_coordinates(geo_a, points)
    flow = torch.zeros(2, height, width, dtype=torch.float64)
    inside, coords = parts["torso"]
    moved = geo_b.centre.view(2, 1, 1) + coords
    flow = torch.where(inside.unsqueeze(0), moved - points, flow)
    inside, coords = parts["arm"]
    moved = (
        geo_b.shoulder.view(2, 1, 1)
        + coords[0:1] * geo_b.arm_axis.view(2, 1, 1)
        + coords[1:2] * geo_b.arm_normal.view(2, 1, 1)
    )
    flow = torch.where(inside.unsqueeze(0), moved - points, flow)
    return flow.float()


@dataclass
class DemoSample:
    """The built-in sample: an input, its ground-truth target, and candidate edits."""

    input: torch.Tensor
    """``(1, 3, H, W)``: the figure with its arm down."""
    target: torch.Tensor
    """``(1, 3, H, W)``: "raise the arm and step right" as it should look."""
    edits: dict[str, torch.Tensor]
    """Named ``(1, 3, H, W)`` edits of differing faithfulness."""
    instruction: str = "Make the figure raise its arm and take a step to the right."


def demo_sample(size: int = 256, seed: int = 0) -> DemoSample:
    """The bundled sample the demo scores: a pose edit and four candidate edits.

    Edits: ``faithful`` (close to the target), ``half_way`` (the right motion, half as
    far), ``opposite`` (steps left, arm swings back), ``unchanged`` (the input itself).
    """
    start = FigurePose()
    goal = start.moved(dx=0.05, arm=55)

    def draw(pose: FigurePose) -> torch.Tensor:
        return render_scene(pose, (size, size), seed).unsqueeze(0)

    edits = {
        "faithful": draw(goal.moved(dx=0.004, arm=-5)),
        "half_way": draw(start.moved(dx=0.025, arm=27)),
        "opposite": draw(start.moved(dx=-0.05, arm=-35)),
        "unchanged": draw(start),
    }
    return DemoSample(input=draw(start), target=draw(goal), edits=edits)


CLIP_KINDS = ("subject", "pan", "cut", "still")


@dataclass(frozen=True)
class MotionClip:
    """A short synthetic video with known motion, for testing and benchmarking the miner.

    The figure of :func:`render_scene` acts over its textured background:

    - ``subject``: the figure walks right and raises its arm; the camera is still (a clip
      whose windows a miner should keep).
    - ``pan``: the same action filmed by a camera panning right (the background moves).
    - ``cut``: the same action, but the shot changes to another scene at mid-clip.
    - ``still``: nothing moves.

    Attributes:
        walk: how far the figure walks over the clip, as a fraction of the width.
        arm: how far its arm turns over the clip, in degrees.
        pan: how far the camera pans per second, as a fraction of the width.
    """

    kind: str = "subject"
    size: tuple[int, int] = (144, 192)
    fps: float = 10.0
    seconds: float = 6.0
    seed: int = 0
    walk: float = 0.3
    arm: float = 150.0
    pan: float = 0.06

    def __post_init__(self):
        if self.kind not in CLIP_KINDS:
            raise ValueError(f"clip kind {self.kind!r}: expected one of {', '.join(CLIP_KINDS)}")

    @property
    def frame_count(self) -> int:
        return int(round(self.seconds * self.fps))

    def pose(self, time: float) -> FigurePose:
        """The figure's pose at ``time`` seconds, in frame coordinates."""
        if self.kind == "still":
            return FigurePose(x=0.35)
        progress = min(max(time / self.seconds, 0.0), 1.0)
        return FigurePose(x=0.2).moved(dx=self.walk * progress, arm=self.arm * progress)

    def camera_offset(self, time: float) -> int:
        """How far the camera has panned at ``time``, in whole pixels."""
        return int(round(self.pan * self.size[1] * time)) if self.kind == "pan" else 0

    def frame(self, index: int) -> torch.Tensor:
        """Frame ``index`` as ``(3, H, W)`` float32 in [0, 1]."""
        height, width = self.size
        time = index / self.fps
        pose = self.pose(time)
        if self.kind == "pan":
            # Film a wider world: the figure acts at fixed world positions while the
            # camera's window slides over it.
            extra = self.camera_offset(self.seconds) + 1
            world_width = width + extra
            world_pose = replace(pose, x=pose.x * width / world_width)
            world = render_scene(world_pose, (height, world_width), self.seed)
            offset = self.camera_offset(time)
            return world[:, :, offset : offset + width].contiguous()
        seed = self.seed
        if self.kind == "cut" and time >= self.seconds / 2:
            seed = self.seed + 101
        return render_scene(pose, self.size, seed)

    def frames(self):
        """Every frame in order, one at a time."""
        for index in range(self.frame_count):
            yield self.frame(index)

    def flow(self, time_a: float, time_b: float) -> torch.Tensor:
        """Exact flow from the frame at ``time_a`` to the one at ``time_b``: ``(2, H, W)`` pixels.

        Only for clips whose camera is still (``subject``, ``still``).
        """
        if self.kind not in ("subject", "still"):
            raise ValueError(f"exact flow is only available for still-camera clips, not {self.kind!r}")
        return scene_flow(self.pose(time_a), self.pose(time_b), self.size)

MOTION_INSTRUCTIONS = {
    "raise": ("Make the figure raise its arm.", dict(arm=70.0)),
    "lower": ("Make the figure lower its arm.", dict(arm=-70.0)),
    "right": ("Make the figure take a step to the right.", dict(dx=0.14)),
    "left": ("Make the figure take a step to the left.", dict(dx=-0.14)),
    "step_right": ("step right", dict(dx=0.25)),
    "step_left": ("step left", dict(dx=-0.25)),
    "jump": ("jump", dict(dy=-0.125)),
}
"""Every synthetic motion: instruction text and the pose change it asks for."""


@dataclass(frozen=True)
class SyntheticTask:
    """A family of synthetic motion edits: which motions, drawn in which scene style."""

    motions: tuple[str, ...]
    style: str
    category: str


TASKS = {
    # The built-in task (the tiny preset, ``motionnft data synthetic``): large, legible
    # moves (a quarter of the width, an eighth of the height) with short instructions, in
    # plain scenes, so a tiny model can learn it on a CPU and the reward separates a
    # performed move from a copy at 64 px.
    "steps": SyntheticTask(("step_right", "step_left", "jump"), "plain", "locomotion/distance"),
    # Arm and step edits over textured scenes: the earlier, harder task.
    "poses": SyntheticTask(("raise", "lower", "right", "left"), "textured", "pose/posture"),
}


def scene_number(seed: int, index: int) -> int:
    """The scene (background and textures) of sample ``index`` of draw ``seed``.

    A hash of both, so different seeds draw different scenes (a collision has odds of
    about one in two billion per pair of samples).
    """
    import hashlib

    digest = hashlib.blake2b(f"motionnft-scene:{seed}:{index}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little") & 0x7FFFFFFF


def motion_edit_dataset(count: int = 64, size: int = 64, seed: int = 0, scenes: int | None = None,
                        motions: tuple[str, ...] | None = None, partial_share: float = 0.0,
                        partial_scale: float = 0.0, first_scene: int = 0, task: str = "steps"):
    """A synthetic motion-editing dataset: figures moved as an instruction says.

    Each sample draws a figure at a random place and arm angle, picks an instruction of
    ``task`` (:data:`TASKS`; or of the subset ``motions`` of :data:`MOTION_INSTRUCTIONS`)
    that the pose allows (the arm is raised only when low, lowered only when high, steps
    stay in the frame) and renders the target with exactly that motion. Scenes: with
    ``scenes=None`` every sample has its own (:func:`scene_number` of ``seed`` and its
    index, so draws of different seeds share none); with ``scenes=N`` one of the scene
    numbers ``first_scene … first_scene + N − 1``. Deterministic in ``seed``.

    ``partial_share`` of the samples (drawn at random) get a target that carries only
    ``partial_scale`` of the instructed motion (0: the target is the input) — a dataset
    whose pairs under-move, as mined or generated pairs sometimes do. Their ``extra``
    says ``motion_scale``; the instruction and ``goal`` stay the instructed ones.

    Returns:
        an :class:`~motionnft.data.EditDataset` (layout ``"synthetic"``) whose samples
        hold PNG bytes, so they behave as a dataset read from disk; ``extra`` carries
        the instruction key, the scene, the two poses and the share of the motion shown.
    """
    import io

    from .data import EditDataset, EditSample
    from .image import tensor_to_pil

    if count < 1 or size < 32:
        raise ValueError(f"motion_edit_dataset: need count >= 1 and size >= 32, got {count}, {size}")
    if task not in TASKS:
        raise ValueError(f"motion_edit_dataset: task {task!r}: expected one of {', '.join(TASKS)}")
    style = TASKS[task].style
    kinds = TASKS[task].motions if motions is None else tuple(motions)
    unknown = [k for k in kinds if k not in MOTION_INSTRUCTIONS]
    if unknown or not kinds:
        raise ValueError(f"motion_edit_dataset: motions {list(kinds)}: expected a non-empty subset of "
                         f"{', '.join(MOTION_INSTRUCTIONS)}")
    if not 0.0 <= partial_share <= 1.0:
        raise ValueError(f"motion_edit_dataset: partial_share must be in [0, 1], got {partial_share}")
    if scenes is not None and scenes < 1:
        raise ValueError(f"motion_edit_dataset: scenes must be >= 1 or None, got {scenes}")
    generator = torch.Generator().manual_seed(seed)

    def uniform(low: float, high: float) -> float:
        return low + (high - low) * float(torch.rand(1, generator=generator))

    def png(image: torch.Tensor) -> bytes:
        buffer = io.BytesIO()
        tensor_to_pil(image).save(buffer, format="PNG")
        return buffer.getvalue()

    # One loop, in one fixed order of draws from one generator: what makes a seed's dataset
    # the same on every machine, so it stays whole rather than split into helpers.
    samples = []
    while len(samples) < count:
        if scenes is None:
            scene = scene_number(seed, len(samples))
        else:
            scene = first_scene + int(torch.randint(scenes, (1,), generator=generator))
        start = FigurePose(x=uniform(0.3, 0.7), y=uniform(0.58, 0.66), arm_angle=uniform(10.0, 140.0))
        allowed = [key for key in kinds
                   if 5.0 <= start.arm_angle + MOTION_INSTRUCTIONS[key][1].get("arm", 0.0) <= 160.0
                   and 0.2 <= start.x + MOTION_INSTRUCTIONS[key][1].get("dx", 0.0) <= 0.8]
        if not allowed:  # e.g. only "raise" and the arm is already high: pick another pose
            continue
        key = allowed[int(torch.randint(len(allowed), (1,), generator=generator))]
        instruction, change = MOTION_INSTRUCTIONS[key]
        goal = start.moved(**change)
        scale = 1.0
        if partial_share > 0 and float(torch.rand(1, generator=generator)) < partial_share:
            scale = partial_scale
        shown = start.moved(**{name: value * scale for name, value in change.items()})
        samples.append(EditSample(
            id=f"synthetic-{len(samples):05d}", prompt=instruction,
            input_source=png(render_scene(start, (size, size), scene, style)),
            target_source=png(render_scene(shown, (size, size), scene, style)),
            category="pose/posture" if "arm" in change else "locomotion/distance",
            extra={"motion": key, "scene": scene, "style": style, "start": vars(start), "goal": vars(goal),
                   "motion_scale": scale},
        ))
    from pathlib import Path

    return EditDataset(samples, Path(f"<synthetic motion dataset ({task}): {count} samples, {size}px, seed {seed}>"),
                       "synthetic")
