"""Padding-free micro-batches for the training path (old/ref log-probs, the actor update).

Rollout rows arrive as `input_ids`/`attention_mask` (bs, P+R): the prompt LEFT-padded to the
configured `max_prompt_length` P, the response RIGHT-padded to `max_response_length` R. Nothing
here computes on those configured widths:

- `trim_padding` cuts every column that is padding in all rows of a micro-batch (the leading
  prompt columns and the trailing response columns), so a micro-batch is exactly as wide as its
  longest prompt plus its longest response. Causal attention with the mask makes this exact: a
  dropped column is never attended to, and mrope position ids are computed from the mask.
- `plan_micro_batches` groups rows of similar length under a token budget per device
  (`rows x trimmed width <= max_token_len`), longest first, so short rows share a micro-batch
  instead of each paying for the longest one.
- `balanced_rank_order` orders rows so every rank receives the same number of rows and about
  the same number of tokens (a longest-first greedy over ranks), inside each mini-batch.

Every rank must run the same number of forwards (FSDP collectives pair up per module):
`plan_micro_batches(min_count=...)` splits to a count agreed by `max_across_ranks`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

from verl.protocol import DataProto
from verl.workers.engine.shared_prefix import prompt_group_labels

# (bs, R) tensors that live on response positions and are sliced with `responses`.
RESPONSE_KEYS = (
    "responses", "response_mask", "old_log_probs", "ref_log_probs", "advantages", "rollout_log_probs", "entropy",
    "values", "returns", "loss_mask",
)


def prompt_width(data: DataProto) -> int:
    """P: the (padded) prompt width of `input_ids` = its width minus the response width."""
    return data.batch["input_ids"].shape[1] - data.batch["responses"].shape[1]


def row_lengths(data: DataProto) -> tuple[np.ndarray, np.ndarray]:
    """(prompt tokens, response tokens) per row, from the masks. A left-padded prompt occupies
    its last p columns; a right-padded response its first r columns."""
    width = prompt_width(data)
    attention = data.batch["attention_mask"]
    prompt = attention[:, :width].sum(-1)
    # The response extent: any column where either mask says the token is real.
    response_cols = (attention[:, width:] != 0) | (data.batch["response_mask"] != 0)
    positions = torch.arange(1, response_cols.shape[1] + 1)
    response = (response_cols * positions).amax(-1) if response_cols.shape[1] else torch.zeros(len(data), dtype=torch.long)
    return prompt.numpy().astype(np.int64), response.numpy().astype(np.int64)


def trim_padding(data: DataProto) -> DataProto:
    """The same rows without the columns that are padding in every row: leading prompt columns
    before the earliest real prompt token, trailing response columns after the last real
    response token. Response-position tensors (`RESPONSE_KEYS`) are sliced with `responses`.
    Returns views (no copy)."""
    width = prompt_width(data)
    attention = data.batch["attention_mask"]
    real_prompt_cols = (attention[:, :width] != 0).any(0).nonzero()
    start = int(real_prompt_cols[0]) if len(real_prompt_cols) else width
    _, response = row_lengths(data)
    end = int(response.max()) if len(response) else 0
    end = max(end, 1)  # keep one response column so shapes stay (bs, >=1)
    tensors = {}
    for key, value in data.batch.items():
        if key in ("input_ids", "attention_mask", "position_ids"):
            tensors[key] = value[..., start : width + end]
        elif key in RESPONSE_KEYS:
            tensors[key] = value[:, :end]
        elif key == "prompts":
            tensors[key] = value[:, start:]
        else:
            tensors[key] = value
    return DataProto(batch=tensors, non_tensor_batch=dict(data.non_tensor_batch), meta_info=dict(data.meta_info))


def padded_tokens(prompt: np.ndarray, response: np.ndarray, groups: np.ndarray | None = None) -> int:
    """Tokens a micro-batch of these rows computes once trimmed: rows x (longest prompt +
    longest response); with prompt-group labels (shared-prompt packing, see
    `verl.workers.engine.shared_prefix`): sequences x (longest prompt + largest group x longest
    response)."""
    if len(prompt) == 0:
        return 0
    if groups is None:
        return int(len(prompt) * (prompt.max() + response.max()))
    _, counts = np.unique(groups, return_counts=True)
    return int(len(counts) * (prompt.max() + counts.max() * response.max()))


def plan_micro_batches(
    prompt: np.ndarray,
    response: np.ndarray,
    max_token_len: int | None,
    max_rows: int | None = None,
    min_count: int = 1,
    groups: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Row indices of each micro-batch. Rows are taken longest first and a micro-batch is closed
    when one more row would take its trimmed size (`padded_tokens`) over `max_token_len` or its
    row count over `max_rows` (None: no limit of that kind; a single row longer than the budget
    forms its own micro-batch). With prompt-group labels `groups`, rows are taken by longest
    prompt, a group's rows one after another, and sized as packed (each group's prompt once).
    Then the largest micro-batch (by trimmed size) is halved until there are `min_count` (at
    most one per row). Every row appears exactly once."""
    n = len(prompt)
    if n == 0:
        return []
    if max_token_len is None and max_rows is None:
        raise ValueError("plan_micro_batches needs max_token_len or max_rows")
    if groups is None:
        order = np.argsort(-(prompt + response), kind="stable")
    else:
        order = np.lexsort((-response, groups, -prompt))
    plans: list[list[int]] = []
    current: list[int] = []
    group_rows: dict[int, int] = {}  # rows of each prompt group in `current`
    longest_p = longest_r = 0
    for i in order:
        p, r = max(longest_p, prompt[i]), max(longest_r, response[i])
        if groups is None:
            size = (len(current) + 1) * (p + r)
        else:
            label = int(groups[i])
            largest = max(max(group_rows.values(), default=0), group_rows.get(label, 0) + 1)
            size = (len(group_rows) + (label not in group_rows)) * (p + largest * r)
        too_many_tokens = max_token_len is not None and size > max_token_len
        too_many_rows = max_rows is not None and len(current) >= max_rows
        if current and (too_many_tokens or too_many_rows):
            plans.append(current)
            current, p, r = [], prompt[i], response[i]
            group_rows = {}
        current.append(int(i))
        if groups is not None:
            group_rows[int(groups[i])] = group_rows.get(int(groups[i]), 0) + 1
        longest_p, longest_r = p, r
    plans.append(current)
    target = min(max(min_count, 1), n)
    while len(plans) < target:
        sizes = [
            padded_tokens(prompt[g], response[g], None if groups is None else groups[g]) if len(g) > 1 else -1
            for g in plans
        ]
        largest = int(np.argmax(sizes))
        plan = plans.pop(largest)
        half = len(plan) // 2
        plans[largest:largest] = [plan[:half], plan[half:]]
    return [np.asarray(g, dtype=np.int64) for g in plans]


