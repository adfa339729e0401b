"""MLLM judge: a client for OpenAI-compatible chat-completions servers with image inputs.

MotionNFT uses a vision-language model as a judge in three places: half of the training
reward, the benchmark's Fidelity / Preservation / Coherence ratings, and the data filter
of the miner (plus drafting the editing instruction). Users serve such models with vLLM,
SGLang, llama.cpp's server or Ollama, all of which speak the OpenAI chat-completions
protocol; this package talks to any of them with the standard library only.

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

Modules: :mod:`.client` (:class:`JudgeClient`, what the project asks), :mod:`.transport`
(HTTP, retries, concurrency, timeouts), :mod:`.cache` (answers on disk), :mod:`.prompts`
(prompt texts, chat messages, request settings), :mod:`.parsing` (reading answers),
:mod:`.scores` (digit log-probabilities -> score in [0, 1]), :mod:`.errors`.
"""

from __future__ import annotations

from .cache import JudgeCache
from .client import API_KEY_ENV, JudgeClient, ProgressCallback, RatingRequest
from .errors import JudgeAnswerError, JudgeError, JudgeResponseError, JudgeUnreachableError
from .parsing import clean_instruction
from .prompts import (
    BENCHMARK_METRICS,
    DRAFT_INSTRUCTION,
    MINING_CRITERIA,
    PROMPTS,
    TRAINING_REWARD,
    JudgePrompt,
    encode_image,
    prompts_fingerprint,
)
from .scores import DIGITS, MAX_RATING, Rating, digit_probabilities, expected_score
from .transport import RETRY_STATUSES, JudgeTransport, chat_completions_url

__all__ = [
    "API_KEY_ENV",
    "BENCHMARK_METRICS",
    "DIGITS",
    "DRAFT_INSTRUCTION",
    "MAX_RATING",
    "MINING_CRITERIA",
    "PROMPTS",
    "RETRY_STATUSES",
    "TRAINING_REWARD",
    "JudgeAnswerError",
    "JudgeCache",
    "JudgeClient",
    "JudgeError",
    "JudgePrompt",
    "JudgeResponseError",
    "JudgeTransport",
    "JudgeUnreachableError",
    "ProgressCallback",
    "Rating",
    "RatingRequest",
    "chat_completions_url",
    "clean_instruction",
    "digit_probabilities",
    "encode_image",
    "expected_score",
    "prompts_fingerprint",
]
