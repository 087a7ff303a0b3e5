"""verl.eval.score on hand-written responses: hand-computed metrics, real local judge servers,
and the tiny model re-answering perceptions through the real HF engine."""

import json
import time

import pytest
from transformers import AutoTokenizer

from verl.eval.score import (
    ResponseRecord,
    main,
    parse_judgment,
    read_records,
    reanswer_with_engine,
    score_records,
)
from verl.rewards.grader import grade_response
from verl.rewards.loader import RewardFunctionError, load_reward_function
from verl.toy.tiny_model import TinyModelSpec
from verl.workers.rollout.hf import HFRolloutEngine

# Six responses, each a distinct case (format/accuracy by sr1's rules):
#   0 full format, correct            3 correct, trailing "." breaks the format
#   1 full format, wrong              4 no box, no description, cut at the budget
#   2 correct, no description         5 full format, correct, uninformative description
RECORDS = [
    ("color", False, "red", "What color is the circle?",
     "<description>A red circle.</description> <think>The circle is red.</think> \\boxed{red}", 12, True),
    ("color", True, "blue", "What color is the square?",
     "<description>A blue square.</description> <think>It looks green.</think> \\boxed{green}", 14, True),
    ("count", False, "2", "How many shapes are in the image?",
     "<think>Two shapes.</think> \\boxed{2}", 8, True),
    ("position", True, "left", "Is the blue triangle on the left or on the right?",
     "<description>The blue triangle is on the left.</description> <think>Left.</think> \\boxed{left}.", 16, True),
    ("color", False, "red", "What color is the circle?", "It might be red or blue", 30, False),
    ("shape", True, "circle", "What shape is the red object?",
     "<description>A shape.</description> <think>Round.</think> \\boxed{circle}", 10, True),
]
N = len(RECORDS)
ACCURACY = 4 / 6  # records 0, 2, 3, 5
FORMAT = 3 / 6  # records 0, 1, 5
# The fixed judge answers "red": only record 0 (described, ground truth red) has a sufficient perception.
PERCEPTION_RED_JUDGE = 1 / 6
SHORTCUT_RED_JUDGE = 3 / 6  # correct but insufficient: records 2, 3, 5
DESCRIBED = 4  # records 0, 1, 3, 5 are re-asked


@pytest.fixture
def records_path(tmp_path) -> str:
    path = tmp_path / "responses.jsonl"
    with open(path, "w", encoding="utf-8") as file:
        for index, (question_type, distractor, answer, question, response, length, finished) in enumerate(RECORDS):
            record = {
                "dataset_index": index, "sample_index": 0, "prompt": f"user\n{question}\nassistant\n",
                "response": response, "ground_truth": answer, "problem": question,
                "response_length": length, "finished": finished,
                "question_type": question_type, "distractor": distractor,
            }
            file.write(json.dumps(record) + "\n")
    return str(path)


def read_jsonl(path) -> list[dict]:
    with open(path, encoding="utf-8") as file:
        return [json.loads(line) for line in file]


def test_accuracy_format_length_and_groups_without_reanswers(records_path, tmp_path):
    summary = main(["--input", records_path, "--reward", "see_think"])

    overall = summary["overall"]
    assert overall["n"] == N and overall["n_prompts"] == N
    assert overall["accuracy"] == pytest.approx(ACCURACY)
    assert overall["format"] == pytest.approx(FORMAT)
    assert overall["response_length"] == pytest.approx((12 + 14 + 8 + 16 + 30 + 10) / 6)
    assert overall["truncated"] == pytest.approx(1 / 6)
    assert "perception_sufficient" not in overall
    assert "accuracy_best_of_n" not in overall  # one sample per prompt
    assert set(summary["groups"]) == {"question_type", "distractor"}
    color = summary["groups"]["question_type"]["color"]  # records 0, 1, 4
    assert (color["n"], color["accuracy"], color["format"]) == (3, pytest.approx(1 / 3), pytest.approx(2 / 3))
    assert summary["groups"]["distractor"]["true"]["accuracy"] == pytest.approx(2 / 3)  # records 1, 3, 5

    assert json.load(open(tmp_path / "responses.summary.json", encoding="utf-8")) == summary
    scored = read_jsonl(tmp_path / "responses.scored.jsonl")
    assert [row["scores"]["accuracy"] for row in scored] == [1.0, 0.0, 1.0, 1.0, 0.0, 1.0]


