"""The judge client: what MotionNFT asks of the judge (ratings, benchmark metrics, mining
criteria, drafted instructions), on top of :mod:`.transport`, :mod:`.prompts`,
:mod:`.parsing` and :mod:`.cache`.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import torch

from .cache import JudgeCache
from .errors import JudgeAnswerError, JudgeError, JudgeResponseError
from .parsing import answer_text, check_digit_mass, clean_instruction, first_choice, rating_from_answer
from .prompts import (
    BENCHMARK_METRICS,
    DRAFT_INSTRUCTION,
    MINING_CRITERIA,
    PROMPTS,
    TRAINING_REWARD,
    JudgePrompt,
    build_messages,
    prompts_fingerprint,
    request_settings,
)
from .scores import Rating
from .transport import JudgeTransport, chat_completions_url

API_KEY_ENV = "MOTIONNFT_JUDGE_API_KEY"
"""Environment variable the API key is read from when none is given (local servers need none)."""


@dataclass
class RatingRequest:
    """One rating to ask for: a prompt name from :data:`PROMPTS`, its images, its fields."""

    prompt: str
    images: Sequence[torch.Tensor]
    fields: dict = field(default_factory=dict)


ProgressCallback = Callable[[int, int], None]


class JudgeClient(JudgeTransport):
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
        # The URL and the model are checked before the transport settings, so a call with
        # several bad arguments reports the same one first as it always has.
        endpoint = chat_completions_url(base_url)
        if model is None or not isinstance(model, str):
            raise ValueError(f"judge model must be a string (\"\" = the server's only model), got {model!r}")
        self.model = model.strip()
        super().__init__(endpoint, api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None,
                         timeout=timeout, max_retries=max_retries, backoff=backoff, max_backoff=max_backoff,
                         max_concurrency=max_concurrency)
        if not 1 <= top_logprobs <= 20:
            raise ValueError(f"judge top_logprobs must be in 1..20, got {top_logprobs}")
        if not 0 <= min_digit_mass <= 1:
            raise ValueError(f"judge min_digit_mass must be in [0, 1], got {min_digit_mass}")
        if image_format not in ("png", "jpeg"):
            raise ValueError(f"judge image_format {image_format!r}: expected 'png' or 'jpeg'")
        self.cache = JudgeCache(cache_dir) if cache_dir is not None else None
        self.top_logprobs = int(top_logprobs)
        self.min_digit_mass = float(min_digit_mass)
        self.image_format = image_format
        self.max_image_side = max_image_side
        self.request_options = dict(request_options or {})
        self._model_lock = threading.Lock()
        self._model_failure: tuple[JudgeError, float] | None = None

    def __repr__(self) -> str:
        return f"JudgeClient({self.base_url!r}, model={self.model!r})"

    def describe(self) -> dict:
        """What identifies this judge's answers (for reports and resume checks)."""
        return {"url": self.base_url, "model": self.model, "top_logprobs": self.top_logprobs,
                "image_format": self.image_format, "max_image_side": self.max_image_side,
                "request_options": self.request_options, "prompts": prompts_fingerprint()}

    def list_models(self) -> list[str]:
        """Model names the server lists at ``/models``."""
        answer = self._request(self.base_url + "/models", None)
        data = answer.get("data") if isinstance(answer, dict) else None
        if not isinstance(data, list):
            raise JudgeResponseError(f"the judge server at {self.base_url}/models did not list models: {str(answer)[:200]}")
        return [str(item.get("id")) for item in data if isinstance(item, dict) and item.get("id")]

    def resolve_model(self) -> str:
        """The model name, asking the server when it was left empty.

        Requests waiting for the answer share it, failure included: one unreachable server costs
        one timeout (and its retries), not one per request in flight."""
        asked = time.monotonic()
        with self._model_lock:
            if not self.model and self._model_failure is not None and self._model_failure[1] >= asked:
                raise self._model_failure[0]
            if not self.model:
                try:
                    models = self.list_models()
                except JudgeError as error:
                    self._model_failure = (error, time.monotonic())
                    raise
                if len(models) != 1:
                    listing = ", ".join(models) if models else "none"
                    raise ValueError(
                        f"judge model not given and the server at {self.base_url} serves "
                        f"{len(models)} models ({listing}): name one"
                    )
                self.model = models[0]
            return self.model

    # One request ---------------------------------------------------------------------------
    def _completion(self, prompt: JudgePrompt, images, fields, max_tokens: int) -> tuple[dict | None, str, dict]:
        """(cached value or None, cache key, request body)."""
        model = self.resolve_model()
        messages, text, hashes = build_messages(prompt, images, fields, self.image_format, self.max_image_side)
        settings = request_settings(prompt.kind, max_tokens, self.top_logprobs, self.request_options)
        key = JudgeCache.key(model, text, hashes, settings)
        cached = self.cache.get(key) if self.cache is not None else None
        body = {"model": model, "messages": messages,
                **{k: v for k, v in settings.items() if k != "kind"}}
        return cached, key, body

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
            answer = self._request(self.endpoint, body)
            rating = rating_from_answer(answer, prompt.name, self.endpoint, self.model, self.top_logprobs)
        check_digit_mass(rating, prompt.name, self.endpoint, self.model, self.min_digit_mass)
        if self.cache is not None and not rating.cached:
            self.cache.put(key, rating.to_dict())
        return rating

    def generate(self, prompt: str | JudgePrompt, images: Sequence[torch.Tensor], max_tokens: int = 120, **fields) -> str:
        """Ask a free-text question; the model's answer, stripped (greedy decoding)."""
        prompt = PROMPTS[prompt] if isinstance(prompt, str) else prompt
        cached, key, body = self._completion(prompt, images, fields, max_tokens=max_tokens)
        if cached is not None and "text" in cached:
            return cached["text"]
        text = answer_text(first_choice(self._request(self.endpoint, body), self.endpoint)).strip()
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
