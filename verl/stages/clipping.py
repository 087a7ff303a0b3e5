"""Truncation made visible: the share of responses (and self-reward re-answers) cut at their
length cap, and the warning when it is high enough to bias the rewards.

A response cut before its final answer scores 0 as if it were wrong, and a re-answer cut before
its `\\boxed{}` zeroes the visual reward, so a cap that is too tight lowers every reward silently.
The trainer (per step and in validation) and `verl.eval.score` report the same two ratios under
the same names, each warning naming the setting that raises its cap.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np


logger = logging.getLogger(__name__)

CLIP_WARNING_RATIO = 0.05
"""A clip ratio above this gets a warning."""
RESPONSE_CLIP_RATIO = "response/clip_ratio"
"""Share of first-pass responses cut at their cap (`data.max_response_length`)."""
PASS2_CLIP_RATIO = "self_reward/pass2_clip_ratio"
"""Share of self-reward re-answers cut at their cap (`self_reward.max_response_length`)."""
TRAINER_CAP_KEYS = {
    RESPONSE_CLIP_RATIO: "data.max_response_length",
    PASS2_CLIP_RATIO: "self_reward.max_response_length",
}
"""Clip ratio -> the trainer config key that sets its cap."""


def clip_ratio(finished: np.ndarray) -> float:
    """Share of rows the engine stopped at the cap rather than at a stop token, from their
    `finished` flags (a rollout's `non_tensor_batch["finished"]`, set per row by
    `verl.workers.rollout.batching.build_rollout_batch`, or several rollouts' concatenated)."""
    return 1.0 - float(np.asarray(finished, dtype=bool).mean())


def warn_on_clipping(ratios: Mapping[str, float], cap_keys: Mapping[str, str], where: str) -> list[str]:
    """Logs (and returns) one warning per ratio of `ratios` above CLIP_WARNING_RATIO; `cap_keys`
    maps each ratio name to the setting that raises its cap; `where` names the step or file."""
    warnings = []
    for name, setting in cap_keys.items():
        ratio = ratios.get(name)
        if ratio is None or ratio <= CLIP_WARNING_RATIO:
            continue
        what = "re-answers" if name == PASS2_CLIP_RATIO else "responses"
        warnings.append(
            f"{where}: {100 * ratio:.1f}% of {what} were cut at their length cap ({name} > "
            f"{100 * CLIP_WARNING_RATIO:.0f}%) and are scored without their end, usually as wrong; raise {setting}"
        )
        logger.warning(warnings[-1])
    return warnings
