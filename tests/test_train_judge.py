"""The trainer with a judge that fails: bounded retries, then skip the prompt or stop with a
checkpoint from which a rerun resumes; ratings run concurrently. The judge is the loopback
fake OpenAI-compatible server of tests/test_judge.py."""

from __future__ import annotations

import threading

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("peft")
pytest.importorskip("accelerate")

from fake_judge_server import Answer, FakeJudgeServer  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from test_train import FAST, fast_config, read_csv  # noqa: E402

from motionnft.train import JudgeFailure, train  # noqa: E402

GOOD = Answer(digits={"4": 0.5, "5": 0.5})  # a rating of 4.5 / 5 = 0.9


@pytest.fixture
def server():
    with FakeJudgeServer(default=GOOD) as fake:
        yield fake


def judged(server: FakeJudgeServer, **overrides) -> dict:
    """Settings of a run judged by ``server``: no waiting between retries, no retries unless asked."""
    return {"judge_url": server.url, "judge_model": "fake-judge", "judge_backoff": 0.0, "judge_retries": 0,
            **overrides}


@pytest.mark.parametrize("concurrency", [1, 4])
def test_a_prompts_rollouts_are_rated_concurrently_up_to_judge_concurrency(tmp_path, server, concurrency):
    server.default = Answer(digits={"4": 0.5, "5": 0.5}, delay=0.25)
    result = train(fast_config(tmp_path, "run", max_steps=1, **judged(server, judge_concurrency=concurrency)),
                   resume=None, show_progress=False)
    row = result.metrics[0]
    assert len(server.chat_requests()) == 2 * 4  # 2 prompts x 4 rollouts, each rated once
    assert float(row["judge_mean"]) == pytest.approx(0.9) and int(row["judge_skipped_prompts"]) == 0
    if concurrency == 1:
        assert server.max_in_flight == 1
    else:
        assert 1 < server.max_in_flight <= concurrency


FAILURES = {
    "refusal": (Answer(status=400, body=b'{"error": {"message": "images are not supported by this model"}}'),
                "HTTP 400: images are not supported"),
    "server error": (Answer(status=500), "HTTP 500"),
    "timeout": (Answer(digits={"5": 1.0}, delay=1.5), "no answer within 0.4 s"),
    "malformed body": (Answer(body=b"<html>502 Bad Gateway</html>"), "not JSON"),
    "no log-probabilities": (Answer(digits={"5": 1.0}, logprobs=False), "no log-probabilities"),
}


@pytest.mark.parametrize("case", list(FAILURES))
def test_with_judge_failure_skip_a_prompt_the_judge_cannot_rate_is_left_out_with_its_reason(tmp_path, server, capsys,
                                                                                           case):
    answer, reason = FAILURES[case]
    server.script.append(answer)  # the step's first request: one rollout of its first prompt
    result = train(fast_config(tmp_path, "run", max_steps=1,
                               **judged(server, judge_failure="skip", judge_timeout=0.4)),
                   resume=None, show_progress=False)
    assert result.step == 1 and not result.interrupted  # training went on
    row = result.metrics[0]
    assert int(row["judge_skipped_prompts"]) == 1
    assert int(row["trained_prompts"]) <= 1  # the other prompt may train; the skipped one does not
    assert float(row["reward_mean"]) == float(row["reward_mean"])  # the failed group's NaN is left out
    logged = capsys.readouterr().err
    assert "step 1: prompt " in logged and reason in logged
    assert 'prompt skipped this step (judge_failure = "skip")' in logged
    rows = read_csv(tmp_path / "run" / "metrics.csv")
    assert rows[0]["judge_skipped_prompts"] == "1"


def test_a_failed_rating_is_asked_again_up_to_judge_retries(tmp_path, server, capsys):
    # ratings one at a time, so the scripted failures all hit the first rollout
    server.script.extend([Answer(status=500), Answer(status=503)])
    settings = judged(server, judge_concurrency=1, judge_failure="skip")
    recovered = train(fast_config(tmp_path, "two", max_steps=1, **{**settings, "judge_retries": 2}), resume=None,
                      show_progress=False)
    assert int(recovered.metrics[0]["judge_skipped_prompts"]) == 0
    assert len(server.chat_requests()) == 8 + 2
    server.script.extend([Answer(status=500), Answer(status=503)])
    gave_up = train(fast_config(tmp_path, "one", max_steps=1, **{**settings, "judge_retries": 1}), resume=None,
                    show_progress=False)
    assert int(gave_up.metrics[0]["judge_skipped_prompts"]) == 1
    logged = capsys.readouterr().err
    assert "HTTP 503" in logged and "(2 attempts)" in logged


