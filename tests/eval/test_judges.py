"""The local judge: a model folder answered through the project's rollout engine; failures are errors."""

import argparse
import json

import pytest
from transformers import AutoTokenizer

from verl.eval.judges import EngineJudge, LazyJudge
from verl.eval.score import ResponseRecord, judge_answers
from verl.stages.perception_judge import JudgeFailedError
from verl.workers.rollout import GenerationOutput, RolloutEngine


class ScriptedEngine(RolloutEngine):
    """Replies with fixed texts (one per prompt, in order); a None reply makes that prompt raise."""

    def __init__(self, tokenizer, replies):
        self.tokenizer, self.replies, self.calls = tokenizer, list(replies), []

    def generate(self, requests, sampling):
        self.calls.append(len(requests))
        outputs = []
        for request in requests:
            reply = self.replies.pop(0)
            if reply is None:
                raise RuntimeError("engine failure")
            outputs.append([GenerationOutput(self.tokenizer.encode(reply), None, True)] * sampling.n)
        return outputs

    def load_weights(self, named_tensors):
        raise NotImplementedError


def _records(n):
    return [ResponseRecord(i + 1, i, f"<think>t</think>\\boxed{{{i}}}", "7", "q", 5, True, {}) for i in range(n)]


def test_verdicts_parsed_and_engine_failures_are_errors(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    replies = ["<judgment>correct</judgment>", "<judgment>incorrect</judgment>", "no verdict here", None]
    # The batch call fails (the 4th prompt raises), then each prompt is retried alone.
    engine = ScriptedEngine(tokenizer, replies[:3] + [None] + replies)
    judge = EngineJudge(engine, tokenizer, max_tokens=16, max_error_rate=0.25)
    verdicts = judge_answers(judge, _records(4), [0, 1, 2, 3])
    assert verdicts == {0: "correct", 1: "incorrect", 2: "error", 3: "error"}
    assert engine.calls == [4, 1, 1, 1, 1]


def test_engine_failures_past_the_allowed_share_stop_the_batch_naming_the_judge(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    engine = ScriptedEngine(tokenizer, [None] + [None, "a", None])  # the batch fails, then 2 of 3 alone
    judge = EngineJudge(engine, tokenizer, max_tokens=16, name="local:/models/judge")
    with pytest.raises(JudgeFailedError, match=r"judge local:/models/judge failed on 2 of 3 requests .*"
                                               r"judge_max_error_rate=0.1.*first error: RuntimeError: engine failure"):
        judge.reanswer(["x", "y", "z"], 1)


def test_lazy_judge_builds_on_first_request(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    built = []
    lazy = LazyJudge(lambda: built.append(1) or EngineJudge(ScriptedEngine(tokenizer, ["a", "b"]), tokenizer, 4))
    assert built == []
    assert lazy.reanswer(["x"], 1) == [["a"]] and lazy.reanswer(["y"], 1) == [["b"]]
    assert built == [1]


def test_a_text_only_judge_model_is_refused_in_one_line(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2", "vocab_size": 100}))
    with pytest.raises(ValueError, match=r"not a Qwen2.5-VL checkpoint.*vllm serve .*--answer_judge_base_url"):
        EngineJudge.from_args(argparse.Namespace(), str(tmp_path), 16)


@pytest.mark.vllm
def test_tiny_model_judges_through_the_vllm_engine_and_its_failures_count_as_errors(tiny_model_dir, vllm_started):
    args = argparse.Namespace(
        engine="vllm", dtype="float32", gpu_memory_utilization=0.5, tensor_parallel_size=1, max_model_len=None,
        max_num_seqs=16, enforce_eager=True, hf_max_batch_size=16,
    )
    # The engine is shut down and its process group destroyed afterwards (later in-process engines
    # would otherwise find torch.distributed initialised and try to join it).
    with vllm_started(lambda: EngineJudge.from_args(args, tiny_model_dir, max_tokens=8).engine) as engine:
        judge = EngineJudge(engine, AutoTokenizer.from_pretrained(tiny_model_dir), max_tokens=8)
        replies = judge.reanswer(["Is 7 equal to 7? Reply <judgment>correct</judgment>.", "Is 1 equal to 7?"], 1)
        assert [len(reply) for reply in replies] == [1, 1] and all(isinstance(r[0], str) for r in replies)
        # Eight random tokens cannot spell a verdict: every judged answer is an error, none is correct.
        assert set(judge_answers(judge, _records(3), [0, 1, 2]).values()) == {"error"}
