"""Block-sparse attention for the packed training forwards: a transformers attention function
that computes a shared-prompt packed sequence without its masked-out blocks, and runs sdpa on
every other batch.

Shared-prompt packing (`verl.workers.engine.shared_prefix`) computes a GRPO group as ONE
sequence [prompt | response 1 | ... | response n]: response j sees the prompt and itself, never
another response. Through sdpa with a dense (L, L) mask every masked-out block is still computed
(at prompt 600 + 8 x 1024, ~3.7x the attention work of the unpacked rows) and, on CPU, the
(L, L) probabilities of every head are kept for backward. Two kernels skip those blocks; both
take the packed layout as a `BlockMask` (which transformers passes to the layers untouched):

- `flex` (CUDA): torch's compiled flex_attention visits only the 128 x 128 tiles some query may
  see and evaluates the mask element-wise only on tiles a boundary crosses.
- `segments` (CPU, where torch 2.14 has a flex forward but no backward): the prompt attends to
  itself once, then each response slot attends to [prompt keys | its own keys] in one batched
  sdpa call: exactly the allowed pairs plus the slots' padding, forward and backward.

The function is registered in transformers' `AttentionInterface` under one name per kernel
(`KERNEL_ATTENTION`), with sdpa's mask builder, so a model loaded with it is sdpa on ordinary
(padded) batches; only the packed forward, which passes a `BlockMask`, takes the block-sparse
kernel, and the name in the model's config says which one the packing builds its mask for. The
vision tower keeps its own implementation (`text_attention_implementation`).
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask, flex_attention
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

# Block-sparse kernel -> the attention name a language model is loaded with for it.
KERNEL_ATTENTION = {"segments": "segments_or_sdpa", "flex": "flex_or_sdpa"}


@dataclass(frozen=True)
class PackedSegments:
    """The layout of G packed sequences of length L = prompt_width + slots x response_width:
    `real` (G, L) marks real tokens (prompts left-padded, each response slot right-padded)."""

    prompt_width: int
    slots: int
    response_width: int
    real: torch.Tensor


def segments_carrier(segments: PackedSegments) -> BlockMask:
    """A `BlockMask` that carries `segments` to the `segments` kernel (its tiles are unused)."""
    groups, length = segments.real.shape
    device = segments.real.device
    carrier = BlockMask.from_kv_blocks(
        torch.zeros(groups, 1, 1, dtype=torch.int32, device=device),
        torch.zeros(groups, 1, 1, 1, dtype=torch.int32, device=device),
        BLOCK_SIZE=length,
        seq_lengths=(length, length),
    )
    carrier.packed_segments = segments
    return carrier


@functools.cache
def _compiled_flex_attention():
    # One compiled kernel per process; shapes vary per micro-batch, so dims go dynamic after the
    # first recompile (torch's automatic dynamic shapes) instead of compiling each width.
    return torch.compile(flex_attention)


def _causal_over_real_keys(real_keys: torch.Tensor) -> torch.Tensor:
    """(..., n) real-token flags of one segment -> (..., n, n) mask: causal over its real keys,
    and a query always sees itself (a padding query has no empty row), as the dense mask does."""
    size = real_keys.shape[-1]
    causal = torch.ones(size, size, dtype=torch.bool, device=real_keys.device).tril()
    return (causal & real_keys[..., None, :]) | torch.eye(size, dtype=torch.bool, device=real_keys.device)


def segments_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, segments: PackedSegments, scale: float | None
) -> torch.Tensor:
    """query (G, Hq, L, D), key/value (G, Hkv, L, D) -> (G, Hq, L, D): the prompt causally over
    its real keys, then every response slot over [the prompt's real keys | its own keys,
    causal and real], as one sdpa call over G x slots rows. A query always sees itself (a
    padding query has no empty row), as the dense mask does."""
    groups, heads, _, dim = query.shape
    kv_heads = key.shape[1]
    prompt, slots, width = segments.prompt_width, segments.slots, segments.response_width
    real = segments.real
    gqa = heads != kv_heads
    prompt_out = F.scaled_dot_product_attention(
        query[:, :, :prompt], key[:, :, :prompt], value[:, :, :prompt],
        attn_mask=_causal_over_real_keys(real[:, :prompt])[:, None], scale=scale, enable_gqa=gqa,
    )

    def per_slot(tensor: torch.Tensor) -> torch.Tensor:  # (G, H, S*R, D) -> (G*S, H, R, D)
        h = tensor.shape[1]
        return tensor[:, :, prompt:].reshape(groups, h, slots, width, dim).transpose(1, 2).reshape(groups * slots, h, width, dim)

    def with_prompt(tensor: torch.Tensor) -> torch.Tensor:  # keys/values: (G*S, Hkv, P+R, D)
        shared = tensor[:, None, :, :prompt].expand(groups, slots, kv_heads, prompt, dim).reshape(groups * slots, kv_heads, prompt, dim)
        return torch.cat([shared, per_slot(tensor)], dim=2)

    own = _causal_over_real_keys(real[:, prompt:].reshape(groups, slots, width))
    prompt_keys = real[:, None, None, :prompt].expand(groups, slots, width, prompt)
    response_mask = torch.cat([prompt_keys, own], dim=3).reshape(groups * slots, 1, width, prompt + width)
    response_out = F.scaled_dot_product_attention(
        per_slot(query), with_prompt(key), with_prompt(value), attn_mask=response_mask, scale=scale, enable_gqa=gqa
    )
    response_out = response_out.reshape(groups, slots, heads, width, dim).transpose(1, 2).reshape(groups, heads, slots * width, dim)
    return torch.cat([prompt_out, response_out], dim=2)


def packed_or_sdpa_attention(
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
    (B, L, Hq, D). A `BlockMask` runs a block-sparse kernel (a carrier of `PackedSegments` the
    `segments` one, any other flex_attention), anything else sdpa."""
    if not isinstance(attention_mask, BlockMask):
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
    if dropout and module.training:
        raise ValueError("block-sparse attention runs without attention dropout; set attention_dropout=0")
    segments = getattr(attention_mask, "packed_segments", None)
    if segments is not None:
        output = segments_attention(query, key, value, segments, scaling)
    else:
        # CPU: the unfused reference (forward-only tests and measurements).
        attend = _compiled_flex_attention() if query.is_cuda else flex_attention
        output = attend(
            query, key, value, block_mask=attention_mask, scale=scaling, enable_gqa=query.shape[1] != key.shape[1]
        )
    return output.transpose(1, 2).contiguous(), None


# torch warns on every eager flex call that it is unfused; on CPU that is the point (see above).
warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
for _name in KERNEL_ATTENTION.values():
    AttentionInterface.register(_name, packed_or_sdpa_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(_name, sdpa_mask)


def text_attention_implementation(kernel: str, vision_implementation: str) -> dict[str, str]:
    """`from_pretrained`'s per-sub-model `attn_implementation`: the language model on the
    `kernel`'s name (`KERNEL_ATTENTION`), the vision tower (its own varlen blocks, no packing
    mask) on `vision_implementation` (flash_attention_2 where installed, else sdpa)."""
    return {"text_config": KERNEL_ATTENTION[kernel], "vision_config": vision_implementation}


def kernel_of(text_attention: str) -> str | None:
    """The block-sparse kernel a language model's attention name stands for; None for any other."""
    return next((kernel for kernel, name in KERNEL_ATTENTION.items() if name == text_attention), None)
