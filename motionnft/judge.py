"""MLLM judge: a client for OpenAI-compatible chat-completions servers with image inputs.

MotionNFT uses a vision-language model as a judge in three places: half of the training
reward, the benchmark's Fidelity / Preservation / Coherence ratings, and the data filter
of the miner (plus drafting the editing instruction). Users serve such models with vLLM,
SGLang, llama.cpp's server or Ollama, all of which speak the OpenAI chat-completions
protocol; this module talks to any of them with the standard library only.

A **rating** is computed as MotionNFT computes its MLLM reward: the prompt asks for one
digit from 0 to 5; the server returns the log-probabilities of the most likely first
tokens (``logprobs=true, top_logprobs=N``); the probabilities of the tokens "0".."5" are
renormalised over those six (a softmax over their logits, as the reference does) and the
score is the expected digit divided by 5, a continuous value in [0, 1]::

    judge = JudgeClient("http://127.0.0.1:8000/v1", "Qwen/Qwen2.5-VL-7B-Instruct")
    reward = judge.rate_training_reward(input_image, edited_image, "make the dog jump")
    metrics = judge.rate_benchmark_metrics(input_image, edited_image, "make the dog jump")

Images are ``(1, 3, H, W)`` float tensors in [0, 1], sent as base64 data URLs. Requests
have a timeout, are retried with exponential backoff on connection failures and on HTTP
408/409/425/429/5xx, run at most ``max_concurrency`` at a time (``rate_many`` scores a
batch on a thread pool), and can be cached on disk. Failures raise a :class:`JudgeError`
subclass whose message names the server URL and says what went wrong.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import io
import ipaddress
import json
import math
import os
import random
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch

from .files import atomic_write
from .image import check_image_batch, tensor_to_pil

DIGITS = ("0", "1", "2", "3", "4", "5")
MAX_RATING = 5
API_KEY_ENV = "MOTIONNFT_JUDGE_API_KEY"
"""Environment variable the API key is read from when none is given (local servers need none)."""

TRAINING_REWARD = "training_reward"
BENCHMARK_METRICS = ("fidelity", "preservation", "coherence")
MINING_CRITERIA = ("stable_setting", "significant_motion", "intact_subjects")
DRAFT_INSTRUCTION = "draft_instruction"

RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


# Errors ----------------------------------------------------------------------------------
class JudgeError(RuntimeError):
    """Base class of every judge failure; the message names the server."""


class JudgeUnreachableError(JudgeError):
    """The server did not answer (refused, timed out, DNS failure) after every retry."""


class JudgeResponseError(JudgeError):
    """The server answered with an HTTP error, malformed JSON, or without log-probabilities."""


class JudgeAnswerError(JudgeError):
    """The model's answer is not a rating from 0 to 5 (or not a usable text)."""


# Prompts ---------------------------------------------------------------------------------
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


# Scores from log-probabilities -----------------------------------------------------------
@dataclass
class Rating:
    """One 0-5 rating by the judge."""

    score: float
    """Expected digit / 5, in [0, 1] (the MotionNFT MLLM reward's scale)."""
    probabilities: dict[str, float]
    """P(digit) for "0".."5", renormalised over those six."""
    digit_mass: float
    """Probability the model gave the six digits together before renormalising (how sure it
    was to answer with a rating at all)."""
    answer: str
    """The text the model generated (a few tokens)."""
    cached: bool = False

    @property
    def rating(self) -> float:
        """The expected digit, on the 0-5 scale."""
        return MAX_RATING * self.score

    def to_dict(self) -> dict:
        return {"score": self.score, "probabilities": self.probabilities,
                "digit_mass": self.digit_mass, "answer": self.answer}


def _token_text(token: str) -> str:
    # Servers return decoded text (" 4"), some return raw BPE pieces ("Ġ4", "▁4").
    return token.strip().lstrip("\u0120\u2581").strip()