def test_several_samples_per_prompt_give_best_of_n_and_group_spread(tmp_path, capsys):
    # Prompt 0: one of three samples right; prompt 1: none; prompt 2: all three.
    right = "<description>A red circle.</description> <think>Red.</think> \\boxed{red}"
    wrong = "<description>A red circle.</description> <think>Blue.</think> \\boxed{blue}"
    samples = {0: [right, wrong, wrong], 1: [wrong, wrong, wrong], 2: [right, right, right]}
    path = tmp_path / "sampled.jsonl"
    with open(path, "w", encoding="utf-8") as file:
        for index, responses in samples.items():
            for sample_index, response in enumerate(responses):
                file.write(json.dumps({
                    "dataset_index": index, "sample_index": sample_index, "response": response,
                    "ground_truth": "red", "problem": "What color is the circle?",
                    "question_type": "color" if index < 2 else "count",
                }) + "\n")

    summary = main(["--input", str(path), "--reward", "see_think"])

    overall = summary["overall"]
    assert (overall["n"], overall["n_prompts"]) == (9, 3)
    assert overall["accuracy"] == pytest.approx(4 / 9)
    assert overall["accuracy_best_of_n"] == pytest.approx(2 / 3)
    assert overall["accuracy_group_spread"] == pytest.approx(1 / 3)
    color = summary["groups"]["question_type"]["color"]  # prompts 0 and 1
    assert (color["accuracy_best_of_n"], color["accuracy_group_spread"]) == (0.5, 0.5)
    assert "best_of_n" in capsys.readouterr().out


def test_explicit_grouping_and_a_missing_group_column(records_path):
    summary = main(["--input", records_path, "--reward", "see_think", "--group_by", "distractor"])
    assert list(summary["groups"]) == ["distractor"]
    with pytest.raises(ValueError, match="responses.jsonl line 1: no column 'subject' to group by"):
        main(["--input", records_path, "--reward", "see_think", "--group_by", "subject"])


def test_a_reward_function_that_hangs_is_an_error_naming_it_and_the_file(records_path, tmp_path):
    reward_file = tmp_path / "slow_reward.py"
    reward_file.write_text("import time\n\ndef score(reward_inputs):\n    time.sleep(60)\n")
    start = time.monotonic()
    with pytest.raises(RewardFunctionError, match=rf"slow_reward.py:score.*{records_path}.*did not return within 0.5 s \(--reward_timeout_s\)"):
        main(["--input", records_path, "--reward", f"{reward_file}:score", "--reward_timeout_s", "0.5"])
    assert time.monotonic() - start < 10
    with pytest.raises(ValueError, match="--reward_timeout_s must be > 0"):
        main(["--input", records_path, "--reward", "see_think", "--reward_timeout_s", "0"])


def test_sr1_without_a_reanswerer_is_refused(records_path):
    with pytest.raises(ValueError, match="add --self_reward_model DIR or --judge openai"):
        main(["--input", records_path, "--reward", "sr1"])


def test_openai_perception_judge_gives_sufficiency_and_shortcut_rate(records_path, monkeypatch, chat_server):
    monkeypatch.setenv("EVAL_TEST_KEY", "secret-from-env")
    with chat_server(lambda body: (200, "<think>It says red.</think> \\boxed{red}")) as server:
        summary = main([
            "--input", records_path, "--judge", "openai", "--judge_base_url", server.base_url,
            "--judge_model", "judge-m", "--judge_api_key_env", "EVAL_TEST_KEY",
        ])

    assert summary["reward"] == "sr1"
    overall = summary["overall"]
    assert overall["accuracy"] == pytest.approx(ACCURACY)
    assert overall["perception_sufficient"] == pytest.approx(PERCEPTION_RED_JUDGE)
    assert overall["language_shortcut"] == pytest.approx(SHORTCUT_RED_JUDGE)
    assert overall["description_missing"] == pytest.approx(2 / 6)
    assert overall["reanswer_error"] == 0.0
    by_distractor = summary["groups"]["distractor"]
    assert by_distractor["false"]["language_shortcut"] == pytest.approx(1 / 3)  # record 2
    assert by_distractor["true"]["language_shortcut"] == pytest.approx(2 / 3)  # records 3, 5

    assert len(server.requests) == DESCRIBED
    prompts = sorted(request["messages"][0]["content"] for request in server.requests)
    assert prompts[0].startswith("Text description: A blue square.\nQuestion: What color is the square?\n")
    assert all(request["model"] == "judge-m" and request["temperature"] == 0.0 for request in server.requests)
    assert all(headers["Authorization"] == "Bearer secret-from-env" for headers in server.headers)


