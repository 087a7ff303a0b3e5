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

Three forms of the same block mask (`PACKING_ATTENTION`), one definition of who sees whom
(`allowed_keys`):
- `dense`: a (groups, 1, L, L) boolean tensor for sdpa or eager attention. Every masked-out
  block is still computed (at prompt 600 + 8 x 1024, ~3.7x the attention work of the unpacked
  rows) and the mask costs L^2 bytes per group. The reference.
- block-sparse (`verl.models.block_sparse_attention`): only the allowed blocks are computed,
  so a group costs what its allowed pairs cost. `flex` (the GPU default): a flex_attention
  `BlockMask`, the mask kept per 128 x 128 tile (torch has no flex backward on CPU). `segments`
  (the CPU default, any device): the prompt once, then each response slot over [prompt keys |
  its own keys] in one sdpa call.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.nn.attention.flex_attention import BlockMask

from verl.models.block_sparse_attention import (
    PackedSegments,
    kernel_of,
    segments_carrier,
    text_attention_implementation,
)
from verl.models.qwen_vl import merge_multi_modal_inputs
from verl.protocol import DataProto
from verl.workers.config import PACKING_ATTENTION

FLEX_BLOCK_SIZE = 128  # flex_attention's tile (its default); the mask is summarised per tile


def allowed_keys(query: torch.Tensor, key: torch.Tensor, segment: torch.Tensor, real_keys: torch.Tensor) -> torch.Tensor:
    """Whether `query` may attend to `key` (broadcasting index tensors) in a packed sequence:
    causal, to real keys only, and a response (segment j >= 0) only to the prompt (segment -1)
    and its own slot. A query always sees itself, so padding queries have no empty row.
    `segment` (L,) per position; `real_keys` the real-token flags at `key` (already indexed)."""
    key_segment = segment[key]
    same_block = (key_segment == -1) | (key_segment == segment[query])
    return ((key <= query) & same_block & real_keys) | (key == query)


@dataclass(frozen=True)
class AttentionPlan:
    """How the training-side forwards (log-probs, update, values) attend, decided once per run
    and printed at start-up and by the dry run.

    model_attention: `from_pretrained`'s `attn_implementation` for the actor, reference and critic.
    packing: the packed mask's form (`PACKING_ATTENTION`), None when rows are not packed.
    reason: one line saying which path runs and why.
    """

    model_attention: str | dict[str, str]
    packing: str | None
    reason: str


def plan_attention(
    attn_implementation: str,
    share_prompt_prefix: bool,
    packing_attention: str,
    device_type: str,
    recurrent_layers: list[int] | tuple[int, ...] = (),
) -> AttentionPlan:
    """The `AttentionPlan` of a model config (`attn_implementation` already resolved: sdpa,
    eager or flash_attention_2) on `device_type`. `packing_attention` `auto` is `flex` on CUDA
    and `segments` elsewhere. The block-sparse kernels keep packing on with flash-attn installed
    (the vision tower runs flash, the language model the kernel).

    `recurrent_layers` (`verl.models.qwen_vl.recurrent_layers`): decoder layers that carry a
    state from token to token (Qwen3.5's gated delta rule). No attention mask reaches that
    state, so in [prompt | response 1 | response 2] response 2 would read response 1 through
    it: such a model trains unpacked, one row each, where transformers zeroes the padding
    before each recurrent layer (left-padded prompts, right-padded responses stay exact)."""
    if not share_prompt_prefix:
        return AttentionPlan(attn_implementation, None, f"rows unpacked ({attn_implementation}): share_prompt_prefix=false")
    if recurrent_layers:
        return AttentionPlan(
            attn_implementation, None,
            f"rows unpacked ({attn_implementation}): share_prompt_prefix off for this model, its "
            f"{len(recurrent_layers)} linear-attention layers keep a recurrent state that would carry one packed "
            "response into the next",
        )
    choice = packing_attention
    if choice == "auto":
        choice = "flex" if device_type == "cuda" else "segments"
    if choice not in PACKING_ATTENTION:
        raise ValueError(f"packing_attention must be auto or one of {PACKING_ATTENTION}, not {packing_attention!r}")
    if choice == "flex" and device_type != "cuda":
        raise ValueError(
            f"packing_attention=flex: torch {torch.__version__} has no flex_attention backward on {device_type}; "
            "use segments (or auto) there"
        )
    if choice in ("segments", "flex"):
        how = "flex_attention tiles" if choice == "flex" else "one sdpa per response slot"
        return AttentionPlan(
            text_attention_implementation(choice, attn_implementation), choice,
            f"shared-prompt packing, block-sparse {choice} ({how}; vision tower {attn_implementation})",
        )
    if attn_implementation not in ("sdpa", "eager"):
        return AttentionPlan(
            attn_implementation, None,
            f"rows unpacked ({attn_implementation}): the dense packing mask needs sdpa or eager attention; "
            "packing_attention=segments or flex packs with any vision attention",
        )
    return AttentionPlan(
        attn_implementation, "dense", f"shared-prompt packing, dense (G, 1, L, L) mask through {attn_implementation}"
    )


def packing_of(model) -> str:
    """The packed mask's form a loaded model takes: its language model's block-sparse kernel
    (`segments`, `flex`), else `dense`."""
    return kernel_of(model.config.get_text_config()._attn_implementation) or "dense"


