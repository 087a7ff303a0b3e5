"""The HF engine's own decode loop: prefill each prompt once, then sample token by token.

Why not `transformers.generate`: at the rollout shapes this project runs, much of its time and
memory is not the model's.
- `output_logits=True` (the only way `generate` returns raw log-probs) keeps a (rows, vocab)
  tensor per step: 64 rows x 1,024 steps x Qwen's 151,936-token vocabulary is ~40 GB in fp32.
  Here the sampled token's log-prob is gathered at each step and the logits are dropped.
- Its `DynamicCache` grows every layer's keys and values with `torch.cat` at every step (O(L^2)
  copies over a response). Here each layer writes into a buffer allocated once for the whole
  response (`GrowingKVLayer`); attention reads a view of the filled part, so no step attends to
  empty slots.
- `torch.multinomial` over the vocabulary per step (~10x a softmax on CPU). Here a sample is one
  uniform per row looked up in the row's cumulative distribution (float64, so rounding moves no
  measurable mass between tokens): ~10x cheaper than multinomial and than drawing vocabulary-sized
  Gumbel or exponential noise.

Positions are the trainer's own (`verl.models.qwen_vl.position_ids_for`): the prompt's mrope ids
for a left-padded batch, and each new token one past its row's largest prompt position, which is
what the trainer computes over `[prompt | response]`; the rollout and the trainer therefore agree
on positions by construction.

Attention: the language model runs `grouped_sdpa` (registered below), sdpa that keeps
grouped-query attention grouped when a mask is given. transformers' sdpa repeats every key and
value head `num_key_value_groups` times (a copy of the whole cache, per step and layer) whenever a
batch carries a mask, i.e. whenever its prompts differ in length; torch's sdpa takes the mask with
`enable_gqa` and gives the same numbers (tests/workers/rollout/test_decode.py).

The loop serves models whose language layers are all attention layers with a key/value cache and
whose base model has `get_rope_index` (Qwen2.5-VL, Qwen3-VL). `supports_decode_loop` says whether
a model qualifies; the engine falls back to `generate` for any other.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

from verl.models.qwen_vl import position_ids_for
from verl.workers.rollout.base import SamplingConfig

GROUPED_SDPA = "grouped_sdpa"


def grouped_sdpa_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    """transformers' sdpa attention, except that a masked batch of a grouped-query model calls
    torch's sdpa with `enable_gqa` on the (batch, kv_heads, keys, head_dim) cache as it is,
    instead of a copy repeated to every query head. query (batch, heads, queries, head_dim);
    returns (batch, queries, heads, head_dim) and no weights, as sdpa_attention_forward does."""
    if attention_mask is None or getattr(module, "num_key_value_groups", 1) == 1 or not torch.is_tensor(attention_mask):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    output = F.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling, enable_gqa=True
    )
    return output.transpose(1, 2).contiguous(), None


AttentionInterface.register(GROUPED_SDPA, grouped_sdpa_attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(GROUPED_SDPA, sdpa_mask)


def supports_decode_loop(model: PreTrainedModel) -> bool:
    """True when every language layer is a plain attention layer with a growing KV cache (no
    sliding window, no recurrent state) and positions come from `get_rope_index`."""
    text_config = model.config.get_text_config(decoder=True)
    layer_types = getattr(text_config, "layer_types", None) or ["full_attention"]
    sliding = getattr(text_config, "use_sliding_window", False) and getattr(text_config, "sliding_window", None)
    return (
        set(layer_types) <= {"full_attention"}
        and not sliding
        and hasattr(getattr(model, "model", None), "get_rope_index")
    )


class GrowingKVLayer(DynamicLayer):
    """A layer cache whose keys/values live in one buffer sized for prompt + response.

    `update` writes the new positions in place and returns a view of the filled part, so a
    decode step costs one slice write instead of `DynamicLayer`'s concatenation of the whole cache.
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, capacity: int) -> None:
        super().__init__()
        batch, heads, length, head_dim = keys.shape
        self.dtype, self.device = keys.dtype, keys.device
        self._key_buffer = keys.new_empty(batch, heads, capacity, head_dim)
        self._value_buffer = values.new_empty(batch, heads, capacity, values.shape[-1])
        self._key_buffer[:, :, :length] = keys
        self._value_buffer[:, :, :length] = values
        self.length = length
        self.keys = self._key_buffer[:, :, :length]
        self.values = self._value_buffer[:, :, :length]
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        end = self.length + key_states.shape[-2]
        if end > self._key_buffer.shape[-2]:
            raise RuntimeError(f"GrowingKVLayer: {end} positions exceed the buffer's {self._key_buffer.shape[-2]}")
        self._key_buffer[:, :, self.length : end] = key_states
        self._value_buffer[:, :, self.length : end] = value_states
        self.length = end
        self.keys = self._key_buffer[:, :, :end]
        self.values = self._value_buffer[:, :, :end]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Drops every batch row not in `rows` (finished samples stop costing compute)."""
        self._key_buffer = self._key_buffer.index_select(0, rows)
        self._value_buffer = self._value_buffer.index_select(0, rows)
        self.keys = self._key_buffer[:, :, : self.length]
        self.values = self._value_buffer[:, :, : self.length]


def growing_cache(prefill: DynamicCache, repeats: int, extra: int) -> Cache:
    """The prefill's cache with every row repeated `repeats` times (`repeat_interleave` order)
    and room for `extra` more positions, one `GrowingKVLayer` per layer."""
    layers = []
    for layer in prefill.layers:
        keys = layer.keys.repeat_interleave(repeats, dim=0)
        values = layer.values.repeat_interleave(repeats, dim=0)
        layers.append(GrowingKVLayer(keys, values, keys.shape[-2] + extra))
    return Cache(layers=layers)


@dataclass
class TokenFilter:
    """Tokens a sample may not take: `forbidden` always, `stop` before `min_tokens` steps."""

    forbidden: torch.Tensor  # (k,) long
    stop: torch.Tensor  # (s,) long
    min_tokens: int


def sample_next(
    logits: torch.Tensor,
    sampling: SamplingConfig,
    banned: torch.Tensor,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draws one token per row and returns (tokens (rows,), raw log-probs (rows,)).

    logits: (rows, vocab) float32, raw. The returned log-prob is log_softmax(raw logits) at the
    drawn token, before temperature/top-k/top-p and before any ban (what the trainer recomputes,
    and what vLLM returns with `logprobs_mode="raw_logprobs"`). Sampling order as in vLLM and HF:
    ban, temperature, top-k, top-p, then an inverse-CDF draw: the first token whose cumulative
    probability reaches u * total, u ~ U(0, 1] (u > 0, so a zero-probability token is never hit).
    """
    raw_logprobs = torch.log_softmax(logits, dim=-1)
    scores = logits.index_fill(-1, banned, float("-inf")) if banned.numel() else logits
    if sampling.greedy:
        tokens = scores.argmax(dim=-1)
    else:
        scores = scores / sampling.temperature
        vocab = scores.shape[-1]
        if 0 < sampling.top_k < vocab:
            kth = scores.topk(sampling.top_k, dim=-1).values[:, -1:]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if sampling.top_p < 1.0:
            sorted_scores, order = scores.sort(dim=-1, descending=True)
            sorted_probs = sorted_scores.softmax(dim=-1)
            mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
            drop = (mass_before > sampling.top_p).scatter(-1, order, mass_before > sampling.top_p)
            scores = scores.masked_fill(drop, float("-inf"))
        cumulative = scores.softmax(dim=-1).cumsum(dim=-1, dtype=torch.float64)  # (rows, vocab)
        uniform = 1.0 - torch.rand(
            (scores.shape[0], 1), dtype=torch.float64, device=scores.device, generator=generator
        )
        tokens = torch.searchsorted(cumulative, uniform * cumulative[:, -1:])[:, 0].clamp_max(vocab - 1)
    return tokens, raw_logprobs.gather(-1, tokens[:, None])[:, 0]


