import pytest

from verl.rewards.format import cot_format_ok, extract_description, r1v_format_ok, sr1_format_ok

GOOD_SR1 = r"<description>A red ball on a table.</description><think>The ball is red.</think>\boxed{red}"


@pytest.mark.parametrize(
    "response",
    [
        GOOD_SR1,
        "\n  " + GOOD_SR1 + "\n\n",  # surrounding whitespace
        "<description>\nA red ball.\n</description>\n\n<think>\nRed.\n</think>\n\\boxed{red}",
        r"<description>a</description> <think>b</think> \boxed{\frac{1}{2}}",  # nested braces
        r"< description >a</ description ><think >b</think>\boxed{c}",  # spaces inside tags
        r"<description>a</description><think>try \boxed{1}</think>\boxed{2}",  # box inside think is fine
        r"<description>a</description><think>b</think>\boxed {c}",
    ],
)
def test_sr1_format_accepts(response: str) -> None:
    assert sr1_format_ok(response) is True


@pytest.mark.parametrize(
    "response",
    [
        r"<think>b</think><description>a</description>\boxed{c}",  # wrong order
        r"<think>b</think>\boxed{c}",  # no description
        r"<description>a</description>\boxed{c}",  # no think
        r"<description>a</description><think>b</think>",  # no answer
        r"<description>a</description><think>b</think>c",  # answer not boxed
        r"<description>a</description><think>b</think>\boxed{c}.",  # trailing text, even a period
        r"<description>a</description><think>b</think>\boxed{c} because b",
        r"Sure! <description>a</description><think>b</think>\boxed{c}",  # leading text
        r"<description>a</description>x<think>b</think>\boxed{c}",  # text between blocks
        r"<description>a</description><think>b</think>\boxed{c}\boxed{d}",  # two answers
        r"<description>a</description><think>b</think>\boxed{}",  # empty answer
        r"<description>a</description><think>b</think>\boxed{c",  # unclosed box
        r"<description>a</description><think>b</think>\boxed{c}}",  # unbalanced box
        r"<description> </description><think>b</think>\boxed{c}",  # blank description
        r"<description>a</description><think></think>\boxed{c}",  # empty think
        r"<description>a<think>x</think></description><think>b</think>\boxed{c}",  # tags nested
        r"<description>a</description><think>b</think><think>c</think>\boxed{d}",  # two thinks
        r"<description>a</description><think>b\boxed{c}",  # unclosed think
        "",
    ],
)
def test_sr1_format_rejects(response: str) -> None:
    assert sr1_format_ok(response) is False


def test_sr1_format_of_non_string_is_false() -> None:
    assert sr1_format_ok(None) is False  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("response", "ok"),
    [
        (r"<think>b</think>\boxed{c}", True),
        (r" <think>b</think>  \boxed{c} ", True),
        (r"<think>b</think> The answer is \boxed{c}.", False),
        (r"<description>a</description><think>b</think>\boxed{c}", False),
        (r"<think></think>\boxed{c}", False),
    ],
)
def test_cot_format(response: str, ok: bool) -> None:
    assert cot_format_ok(response) is ok


@pytest.mark.parametrize(
    ("response", "ok"),
    [
        (r"<think>b</think>\boxed{c}", True),
        (r"<think>b</think> The answer is \boxed{c}.", True),
        (r"<think>b</think><answer>\boxed{c}</answer>", True),
        (r"<think>b</think> The answer is c.", False),  # no box
        (r"<think>b \boxed{c}</think> done", False),  # box only inside think
        (r"<think>b</think>\boxed{}", False),
        (r"intro <think>b</think>\boxed{c}", False),
        (r"<think>b</think>\boxed{c}<think>again</think>", False),
        (r"<description>a</description><think>b</think>\boxed{c}", False),
    ],
)
def test_r1v_format(response: str, ok: bool) -> None:
    assert r1v_format_ok(response) is ok


@pytest.mark.parametrize(
    ("response", "description"),
    [
        (GOOD_SR1, "A red ball on a table."),
        ("<description>\n  padded  \n</description>", "padded"),
        ("<description></description><think>x</think>", ""),  # empty: "" (caller treats as missing)
        ("<description>first</description> <description>second</description>", "first"),
        ("<description>a<description>b</description>c</description>", "a<description>b"),  # up to first close
        ("< description >spaced</description >", "spaced"),
        ("</description>stray<description>real</description>", "real"),
        ("no tags at all", None),
        ("<description>never closed", None),
        ("<think>x</think>\\boxed{1}", None),
        ("", None),
    ],
)
def test_extract_description(response: str, description: str | None) -> None:
    assert extract_description(response) == description


def test_extract_description_of_non_string_is_none() -> None:
    assert extract_description(None) is None  # type: ignore[arg-type]


# The tags each built-in reward's format check requires; every recipe's prompt must ask for them.
_REQUIRED_TAGS = {
    "sr1": ("<description>", "</description>", "<think>", "</think>", "\\boxed{}"),
    "see_think": ("<description>", "</description>", "<think>", "</think>", "\\boxed{}"),
    "r1v": ("<think>", "</think>", "\\boxed{}"),
    "cot": ("<think>", "</think>", "\\boxed{}"),
}


def _recipe_configs():
    from pathlib import Path

    return sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("config_path", _recipe_configs(), ids=lambda path: path.name)
def test_every_recipe_prompt_asks_for_what_its_reward_checks(config_path) -> None:
    from omegaconf import OmegaConf

    config = OmegaConf.load(config_path)
    prompt_file = OmegaConf.select(config, "data.format_prompt")
    reward = OmegaConf.select(config, "reward.reward_function")
    if prompt_file is None or reward not in _REQUIRED_TAGS:
        pytest.skip(f"{config_path.name}: no format prompt or no built-in reward")
    prompt = (config_path.parents[1] / prompt_file).read_text()
    missing = [tag for tag in _REQUIRED_TAGS[reward] if tag not in prompt]
    assert not missing, f"{prompt_file} (reward {reward}) never asks for {missing}"


def test_paper_v2_tags_format_perception_and_graded_answer():
    """The ICLR 2026 paper's tags: <visual reasoning> holds the perception, <answer> the graded answer."""
    from verl.rewards.format import extract_perception, graded_answer, sr1_v2_format_ok

    good = "<visual reasoning> A red ball. </visual  reasoning>\n<think>It is red.</think> < answer >red</answer>"
    assert sr1_v2_format_ok(good)
    assert extract_perception(good, "paper_v2") == "A red ball." and extract_perception(good, "sr1") is None
    assert graded_answer(good, "paper_v2") == r"\boxed{red}"
    assert graded_answer(r"<answer>\boxed{3}</answer>", "paper_v2") == r"\boxed{3}"
    assert graded_answer(r"<think>x</think>\boxed{red}", "paper_v2") == ""  # no <answer> block: wrong
    assert graded_answer(r"\boxed{red}", "sr1") == r"\boxed{red}"
    for bad in (
        good + " trailing text",
        "<visual reasoning> </visual reasoning><think>t</think><answer>red</answer>",  # blank perception
        "<think>t</think><visual reasoning>v</visual reasoning><answer>red</answer>",  # order
        r"<description>v</description><think>t</think>\boxed{red}",  # the sr1 tags
    ):
        assert not sr1_v2_format_ok(bad), bad
