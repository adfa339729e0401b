"""Talking to the judge server over HTTP: its URLs, timeouts, retries with backoff,
the bound on requests in flight, and error messages that say what to check.

Standard library only, so any OpenAI-compatible server (vLLM, SGLang, llama.cpp's server,
Ollama) works without an SDK.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

from .errors import JudgeResponseError, JudgeUnreachableError

RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


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


def is_loopback(url: str) -> bool:
    host = urllib.parse.urlparse(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class JudgeTransport:
    """JSON over HTTP to one server, retried and bounded; the base of :class:`JudgeClient`.

    Args:
        endpoint: the chat-completions URL (see :func:`chat_completions_url`).
        api_key: sent as a bearer token when not None.
        timeout, max_retries, backoff, max_backoff, max_concurrency: see :class:`JudgeClient`.
    """

    def __init__(self, endpoint: str, api_key: str | None, *, timeout: float, max_retries: int, backoff: float,
                 max_backoff: float, max_concurrency: int):
        self.endpoint = endpoint
        self.base_url = self.endpoint[: -len("/chat/completions")]
        self.api_key = api_key
        if timeout <= 0:
            raise ValueError(f"judge timeout must be positive, got {timeout}")
        if max_retries < 0:
            raise ValueError(f"judge max_retries must be >= 0, got {max_retries}")
        if max_concurrency < 1:
            raise ValueError(f"judge max_concurrency must be >= 1, got {max_concurrency}")
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.max_concurrency = int(max_concurrency)
        self._slots = threading.BoundedSemaphore(self.max_concurrency)
        # Proxies (http_proxy) are honoured for remote servers, never for loopback ones.
        handlers = [urllib.request.ProxyHandler({})] if is_loopback(self.endpoint) else []
        self._opener = urllib.request.build_opener(*handlers)

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
                detail = error_detail(error)
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


def error_detail(error: urllib.error.HTTPError) -> str:
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
