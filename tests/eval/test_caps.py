"""The evaluation cuts responses and re-answers where the trainer's validation does: with other caps
the two report different perception and shortcut rates for the same model and data (a re-answer cut
before its box scores visual 0), so their defaults are the recipes' own."""

import re
from pathlib import Path

from verl.eval import generate, score
from verl.trainer.config import PPOConfig, load_config

REPO = Path(__file__).resolve().parents[2]


def _shell_defaults(script: Path) -> dict[str, str]:
    """`NAME=${NAME:-value}` defaults of a shell script."""
    return dict(re.findall(r"^(\w+)=\$\{\1:-([^}]*)\}$", script.read_text(), re.MULTILINE))


def test_the_tiny_eval_script_uses_the_tiny_recipes_caps():
    config = load_config(PPOConfig, str(REPO / "configs/tiny_cpu_selfReward.yaml"), [])
    defaults = _shell_defaults(REPO / "validation_examples/tiny_cpu.sh")
    assert {key: int(defaults[key]) for key in ("MAX_PROMPT_LENGTH", "MAX_RESPONSE_LENGTH",
                                                "REANSWER_MAX_PROMPT_LENGTH", "REANSWER_MAX_RESPONSE_LENGTH")} == {
        "MAX_PROMPT_LENGTH": config.data.max_prompt_length,
        "MAX_RESPONSE_LENGTH": config.data.max_response_length,
        "REANSWER_MAX_PROMPT_LENGTH": config.self_reward.max_prompt_length,
        "REANSWER_MAX_RESPONSE_LENGTH": config.self_reward.max_response_length,
    }
    text = (REPO / "validation_examples/tiny_cpu.sh").read_text()
    assert f"--min_pixels {config.data.min_pixels} --max_pixels {config.data.max_pixels}" in text


def test_the_eval_clis_default_to_the_gpu_recipes_caps():
    config = load_config(PPOConfig, str(REPO / "configs/qwen2_5_vl_7b_selfReward.yaml"), [])
    generate_args = generate.parse_args(["--model_path", "m", "--data", "d", "--output", "o.jsonl"])
    score_args = score.parse_args(["--input", "o.jsonl"])
    assert generate_args.max_response_length == config.data.max_response_length
    assert score_args.reanswer_max_response_length == config.self_reward.max_response_length
    assert score_args.reanswer_max_prompt_length == config.self_reward.max_prompt_length
    assert (generate_args.min_pixels, generate_args.max_pixels) == (config.data.min_pixels, config.data.max_pixels)
