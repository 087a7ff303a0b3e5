"""Per-GPU memory of one RL step, estimated from the model's shape and the recipe's batch
settings (no GPU needed): what `trainer.dry_run` prints before a run is sent to a cluster.

Phases of a colocated step and what is resident in each (bytes, world size W, P parameters of
which P_t trainable, FSDP2 fully sharded; fp32 master weights, bf16 compute as in the engine):

- actor state: fp32 parameters 4P/W, fp32 gradients 4P_t/W, AdamW moments 8P_t/W; parameter
  offload moves all three to host memory (the optimizer then steps on the CPU), optimizer
  offload only the moments.
- gathered units: FSDP all-gathers one unit (a decoder layer or vision block) at a time in bf16
  and prefetches the next: 2 x 2 bytes x the largest unit.
- reference: bf16 parameters 2P/W unless offloaded (only when a KL term needs it).
- update micro-batch of T tokens (the token budget): with activation checkpointing each decoder
  layer keeps its input (T x hidden, bf16) and one layer at a time is recomputed; without, every
  layer keeps its working set. The working set of a layer is taken as T x (6 hidden + 3
  intermediate) bf16 values (q, k, v, attention output, two residual streams; gate, up and the
  activated product) - flash/sdpa attention stores no T x T matrix. Logits of the response tokens
  R = T x max_response / (max_prompt + max_response) (the share of a full-length row) cost
  R x vocab x 14 bytes: bf16 logits, their fp32 copy, fp32 log-softmax and its gradient; with
  an entropy bonus (`entropy_coeff != 0`) 4 more, the fp32 softmax its gradient keeps (the
  entropy metric alone is computed without a graph, in 1,024-token pieces).
- experience forward (old/ref log-probs, no gradient): one layer's working set plus logits at
  10 bytes per value (no gradient).
- shared-prompt packing with the dense mask (`packing_attention=dense`, sdpa/eager): each
  micro-batch carries a boolean block mask, one L x L matrix per packed group of length L <= T;
  the sum of L^2 over the groups is at most T x min(T, P + n x R) bytes (P, R the configured
  maximum prompt and response lengths, n responses per prompt). It is built for both the update
  and the log-prob micro-batches. The block-sparse flex path keeps a few integers per 128 x 128
  tile instead (0 here), and unpacked rows none.
- rollout: vLLM claims gpu_memory_utilization of the card (its bf16 weights, 2P / tensor-parallel
  size, and its KV cache are inside that share) while the actor state that is not offloaded
  stays resident.

Not counted: the vision tower's activations (images add about 4 patches per merged image token
through 32 blocks of width 1280), CUDA/NCCL workspaces (~1-2 GiB), allocator fragmentation.
Treat the result as a lower bound with a few GiB of slack, not as a guarantee.
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 1024**3


@dataclass(frozen=True)
class ModelShape:
    parameters: int
    trainable_parameters: int
    largest_unit_parameters: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    vocab_size: int


@dataclass(frozen=True)
class StepSettings:
    world_size: int
    max_prompt_length: int
    max_response_length: int
    update_tokens_per_micro_batch: int
    experience_tokens_per_micro_batch: int
    gradient_checkpointing: bool
    param_offload: bool
    optimizer_offload: bool
    with_reference: bool
    reference_offload: bool
    gpu_memory_utilization: float
    """vLLM's share of the card (0 for the HF engine, whose KV cache is not estimated)."""
    gpu_memory_gib: float
    packed_group_tokens: int = 0
    """P + n x R, the longest packed sequence with a dense mask; 0 when no dense mask is built."""
    entropy_gradient: bool = False
    """An entropy bonus (`entropy_coeff != 0`): the update keeps the softmax for its gradient."""


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per GPU; the phases are the maxima that matter."""

    actor_state: float
    gathered_units: float
    reference: float
    update_activations: float
    update_logits: float
    experience_activations: float
    experience_logits: float
    rollout_engine: float
    update_packing_mask: float = 0.0
    experience_packing_mask: float = 0.0

    @property
    def update_phase(self) -> float:
        return (
            self.actor_state + self.reference + self.gathered_units + self.update_activations + self.update_logits
            + self.update_packing_mask
        )

    @property
    def experience_phase(self) -> float:
        return (
            self.actor_state + self.reference + self.gathered_units + self.experience_activations + self.experience_logits
            + self.experience_packing_mask
        )

    @property
    def rollout_phase(self) -> float:
        return self.actor_state + self.reference + self.rollout_engine

    @property
    def peak(self) -> float:
        return max(self.update_phase, self.experience_phase, self.rollout_phase)


def layer_working_set(tokens: int, shape: ModelShape) -> float:
    """Bytes one decoder layer holds for `tokens` tokens in bf16 (see the module docstring)."""
    return 2.0 * tokens * (6 * shape.hidden_size + 3 * shape.intermediate_size)


def response_tokens(tokens: int, settings: StepSettings) -> float:
    """Response tokens of a micro-batch of `tokens` tokens made of full-length rows."""
    return tokens * settings.max_response_length / (settings.max_prompt_length + settings.max_response_length)


def packing_mask_bytes(tokens: int, settings: StepSettings) -> float:
    """Upper bound on the boolean block masks of a packed micro-batch of `tokens` tokens."""
    return float(tokens * min(tokens, settings.packed_group_tokens))


def estimate_memory(shape: ModelShape, settings: StepSettings) -> MemoryEstimate:
    """Per-GPU bytes of each component for one colocated GRPO step (module docstring)."""
    world = settings.world_size
    master = 4.0 * shape.parameters / world
    grads = 4.0 * shape.trainable_parameters / world
    moments = 8.0 * shape.trainable_parameters / world
    if settings.param_offload:
        actor_state = 0.0
    else:
        actor_state = master + grads + (0.0 if settings.optimizer_offload else moments)
    reference = 2.0 * shape.parameters / world if settings.with_reference and not settings.reference_offload else 0.0

    update_tokens = settings.update_tokens_per_micro_batch
    if settings.gradient_checkpointing:
        update_activations = (
            2.0 * update_tokens * shape.hidden_size * shape.num_layers + layer_working_set(update_tokens, shape)
        )
    else:
        update_activations = shape.num_layers * layer_working_set(update_tokens, shape)
    experience_tokens = settings.experience_tokens_per_micro_batch
    return MemoryEstimate(
        actor_state=actor_state,
        gathered_units=2 * 2.0 * shape.largest_unit_parameters,
        reference=reference,
        update_activations=update_activations,
        update_logits=(18.0 if settings.entropy_gradient else 14.0) * response_tokens(update_tokens, settings) * shape.vocab_size,
        experience_activations=layer_working_set(experience_tokens, shape),
        experience_logits=10.0 * response_tokens(experience_tokens, settings) * shape.vocab_size,
        rollout_engine=settings.gpu_memory_utilization * settings.gpu_memory_gib * GIB,
        update_packing_mask=packing_mask_bytes(update_tokens, settings),
        experience_packing_mask=packing_mask_bytes(experience_tokens, settings),
    )