@dataclass
class Decoded:
    """`tokens`/`logprobs` (rows, steps): each row's sampled tokens (pad after its stop token)."""

    tokens: torch.Tensor
    logprobs: torch.Tensor


@torch.no_grad()
def decode(
    model: PreTrainedModel,
    inputs: dict[str, torch.Tensor],
    sampling: SamplingConfig,
    token_filter: TokenFilter,
    pad_id: int,
    samples_per_prompt: int,
    generator: torch.Generator,
) -> Decoded:
    """Samples `samples_per_prompt` responses per prompt row of `inputs` (left-padded
    `input_ids`/`attention_mask` (B, P), optional `pixel_values`/`image_grid_thw`).

    The prompts, and their images, are run once; their cache is repeated per sample. Rows stop at
    their first stop token (later positions are `pad_id`) and leave the batch, so a finished
    sample costs nothing more; the loop ends when every row stopped or after `sampling.max_tokens`
    steps. Output rows are in `repeat_interleave` order:
    prompt 0's samples first.
    """
    input_ids, attention_mask = inputs["input_ids"], inputs["attention_mask"]
    device = input_ids.device
    n = samples_per_prompt
    positions = position_ids_for(model, input_ids, attention_mask, inputs.get("image_grid_thw"))  # (3, B, P)
    images = {key: inputs[key] for key in ("pixel_values", "image_grid_thw") if key in inputs}
    prefill = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=positions,
        past_key_values=DynamicCache(config=model.config),
        use_cache=True,
        logits_to_keep=1,
        **images,
    )
    steps = sampling.max_tokens
    cache = growing_cache(prefill.past_key_values, n, steps)
    logits = prefill.logits[:, -1].float().repeat_interleave(n, dim=0)  # (rows, vocab)
    rows = logits.shape[0]
    next_position = positions.amax(dim=(0, 2)).repeat_interleave(n) + 1  # (rows,)
    # Which keys each row may see (its prompt's padding not), as the 4D mask sdpa takes: a step's
    # single query sees every earlier key, so no causal part is needed and none is built per step.
    mask = torch.ones(rows, 1, 1, attention_mask.shape[1] + steps, dtype=torch.bool, device=device)
    mask[:, 0, 0, : attention_mask.shape[1]] = attention_mask.repeat_interleave(n, dim=0).bool()
    # Without padding in the batch every key is visible: no mask at all, so sdpa takes its unmasked
    # kernel (a masked batch goes through grouped_sdpa above, which also keeps the heads grouped).
    padded = not bool(attention_mask.all())

    tokens = torch.full((rows, steps), pad_id, dtype=torch.long, device=device)
    logprobs = torch.zeros(rows, steps, dtype=torch.float32, device=device)
    active = torch.arange(rows, device=device)  # output row of each row still in the batch
    stop_ids = token_filter.stop.to(device)
    always_banned = token_filter.forbidden.to(device)
    banned_early = torch.cat([always_banned, stop_ids])
    prompt_length = attention_mask.shape[1]
    for step in range(steps):
        banned = banned_early if step < token_filter.min_tokens else always_banned
        step_tokens, step_logprobs = sample_next(logits, sampling, banned, generator)
        tokens[active, step] = step_tokens
        logprobs[active, step] = step_logprobs
        stopped = torch.isin(step_tokens, stop_ids)
        if bool(stopped.any()):
            # Finished rows leave the batch: the cache, mask and positions keep the others only.
            keep = (~stopped).nonzero()[:, 0]
            if keep.numel() == 0:
                return Decoded(tokens[:, : step + 1], logprobs[:, : step + 1])
            for layer in cache.layers:
                layer.keep_rows(keep)
            active, step_tokens, mask, next_position = active[keep], step_tokens[keep], mask[keep], next_position[keep]
        if step + 1 == steps:
            break
        output = model(
            input_ids=step_tokens[:, None],
            attention_mask=mask[..., : prompt_length + step + 1] if padded else None,
            position_ids=(next_position + step).view(1, -1, 1).expand(3, -1, 1),
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        logits = output.logits[:, -1].float()
    return Decoded(tokens, logprobs)
