"""Shared-prompt forwards: a GRPO group's n responses share one copy of their prompt.

GRPO samples n responses per prompt, so a batch of n x P prompt tokens (and n copies of each
image through the vision tower) carries the same prompt n times. Here the rows of one micro-batch
that have the same prompt (same tokens and same images) are packed into ONE sequence

    [prompt | response 1 | response 2 | ... | response k]      (each response in a slot of width R)

with a block attention mask: the prompt is causal as usual, response j attends to the whole
prompt and causally to its own tokens only, never to another response. Response tokens take the
text positions that follow the prompt (the same mrope ids as in the unpacked row), so every
response token sees exactly the keys, values and positions it sees in its own row: log-probs and
gradients equal the unpacked forward up to floating-point summation order (the prompt's
activations receive the sum of the k responses' gradients, which is what k separate copies would
have accumulated into the shared weights). Cost per group: P + k x R tokens instead of
k x (P + R), one vision-tower pass instead of k.

The block mask is a dense (groups, 1, L, L) boolean tensor, which sdpa and eager attention take;
flash-attention-2 takes no custom mask, so this path is only used with sdpa/eager (see
`supports_shared_prefix`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from verl.models.qwen_vl import merge_multi_modal_inputs
from verl.protocol import DataProto

SHARED_PREFIX_ATTENTION = ("sdpa", "eager")


def supports_shared_prefix(attn_implementation: str) -> bool:
    """Whether an attention implementation takes the dense block mask this packing needs."""
    return attn_implementation in SHARED_PREFIX_ATTENTION


def block_mask_for(mask: torch.Tensor, attn_implementation: str, dtype: torch.dtype) -> torch.Tensor:
    """The boolean block mask (True = attend) in the form the attention takes: sdpa a boolean
    mask, eager an additive one (0 where allowed, the dtype's minimum elsewhere)."""
    if attn_implementation == "sdpa":
        return mask
    if attn_implementation == "eager":
        return torch.zeros(mask.shape, dtype=dtype).masked_fill(~mask, torch.finfo(dtype).min)
    raise ValueError(f"shared-prompt packing needs sdpa or eager attention, not {attn_implementation!r}")


def _same_images(a: dict | None, b: dict | None) -> bool:
    if not a or not b:
        return not a and not b
    if a.keys() != b.keys():
        return False
    return all(a[key] is b[key] or torch.equal(a[key], b[key]) for key in a)


def prompt_group_labels(data: DataProto) -> np.ndarray:
    """(bs,) int labels: rows with the same label have the same prompt (real prompt tokens of
    `input_ids` and equal `multi_modal_inputs`). Labels are numbered in order of first row."""
    input_ids = data.batch["input_ids"]
    width = input_ids.shape[1] - data.batch["responses"].shape[1]
    prompt_ids = input_ids[:, :width]
    real = data.batch["attention_mask"][:, :width].bool()
    images = data.non_tensor_batch.get("multi_modal_inputs")
    labels = np.empty(len(data), dtype=np.int64)
    # prompt bytes -> [(label, row of that label's first occurrence)]
    seen: dict[bytes, list[tuple[int, int]]] = {}
    next_label = 0
    for row in range(len(data)):
        key = prompt_ids[row][real[row]].numpy().tobytes()
        candidates = seen.setdefault(key, [])
        for label, first in candidates:
            if images is None or _same_images(images[first], images[row]):
                labels[row] = label
                break
        else:
            candidates.append((next_label, row))
            labels[row] = next_label
            next_label += 1
    return labels


@dataclass
class SharedPrefixBatch:
    """Model inputs of the packed sequences and how to read each row's logits back.

    inputs: `input_ids` (G, L), `attention_mask` (G, 1, L, L) bool, `position_ids` (3, G, L),
        `logits_to_keep` (K*R,) sequence indices, and the images of each group once.
    sequence: (bs,) the packed sequence of each row; kept_index: (bs, R) for each row and
        response token t, the index (into the kept positions) of the position predicting it.
    """

    inputs: dict[str, torch.Tensor]
    sequence: torch.Tensor
    kept_index: torch.Tensor

    def row_outputs(self, kept: torch.Tensor) -> torch.Tensor:
        """(G, K*R, V) outputs at the kept positions -> (bs, R, V) in row order."""
        return kept[self.sequence[:, None], self.kept_index]


def pack_shared_prefix(micro: DataProto, labels: np.ndarray, position_ids_fn) -> SharedPrefixBatch:
    """Packs the rows of `micro` (trimmed: left-padded prompts of width P, right-padded responses
    of width R) by prompt `labels` into sequences of width L = P + K x R, K the largest group.

    `position_ids_fn(prompt_ids, prompt_mask, image_grid_thw) -> (3, G, P)` gives the prompts'
    mrope ids; response token t of every slot gets the prompt's largest position + 1 + t, as
    the model's own rope index gives the text that follows the last image."""
    input_ids = micro.batch["input_ids"]
    attention = micro.batch["attention_mask"]
    response_width = micro.batch["responses"].shape[1]
    prompt_width = input_ids.shape[1] - response_width
    groups = [np.flatnonzero(labels == label) for label in dict.fromkeys(labels.tolist())]
    slots = max(len(rows) for rows in groups)
    num_sequences, length = len(groups), prompt_width + slots * response_width

    packed_ids = torch.zeros(num_sequences, length, dtype=input_ids.dtype)
    real = torch.zeros(num_sequences, length, dtype=torch.bool)
    segment = torch.full((length,), -1, dtype=torch.long)  # -1: prompt, j: response slot j
    segment[prompt_width:] = torch.arange(slots).repeat_interleave(response_width)
    sequence = torch.empty(len(micro), dtype=torch.long)
    slot_of_row = torch.empty(len(micro), dtype=torch.long)
    for g, rows in enumerate(groups):
        first = int(rows[0])
        packed_ids[g, :prompt_width] = input_ids[first, :prompt_width]
        real[g, :prompt_width] = attention[first, :prompt_width].bool()
        for slot, row in enumerate(rows.tolist()):
            start = prompt_width + slot * response_width
            packed_ids[g, start : start + response_width] = input_ids[row, prompt_width:]
            real[g, start : start + response_width] = attention[row, prompt_width:].bool()
            sequence[row], slot_of_row[row] = g, slot

    # Causal, real keys only, and a response attends to the prompt and its own slot.
    query, key = torch.arange(length)[:, None], torch.arange(length)[None, :]
    same_block = (segment[None, :] == -1) | (segment[None, :] == segment[:, None])
    allowed = (key <= query) & same_block
    mask = allowed[None] & real[:, None, :]
    mask |= torch.eye(length, dtype=torch.bool)[None]  # padding queries attend to themselves (no empty rows)

    images = micro.non_tensor_batch.get("multi_modal_inputs")
    # Each group's images once, merged as for any batch.
    multi_modal = merge_multi_modal_inputs([images[int(rows[0])] for rows in groups]) if images is not None else {}
    prompt_positions = position_ids_fn(
        packed_ids[:, :prompt_width], real[:, :prompt_width].long(), multi_modal.get("image_grid_thw")
    )
    masked = prompt_positions.masked_fill(~real[None, :, :prompt_width], torch.iinfo(prompt_positions.dtype).min)
    start = masked.amax(dim=(0, 2)) + 1  # (G,) the first response position
    response_positions = start[:, None] + torch.arange(response_width).repeat(slots)[None, :]
    position_ids = torch.cat([prompt_positions, response_positions[None].expand(3, -1, -1)], dim=2)

    # Kept positions P-1 .. L-2: position P-1 (the prompt's last token) predicts every slot's
    # first token; slot j's token t-1 (position P + j*R + t-1) predicts its token t.
    token = torch.arange(response_width)[None, :]
    kept_index = torch.where(token == 0, torch.zeros_like(token), slot_of_row[:, None] * response_width + token)
    inputs = {
        "input_ids": packed_ids,
        "attention_mask": mask[:, None],
        "position_ids": position_ids,
        "logits_to_keep": torch.arange(prompt_width - 1, length - 1),
        **multi_modal,
    }
    return SharedPrefixBatch(inputs=inputs, sequence=sequence, kept_index=kept_index)