def max_across_ranks(value: int) -> int:
    """The largest `value` over all ranks (the value itself without torch.distributed)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.long)
    if dist.get_backend() == "nccl":
        tensor = tensor.cuda()
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item())


def sum_across_ranks(values: list[float]) -> list[float]:
    """Element-wise sum of `values` over all ranks (float64; unchanged without torch.distributed)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        tensor = tensor.cuda()
    dist.all_reduce(tensor)
    return tensor.cpu().tolist()


def balanced_rank_order(
    costs: np.ndarray, world_size: int, num_mini_batches: int = 1, groups: np.ndarray | None = None
) -> np.ndarray | None:
    """A permutation of the rows such that splitting the permuted rows into `world_size` equal
    contiguous chunks (rank r gets chunk r) and each chunk into `num_mini_batches` equal parts
    (`np.array_split`) gives every rank the same rows per mini-batch as before, with the token
    `costs` of each mini-batch spread evenly over the ranks. Mini-batch m is the m-th contiguous
    block of the original order. With prompt-group labels `groups`, a group's rows go to one rank
    where it has room for all of them (so they can share their prompt there), split over ranks
    only where none has. None when the row count does not divide into
    `world_size x num_mini_batches` equal parts (the caller keeps its order then)."""
    n = len(costs)
    if world_size <= 1 or n == 0 or n % (world_size * num_mini_batches) != 0:
        return None
    per_rank_per_mini = n // (world_size * num_mini_batches)
    rank_rows: list[list[int]] = [[] for _ in range(world_size)]
    for block in np.array_split(np.arange(n), num_mini_batches):
        if groups is None:
            units = [[int(row)] for row in block]
        else:
            by_label: dict[int, list[int]] = {}
            for row in block:
                by_label.setdefault(int(groups[row]), []).append(int(row))
            units = list(by_label.values())
        units.sort(key=lambda rows: -int(costs[rows].sum()))
        loads, counts = [0] * world_size, [0] * world_size
        # Largest first onto the least-loaded rank with room for the whole unit; a unit no rank
        # has room for is split over the least-loaded ranks with room (equal row counts).
        for rows in units:
            by_load = sorted(range(world_size), key=lambda rank: (loads[rank], rank))
            whole = [rank for rank in by_load if per_rank_per_mini - counts[rank] >= len(rows)]
            targets = whole[:1] or [rank for rank in by_load if counts[rank] < per_rank_per_mini]
            remaining = list(rows)
            for rank in targets:
                take = remaining[: per_rank_per_mini - counts[rank]]
                remaining = remaining[len(take) :]
                rank_rows[rank].extend(take)
                counts[rank] += len(take)
                loads[rank] += int(costs[take].sum())
                if not remaining:
                    break
    return np.concatenate([np.asarray(rows, dtype=np.int64) for rows in rank_rows])


def shared_prefix_costs(data: DataProto, groups: np.ndarray) -> np.ndarray:
    """Tokens per row when rows of a prompt group share their prompt: the response plus the
    prompt's share (prompt / group size); the cost `balanced_rank_order` spreads then."""
    prompt, response = row_lengths(data)
    _, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    return np.ceil(prompt / counts[inverse]).astype(np.int64) + response


def row_tokens(data: DataProto) -> np.ndarray:
    """Real tokens per row (prompt + response): the cost `balanced_rank_order` spreads."""
    prompt, response = row_lengths(data)
    return prompt + response


def rank_order(data: DataProto, world_size: int, num_mini_batches: int = 1, share_prefix: bool = False) -> np.ndarray | None:
    """`balanced_rank_order` of `data`'s rows by their real tokens; with `share_prefix`, by
    their shared-prompt cost, keeping each prompt group on one rank where it fits."""
    if not share_prefix:
        return balanced_rank_order(row_tokens(data), world_size, num_mini_batches)
    labels = prompt_group_labels(data)
    return balanced_rank_order(shared_prefix_costs(data, labels), world_size, num_mini_batches, labels)
