"""The per-GPU memory estimate on hand-computed values."""

import pytest

from verl.utils.memory_estimate import GIB, ModelShape, StepSettings, estimate_memory

SHAPE = ModelShape(
    parameters=800,
    trainable_parameters=600,
    largest_unit_parameters=50,
    hidden_size=4,
    intermediate_size=10,
    num_layers=3,
    vocab_size=100,
)


def settings(**overrides) -> StepSettings:
    values = dict(
        world_size=2,
        max_prompt_length=30,
        max_response_length=10,
        update_tokens_per_micro_batch=40,
        experience_tokens_per_micro_batch=80,
        gradient_checkpointing=True,
        param_offload=False,
        optimizer_offload=False,
        with_reference=True,
        reference_offload=False,
        gpu_memory_utilization=0.5,
        gpu_memory_gib=1.0,
    )
    values.update(overrides)
    return StepSettings(**values)


def test_components_by_hand():
    memory = estimate_memory(SHAPE, settings())
    # fp32 params 4*800/2 + fp32 grads 4*600/2 + AdamW 8*600/2
    assert memory.actor_state == 1600 + 1200 + 2400
    assert memory.reference == 2 * 800 / 2
    assert memory.gathered_units == 2 * 2 * 50
    layer = 2 * 40 * (6 * 4 + 3 * 10)  # one layer's bf16 working set for 40 tokens
    assert memory.update_activations == 2 * 40 * 4 * 3 + layer
    # 40 tokens of full-length rows hold 10 response tokens; 14 bytes per logit
    assert memory.update_logits == 14 * 10 * 100
    assert memory.experience_activations == 2 * 80 * (6 * 4 + 3 * 10)
    assert memory.experience_logits == 10 * 20 * 100
    assert memory.rollout_engine == 0.5 * GIB
    assert memory.peak == memory.rollout_phase == 5200 + 800 + 0.5 * GIB
    assert memory.update_packing_mask == memory.experience_packing_mask == 0  # packing off


def test_packed_block_masks_are_bounded_by_the_budget_and_the_group_length():
    # Groups of at most 30 + 4 x 10 = 70 tokens: the update's 40-token micro-batch holds masks
    # of at most 40 x 40 bytes, the log-prob pass's 80 tokens at most 80 x 70.
    memory = estimate_memory(SHAPE, settings(packed_group_tokens=70))
    assert memory.update_packing_mask == 40 * 40
    assert memory.experience_packing_mask == 80 * 70
    unpacked = estimate_memory(SHAPE, settings())
    assert memory.update_phase - unpacked.update_phase == 40 * 40
    assert memory.experience_phase - unpacked.experience_phase == 80 * 70


def test_offload_and_checkpointing_switches():
    offloaded = estimate_memory(SHAPE, settings(param_offload=True, reference_offload=True))
    assert offloaded.actor_state == 0 and offloaded.reference == 0
    optimizer_only = estimate_memory(SHAPE, settings(optimizer_offload=True))
    assert optimizer_only.actor_state == 1600 + 1200
    no_checkpointing = estimate_memory(SHAPE, settings(gradient_checkpointing=False))
    assert no_checkpointing.update_activations == 3 * 2 * 40 * (6 * 4 + 3 * 10)
    assert estimate_memory(SHAPE, settings(with_reference=False)).reference == 0


@pytest.mark.parametrize("world_size", [1, 4, 8])
def test_sharded_state_shrinks_with_world_size(world_size):
    memory = estimate_memory(SHAPE, settings(world_size=world_size))
    assert memory.actor_state * world_size == pytest.approx(4 * 800 + 12 * 600)
