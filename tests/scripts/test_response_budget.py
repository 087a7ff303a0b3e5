"""scripts/response_budget.py: the recipe's response budget covers the longest SFT answer."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoTokenizer

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "scripts"))
from response_budget import longest_answer_tokens, response_budget  # noqa: E402


def write_sft(path: Path, answers: list[str]) -> str:
    records = [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": a}]} for a in answers]
    path.write_text(json.dumps(records))
    return str(path)


def test_budget_rounds_the_longest_answer_up_and_keeps_the_recipe_floor():
    assert response_budget(71) == 96 and response_budget(96) == 96
    assert response_budget(97) == 128 and response_budget(113) == 128 and response_budget(129) == 160


def test_longest_answer_is_counted_with_its_end_token(tiny_model_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    long_answer = "<description> " + "a red circle, " * 40 + "</description> \\boxed{red}"
    sft = write_sft(tmp_path / "sft.json", ["\\boxed{red}", long_answer])
    assert longest_answer_tokens(sft, tokenizer) == len(tokenizer(long_answer).input_ids) + 1
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts/response_budget.py"), "--model", tiny_model_dir, "--sft", sft],
        capture_output=True, text=True, check=True,
    )
    assert int(result.stdout) == response_budget(len(tokenizer(long_answer).input_ids) + 1) > 96


def test_a_record_without_an_answer_is_named(tiny_model_dir, tmp_path):
    sft = tmp_path / "sft.json"
    sft.write_text(json.dumps([{"messages": [{"role": "user", "content": "q"}]}]))
    with pytest.raises(ValueError, match="sft.json: record 0 has no assistant turn"):
        longest_answer_tokens(str(sft), AutoTokenizer.from_pretrained(tiny_model_dir))
