"""Prompt texts: jinja format prompts (configs/format_prompt/*.jinja) wrapped around a question, and the
Vision-SR1 self-reward re-prompt."""

import os

import jinja2


def load_format_prompt(path: str) -> jinja2.Template:
    """Template rendered with ``content=<question>``; undefined variables are errors, not blanks."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"format prompt file not found: {path}")
    with open(path, encoding="utf-8") as file:
        return jinja2.Template(file.read(), undefined=jinja2.StrictUndefined)


REPROMPT_TEMPLATE = (
    "Text description: {description}\nQuestion: {question}\nYou are provided a text description of a problem "
    "and a question. Determine the answer to the question based on the text description. First provide an "
    "internal step-by-step reasoning within <think> </think> tags, then provide a single word or phrase answer "
    "in \\boxed{{}}."
)
"""The Vision-SR1 self-reward re-prompt (text only): the policy answers from its own perception."""

REPROMPT_TEMPLATE_PAPER_V2 = (
    "Text description: {description}\nQuestion: {question}\nYou are provided a text description of a problem "
    "and a question. Determine the answer to the question based on the text description. First provide an "
    "internal step-by-step reasoning within <think> </think> tags, then provide a single word or phrase answer "
    "within <answer> </answer> tags."
)
"""The same re-prompt in the ICLR 2026 paper's tags (self_reward.tags=paper_v2): the re-answer's
answer goes in <answer>, as the rollout's does."""


def build_reprompt(description: str, question: str, tags: str = "sr1") -> str:
    """The text-only re-prompt; `question` is the original question without `<image>`; `tags`:
    the answer format asked for (sr1: \\boxed{}, paper_v2: <answer>)."""
    template = REPROMPT_TEMPLATE_PAPER_V2 if tags == "paper_v2" else REPROMPT_TEMPLATE
    return template.format(description=description, question=question)
