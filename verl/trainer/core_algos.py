"""Moved to `verl.algorithms.core_algos` (pure maths below both the trainer and the workers);
this name stays the same module object for existing imports."""

import sys

from verl.algorithms import core_algos as _core_algos

sys.modules[__name__] = _core_algos
