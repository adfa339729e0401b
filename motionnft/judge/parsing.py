"""Reading the server's answer: the chosen completion, its text, the digit log-probabilities
at its first token, and the rating they make; malformed answers raise with the server named.
"""

from __future__ import annotations

import math
import re

from .errors import JudgeAnswerError, JudgeResponseError
from .scores import Rating, digit_probabilities, expected_score, token_text


def first_choice(answer: dict, endpoint: str) -> dict:
    """The first completion of a chat-completions answer."""
    choices = answer.get("choices") if isinstance(answer, dict) else None
    if not choices or not isinstance(choices[0], dict):
        error = answer.get("error") if isinstance(answer, dict) else None
        raise JudgeResponseError(
            f"the judge server at {endpoint} returned no choices"
            + (f": {error}" if error else f": {str(answer)[:200]}")
        )
    return choices[0]


def answer_text(choice: dict) -> str:
    """The generated text of a completion (chat ``message.content`` or legacy ``text``)."""
    message = choice.get("message") or {}
    text = message.get("content") if isinstance(message, dict) else None
    if text is None:
        text = choice.get("text")
    return str(text or "")


def first_token_logprobs(choice: dict) -> tuple[str, dict[str, float]] | None:
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
        blank = token != "" and token_text(token) == ""
        if not blank:
            return token, alternatives
    return positions[0]


def rating_from_answer(answer: dict, prompt_name: str, endpoint: str, model: str, top_logprobs: int) -> Rating:
    """The rating in a chat-completions answer to the rating prompt ``prompt_name``.

    Raises:
        JudgeResponseError (no choices, no log-probabilities), JudgeAnswerError (no digit
        0-5 among the first token's candidates).
    """
    choice = first_choice(answer, endpoint)
    text = answer_text(choice)
    first = first_token_logprobs(choice)
    if first is None:
        raise JudgeResponseError(
            f"the judge server at {endpoint} returned no log-probabilities for model {model!r} "
            f"(it answered {text!r}): the rating needs a server that honours logprobs=true and "
            f"top_logprobs={top_logprobs} in chat completions (vLLM, SGLang, llama.cpp's server, "
            "recent Ollama)"
        )
    token, alternatives = first
    if not alternatives:
        raise JudgeResponseError(
            f"the judge server at {endpoint} returned the answer's log-probability but no top_logprobs "
            f"alternatives for model {model!r} (it answered {text!r}): the rating needs the probabilities "
            f"of every digit, so the server must honour top_logprobs={top_logprobs}"
        )
    probabilities, mass = digit_probabilities(alternatives)
    if mass <= 0.0:
        listed = ", ".join(repr(t) for t in list(alternatives)[:8]) or "none"
        raise JudgeAnswerError(
            f"the judge {model!r} at {endpoint} answered {text!r} to the {prompt_name!r} rating: "
            f"no digit 0-5 among its first token's top {len(alternatives)} candidates ({listed}); "
            "expected a single digit from 0 to 5"
        )
    return Rating(expected_score(probabilities), probabilities, mass, text)


def check_digit_mass(rating: Rating, prompt_name: str, endpoint: str, model: str, min_digit_mass: float) -> None:
    """Refuse a rating the model hardly meant as one (its digits had little probability)."""
    if rating.digit_mass < min_digit_mass:
        raise JudgeAnswerError(
            f"the judge {model!r} at {endpoint} answered {rating.answer!r} to the {prompt_name!r} "
            f"rating: the digits 0-5 have only {rating.digit_mass:.1%} probability at its first token "
            f"(min_digit_mass={min_digit_mass:g}); expected a single digit from 0 to 5"
        )


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
