"""What the judge is asked: the prompt texts, and the chat messages and settings that carry them.

Every prompt names its images in the order they are sent (before the text); a rating
prompt asks for one digit from 0 to 5, whose log-probabilities :mod:`.scores` turns into
a score. Images are ``(1, 3, H, W)`` float tensors in [0, 1], sent as base64 data URLs.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

from ..image import check_image_batch, tensor_to_pil

TRAINING_REWARD = "training_reward"
BENCHMARK_METRICS = ("fidelity", "preservation", "coherence")
MINING_CRITERIA = ("stable_setting", "significant_motion", "intact_subjects")
DRAFT_INSTRUCTION = "draft_instruction"


@dataclass(frozen=True)
class JudgePrompt:
    """One question put to the judge.

    ``images`` says what each image is, in the order they are sent (before the text);
    ``template`` is formatted with the caller's fields (e.g. ``{instruction}``).
    ``kind`` is ``"rating"`` (answered with one digit 0-5) or ``"text"``.
    """

    name: str
    kind: str
    images: tuple[str, ...]
    template: str

    def render(self, **fields) -> str:
        try:
            return self.template.format(**fields)
        except KeyError as error:
            raise ValueError(f"judge prompt {self.name!r} needs the field {error.args[0]!r}") from None


_EDIT_PAIR = (
    "The first image is an original picture. The second image is an edited version of it, "
    "made to carry out this instruction:\n\"{instruction}\"\n\n"
)
_RATING_REPLY = "Reply with a single digit from 0 to 5 and nothing else."
_FRAME_PAIR = (
    "The two images are two frames of the same video clip, the first frame earlier and the "
    "second a few seconds later.\n\n"
)

PROMPTS: dict[str, JudgePrompt] = {
    TRAINING_REWARD: JudgePrompt(
        TRAINING_REWARD, "rating", ("original", "edited"),
        _EDIT_PAIR
        + "Rate the edited image from 0 to 5 for how accurately it carries out the instruction and "
        "how good the result looks.\n"
        "0: the instruction is not carried out at all, or a different subject was changed.\n"
        "5: the intended subject was changed exactly as instructed and the image is of high visual quality.\n"
        + _RATING_REPLY,
    ),
    "fidelity": JudgePrompt(
        "fidelity", "rating", ("original", "edited"),
        _EDIT_PAIR
        + "Rate INSTRUCTION FIDELITY from 0 to 5: do the subjects in the edited image now do what the "
        "instruction asks - the requested pose, action, movement or interaction, by the intended "
        "subject, in the intended direction and to the intended extent? Judge only this; ignore image "
        "quality and changes the instruction did not ask for.\n"
        "0: the requested motion does not happen at all (nothing changed, or something else happened).\n"
        "1: a faint or mostly wrong attempt.\n"
        "2: part of the motion happens, with major errors (wrong limb, wrong direction, wrong subject).\n"
        "3: the motion happens but is incomplete or clearly inaccurate.\n"
        "4: the motion is carried out with small inaccuracies.\n"
        "5: the motion is carried out completely and correctly.\n"
        + _RATING_REPLY,
    ),
    "preservation": JudgePrompt(
        "preservation", "rating", ("original", "edited"),
        _EDIT_PAIR
        + "Rate PRESERVATION from 0 to 5: apart from the change the instruction asks for, is the "
        "original kept - the identity, face, body shape, clothing and colours of every subject, the "
        "objects, the background, the camera viewpoint, the lighting and the image style? Judge only "
        "this; do not penalise the requested motion itself.\n"
        "0: a different scene or different subjects.\n"
        "1: the subjects are barely recognisable.\n"
        "2: major unrequested changes (identity, clothing or background clearly altered).\n"
        "3: noticeable unrequested changes to details.\n"
        "4: minor unrequested differences only.\n"
        "5: everything the instruction does not mention is unchanged.\n"
        + _RATING_REPLY,
    ),
    "coherence": JudgePrompt(
        "coherence", "rating", ("original", "edited"),
        _EDIT_PAIR
        + "Rate COHERENCE from 0 to 5: is the edited image physically plausible and visually "
        "coherent on its own - natural anatomy (the right number of limbs, fingers, joints bending "
        "the right way), believable contact with the ground, objects and other subjects, consistent "
        "lighting, shadows and perspective, and no artefacts such as blur, smears, duplicated parts "
        "or seams? Judge only this; ignore whether the instruction was followed.\n"
        "0: broken or unreadable image.\n"
        "1: severe anatomical or physical errors that dominate the image.\n"
        "2: clear errors or artefacts on the main subject.\n"
        "3: noticeable but limited errors or artefacts.\n"
        "4: small flaws visible on close inspection.\n"
        "5: fully natural and coherent, no visible flaw.\n"
        + _RATING_REPLY,
    ),
    "stable_setting": JudgePrompt(
        "stable_setting", "rating", ("earlier frame", "later frame"),
        _FRAME_PAIR
        + "Rate from 0 to 5 how STABLE THE SETTING is between the two frames: the same place and "
        "background, the same camera viewpoint, framing and zoom, the same lighting. The movement "
        "of the subjects themselves does not count against stability.\n"
        "0: a different scene or a cut to another shot.\n"
        "5: background, viewpoint and lighting are identical.\n"
        + _RATING_REPLY,
    ),
    "significant_motion": JudgePrompt(
        "significant_motion", "rating", ("earlier frame", "later frame"),
        _FRAME_PAIR
        + "Rate from 0 to 5 how SIGNIFICANT THE MOTION of the subjects is between the two frames: a "
        "clear change of pose, action, position, or interaction with objects or with each other. "
        "Camera movement alone does not count.\n"
        "0: the subjects look the same in both frames.\n"
        "5: a large, clear change that is easy to describe in one sentence.\n"
        + _RATING_REPLY,
    ),
    "intact_subjects": JudgePrompt(
        "intact_subjects", "rating", ("earlier frame", "later frame"),
        _FRAME_PAIR
        + "Rate from 0 to 5 whether the main subjects stay INTACT in both frames: fully visible, not "
        "hidden behind other things, not cut off by the image border, not shrunk to a small size, "
        "not distorted or deformed.\n"
        "0: a main subject is missing, mostly hidden or badly deformed in a frame.\n"
        "5: every main subject is whole, clearly visible and undistorted in both frames.\n"
        + _RATING_REPLY,
    ),
    DRAFT_INSTRUCTION: JudgePrompt(
        DRAFT_INSTRUCTION, "text", ("earlier frame", "later frame"),
        _FRAME_PAIR
        + "Write the image-editing instruction that would turn the first frame into the second: one "
        "imperative sentence saying what the subjects do differently (pose, action, movement, "
        "interaction), naming each subject by its appearance (for example 'the woman in the red "
        "coat'). Do not mention the camera, the background, the frames or the video. Reply with the "
        "instruction only.",
    ),
}


def prompts_fingerprint() -> str:
    """A short hash of every prompt's text: reports say which prompt version scored them."""
    blob = json.dumps({name: [p.kind, list(p.images), p.template] for name, p in sorted(PROMPTS.items())})
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def encode_image(image: torch.Tensor, name: str, image_format: str = "png", max_side: int | None = None,
                 jpeg_quality: int = 95) -> bytes:
    """``(1, 3, H, W)`` float in [0, 1] -> PNG/JPEG bytes (downscaled to ``max_side`` if larger)."""
    image = check_image_batch(name, image)
    if image.shape[0] != 1:
        raise ValueError(f"{name}: the judge rates one image at a time, got a batch of {image.shape[0]}")
    pil = tensor_to_pil(image[0])
    if max_side and max(pil.size) > max_side:
        scale = max_side / max(pil.size)
        pil = pil.resize((max(1, round(pil.width * scale)), max(1, round(pil.height * scale))), resample=3)
    buffer = io.BytesIO()
    if image_format == "png":
        # Level 1 is ~5x faster than the default 6 for ~20 % more bytes: the request is
        # cheap to send, the encoding runs for every rating.
        pil.save(buffer, format="PNG", compress_level=1)
    elif image_format == "jpeg":
        pil.save(buffer, format="JPEG", quality=jpeg_quality)
    else:
        raise ValueError(f"judge image_format {image_format!r}: expected 'png' or 'jpeg'")
    return buffer.getvalue()


