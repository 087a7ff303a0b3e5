"""Block-sparse attention for the packed training forwards: a transformers attention function
that runs torch's `flex_attention` when it is given a `BlockMask`, and sdpa otherwise.

Shared-prompt packing (`verl.workers.engine.shared_prefix`) computes a GRPO group as ONE
sequence [prompt | response 1 | ... | response n]: response j sees the prompt and itself, never
another response. As a dense (L, L) mask through sdpa every masked-out block is still computed:
at prompt 600 + 8 x 1024 that is ~3.7x the attention work of the unpacked rows, plus the mask.
`flex_attention` with a `BlockMask` skips the blocks no query of a tile may see (response j's
queries never visit response i's key tiles) and applies the mask element-wise only on the
tiles a boundary crosses, so the packed sequence costs what its allowed pairs cost.

The function is registered in transformers' `AttentionInterface` under `FLEX_OR_SDPA`, with
sdpa's mask builder, so a model loaded with it behaves exactly like sdpa on ordinary (padded)
batches; only the packed forward, which passes a `BlockMask`, takes the flex path. The vision
tower keeps its own implementation (`text_attention_implementation`).

On CUDA flex is compiled (the fused kernel, forward and backward). On CPU torch 2.14 has a
forward only (`NotImplementedError` on backward): it runs eagerly (unfused, exact) for tests
and forward-only measurements; training on CPU packs with the dense mask instead.
"""

from __future__ import annotations

import functools
import warnings

import torch
from torch.nn.attention.flex_attention import BlockMask, flex_attention
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

FLEX_OR_SDPA = "flex_or_sdpa"


@functools.cache
def _compiled_flex_attention():
    # One compiled kernel per process; shapes vary per micro-batch, so dims go dynamic after the
    # first recompile (torch's automatic dynamic shapes) instead of compiling each width.
    return torch.compile(flex_attention)


def flex_or_sdpa_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | BlockMask | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' attention signature: query (B, Hq, L, D), key/value (B, Hkv, L, D) ->
    (B, L, Hq, D). A `BlockMask` runs flex_attention, anything else sdpa."""
    if not isinstance(attention_mask, BlockMask):
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
    if dropout and module.training:
        raise ValueError("block-sparse attention runs without attention dropout; set attention_dropout=0")
    if query.is_cuda:
        attend = _compiled_flex_attention()
    else:
        attend = flex_attention  # the unfused reference: tests and forward-only measurements
    output = attend(
        query, key, value, block_mask=attention_mask, scale=scaling, enable_gqa=query.shape[1] != key.shape[1]
    )
    return output.transpose(1, 2).contiguous(), None


# torch warns on every eager call that it is unfused; on CPU that is the point (see module docstring).
warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
AttentionInterface.register(FLEX_OR_SDPA, flex_or_sdpa_attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(FLEX_OR_SDPA, sdpa_mask)


def text_attention_implementation(vision_implementation: str) -> dict[str, str]:
    """`from_pretrained`'s per-sub-model `attn_implementation`: the language model on
    `FLEX_OR_SDPA`, the vision tower (its own varlen blocks, no packing mask) on
    `vision_implementation` (flash_attention_2 where installed, else sdpa)."""
    return {"text_config": FLEX_OR_SDPA, "vision_config": vision_implementation}
