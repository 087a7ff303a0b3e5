"""DAPO overlong reward shaping and dynamic sampling's group selection, by hand."""

import numpy as np
import pytest
import torch

from verl.algorithms.dapo import enough_informative, overlong_penalty, prompt_has_spread, select_groups


def test_dapo_overlong_penalty_is_zero_then_linear_in_the_buffer_then_minus_one():
    # L_max = 10, L_cache = 4: free up to 6 tokens, then -1/4 per token down to -1 at 10.
    lengths = torch.tensor([3, 6, 7, 8, 10])
    assert overlong_penalty(lengths, 10, 4, 1.0).tolist() == [0.0, 0.0, -0.25, -0.5, -1.0]
    assert overlong_penalty(lengths, 10, 4, 2.0).tolist() == [0.0, 0.0, -0.5, -1.0, -2.0]
    assert overlong_penalty(torch.tensor([12]), 10, 4, 1.0).tolist() == [-1.0]  # beyond L_max


def test_dapo_overlong_penalty_rejects_a_buffer_outside_the_response():
    with pytest.raises(ValueError, match=r"buffer_length must be in \(0, 10\]"):
        overlong_penalty(torch.tensor([3]), 10, 11, 1.0)


def test_dapo_spread_flags_groups_whose_scores_differ():
    scores = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0])
    assert prompt_has_spread(scores, 2).tolist() == [False, True, False]
    with pytest.raises(ValueError, match="multiple of n=4"):
        prompt_has_spread(scores, 4)


def test_dapo_refill_keeps_informative_prompts_in_draw_order_up_to_the_target():
    spread = [np.array([False, True, False]), np.array([True, True, False])]
    assert not enough_informative(spread[:1], 3) and enough_informative(spread, 3)
    selection = select_groups(spread, 3)
    assert [kept.tolist() for kept in selection.prompts] == [[1], [0, 1]]
    assert (selection.informative, selection.filler) == (3, 0)
    # a surplus of informative prompts: the first ones drawn are kept
    selection = select_groups([np.array([True, True, True])], 2)
    assert [kept.tolist() for kept in selection.prompts] == [[0, 1]]


def test_dapo_refill_pads_with_uninformative_prompts_when_tries_run_out():
    spread = [np.array([False, True, False]), np.array([False, False, True])]
    selection = select_groups(spread, 3)
    assert [kept.tolist() for kept in selection.prompts] == [[0, 1], [2]]
    assert (selection.informative, selection.filler) == (2, 1)
    assert [flags.tolist() for flags in selection.is_filler] == [[True, False], [False]]
    with pytest.raises(ValueError, match="drew 3 prompts, fewer than the 4"):
        select_groups(spread[:1], 4)
