"""Jinja format prompts (configs/format_prompt/*.jinja): the instruction wrapped around a question."""

import os

import jinja2


def load_format_prompt(path: str) -> jinja2.Template:
    """Template rendered with ``content=<question>``; undefined variables are errors, not blanks."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"format prompt file not found: {path}")
    with open(path, encoding="utf-8") as file:
        return jinja2.Template(file.read(), undefined=jinja2.StrictUndefined)
