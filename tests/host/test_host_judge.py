"""Judge Edit inside a real ComfyUI, against a fake judge server started by the test on loopback."""

from __future__ import annotations

import socket

import numpy as np
import pytest
from comfyui_harness import ComfyUIServer
from fake_judge_server import Answer, FakeJudgeServer

from motionnft.image import save_image, to_uint8
from motionnft.synthetic import FigurePose, render_scene

SIZE = (72, 96)  # (H, W)
INSTRUCTION = "make the figure raise its arm and step right"


@pytest.fixture(scope="module")
def judge_server():
    with FakeJudgeServer(models=("judge-vl",)) as server:
        # One distinct answer per question, so a mix-up of questions and outputs would show.
        server.add_rule("INSTRUCTION FIDELITY", Answer(digits={"4": 1.0}))
        server.add_rule("PRESERVATION", Answer(digits={"2": 0.5, "4": 0.5}))
        server.add_rule("COHERENCE", Answer(digits={"5": 0.9, "Five": 0.1}))
        server.add_rule("NO-LOGPROBS", Answer(digits={"3": 1.0}, logprobs=False))
        server.default = Answer(digits={"3": 0.5, "4": 0.5})  # the training-reward question
        yield server


@pytest.fixture(scope="module")
def judge_files(comfyui: ComfyUIServer) -> dict[str, str]:
    start = FigurePose()
    files = {"judge_start": render_scene(start, SIZE, seed=5),
             "judge_goal": render_scene(start.moved(dx=0.05, arm=40), SIZE, seed=5)}
    for name, image in files.items():
        save_image(image, comfyui.input_dir / f"{name}.png")
    return {name: f"{name}.png" for name in files}


def judge_graph(files, server_url: str, model: str = "judge-vl", instruction: str = INSTRUCTION, batch: int = 1) -> dict:
    graph = {
        "1": {"class_type": "LoadImage", "inputs": {"image": files["judge_start"]}},
        "2": {"class_type": "LoadImage", "inputs": {"image": files["judge_goal"]}},
        "3": {"class_type": "RepeatImageBatch", "inputs": {"image": ["2", 0], "amount": batch}},
        "4": {"class_type": "MotionNFT_JudgeEdit",
              "inputs": {"input_image": ["1", 0], "edited_image": ["3", 0], "instruction": instruction,
                         "server_url": server_url, "model": model, "timeout": 30}},
    }
    return graph


def test_judge_node_is_listed_with_its_server_inputs(comfyui: ComfyUIServer):
    info = comfyui.object_info()["MotionNFT_JudgeEdit"]
    assert info["category"] == "MotionNFT"
    required = info["input"]["required"]
    assert {"input_image", "edited_image", "instruction", "server_url", "model", "timeout"} <= set(required)
    assert info["output_name"] == ["overall", "fidelity", "preservation", "coherence", "reward", "summary"]


def test_judge_node_rates_an_edit_through_the_server(comfyui: ComfyUIServer, judge_server, judge_files):
    before = len(judge_server.chat_requests())
    outputs = comfyui.run(judge_graph(judge_files, judge_server.url))
    (record,) = outputs["4"]["motionnft_judge"]
    assert record["fidelity"] == pytest.approx(4.0)
    assert record["preservation"] == pytest.approx(3.0)
    assert record["coherence"] == pytest.approx(5.0)  # "Five" is not a digit: renormalised away
    assert record["overall"] == pytest.approx(4.0)
    assert record["reward"] == pytest.approx(0.7)
    summary = outputs["4"]["text"][0]
    assert "overall 4.00/5" in summary and "judge-vl" in summary and judge_server.url in summary
    requests = judge_server.chat_requests()[before:]
    assert len(requests) == 4
    for request in requests:
        assert request.body["model"] == "judge-vl" and request.body["logprobs"] is True
        assert INSTRUCTION in request.text
        assert [image.size for image in request.images] == [(SIZE[1], SIZE[0])] * 2
    # What the server saw is what the graph loaded: the original first, then the edit.
    for sent, pose in zip(requests[0].images, (FigurePose(), FigurePose().moved(dx=0.05, arm=40))):
        drawn = to_uint8(render_scene(pose, SIZE, seed=5).reshape(3, *SIZE)).permute(1, 2, 0).numpy()
        np.testing.assert_array_equal(np.asarray(sent), drawn)


def test_judge_node_rates_each_edit_of_a_batch(comfyui: ComfyUIServer, judge_server, judge_files):
    before = len(judge_server.chat_requests())
    outputs = comfyui.run(judge_graph(judge_files, judge_server.url, instruction=INSTRUCTION + " (batch)", batch=3))
    assert len(outputs["4"]["motionnft_judge"]) == 3
    assert len(judge_server.chat_requests()) - before == 12
    assert outputs["4"]["text"][0].count("overall 4.00/5") == 3


def test_judge_node_names_an_unreachable_server(comfyui: ComfyUIServer, judge_files):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    message = comfyui.run_expecting_error(judge_graph(judge_files, url))
    assert "cannot reach the judge server" in message and url in message


def test_judge_node_explains_a_server_without_logprobs(comfyui: ComfyUIServer, judge_server, judge_files):
    message = comfyui.run_expecting_error(judge_graph(judge_files, judge_server.url, instruction="NO-LOGPROBS please"))
    assert "no log-probabilities" in message and judge_server.url in message


def test_judge_node_picks_the_servers_only_model_and_refuses_an_empty_instruction(
        comfyui: ComfyUIServer, judge_server, judge_files):
    outputs = comfyui.run(judge_graph(judge_files, judge_server.url, model="", instruction=INSTRUCTION + " (auto)"))
    assert "judge-vl" in outputs["4"]["text"][0]
    message = comfyui.run_expecting_error(judge_graph(judge_files, judge_server.url, instruction="   "))
    assert "instruction" in message
