"""The MLLM judge client against a loopback server that speaks the OpenAI chat protocol."""

from __future__ import annotations

import json
import math
import socket
import time

import numpy as np
import pytest
import torch
from fake_judge_server import Answer, FakeJudgeServer

from motionnft.image import to_uint8
from motionnft.judge import (
    BENCHMARK_METRICS,
    MINING_CRITERIA,
    PROMPTS,
    JudgeAnswerError,
    JudgeClient,
    JudgeResponseError,
    JudgeUnreachableError,
    RatingRequest,
    chat_completions_url,
    clean_instruction,
    digit_probabilities,
)


def solid(value: float, size=(12, 16)) -> torch.Tensor:
    return torch.full((1, 3, *size), value)


def gradient(size=(12, 16)) -> torch.Tensor:
    y = torch.linspace(0, 1, size[0]).view(1, 1, -1, 1)
    x = torch.linspace(0, 1, size[1]).view(1, 1, 1, -1)
    return torch.cat([y.expand(1, 1, *size), x.expand(1, 1, *size), (x * y).expand(1, 1, *size)], dim=1)


def expected(probabilities: dict[str, float]) -> float:
    digits = {d: p for d, p in probabilities.items() if d in "012345" and len(d) == 1}
    total = sum(digits.values())
    return sum(int(d) * p for d, p in digits.items()) / total / 5


@pytest.fixture
def server():
    with FakeJudgeServer() as fake:
        yield fake


def client(server: FakeJudgeServer, **options) -> JudgeClient:
    options = {"backoff": 0.01, "max_backoff": 0.05, **options}
    return JudgeClient(server.url, "fake-judge", **options)


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


# Scores ------------------------------------------------------------------------------------
def test_score_is_the_expected_digit_renormalised_over_0_to_5(server):
    # "The" and "7" take probability that the rating must ignore.
    answer = {"4": 0.4, "3": 0.2, "5": 0.1, "The": 0.2, "7": 0.1}
    server.default = Answer(digits=answer)
    rating = client(server).rate("training_reward", [solid(0.2), solid(0.8)], instruction="raise the arm")
    assert rating.score == pytest.approx(expected(answer), abs=1e-9)
    assert rating.score == pytest.approx((4 * 0.4 + 3 * 0.2 + 5 * 0.1) / 0.7 / 5)
    assert rating.digit_mass == pytest.approx(0.7)
    assert sum(rating.probabilities.values()) == pytest.approx(1.0)
    assert rating.rating == pytest.approx(5 * rating.score)
    assert rating.answer == "4"


def test_digits_written_with_a_space_or_as_bpe_pieces_are_merged():
    probabilities, mass = digit_probabilities({"4": math.log(0.3), " 4": math.log(0.2), "\u01202": math.log(0.5)})
    assert mass == pytest.approx(1.0)
    assert probabilities["4"] == pytest.approx(0.5) and probabilities["2"] == pytest.approx(0.5)


def test_a_blank_first_token_is_skipped_and_legacy_logprobs_are_read(server):
    server.script.extend([Answer(digits={"2": 1.0}, blank_first_token=True), Answer(digits={"3": 0.5, "1": 0.5}, legacy=True)])
    judge = client(server)
    assert judge.rate("coherence", [solid(0.1), solid(0.2)], instruction="x").score == pytest.approx(0.4)
    assert judge.rate("coherence", [solid(0.1), solid(0.2)], instruction="x").score == pytest.approx(0.4)


def test_the_request_carries_both_images_then_the_prompt_and_asks_for_logprobs(server):
    judge = client(server, top_logprobs=7)
    original, edited = gradient(), gradient().flip(-1)
    judge.rate_training_reward(original, edited, "make the dog jump over the log")
    (request,) = server.chat_requests()
    body = request.body
    assert body["model"] == "fake-judge"
    assert body["logprobs"] is True and body["top_logprobs"] == 7
    assert body["temperature"] == 0.0 and body["max_tokens"] >= 1
    parts = body["messages"][0]["content"]
    assert [p["type"] for p in parts] == ["image_url", "image_url", "text"]
    assert "make the dog jump over the log" in request.text
    assert request.image_mimes == ["image/png", "image/png"]
    for sent, tensor in zip(request.images, (original, edited)):
        np.testing.assert_array_equal(np.asarray(sent), to_uint8(tensor[0]).permute(1, 2, 0).numpy())