def digit_probabilities(top_logprobs: Mapping[str, float]) -> tuple[dict[str, float], float]:
    """Probabilities of the digits 0-5 among one token position's top log-probabilities.

    Tokens that are the same digit up to whitespace (``"4"``, ``" 4"``) are merged.

    Args:
        top_logprobs: token text -> natural-log probability.

    Returns:
        ``(probabilities, mass)``: P(digit) renormalised over "0".."5" (all zero when no
        digit is listed) and the total unnormalised probability of those digits.
    """
    mass_by_digit = {digit: 0.0 for digit in DIGITS}
    for token, logprob in top_logprobs.items():
        text = _token_text(token)
        if text in mass_by_digit and logprob is not None and math.isfinite(float(logprob)):
            mass_by_digit[text] += math.exp(float(logprob))
    mass = sum(mass_by_digit.values())
    if mass <= 0.0:
        return {digit: 0.0 for digit in DIGITS}, 0.0
    return {digit: value / mass for digit, value in mass_by_digit.items()}, mass


def expected_score(probabilities: Mapping[str, float]) -> float:
    """``Σ d·P(d) / 5`` over the digits 0-5: the rating on [0, 1]."""
    return sum(int(digit) * p for digit, p in probabilities.items()) / MAX_RATING


def _first_token_logprobs(choice: dict) -> tuple[str, dict[str, float]] | None:
    """(token, {alternative: logprob}) at the first generated token that is not blank.

    Understands the chat format (``logprobs.content[i].top_logprobs``: a list of
    ``{token, logprob}``) and the legacy completions format (``logprobs.tokens`` and
    ``logprobs.top_logprobs``: a list of ``{token: logprob}``). None if no log-probabilities.
    """
    logprobs = choice.get("logprobs")
    if not isinstance(logprobs, dict):
        return None
    positions: list[tuple[str, dict[str, float]]] = []
    if isinstance(logprobs.get("content"), list):
        for entry in logprobs["content"]:
            if not isinstance(entry, dict):
                continue
            alternatives = {}
            for alt in entry.get("top_logprobs") or []:
                if isinstance(alt, dict) and "token" in alt and alt.get("logprob") is not None:
                    alternatives[alt["token"]] = max(alternatives.get(alt["token"], -math.inf), float(alt["logprob"]))
            positions.append((str(entry.get("token", "")), alternatives))
    elif isinstance(logprobs.get("top_logprobs"), list):
        tokens = logprobs.get("tokens") or []
        for index, alternatives in enumerate(logprobs["top_logprobs"]):
            token = str(tokens[index]) if index < len(tokens) else ""
            positions.append((token, {str(k): float(v) for k, v in (alternatives or {}).items() if v is not None}))
    if not positions:
        return None
    for token, alternatives in positions:
        # A chat template may make the model open with a space or a newline; the rating is
        # the first token that carries text, which is the first token in the usual case.
        blank = token != "" and _token_text(token) == ""
        if not blank:
            return token, alternatives
    return positions[0]


# Images ----------------------------------------------------------------------------------
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


