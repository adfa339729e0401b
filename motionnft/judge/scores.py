"""From the judge's digit log-probabilities to a score in [0, 1] (the MotionNFT MLLM reward).

The probabilities of the tokens "0".."5" are renormalised over those six (a softmax over
their logits, as the reference does) and the score is the expected digit divided by 5.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

DIGITS = ("0", "1", "2", "3", "4", "5")
MAX_RATING = 5


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


def token_text(token: str) -> str:
    """A token's text without surrounding blanks."""
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
        text = token_text(token)
        if text in mass_by_digit and logprob is not None and math.isfinite(float(logprob)):
            mass_by_digit[text] += math.exp(float(logprob))
    mass = sum(mass_by_digit.values())
    if mass <= 0.0:
        return {digit: 0.0 for digit in DIGITS}, 0.0
    return {digit: value / mass for digit, value in mass_by_digit.items()}, mass


def expected_score(probabilities: Mapping[str, float]) -> float:
    """``Σ d·P(d) / 5`` over the digits 0-5: the rating on [0, 1]."""
    return sum(int(digit) * p for digit, p in probabilities.items()) / MAX_RATING