def build_messages(prompt: JudgePrompt, images: Sequence[torch.Tensor], fields: Mapping, image_format: str,
                   max_image_side: int | None) -> tuple[list, str, list[str]]:
    """``(messages, rendered text, sha256 of each encoded image)`` for one question.

    The text and the image hashes are returned too because they, not the base64 body,
    key the answer cache.
    """
    if len(images) != len(prompt.images):
        raise ValueError(
            f"judge prompt {prompt.name!r} takes {len(prompt.images)} images "
            f"({', '.join(prompt.images)}), got {len(images)}"
        )
    text = prompt.render(**fields)
    content, hashes = [], []
    mime = "image/png" if image_format == "png" else "image/jpeg"
    for label, image in zip(prompt.images, images):
        encoded = encode_image(image, f"{prompt.name}: {label} image", image_format, max_image_side)
        hashes.append(hashlib.sha256(encoded).hexdigest())
        url = f"data:{mime};base64,{base64.b64encode(encoded).decode('ascii')}"
        content.append({"type": "image_url", "image_url": {"url": url}})
    content.append({"type": "text", "text": text})
    return [{"role": "user", "content": content}], text, hashes


def request_settings(kind: str, max_tokens: int, top_logprobs: int, request_options: Mapping) -> dict:
    """Generation settings of one request (``kind`` is dropped from the body but keys the cache)."""
    settings = {"kind": kind, "max_tokens": max_tokens, "temperature": 0.0, **request_options}
    if kind == "rating":
        settings.update(logprobs=True, top_logprobs=top_logprobs)
    return settings