def test_judge_errors_count_as_errors_and_retries_are_bounded(records_path, chat_server):
    with chat_server(lambda body: (500, "server down")) as server:
        start = time.monotonic()
        summary = main([
            "--input", records_path, "--judge", "openai", "--judge_base_url", server.base_url,
            "--judge_model", "judge-m", "--judge_max_retries", "1", "--judge_max_error_rate", "1",
        ])
        elapsed = time.monotonic() - start

    assert elapsed < 5.0
    assert len(server.requests) == DESCRIBED * 2  # one try + one retry each, then given up
    overall = summary["overall"]
    assert overall["reanswer_error"] == pytest.approx(DESCRIBED / N)
    assert overall["perception_sufficient"] == 0.0  # an error is never a sufficient perception
    assert overall["language_shortcut"] == pytest.approx(ACCURACY)


def test_answer_judge_rechecks_only_wrong_answers(records_path, tmp_path, chat_server):
    with chat_server(lambda body: (200, "<judgment>correct</judgment>")) as server:
        summary = main([
            "--input", records_path, "--reward", "see_think",
            "--answer_judge_base_url", server.base_url, "--answer_judge_model", "grader",
        ])
    assert summary["overall"]["judged_accuracy"] == 1.0
    assert summary["overall"]["accuracy"] == pytest.approx(ACCURACY)
    contents = {request["messages"][0]["content"].split("\n")[1]: request["messages"][0]["content"]
                for request in server.requests}
    # Only records 1 and 4 were asked: the rule-graded wrong ones.
    assert sorted(contents) == ["Question: What color is the circle?", "Question: What color is the square?"]
    assert "Reference answer: blue\nCandidate answer: green\n" in contents["Question: What color is the square?"]
    # Record 4 has no box: the judge sees the whole response.
    assert "Reference answer: red\nCandidate answer: It might be red or blue\n" in contents[
        "Question: What color is the circle?"
    ]
    verdicts = [row.get("answer_judge_verdict") for row in read_jsonl(tmp_path / "responses.scored.jsonl")]
    assert verdicts == [None, "correct", None, None, "correct", None]


def test_answer_judge_replies_without_a_verdict_are_errors(records_path, chat_server):
    with chat_server(lambda body: (200, "Looks right to me.")) as server:
        summary = main([
            "--input", records_path, "--reward", "see_think",
            "--answer_judge_base_url", server.base_url, "--answer_judge_model", "grader",
        ])
    assert summary["overall"]["judged_accuracy"] == pytest.approx(ACCURACY)
    assert summary["overall"]["answer_judge_error"] == pytest.approx(2 / 6)


@pytest.mark.parametrize(
    ("reply", "verdict"),
    [
        ("<judgment>correct</judgment>", True),
        ("<judgment> Incorrect </judgment>", False),
        ("first <judgment>correct</judgment>, on reflection <judgment>incorrect</judgment>", False),
        ("incorrect", None),
        ("<judgment>partly correct</judgment>", None),
    ],
)
def test_parse_judgment(reply, verdict):
    assert parse_judgment(reply) is verdict