def block_mask_for(mask: torch.Tensor, attn_implementation: str, dtype: torch.dtype) -> torch.Tensor:
    """The dense boolean block mask (True = attend) in the form the attention takes: sdpa a
    boolean mask, eager an additive one (0 where allowed, the dtype's minimum elsewhere)."""
    if attn_implementation == "sdpa":
        return mask
    if attn_implementation == "eager":
        return torch.zeros(mask.shape, dtype=dtype).masked_fill(~mask, torch.finfo(dtype).min)
    raise ValueError(f"dense shared-prompt packing needs sdpa or eager attention, not {attn_implementation!r}")


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

    inputs: `input_ids` (G, L), `attention_mask` (G, 1, L, L) bool or a `BlockMask`, `position_ids` (3, G, L),
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


def pack_shared_prefix(
    micro: DataProto,
    labels: np.ndarray,
    position_ids_fn,
    attention: str = "dense",
    device: torch.device | str = "cpu",
) -> SharedPrefixBatch:
    """Packs the rows of `micro` (trimmed: left-padded prompts of width P, right-padded responses
    of width R) by prompt `labels` into sequences of width L = P + K x R, K the largest group.
    `attention`: the mask's form (`PACKING_ATTENTION`); a block-sparse one (flex tiles or the
    segments layout) is built on `device`.

    `position_ids_fn(prompt_ids, prompt_mask, image_grid_thw) -> (3, G, P)` gives the prompts'
    mrope ids; response token t of every slot gets the prompt's largest position + 1 + t, as
    the model's own rope index gives the text that follows the last image."""
    input_ids = micro.batch["input_ids"]
    row_mask = micro.batch["attention_mask"]
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
        real[g, :prompt_width] = row_mask[first, :prompt_width].bool()
        for slot, row in enumerate(rows.tolist()):
            start = prompt_width + slot * response_width
            packed_ids[g, start : start + response_width] = input_ids[row, prompt_width:]
            real[g, start : start + response_width] = row_mask[row, prompt_width:].bool()
            sequence[row], slot_of_row[row] = g, slot

    if attention == "dense":
        query, key = torch.arange(length)[:, None], torch.arange(length)[None, :]
        mask = allowed_keys(query[None], key[None], segment, real[:, None, :])[:, None]
    elif attention == "flex":
        mask = flex_block_mask(segment, real, device)
    elif attention == "segments":
        mask = segments_carrier(PackedSegments(prompt_width, slots, response_width, real.to(device)))
    else:
        raise ValueError(f"packing attention must be one of {PACKING_ATTENTION}, not {attention!r}")

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
        "attention_mask": mask,
        "position_ids": position_ids,
        "logits_to_keep": torch.arange(prompt_width - 1, length - 1),
        **multi_modal,
    }
    return SharedPrefixBatch(inputs=inputs, sequence=sequence, kept_index=kept_index)


def flex_block_mask(segment: torch.Tensor, real: torch.Tensor, device: torch.device | str = "cpu") -> BlockMask:
    """The `allowed_keys` mask of G packed sequences (`real` (G, L)) as a flex `BlockMask`.

    Built tile by tile (one row of `FLEX_BLOCK_SIZE` queries at a time, so memory is G x 128 x L
    booleans, never G x L x L): a key tile no query of the row may see is dropped, a tile every
    query sees entirely is `full` (no mask evaluated), the rest are `partial` and evaluate
    `allowed_keys` per element inside the kernel."""
    groups, length = real.shape
    size = FLEX_BLOCK_SIZE
    tiles = -(-length // size)
    padded = tiles * size
    any_allowed = torch.zeros(groups, tiles, tiles, dtype=torch.bool)
    all_allowed = torch.zeros(groups, tiles, tiles, dtype=torch.bool)
    key = torch.arange(padded)
    key_in_range = key < length
    padded_segment = torch.cat([segment, segment.new_full((padded - length,), -2)])
    padded_real = torch.cat([real, real.new_zeros(groups, padded - length)], dim=1)
    for tile in range(tiles):
        query = torch.arange(tile * size, min(length, (tile + 1) * size))
        allowed = allowed_keys(query[None, :, None], key[None, None, :], padded_segment, padded_real[:, None, :])
        allowed &= key_in_range
        per_tile = allowed.view(groups, len(query), tiles, size)
        any_allowed[:, tile] = per_tile.any(dim=3).any(dim=1)
        # A tile is full only when it is a whole 128 x 128 tile inside the sequence.
        all_allowed[:, tile] = per_tile.all(dim=3).all(dim=1) & (len(query) == size)
    all_allowed[:, :, -1] &= length == padded
    partial = any_allowed & ~all_allowed

    def indices(selected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Selected tiles first (stable), as (G, 1, tiles) counts and (G, 1, tiles, tiles) indices.
        order = torch.argsort((~selected).to(torch.int8), dim=-1, stable=True)
        return selected.sum(-1, dtype=torch.int32)[:, None].to(device), order.to(torch.int32)[:, None].to(device)

    segment_on_device, real_on_device = segment.to(device), real.to(device)

    def mask_mod(batch, head, query, key):
        return allowed_keys(query, key, segment_on_device, real_on_device[batch, key])

    kv_num_blocks, kv_indices = indices(partial)
    full_kv_num_blocks, full_kv_indices = indices(all_allowed)
    return BlockMask.from_kv_blocks(
        kv_num_blocks, kv_indices, full_kv_num_blocks, full_kv_indices, BLOCK_SIZE=size, mask_mod=mask_mod,
        seq_lengths=(length, length),
    )
