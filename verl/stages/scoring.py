"""The reward stage: decoded responses (+ the self-reward's re-answers) -> per-response reward
components, batched through the configured reward function on the driver."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from verl.protocol import DataProto
from verl.rewards import RewardInput


def decode_responses(data: DataProto, tokenizer: PreTrainedTokenizerBase) -> list[str]:
    rows = [ids[mask.bool()] for ids, mask in zip(data.batch["responses"], data.batch["response_mask"])]
    return tokenizer.batch_decode(rows, skip_special_tokens=True)


def score_responses(
    reward_fn: Callable[..., list[dict[str, float]]],
    responses: list[str],
    data: DataProto,
    reanswers: list[list[str]] | None,
    descriptions: list[str | None] | None,
    batch: str = "a batch",
) -> dict[str, torch.Tensor]:
    """Component name -> (bs,) float tensor; always contains `overall`. `batch` names the batch
    in the reward function's errors (e.g. "training step 7")."""
    ground_truth = data.non_tensor_batch["ground_truth"]
    problems = data.non_tensor_batch["problem"]
    lengths = data.batch["response_mask"].sum(-1).tolist()
    inputs = [
        RewardInput(
            response=responses[i],
            ground_truth=str(ground_truth[i]),
            problem=str(problems[i]),
            response_length=int(lengths[i]),
            reanswers=reanswers[i] if reanswers is not None else [],
            description=descriptions[i] if descriptions is not None else None,
        )
        for i in range(len(responses))
    ]
    results = reward_fn(inputs, batch=batch)
    names = sorted(set().union(*(r.keys() for r in results)))
    return {name: torch.tensor([float(r.get(name, np.nan)) for r in results], dtype=torch.float32) for name in names}
