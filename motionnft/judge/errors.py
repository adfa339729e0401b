"""The judge's failures: one base class, so callers can catch every judge problem at once."""

from __future__ import annotations


class JudgeError(RuntimeError):
    """Base class of every judge failure; the message names the server."""


class JudgeUnreachableError(JudgeError):
    """The server did not answer (refused, timed out, DNS failure) after every retry."""


class JudgeResponseError(JudgeError):
    """The server answered with an HTTP error, malformed JSON, or without log-probabilities."""


class JudgeAnswerError(JudgeError):
    """The model's answer is not a rating from 0 to 5 (or not a usable text)."""