def test_malformed_records_name_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"dataset_index": 0, "response": "x", "ground_truth": "y", "problem": "q"})
                    + "\n" + json.dumps({"dataset_index": 1, "response": "x", "problem": "q"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl line 2: missing \['ground_truth'\]"):
        read_records(str(path))
    path.write_text("{not json\n")
    with pytest.raises(ValueError, match="bad.jsonl line 1: not JSON"):
        read_records(str(path))


class CountingHFEngine(HFRolloutEngine):
    """The real HF engine, counting its generate() calls."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = 0

    def generate(self, requests, sampling):
        self.calls += 1
        return super().generate(requests, sampling)


def test_model_reanswers_run_in_one_engine_call(tiny_model_dir, records_path):
    spec = TinyModelSpec()
    engine = CountingHFEngine(tiny_model_dir, min_pixels=spec.min_pixels, max_pixels=spec.max_pixels)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    records: list[ResponseRecord] = read_records(records_path)

    reanswers = reanswer_with_engine(
        engine, tokenizer, [r.response for r in records], [r.problem for r in records],
        missing_description="zero", max_prompt_length=512, max_response_length=8,
    )

    assert engine.calls == 1
    assert reanswers.descriptions == [
        "A red circle.", "A blue square.", None, "The blue triangle is on the left.", None, "A shape.",
    ]
    assert [len(texts) for texts in reanswers.texts] == [1, 1, 0, 1, 0, 1]
    scores = score_records(records, load_reward_function("sr1"), reanswers)
    for record, texts, score in zip(records, reanswers.texts, scores):
        sufficient = float(bool(texts) and grade_response(texts[0], record.ground_truth, record.problem))
        assert score["perception_sufficient"] == sufficient
        assert score["language_shortcut"] == float(score["accuracy"] == 1.0 and not sufficient)


def test_cli_with_self_reward_model(tiny_model_dir, records_path, tmp_path, caplog):
    summary = main([
        "--input", records_path, "--self_reward_model", tiny_model_dir, "--engine", "hf",
        "--reanswer_max_response_length", "8",
    ])
    assert summary["reanswerer"] == f"model:{tiny_model_dir}"
    assert summary["reanswer_metrics"]["self_reward/reprompt_truncated_rate"] == 0.0
    assert summary["overall"]["description_missing"] == pytest.approx(2 / 6)
    rows = read_jsonl(tmp_path / "responses.scored.jsonl")
    assert [len(row["reanswers"]) for row in rows] == [1, 1, 0, 1, 0, 1]
    # The random model never stops within 8 tokens: every re-answer is cut at the cap, and the
    # summary says so under the trainer's names (record 4 of 6 is the one cut response).
    assert [row.get("reanswers_clipped") for row in rows] == [1, 1, 0, 1, 0, 1]
    assert summary["clip_ratios"] == {"response/clip_ratio": pytest.approx(1 / 6), "self_reward/pass2_clip_ratio": 1.0}
    assert "raise verl.eval.score --reanswer_max_response_length" in caplog.text
    assert "16.7% of responses" in caplog.text and "raise verl.eval.generate --max_response_length" in caplog.text
    for row in rows:
        sufficient = float(bool(row["reanswers"]) and grade_response(row["reanswers"][0], row["ground_truth"]))
        assert row["scores"]["perception_sufficient"] == sufficient
    assert summary["overall"]["perception_sufficient"] == pytest.approx(
        sum(row["scores"]["perception_sufficient"] for row in rows) / N
    )


def write_blank_twin(records_path, tmp_path, blank_responses: dict[int, str], drop: int | None = None) -> str:
    """The records file with the given responses replaced (as answered with blank images)."""
    path = tmp_path / "responses.blank.jsonl"
    with open(path, "w", encoding="utf-8") as file:
        for record in read_jsonl(records_path):
            if record["dataset_index"] == drop:
                continue
            record["response"] = blank_responses.get(record["dataset_index"], record["response"])
            file.write(json.dumps(record) + "\n")
    return str(path)


def test_blank_image_control_is_summarised_overall_and_per_group(records_path, tmp_path):
    # With blank images: record 0 answers blue (was red, correct), record 3 answers right (was left,
    # correct), record 1 answers blue (was green, wrong -> now correct); the rest answer the same.
    blank_path = write_blank_twin(
        records_path, tmp_path, {0: "\\boxed{blue}", 1: "\\boxed{blue}", 3: "\\boxed{right}"}
    )
    summary = main(["--input", records_path, "--reward", "see_think", "--blank_input", blank_path])

    overall = summary["overall"]
    assert overall["vision_reliance"] == pytest.approx(3 / 6)
    # correct with blank images: 1, 2, 5 (record 4 has no answer either way)
    assert overall["accuracy_blank_image"] == pytest.approx(3 / 6)
    assert overall["accuracy_drop"] == pytest.approx(ACCURACY - 3 / 6)
    color = summary["groups"]["question_type"]["color"]  # records 0, 1, 4
    assert color["vision_reliance"] == pytest.approx(2 / 3)
    assert color["accuracy_blank_image"] == pytest.approx(1 / 3)
    scored = read_jsonl(tmp_path / "responses.scored.jsonl")
    assert scored[0]["blank_image_response"] == "\\boxed{blue}"
    assert scored[0]["scores"]["vision_reliance"] == 1.0


def test_blank_image_control_names_a_missing_twin(records_path, tmp_path):
    blank_path = write_blank_twin(records_path, tmp_path, {}, drop=2)
    with pytest.raises(ValueError, match="no blank-image response for dataset_index 2"):
        main(["--input", records_path, "--reward", "see_think", "--blank_input", blank_path])
