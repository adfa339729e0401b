"""Judge Edit: an MLLM judge (OpenAI-compatible server) rates edits inside the graph."""

from __future__ import annotations

from comfy_api.latest import io

from ..motionnft.judge import BENCHMARK_METRICS, TRAINING_REWARD, JudgeClient, RatingRequest
from .common import CATEGORY, broadcast_batches, image_to_bchw, progress_callback

QUESTIONS = BENCHMARK_METRICS + (TRAINING_REWARD,)


def summarize(records: list[dict], model: str, url: str) -> str:
    """One line per edit with every rating, then which judge gave them."""
    lines = [
        f"#{index + 1}: overall {r['overall']:.2f}/5 | fidelity {r['fidelity']:.2f}  preservation "
        f"{r['preservation']:.2f}  coherence {r['coherence']:.2f} | reward {r['reward']:.3f}"
        for index, r in enumerate(records)
    ]
    lines.append(
        f"judge {model} at {url}; ratings are the expected 0-5 digit (first-token probabilities "
        "over 0-5); reward = MotionNFT MLLM reward (expected digit / 5)"
    )
    return "\n".join(lines)


class JudgeEditNode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MotionNFT_JudgeEdit",
            display_name="Judge Edit (MotionNFT)",
            category=CATEGORY,
            description=(
                "Asks a vision-language model served by an OpenAI-compatible server (vLLM, SGLang, "
                "llama.cpp, Ollama) to rate an edit against its instruction: Fidelity (the requested "
                "motion happened), Preservation (everything else kept), Coherence (a plausible, clean "
                "image), each the expected 0-5 rating, their mean Overall, and the MotionNFT MLLM reward "
                "(0-1). The server must return log-probabilities. For a batch, outputs are batch means."
            ),
            inputs=[
                io.Image.Input("input_image", tooltip="The original image the edit started from."),
                io.Image.Input("edited_image", tooltip="The edit(s) to rate; a batch rates each."),
                io.String.Input("instruction", multiline=True, default="",
                                tooltip="The editing instruction the edit should follow."),
                io.String.Input(
                    "server_url", default="http://127.0.0.1:8000/v1",
                    tooltip="OpenAI-compatible server: vLLM/SGLang http://HOST:8000/v1, llama.cpp "
                    "http://HOST:8080/v1, Ollama http://HOST:11434/v1. An API key, if needed, is read "
                    "from the MOTIONNFT_JUDGE_API_KEY environment variable of ComfyUI.",
                ),
                io.String.Input("model", default="",
                                tooltip="Model name as the server knows it; empty = the server's only model."),
                io.Int.Input("timeout", default=120, min=1, max=3600, tooltip="Seconds to wait for each answer."),
            ],
            outputs=[
                io.Float.Output(display_name="overall"),
                io.Float.Output(display_name="fidelity"),
                io.Float.Output(display_name="preservation"),
                io.Float.Output(display_name="coherence"),
                io.Float.Output(display_name="reward"),
                io.String.Output(display_name="summary"),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, input_image, edited_image, instruction, server_url, model, timeout) -> io.NodeOutput:
        images = broadcast_batches({
            "input_image": image_to_bchw("input_image", input_image),
            "edited_image": image_to_bchw("edited_image", edited_image),
        })
        source, edited = images["input_image"], images["edited_image"]
        if not instruction or not instruction.strip():
            raise ValueError("instruction: the judge needs the editing instruction the edit should follow")
        judge = JudgeClient(server_url, model, timeout=float(timeout), max_retries=2, backoff=0.5)
        requests = [
            RatingRequest(question, [source[i : i + 1], edited[i : i + 1]], {"instruction": instruction})
            for i in range(edited.shape[0])
            for question in QUESTIONS
        ]
        ratings = judge.rate_many(requests, progress_callback(len(requests)))
        records = []
        for i in range(edited.shape[0]):
            answers = dict(zip(QUESTIONS, ratings[i * len(QUESTIONS) : (i + 1) * len(QUESTIONS)]))
            record = {name: answers[name].rating for name in BENCHMARK_METRICS}
            record["overall"] = sum(record.values()) / len(BENCHMARK_METRICS)
            record["reward"] = answers[TRAINING_REWARD].score
            records.append(record)
        means = {key: sum(r[key] for r in records) / len(records) for key in ("overall", *BENCHMARK_METRICS, "reward")}
        summary = summarize(records, judge.model, judge.base_url)
        return io.NodeOutput(
            means["overall"], means["fidelity"], means["preservation"], means["coherence"], means["reward"], summary,
            ui={"text": [summary], "motionnft_judge": records},
        )
