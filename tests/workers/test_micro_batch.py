"""Micro-batch planning without a model: trimming removes only all-padding columns, the token
budget holds, every row is used once, and the rank order balances tokens with equal row counts."""

import numpy as np
import pytest
import torch

from verl.protocol import DataProto
from verl.workers.engine.micro_batch import (
    balanced_rank_order,
    padded_tokens,
    plan_micro_batches,
    row_lengths,
    trim_padding,
)


def rows(prompt_lengths, response_lengths, prompt_width=12, response_width=8) -> DataProto:
    """Left-padded prompts, right-padded responses; token ids = 100 + column so slices are visible."""
    bs = len(prompt_lengths)
    prompt_mask = torch.zeros(bs, prompt_width, dtype=torch.long)
    response_mask = torch.zeros(bs, response_width, dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompt_lengths, response_lengths)):
        prompt_mask[i, prompt_width - p :] = 1
        response_mask[i, :r] = 1
    input_ids = torch.arange(prompt_width + response_width).repeat(bs, 1) + 100
    return DataProto.from_dict(
        tensors={
            "input_ids": input_ids,
            "attention_mask": torch.cat([prompt_mask, response_mask], 1),
            "responses": input_ids[:, prompt_width:],
            "response_mask": response_mask,
            "advantages": torch.randn(bs, response_width),
        },
        non_tensors={"multi_modal_inputs": [{} for _ in range(bs)]},
    )


def test_row_lengths_and_trim_keep_every_real_token():
    data = rows([3, 7, 5], [2, 6, 1])
    prompt, response = row_lengths(data)
    assert prompt.tolist() == [3, 7, 5] and response.tolist() == [2, 6, 1]
    trimmed = trim_padding(data)
    assert trimmed.batch["input_ids"].shape == (3, 7 + 6)
    assert trimmed.batch["responses"].shape == (3, 6) and trimmed.batch["advantages"].shape == (3, 6)
    # The kept columns are the last 7 prompt columns and the first 6 response columns.
    assert trimmed.batch["input_ids"][0].tolist() == list(range(105, 118))
    assert trimmed.batch["attention_mask"].sum() == data.batch["attention_mask"].sum()
    torch.testing.assert_close(trimmed.batch["advantages"], data.batch["advantages"][:, :6])


def test_plan_respects_budget_and_uses_each_row_once():
    rng = np.random.default_rng(0)
    prompt = rng.integers(5, 60, size=40)
    response = rng.integers(1, 30, size=40)
    budget = 300
    groups = plan_micro_batches(prompt, response, budget)
    assert sorted(np.concatenate(groups).tolist()) == list(range(40))
    for group in groups:
        assert padded_tokens(prompt[group], response[group]) <= budget or len(group) == 1
    # Length-sorted grouping computes far fewer tokens than padding every row to the longest.
    planned = sum(padded_tokens(prompt[g], response[g]) for g in groups)
    assert planned < 40 * (prompt.max() + response.max())


def test_plan_row_cap_min_count_and_oversized_rows():
    prompt, response = np.array([50, 4, 4, 4, 4]), np.array([50, 1, 1, 1, 1])
    groups = plan_micro_batches(prompt, response, max_token_len=40)
    assert [len(g) for g in groups] == [1, 4]  # the 100-token row alone, over the budget
    assert [len(g) for g in plan_micro_batches(prompt, response, None, max_rows=2)] == [2, 2, 1]
    split = plan_micro_batches(prompt, response, max_token_len=40, min_count=4)
    assert len(split) == 4 and sorted(np.concatenate(split).tolist()) == list(range(5))
    assert len(plan_micro_batches(prompt, response, 10_000, min_count=99)) == 5  # at most one per row
    with pytest.raises(ValueError, match="max_token_len or max_rows"):
        plan_micro_batches(prompt, response, None)


def test_balanced_rank_order_equal_rows_and_balanced_tokens():
    rng = np.random.default_rng(1)
    costs = np.sort(rng.integers(10, 500, size=32))  # sorted: contiguous chunks would be very unequal
    world, minis = 2, 2
    order = balanced_rank_order(costs, world, minis)
    assert sorted(order.tolist()) == list(range(32))
    chunks = order.reshape(world, -1)
    blocks = np.array_split(np.arange(32), minis)
    for rank_rows in chunks:
        # Each rank's m-th quarter holds only rows of global mini-batch m.
        for m, part in enumerate(np.array_split(rank_rows, minis)):
            assert set(part.tolist()) <= set(blocks[m].tolist())
    before = [costs[c].sum() for c in np.arange(32).reshape(world, -1)]
    after = [costs[c].sum() for c in chunks]
    assert abs(after[0] - after[1]) < abs(before[0] - before[1]) / 10
    assert abs(after[0] - after[1]) <= costs.max()
    assert balanced_rank_order(costs[:31], world, minis) is None  # does not divide: keep the order
    assert balanced_rank_order(costs, 1) is None