def test_jpeg_and_downscaling_options_shape_what_is_sent(server):
    judge = client(server, image_format="jpeg", max_image_side=8)
    judge.rate("fidelity", [gradient((12, 16)), gradient((12, 16))], instruction="x")
    (request,) = server.chat_requests()
    assert request.image_mimes == ["image/jpeg", "image/jpeg"]
    assert [image.size for image in request.images] == [(8, 6), (8, 6)]


def test_every_project_prompt_is_distinct_and_answered(server):
    # Each prompt gets its own answer, so a mix-up of keys or prompts would show.
    for index, name in enumerate(BENCHMARK_METRICS + MINING_CRITERIA):
        server.add_rule(lambda r, name=name: r.text == PROMPTS[name].render(instruction="jump"),
                        Answer(digits={str(index % 6): 1.0}))
    judge = client(server)
    metrics = judge.rate_benchmark_metrics(solid(0.1), solid(0.9), "jump")
    assert metrics == {name: pytest.approx(i / 5) for i, name in enumerate(BENCHMARK_METRICS)}
    criteria = judge.rate_mining_criteria(solid(0.1), solid(0.9))
    assert criteria == {name: pytest.approx(((i + 3) % 6) / 5) for i, name in enumerate(MINING_CRITERIA)}
    texts = {r.text for r in server.chat_requests()}
    assert len(texts) == 6


def test_draft_instruction_returns_the_cleaned_sentence(server):
    server.default = Answer(text='Instruction: "Make the woman in the red coat raise her left arm."\n\nThis shows...')
    judge = client(server)
    assert judge.draft_instruction(solid(0.1), solid(0.9)) == "Make the woman in the red coat raise her left arm."
    (request,) = server.chat_requests()
    assert "logprobs" not in request.body
    assert clean_instruction("**Instruction:** turn the dog around") == "turn the dog around"
    with pytest.raises(JudgeAnswerError, match="empty"):
        clean_instruction("  \n ")


# Failures -----------------------------------------------------------------------------------
def test_an_unreachable_server_is_named_after_every_retry():
    url = closed_port_url()
    judge = JudgeClient(url, "m", max_retries=2, backoff=0.01)
    start = time.monotonic()
    with pytest.raises(JudgeUnreachableError) as error:
        judge.rate_training_reward(solid(0.1), solid(0.2), "jump")
    assert url in str(error.value) and "3 attempts" in str(error.value)
    assert time.monotonic() - start < 5


def test_transient_failures_are_retried_with_backoff(server):
    server.script.extend([Answer(status=503), Answer(status=429, retry_after="0.05"), Answer(digits={"5": 1.0})])
    judge = client(server, max_retries=3)
    start = time.monotonic()
    assert judge.rate_training_reward(solid(0.1), solid(0.2), "jump") == pytest.approx(1.0)
    assert len(server.chat_requests()) == 3
    assert time.monotonic() - start >= 0.05  # Retry-After was honoured


def test_retries_give_up_and_say_how_often(server):
    server.script.extend([Answer(status=503)] * 3)
    with pytest.raises(JudgeResponseError, match=r"HTTP 503 after 3 attempts"):
        client(server, max_retries=2).rate_training_reward(solid(0.1), solid(0.2), "jump")
    assert len(server.chat_requests()) == 3


