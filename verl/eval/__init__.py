"""Benchmark evaluation: ``generate`` writes responses (one JSON line each, resumable) through a
rollout engine; ``score`` grades them (accuracy, format) and measures perception sufficiency and
the language-shortcut rate by re-answering each response's perception text-only, with a model or
an OpenAI-compatible judge. Scripts per benchmark: ``validation_examples/``."""
