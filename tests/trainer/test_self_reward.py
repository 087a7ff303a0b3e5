"""The Vision-SR1 stage's pure parts: perception extraction rules, the re-prompt text, and the
paper objective's pass-2 advantages."""

import pytest
import torch

from verl.trainer.ray_trainer import group_index_of, last_token_scores, pad_rows, pass2_advantages
from verl.data.format_prompt import REPROMPT_TEMPLATE, build_reprompt
from verl.trainer.self_reward import perception_of


def test_reprompt_text_is_the_reference_template():
    text = build_reprompt("a red circle on the left", "What color is the circle?")
    assert text == (
        "Text description: a red circle on the left\nQuestion: What color is the circle?\nYou are provided a text "
        "description of a problem and a question. Determine the answer to the question based on the text "
        "description. First provide an internal step-by-step reasoning within <think> </think> tags, then "
        "provide a single word or phrase answer in \\boxed{}."
    )
    assert "{" not in REPROMPT_TEMPLATE.format(description="", question="").replace("\\boxed{}", "")


@pytest.mark.parametrize(
    ("response", "mode", "expected"),
    [
        ("<description> a blue square </description> <think> t </think> \\boxed{blue}", "zero", "a blue square"),
        ("<description> first </description> <description> second </description>", "zero", "first"),
        ("<think> no perception </think> \\boxed{red}", "zero", None),
        ("<description>   </description> <think> t </think> \\boxed{red}", "zero", None),  # empty = missing
        ("<description> unclosed", "zero", None),
        # the reference's fallback feeds the whole response (answer included) to the re-answer
        ("<think> x </think> \\boxed{red}", "whole_response", "<think> x </think> \\boxed{red}"),
        # ... but an empty block is sent as the empty string, as the reference does
        ("<description>  </description> <think> x </think> \\boxed{red}", "whole_response", ""),
        ("<description> a cat </description> \\boxed{red}", "whole_response", "a cat"),
    ],
)
def test_perception_extraction_rules(response, mode, expected):
    assert perception_of(response, mode) == expected


def test_pass2_rows_get_their_parents_weighted_visual_advantage():
    # two GRPO groups of 2 responses; visual scores 1,0 | 0.5,0.5 (no spread -> 0)
    visual = torch.tensor([1.0, 0.0, 0.5, 0.5])
    groups = torch.tensor([0, 0, 1, 1])
    parents = torch.tensor([0, 0, 1, 3])  # response 0 re-answered twice, response 2 not at all
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 0]])
    advantages = pass2_advantages(visual, groups, parents, mask, visual_weight=0.5, norm_adv_by_std=True)
    a = 0.5 * (1 - 0.5) / (2**0.5 / 2 + 1e-6)  # weight 0.5 x (1 - mean 0.5) / unbiased std([1, 0]) = 0.7071
    expected = torch.tensor([[a, a, 0], [a, 0, 0], [-a, -a, -a], [0, 0, 0]])
    torch.testing.assert_close(advantages, expected, atol=1e-5, rtol=1e-5)


def test_last_token_scores_and_group_ids():
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [0, 0, 0]])
    scores = last_token_scores(torch.tensor([2.0, 3.0, 4.0]), mask)
    assert scores.tolist() == [[0, 2, 0], [0, 0, 3], [4, 0, 0]]
    ids = group_index_of(__import__("numpy").array(["b", "a", "b"], dtype=object))
    assert ids[0] == ids[2] != ids[1]


def test_pad_rows_aligns_two_passes():
    from verl.protocol import DataProto

    rows = DataProto.from_dict(tensors={
        "prompts": torch.tensor([[0, 5]]), "responses": torch.tensor([[7, 0]]),
        "response_mask": torch.tensor([[1, 0]]), "attention_mask": torch.tensor([[0, 1, 1, 0]]),
        "input_ids": torch.tensor([[0, 5, 7, 0]]), "advantages": torch.tensor([[1.0, 0.0]]),
    })
    padded = pad_rows(rows, prompt_length=3, response_length=3, pad_token_id=0)
    assert padded.batch["input_ids"].tolist() == [[0, 0, 5, 7, 0, 0]]
    assert padded.batch["attention_mask"].tolist() == [[0, 0, 1, 1, 0, 0]]
    assert padded.batch["advantages"].tolist() == [[1.0, 0.0, 0.0]]


def _stage_with_judge(tiny_model_dir, base_url, max_retries, max_error_rate=0.1):
    from transformers import AutoTokenizer

    from verl.trainer.config import SelfRewardConfig
    from verl.trainer.perception_judge import make_judge
    from verl.trainer.self_reward import SelfRewardStage

    config = SelfRewardConfig(
        enable=True, judge="openai", n=2, judge_base_url=base_url, judge_model="judge", judge_timeout_s=2.0,
        judge_max_retries=max_retries, judge_max_workers=4, judge_max_error_rate=max_error_rate,
    )
    return SelfRewardStage(config, AutoTokenizer.from_pretrained(tiny_model_dir), generate=None, judge=make_judge(config))


RESPONSES = [
    "<description> a red circle </description> <think> red </think> \\boxed{red}",
    "<think> no perception </think> \\boxed{red}",
]