def test_a_bad_request_is_not_retried_and_the_server_message_is_shown(server):
    server.script.append(Answer(status=400, body=b'{"error": {"message": "images are not supported by this model"}}'))
    with pytest.raises(JudgeResponseError) as error:
        client(server).rate_training_reward(solid(0.1), solid(0.2), "jump")
    assert "HTTP 400" in str(error.value) and "images are not supported" in str(error.value)
    assert server.url in str(error.value)
    assert len(server.chat_requests()) == 1


def test_a_slow_server_times_out(server):
    server.default = Answer(digits={"5": 1.0}, delay=1.0)
    judge = client(server, timeout=0.2, max_retries=1)
    with pytest.raises(JudgeUnreachableError, match=r"no answer within 0.2 s \(2 attempts\)"):
        judge.rate_training_reward(solid(0.1), solid(0.2), "jump")


def test_missing_log_probabilities_are_an_error_naming_the_server(server):
    server.default = Answer(digits={"4": 1.0}, logprobs=False)
    with pytest.raises(JudgeResponseError) as error:
        client(server).rate_training_reward(solid(0.1), solid(0.2), "jump")
    message = str(error.value)
    assert "no log-probabilities" in message and server.url in message and "'4'" in message


def test_a_chosen_token_without_alternatives_is_not_a_distribution(server):
    server.default = Answer(digits={"4": 0.6, "5": 0.4}, alternatives=False)
    with pytest.raises(JudgeResponseError, match="no top_logprobs alternatives.*top_logprobs=20"):
        client(server).rate_training_reward(solid(0.1), solid(0.2), "jump")


def test_an_answer_outside_0_to_5_is_an_error_with_the_answer(server):
    server.default = Answer(digits={"I": 0.7, "Sorry": 0.3})
    with pytest.raises(JudgeAnswerError) as error:
        client(server).rate_training_reward(solid(0.1), solid(0.2), "jump")
    assert "'I'" in str(error.value) and "0-5" in str(error.value)


def test_a_rating_the_model_hardly_gave_is_refused_unless_allowed(server):
    server.default = Answer(digits={"7": 0.95, "5": 0.05})
    with pytest.raises(JudgeAnswerError, match="5.0%"):
        client(server).rate_training_reward(solid(0.1), solid(0.2), "jump")
    assert client(server, min_digit_mass=0.0).rate_training_reward(solid(0.1), solid(0.2), "jump") == pytest.approx(1.0)


def test_an_unknown_model_and_a_non_json_answer_are_explained(server):
    with pytest.raises(JudgeResponseError, match="HTTP 404.*does not exist.*model name"):
        JudgeClient(server.url, "other-model").rate_training_reward(solid(0.1), solid(0.2), "jump")
    server.default = Answer(body=b"<html>proxy error</html>")
    with pytest.raises(JudgeResponseError, match="not JSON"):
        client(server).rate_training_reward(solid(0.1), solid(0.2), "jump")


def test_bad_arguments_name_the_input(server):
    judge = client(server)
    with pytest.raises(ValueError, match="batch of 2"):
        judge.rate_training_reward(solid(0.1), torch.rand(2, 3, 8, 8), "jump")
    with pytest.raises(ValueError, match="instruction"):
        judge.rate_training_reward(solid(0.1), solid(0.2), "  ")
    with pytest.raises(ValueError, match="takes 2 images"):
        judge.rate("fidelity", [solid(0.1)], instruction="x")
    with pytest.raises(ValueError, match="http"):
        JudgeClient("localhost:8000", "m")
    assert server.chat_requests() == []


# Concurrency, cache, configuration ----------------------------------------------------------
def test_rate_many_keeps_order_and_the_concurrency_limit(server):
    # The answer depends on the edited image's brightness, so order mix-ups would show.
    server.default = lambda r: Answer(digits={str(round(np.asarray(r.images[1]).mean() / 255 * 5)): 1.0}, delay=0.15)
    judge = client(server, max_concurrency=3)
    values = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 0.4, 0.2]
    start = time.monotonic()
    ratings = judge.rate_many([RatingRequest("coherence", [solid(0.5), solid(v)], {"instruction": "x"}) for v in values])
    elapsed = time.monotonic() - start
    assert [r.score for r in ratings] == pytest.approx(values)
    assert server.max_in_flight == 3
    assert elapsed < 0.15 * len(values) * 0.75  # ran in parallel