# Cache -----------------------------------------------------------------------------------
class JudgeCache:
    """Answers on disk, one small JSON file per request, keyed by a hash of
    (model, rendered prompt, hashes of the images sent, generation settings).

    Files are written atomically, so concurrent writers and interrupted runs never leave
    a truncated entry; an unreadable entry counts as a miss and is overwritten.
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder).expanduser()

    @staticmethod
    def key(model: str, prompt: str, image_hashes: Sequence[str], settings: Mapping) -> str:
        blob = json.dumps({"model": model, "prompt": prompt, "images": list(image_hashes),
                           "settings": dict(settings)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict | None:
        try:
            return json.loads(self._path(key).read_text())
        except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError, IsADirectoryError):
            return None

    def put(self, key: str, value: dict) -> None:
        with atomic_write(self._path(key), "w") as handle:
            json.dump(value, handle)

    def __len__(self) -> int:
        return sum(1 for _ in self.folder.glob("*/*.json")) if self.folder.is_dir() else 0


# The client ------------------------------------------------------------------------------
def chat_completions_url(base_url: str) -> str:
    """The chat-completions endpoint for a server URL.

    ``http://host:8000`` and ``http://host:8000/v1`` both give
    ``http://host:8000/v1/chat/completions``; a URL already ending in
    ``/chat/completions`` is kept.
    """
    if not isinstance(base_url, str) or not base_url.strip():
        raise ValueError("judge server URL is empty: expected e.g. http://127.0.0.1:8000/v1")
    url = base_url.strip().rstrip("/")
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(f"judge server URL {base_url!r}: expected http://HOST:PORT[/v1] (e.g. http://127.0.0.1:8000/v1)")
    if url.endswith("/chat/completions"):
        return url
    if not parsed.path:
        url += "/v1"
    return url + "/chat/completions"


def _is_loopback(url: str) -> bool:
    host = urllib.parse.urlparse(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class RatingRequest:
    """One rating to ask for: a prompt name from :data:`PROMPTS`, its images, its fields."""

    prompt: str
    images: Sequence[torch.Tensor]
    fields: dict = field(default_factory=dict)


ProgressCallback = Callable[[int, int], None]


class JudgeClient:
    """A judge behind an OpenAI-compatible chat-completions server.

    Args:
        base_url: the server, e.g. ``http://127.0.0.1:8000/v1`` (vLLM, SGLang),
            ``http://127.0.0.1:8080/v1`` (llama.cpp), ``http://127.0.0.1:11434/v1`` (Ollama).
        model: the model name the server serves; ``""`` picks the server's only model.
        api_key: sent as a bearer token; default ``$MOTIONNFT_JUDGE_API_KEY`` (or none).
        timeout: seconds per HTTP request.
        max_retries: retries after the first attempt, on connection failures, timeouts and
            HTTP 408/409/425/429/5xx.
        backoff: seconds before the first retry; doubled each time (capped at
            ``max_backoff``), or the server's ``Retry-After`` if longer.
        max_concurrency: requests in flight at once (shared by every thread using this
            client; ``rate_many`` uses as many worker threads).
        cache_dir: folder of the on-disk answer cache; None disables it.
        top_logprobs: alternatives asked for at each token (most servers allow up to 20).
        min_digit_mass: a rating fails with :class:`JudgeAnswerError` when the digits
            0-5 together have less probability than this at the first token (the model
            did not answer with a rating).
        image_format: ``"png"`` (lossless, default) or ``"jpeg"`` (smaller requests).
        max_image_side: downscale images whose longer side exceeds this before sending.
        request_options: extra JSON fields merged into every request body (e.g.
            ``{"chat_template_kwargs": {"enable_thinking": False}}`` for vLLM).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        *,
        timeout: float = 120.0,
        max_retries: int = 3,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
        max_concurrency: int = 4,
        cache_dir: str | os.PathLike | None = None,
        top_logprobs: int = 20,
        min_digit_mass: float = 0.1,
        image_format: str = "png",
        max_image_side: int | None = None,
        request_options: Mapping | None = None,
    ):
        self.endpoint = chat_completions_url(base_url)
        self.base_url = self.endpoint[: -len("/chat/completions")]
        if model is None or not isinstance(model, str):
            raise ValueError(f"judge model must be a string (\"\" = the server's only model), got {model!r}")
        self.model = model.strip()
        self.api_key = api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None
        if timeout <= 0:
            raise ValueError(f"judge timeout must be positive, got {timeout}")
        if max_retries < 0:
            raise ValueError(f"judge max_retries must be >= 0, got {max_retries}")
        if max_concurrency < 1:
            raise ValueError(f"judge max_concurrency must be >= 1, got {max_concurrency}")
        if not 1 <= top_logprobs <= 20:
            raise ValueError(f"judge top_logprobs must be in 1..20, got {top_logprobs}")
        if not 0 <= min_digit_mass <= 1:
            raise ValueError(f"judge min_digit_mass must be in [0, 1], got {min_digit_mass}")
        if image_format not in ("png", "jpeg"):
            raise ValueError(f"judge image_format {image_format!r}: expected 'png' or 'jpeg'")
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.max_concurrency = int(max_concurrency)
        self.cache = JudgeCache(cache_dir) if cache_dir is not None else None
        self.top_logprobs = int(top_logprobs)
        self.min_digit_mass = float(min_digit_mass)
        self.image_format = image_format
        self.max_image_side = max_image_side
        self.request_options = dict(request_options or {})
        self._slots = threading.BoundedSemaphore(self.max_concurrency)
        self._model_lock = threading.Lock()
        # Proxies (http_proxy) are honoured for remote servers, never for loopback ones.
        handlers = [urllib.request.ProxyHandler({})] if _is_loopback(self.endpoint) else []
        self._opener = urllib.request.build_opener(*handlers)

    def __repr__(self) -> str:
        return f"JudgeClient({self.base_url!r}, model={self.model!r})"

    def describe(self) -> dict:
        """What identifies this judge's answers (for reports and resume checks)."""
        return {"url": self.base_url, "model": self.model, "top_logprobs": self.top_logprobs,
                "image_format": self.image_format, "max_image_side": self.max_image_side,
                "request_options": self.request_options, "prompts": prompts_fingerprint()}

    # HTTP --------------------------------------------------------------------------------
    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def _retry_delay(self, attempt: int, retry_after: str | None) -> float:
        delay = min(self.backoff * (2**attempt), self.max_backoff)
        delay *= 1.0 + 0.1 * random.random()  # de-synchronise threads retrying together
        if retry_after:
            try:
                delay = max(delay, min(float(retry_after), self.max_backoff))
            except ValueError:
                pass
        return delay

    def _request(self, url: str, payload: dict | None) -> dict:
        """GET (payload None) or POST JSON with retries; the decoded JSON answer."""
        data = None if payload is None else json.dumps(payload).encode()
        attempts = self.max_retries + 1
        for attempt in range(attempts):
            retry_after = None
            try:
                request = urllib.request.Request(url, data=data, headers=self._headers(),
                                                 method="GET" if data is None else "POST")
                with self._slots, self._opener.open(request, timeout=self.timeout) as response:
                    body = response.read()
            except urllib.error.HTTPError as error:
                detail = _error_detail(error)
                if error.code in RETRY_STATUSES and attempt + 1 < attempts:
                    retry_after = error.headers.get("Retry-After") if error.headers else None
                    time.sleep(self._retry_delay(attempt, retry_after))
                    continue
                raise JudgeResponseError(self._http_error_message(url, error.code, detail, attempt + 1)) from None
            except (OSError, http.client.HTTPException) as error:
                if attempt + 1 < attempts:
                    time.sleep(self._retry_delay(attempt, None))
                    continue
                raise JudgeUnreachableError(self._unreachable_message(url, error, attempts)) from None
            try:
                return json.loads(body)
            except (json.JSONDecodeError, UnicodeDecodeError):
                snippet = body[:200].decode(errors="replace")
                raise JudgeResponseError(
                    f"the judge server at {url} answered with something that is not JSON: {snippet!r} "
                    "(is this URL an OpenAI-compatible API, e.g. http://HOST:PORT/v1?)"
                ) from None
        raise AssertionError("unreachable")

    def _unreachable_message(self, url: str, error: BaseException, attempts: int) -> str:
        reason = getattr(error, "reason", error)
        if isinstance(reason, TimeoutError) or "timed out" in str(reason):
            what = f"no answer within {self.timeout:g} s"
        else:
            what = str(reason) or type(reason).__name__
        return (
            f"cannot reach the judge server at {url}: {what} ({attempts} attempt{'s' if attempts > 1 else ''}). "
            "Is the server running and is the URL right? (vLLM/SGLang: http://HOST:8000/v1, "
            "llama.cpp: http://HOST:8080/v1, Ollama: http://HOST:11434/v1)"
        )

    def _http_error_message(self, url: str, status: int, detail: str, attempts: int) -> str:
        hint = {
            401: "the server wants an API key: set MOTIONNFT_JUDGE_API_KEY (or pass api_key)",
            403: "the server refused the API key",
            404: "no such endpoint or model: check the URL (it should end in /v1) and the model name",
        }.get(status, "")
        if status == 400:
            hint = ("the server rejected the request: does the model accept images, and does the server "
                    "support logprobs/top_logprobs?")
        after = f" after {attempts} attempts" if attempts > 1 else ""
        return f"the judge server at {url} answered HTTP {status}{after}: {detail}" + (f" ({hint})" if hint else "")

    def list_models(self) -> list[str]:
        """Model names the server lists at ``/models``."""
        answer = self._request(self.base_url + "/models", None)
        data = answer.get("data") if isinstance(answer, dict) else None
        if not isinstance(data, list):
            raise JudgeResponseError(f"the judge server at {self.base_url}/models did not list models: {str(answer)[:200]}")
        return [str(item.get("id")) for item in data if isinstance(item, dict) and item.get("id")]

    def resolve_model(self) -> str:
        """The model name, asking the server when it was left empty."""
        with self._model_lock:
            if not self.model:
                models = self.list_models()
                if len(models) != 1:
                    listing = ", ".join(models) if models else "none"
                    raise ValueError(
                        f"judge model not given and the server at {self.base_url} serves "
                        f"{len(models)} models ({listing}): name one"
                    )
                self.model = models[0]
            return self.model

    # One request ---------------------------------------------------------------------------
    def _messages(self, prompt: JudgePrompt, images: Sequence[torch.Tensor], fields: Mapping) -> tuple[list, str, list[str]]:
        if len(images) != len(prompt.images):
            raise ValueError(
                f"judge prompt {prompt.name!r} takes {len(prompt.images)} images "
                f"({', '.join(prompt.images)}), got {len(images)}"
            )
        text = prompt.render(**fields)
        content, hashes = [], []
        mime = "image/png" if self.image_format == "png" else "image/jpeg"
        for label, image in zip(prompt.images, images):
            encoded = encode_image(image, f"{prompt.name}: {label} image", self.image_format, self.max_image_side)
            hashes.append(hashlib.sha256(encoded).hexdigest())
            url = f"data:{mime};base64,{base64.b64encode(encoded).decode('ascii')}"
            content.append({"type": "image_url", "image_url": {"url": url}})
        content.append({"type": "text", "text": text})
        return [{"role": "user", "content": content}], text, hashes

    def _settings(self, kind: str, max_tokens: int) -> dict:
        settings = {"kind": kind, "max_tokens": max_tokens, "temperature": 0.0, **self.request_options}
        if kind == "rating":
            settings.update(logprobs=True, top_logprobs=self.top_logprobs)
        return settings

    def _completion(self, prompt: JudgePrompt, images, fields, max_tokens: int) -> tuple[dict | None, str, dict]:
        """(cached value or None, cache key, request body)."""
        model = self.resolve_model()
        messages, text, hashes = self._messages(prompt, images, fields)
        settings = self._settings(prompt.kind, max_tokens)
        key = JudgeCache.key(model, text, hashes, settings)
        cached = self.cache.get(key) if self.cache is not None else None
        body = {"model": model, "messages": messages,
                **{k: v for k, v in settings.items() if k != "kind"}}
        return cached, key, body

    def _choice(self, answer: dict) -> dict:
        choices = answer.get("choices") if isinstance(answer, dict) else None
        if not choices or not isinstance(choices[0], dict):
            error = answer.get("error") if isinstance(answer, dict) else None
            raise JudgeResponseError(
                f"the judge server at {self.endpoint} returned no choices"
                + (f": {error}" if error else f": {str(answer)[:200]}")
            )
        return choices[0]

    @staticmethod
    def _answer_text(choice: dict) -> str:
        message = choice.get("message") or {}
        text = message.get("content") if isinstance(message, dict) else None
        if text is None:
            text = choice.get("text")
        return str(text or "")

    def rate(self, prompt: str | JudgePrompt, images: Sequence[torch.Tensor], **fields) -> Rating:
        """Ask one 0-5 rating question; the expected digit / 5 (see the module docstring).

        Raises:
            JudgeUnreachableError, JudgeResponseError (HTTP errors, no log-probabilities),
            JudgeAnswerError (the first token is not a digit 0-5).
        """
        prompt = PROMPTS[prompt] if isinstance(prompt, str) else prompt
        if prompt.kind != "rating":
            raise ValueError(f"judge prompt {prompt.name!r} asks for text, not a rating: use generate()")
        cached, key, body = self._completion(prompt, images, fields, max_tokens=3)
        if cached is not None and "probabilities" in cached:
            rating = Rating(cached["score"], cached["probabilities"], cached["digit_mass"], cached["answer"], cached=True)
        else:
            rating = self._rating_from_answer(prompt, self._request(self.endpoint, body))
        self._check_mass(prompt, rating)
        if self.cache is not None and not rating.cached:
            self.cache.put(key, rating.to_dict())
        return rating

    def _rating_from_answer(self, prompt: JudgePrompt, answer: dict) -> Rating:
        choice = self._choice(answer)
        text = self._answer_text(choice)
        first = _first_token_logprobs(choice)
        if first is None:
            raise JudgeResponseError(
                f"the judge server at {self.endpoint} returned no log-probabilities for model {self.model!r} "
                f"(it answered {text!r}): the rating needs a server that honours logprobs=true and "
                f"top_logprobs={self.top_logprobs} in chat completions (vLLM, SGLang, llama.cpp's server, "
                "recent Ollama)"
            )
        token, alternatives = first
        if not alternatives:
            raise JudgeResponseError(
                f"the judge server at {self.endpoint} returned the answer's log-probability but no top_logprobs "
                f"alternatives for model {self.model!r} (it answered {text!r}): the rating needs the probabilities "
                f"of every digit, so the server must honour top_logprobs={self.top_logprobs}"
            )
        probabilities, mass = digit_probabilities(alternatives)
        if mass <= 0.0:
            listed = ", ".join(repr(t) for t in list(alternatives)[:8]) or "none"
            raise JudgeAnswerError(
                f"the judge {self.model!r} at {self.endpoint} answered {text!r} to the {prompt.name!r} rating: "
                f"no digit 0-5 among its first token's top {len(alternatives)} candidates ({listed}); "
                "expected a single digit from 0 to 5"
            )
        return Rating(expected_score(probabilities), probabilities, mass, text)

    def _check_mass(self, prompt: JudgePrompt, rating: Rating) -> None:
        if rating.digit_mass < self.min_digit_mass:
            raise JudgeAnswerError(
                f"the judge {self.model!r} at {self.endpoint} answered {rating.answer!r} to the {prompt.name!r} "
                f"rating: the digits 0-5 have only {rating.digit_mass:.1%} probability at its first token "
                f"(min_digit_mass={self.min_digit_mass:g}); expected a single digit from 0 to 5"
            )

    def generate(self, prompt: str | JudgePrompt, images: Sequence[torch.Tensor], max_tokens: int = 120, **fields) -> str:
        """Ask a free-text question; the model's answer, stripped (greedy decoding)."""
        prompt = PROMPTS[prompt] if isinstance(prompt, str) else prompt
        cached, key, body = self._completion(prompt, images, fields, max_tokens=max_tokens)
        if cached is not None and "text" in cached:
            return cached["text"]
        text = self._answer_text(self._choice(self._request(self.endpoint, body))).strip()
        if not text:
            raise JudgeAnswerError(f"the judge {self.model!r} at {self.endpoint} gave an empty answer to {prompt.name!r}")
        if self.cache is not None:
            self.cache.put(key, {"text": text})
        return text

    # Many requests -------------------------------------------------------------------------
    def rate_many(self, requests: Sequence[RatingRequest], progress: ProgressCallback | None = None) -> list[Rating]:
        """Ratings for many requests on ``max_concurrency`` threads, in request order.

        ``progress(done, total)`` is called in the calling thread after each answer and may
        raise to cancel: requests not yet sent are dropped and the exception propagates.
        The first failing request's error is raised (the others are cancelled).
        """
        requests = list(requests)
        if not requests:
            return []
        results: list[Rating | None] = [None] * len(requests)
        pool = ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(requests)), thread_name_prefix="judge")
        try:
            futures: dict[Future, int] = {
                pool.submit(self.rate, r.prompt, r.images, **r.fields): index for index, r in enumerate(requests)
            }
            pending = set(futures)
            done_count = 0
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    results[futures[future]] = future.result()
                    done_count += 1
                    if progress is not None:
                        progress(done_count, len(requests))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return results  # type: ignore[return-value]

    # What the project asks of the judge -----------------------------------------------------
    def rate_training_reward(self, input_image: torch.Tensor, edited_image: torch.Tensor, instruction: str) -> float:
        """The MotionNFT MLLM reward in [0, 1] (expected digit over "0".."5" / 5)."""
        return self.rate(TRAINING_REWARD, [input_image, edited_image], instruction=_instruction(instruction)).score

    def rate_benchmark_metrics(self, input_image: torch.Tensor, edited_image: torch.Tensor, instruction: str,
                               progress: ProgressCallback | None = None) -> dict[str, float]:
        """MotionEdit-Bench style ratings of an edit, each in [0, 1] (× 5 for the 0-5 scale).

        Keys ``fidelity`` (the requested motion happened), ``preservation`` (everything else
        kept), ``coherence`` (plausible, artefact-free image); asked concurrently.
        """
        instruction = _instruction(instruction)
        ratings = self.rate_many(
            [RatingRequest(name, [input_image, edited_image], {"instruction": instruction}) for name in BENCHMARK_METRICS],
            progress,
        )
        return {name: rating.score for name, rating in zip(BENCHMARK_METRICS, ratings)}

    def rate_mining_criteria(self, input_image: torch.Tensor, target_image: torch.Tensor) -> dict[str, float]:
        """The paper's three data criteria for a frame pair, each in [0, 1]: ``stable_setting``,
        ``significant_motion``, ``intact_subjects`` (asked concurrently)."""
        ratings = self.rate_many([RatingRequest(name, [input_image, target_image]) for name in MINING_CRITERIA])
        return {name: rating.score for name, rating in zip(MINING_CRITERIA, ratings)}

    def draft_instruction(self, input_image: torch.Tensor, target_image: torch.Tensor) -> str:
        """An imperative editing instruction describing the motion from input to target."""
        return clean_instruction(self.generate(DRAFT_INSTRUCTION, [input_image, target_image]), self.endpoint)


