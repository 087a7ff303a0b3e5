"""Between DataProto and the engine interface: prompt rows -> GenerationRequests, and engine
outputs -> the padded response tensors the trainer uses. Serves the rollout pass and the
self-reward pass alike."""

from __future__ import annotations

import numpy as np
import torch

from verl.protocol import DataProto
from verl.workers.rollout.base import GenerationOutput, GenerationRequest


def requests_from_batch(prompts: DataProto) -> list[GenerationRequest]:
    """One request per row from `raw_prompt_ids` (unexpanded) and `images` (absent or empty for
    text-only prompts)."""
    raw = prompts.non_tensor_batch["raw_prompt_ids"]
    images = prompts.non_tensor_batch.get("images")
    return [
        GenerationRequest(prompt_ids=list(raw[i]), images=list(images[i]) if images is not None and images[i] else [])
        for i in range(len(prompts))
    ]


def build_rollout_batch(
    prompts: DataProto, outputs: list[list[GenerationOutput]], max_response_length: int, pad_token_id: int
) -> DataProto:
    """Prompt rows x n outputs -> rows (len(prompts) * n, interleaved: the n samples of a prompt
    stay adjacent) with `responses`/`response_mask` (right-padded to max_response_length),
    `input_ids`/`attention_mask` = prompt ++ response, `rollout_log_probs` (0 where the engine
    gave none) and the prompt's non-tensor fields repeated."""
    n = len(outputs[0]) if outputs else 1
    if any(len(o) != n for o in outputs):
        raise ValueError("engine returned a different number of samples for some prompts")
    rows = len(prompts) * n
    responses = torch.full((rows, max_response_length), pad_token_id, dtype=torch.long)
    response_mask = torch.zeros((rows, max_response_length), dtype=torch.long)
    rollout_log_probs = torch.zeros((rows, max_response_length), dtype=torch.float32)
    finished = np.zeros(rows, dtype=bool)
    for i, samples in enumerate(outputs):
        for j, sample in enumerate(samples):
            row = i * n + j
            ids = sample.token_ids[:max_response_length]
            responses[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            response_mask[row, : len(ids)] = 1
            if sample.logprobs is not None:
                rollout_log_probs[row, : len(ids)] = torch.tensor(sample.logprobs[: len(ids)], dtype=torch.float32)
            finished[row] = sample.finished
    repeated = prompts.repeat(n, interleave=True)
    batch = repeated.batch
    tensors = {
        "prompts": batch["input_ids"],
        "responses": responses,
        "response_mask": response_mask,
        "input_ids": torch.cat([batch["input_ids"], responses], dim=1),
        "attention_mask": torch.cat([batch["attention_mask"], response_mask], dim=1),
        "rollout_log_probs": rollout_log_probs,
    }
    non_tensors = dict(repeated.non_tensor_batch)
    non_tensors["finished"] = finished
    return DataProto.from_dict(tensors=tensors, non_tensors=non_tensors, meta_info=dict(prompts.meta_info))