def test_a_raising_progress_callback_cancels_the_rest(server):
    server.default = Answer(digits={"3": 1.0}, delay=0.1)
    judge = client(server, max_concurrency=2)
    seen = []

    def progress(done, total):
        seen.append((done, total))
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        judge.rate_many([RatingRequest("coherence", [solid(0.5), solid(0.1 * i)], {"instruction": "x"}) for i in range(10)], progress)
    assert seen[0] == (1, 10)
    assert len(server.chat_requests()) <= 4


def test_the_cache_answers_repeated_questions_from_disk(server, tmp_path):
    server.default = Answer(digits={"3": 0.5, "4": 0.5})
    first = client(server, cache_dir=tmp_path / "cache")
    score = first.rate_training_reward(solid(0.1), solid(0.2), "jump")
    again = client(server, cache_dir=tmp_path / "cache").rate("training_reward", [solid(0.1), solid(0.2)], instruction="jump")
    assert again.cached and again.score == score
    assert len(server.chat_requests()) == 1
    # Any part of the key that changes asks the server again.
    first.rate_training_reward(solid(0.1), solid(0.2), "run")
    first.rate_training_reward(solid(0.1), solid(0.3), "jump")
    server.models.append("judge-b")
    JudgeClient(server.url, "judge-b", cache_dir=tmp_path / "cache").rate_training_reward(solid(0.1), solid(0.2), "jump")
    assert len(server.chat_requests()) == 4
    files = sorted((tmp_path / "cache").rglob("*.json"))
    assert len(files) == 4 and all(json.loads(f.read_text())["probabilities"] for f in files)
    assert not list((tmp_path / "cache").rglob("*.tmp"))
    # A damaged entry is a miss, then repaired.
    for f in files:
        f.write_text("{trunc")
    client(server, cache_dir=tmp_path / "cache").rate_training_reward(solid(0.1), solid(0.2), "jump")
    assert len(server.chat_requests()) == 5


def test_an_empty_model_name_picks_the_servers_only_model(server):
    judge = JudgeClient(server.url, "")
    judge.rate_training_reward(solid(0.1), solid(0.2), "jump")
    assert judge.model == "fake-judge" and server.chat_requests()[0].body["model"] == "fake-judge"
    server.models.append("second")
    with pytest.raises(ValueError, match="serves 2 models.*fake-judge, second"):
        JudgeClient(server.url, "").rate_training_reward(solid(0.1), solid(0.2), "jump")


def test_the_api_key_comes_from_the_argument_or_the_environment(server, monkeypatch):
    client(server, api_key="sk-test").rate_training_reward(solid(0.1), solid(0.2), "jump")
    monkeypatch.setenv("MOTIONNFT_JUDGE_API_KEY", "from-env")
    client(server).rate_training_reward(solid(0.1), solid(0.2), "jump")
    monkeypatch.delenv("MOTIONNFT_JUDGE_API_KEY")
    client(server).rate_training_reward(solid(0.1), solid(0.2), "jump")
    auth = [r.headers.get("Authorization") for r in server.chat_requests()]
    assert auth == ["Bearer sk-test", "Bearer from-env", None]


@pytest.mark.parametrize(
    "given, endpoint",
    [
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000/v1/chat/completions"),
        ("http://127.0.0.1:8000/v1/", "http://127.0.0.1:8000/v1/chat/completions"),
        ("http://localhost:11434/v1", "http://localhost:11434/v1/chat/completions"),
        ("https://judge.example/api/v1/chat/completions", "https://judge.example/api/v1/chat/completions"),
    ],
)
def test_server_urls_are_normalised_to_the_chat_endpoint(given, endpoint):
    assert chat_completions_url(given) == endpoint