def _instruction(instruction) -> str:
    if not isinstance(instruction, str) or not instruction.strip():
        raise ValueError("instruction: the judge needs the editing instruction (a non-empty string)")
    return instruction.strip()


_LEADING_LABEL = re.compile(r"^\s*(?:\*\*)?(?:edit(?:ing)?\s+)?instruction(?:\*\*)?\s*:\s*(?:\*\*)?\s*", re.IGNORECASE)


def clean_instruction(text: str, source: str = "the judge") -> str:
    """The instruction in a model's answer: first non-empty line, without a leading
    "Instruction:" label or surrounding quotes."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise JudgeAnswerError(f"{source} drafted an empty instruction")
    line = _LEADING_LABEL.sub("", lines[0]).strip()
    if not line and len(lines) > 1:
        line = lines[1]
    line = line.strip().strip("\"'`\u201c\u201d\u2018\u2019").strip()
    if not line:
        raise JudgeAnswerError(f"{source} drafted an empty instruction: {text!r}")
    return line


def _error_detail(error: urllib.error.HTTPError) -> str:
    try:
        raw = error.read()
    except OSError:
        raw = b""
    try:
        parsed = json.loads(raw)
        message = parsed.get("error", parsed) if isinstance(parsed, dict) else parsed
        if isinstance(message, dict):
            message = message.get("message", message)
        return str(message)[:300]
    except (json.JSONDecodeError, UnicodeDecodeError):
        return raw[:300].decode(errors="replace") or str(error.reason)


def prompts_fingerprint() -> str:
    """A short hash of every prompt's text: reports say which prompt version scored them."""
    blob = json.dumps({name: [p.kind, list(p.images), p.template] for name, p in sorted(PROMPTS.items())})
    return hashlib.sha256(blob.encode()).hexdigest()[:12]