def test_external_judge_reanswers_perceptions_over_http(tiny_model_dir, chat_server):
    with chat_server(lambda body: (200, "<think> the text says red </think> \\boxed{red}")) as server:
        output = _stage_with_judge(tiny_model_dir, server.base_url, max_retries=0).run(RESPONSES, ["What color?"] * 2)
    assert output.reanswers == [["<think> the text says red </think> \\boxed{red}"] * 2, []]
    assert len(server.requests) == 1  # the response without a perception is not sent
    assert server.requests[0]["n"] == 2
    assert server.requests[0]["messages"][0]["content"] == build_reprompt("a red circle", "What color?")
    assert output.metrics["self_reward/judge_error_rate"] == 0.0


def test_judge_errors_count_as_wrong_never_as_correct(tiny_model_dir, chat_server):
    import time

    with chat_server(lambda body: (500, "overloaded")) as server:
        start = time.monotonic()
        stage = _stage_with_judge(tiny_model_dir, server.base_url, max_retries=2, max_error_rate=1.0)
        output = stage.run(RESPONSES, ["What color?"] * 2)
        elapsed = time.monotonic() - start
    assert len(server.requests) == 3  # one try + 2 bounded retries
    assert elapsed < 5
    assert output.reanswers[0] == [""]  # graded as a wrong re-answer: visual reward 0
    assert output.metrics["self_reward/judge_error_rate"] == 1.0


def test_a_judge_failing_past_judge_max_error_rate_stops_the_step_naming_it(tiny_model_dir, chat_server):
    """Scoring every re-answer 0 would train on a zeroed visual reward: the step raises instead."""
    from verl.trainer.perception_judge import JudgeFailedError

    with chat_server(lambda body: (500, "overloaded")) as server:
        with pytest.raises(JudgeFailedError) as raised:
            _stage_with_judge(tiny_model_dir, server.base_url, max_retries=0).run(RESPONSES, ["What color?"] * 2)
    message = str(raised.value)
    assert f"{server.base_url}/chat/completions failed on 1 of 1 requests" in message
    assert "judge_max_error_rate=0.1" in message and "first error: HTTPError: 500" in message


def test_a_reanswer_cut_at_its_cap_is_counted_as_clipped(tiny_model_dir, caplog):
    """Three responses with a perception, two re-answers each; the engine cuts one re-answer of
    the first and both of the third at the cap: 3 of 6 re-answers are clipped, counted per parent
    row, and the step warns naming the key that raises the cap."""
    from transformers import AutoTokenizer

    from verl.trainer.clipping import PASS2_CLIP_RATIO, TRAINER_CAP_KEYS, warn_on_clipping
    from verl.trainer.config import SelfRewardConfig
    from verl.trainer.self_reward import SelfRewardStage
    from verl.workers.rollout.base import GenerationOutput
    from verl.workers.rollout.batching import build_rollout_batch

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    cap = 6
    stop = tokenizer.convert_tokens_to_ids("<|im_end|>")
    answer = tokenizer.encode("\\boxed{red}", add_special_tokens=False)
    finished = [[True, False], [True, True], [False, False]]  # per parent row, per re-answer

    def generate(prompts, sampling, max_response_length):
        assert (sampling.max_tokens, max_response_length) == (cap, cap)
        outputs = [
            [GenerationOutput(answer + [stop] if done else (answer * cap)[:cap], None, done) for done in row]
            for row in finished
        ]
        return build_rollout_batch(prompts, outputs, max_response_length, tokenizer.pad_token_id)

    config = SelfRewardConfig(enable=True, n=2, max_response_length=cap, max_prompt_length=256)
    described = "<description> a red circle </description> <think> red </think> \\boxed{red}"
    output = SelfRewardStage(config, tokenizer, generate).run([described] * 3, ["What color?"] * 3)

    assert output.reanswers_clipped == [1, 0, 2]
    assert output.metrics[PASS2_CLIP_RATIO] == pytest.approx(3 / 6)
    with caplog.at_level("WARNING"):
        warnings = warn_on_clipping(output.metrics, TRAINER_CAP_KEYS, "training step 3")
    assert warnings == [
        "training step 3: 50.0% of re-answers were cut at their length cap (self_reward/pass2_clip_ratio > 5%) "
        "and are scored without their end, usually as wrong; raise self_reward.max_response_length"
    ]
    assert warnings[0] in caplog.text
    assert warn_on_clipping({PASS2_CLIP_RATIO: 0.05}, TRAINER_CAP_KEYS, "step") == []  # 5% itself is fine


def test_paper_v2_tags_perception_and_reprompt():
    from verl.data.format_prompt import REPROMPT_TEMPLATE_PAPER_V2

    response = "<visual reasoning>two circles</visual reasoning><think>t</think><answer>2</answer>"
    assert perception_of(response, "zero", "paper_v2") == "two circles"
    assert perception_of(response, "zero") is None  # the sr1 tags look for <description>
    text = build_reprompt("two circles", "How many?", "paper_v2")
    assert text == REPROMPT_TEMPLATE_PAPER_V2.format(description="two circles", question="How many?")
    assert "<answer> </answer>" in text and "boxed" not in text