def failing_after(requests: int):
    """A judge answer that is good for the first ``requests`` requests, then HTTP 500."""
    lock, seen = threading.Lock(), [0]

    def answer(_request):
        with lock:
            seen[0] += 1
            return GOOD if seen[0] <= requests else Answer(status=500)

    return answer


def test_with_judge_failure_stop_the_last_completed_step_is_saved_and_a_rerun_resumes_exactly(tmp_path, server,
                                                                                            capsys):
    from motionnft.cli import main

    settings = judged(server, judge_retries=1, judge_failure="stop")
    whole = train(fast_config(tmp_path, "whole", max_steps=2, **settings), resume=None, show_progress=False)
    assert whole.step == 2

    # save_every = 2: only the failure writes the step-1 checkpoint
    server.default = failing_after(2 * 4)  # step 1 is rated, step 2's ratings fail
    args = ["train", "--output-dir", str(tmp_path / "cut"), "--max-steps", "2"]
    for key, value in {**FAST, **settings}.items():
        args += ["--set", f"{key}={value!r}" if isinstance(value, str) else f"{key}={value}"]
    assert main(args) == 3
    logged = capsys.readouterr().err
    assert "stopped: step 2: prompt " in logged and "HTTP 500" in logged and "(2 attempts)" in logged
    checkpoints = tmp_path / "cut" / "checkpoints"
    assert (checkpoints / "latest").read_text().strip() == "step-000001"
    state = torch.load(checkpoints / "step-000001" / "trainer_state.pt", weights_only=True)
    assert state["step"] == 1 and state["interrupted"] is True

    server.default = GOOD  # the judge is back: the same command resumes at step 1
    resumed = train(fast_config(tmp_path, "cut", max_steps=2, **settings), resume="auto", show_progress=False)
    assert resumed.step == 2
    a = load_file(tmp_path / "whole" / "motionnft_lora.safetensors")
    b = load_file(tmp_path / "cut" / "motionnft_lora.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [int(r["step"]) for r in read_csv(tmp_path / "cut" / "metrics.csv")] == [1, 2]


def test_any_error_in_a_step_saves_the_last_completed_step_then_propagates(tmp_path, monkeypatch):
    from motionnft.train import Trainer

    rollouts = Trainer.rollouts
    broken_step = [1]

    def broken(self, entry, generator, **options):
        if self.step == broken_step[0]:
            raise OSError("No space left on device")
        return rollouts(self, entry, generator, **options)

    monkeypatch.setattr(Trainer, "rollouts", broken)
    with pytest.raises(OSError, match="No space left on device"):
        train(fast_config(tmp_path, "run", max_steps=3), resume=None, show_progress=False)
    checkpoints = tmp_path / "run" / "checkpoints"
    assert (checkpoints / "latest").read_text().strip() == "step-000001"
    assert torch.load(checkpoints / "step-000001" / "trainer_state.pt", weights_only=True)["step"] == 1

    broken_step[0] = 0  # in the first step: the state before it, data cursor at its start
    with pytest.raises(OSError):
        train(fast_config(tmp_path, "first", max_steps=3), resume=None, show_progress=False)
    state = torch.load(tmp_path / "first" / "checkpoints" / "step-000000" / "trainer_state.pt", weights_only=True)
    assert state["step"] == 0 and state["cursor"] == {"pass_index": 0, "position": 0, "retired": []}


@pytest.mark.parametrize(("setting", "value"), [("judge_failure", "retry"), ("judge_retries", -1),
                                                ("judge_concurrency", 0), ("judge_timeout", 0.0),
                                                ("loss_average", "sum")])
def test_bad_judge_and_loss_settings_are_refused_by_name(setting, value):
    from motionnft.train import load_config

    with pytest.raises(ValueError, match=setting):
        load_config("tiny", overrides={setting: value})


def test_the_trainers_judge_client_takes_the_settings(tmp_path, server):
    from motionnft.judge import JudgeClient
    from motionnft.train import Trainer

    trainer = Trainer(fast_config(tmp_path, "run", **judged(server, judge_timeout=7.0, judge_concurrency=3)),
                      show_progress=False)
    assert isinstance(trainer.judge, JudgeClient)
    assert (trainer.judge.timeout, trainer.judge.max_concurrency, trainer.judge.max_retries) == (7.0, 3, 0)


def test_a_judge_object_whose_score_is_not_a_reward_counts_as_a_failure(tmp_path, capsys):
    class Broken:
        def rate_training_reward(self, input_image, edited_image, instruction):
            return float("nan")

    result = train(fast_config(tmp_path, "run", max_steps=1, judge_failure="skip", judge_backoff=0.0),
                   judge=Broken(), resume=None, show_progress=False)
    assert int(result.metrics[0]["judge_skipped_prompts"]) == 2
    assert "expected a reward in [0, 1]" in capsys.readouterr().err
