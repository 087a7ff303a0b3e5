"""Fixtures of the worker tests: a fully padded training batch on the tiny model."""

import numpy as np
import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

from verl.data.rl_dataset import RLDataset, collate_rl
from verl.protocol import DataProto
from verl.workers.actor import forward_response_log_probs

MAX_PROMPT = 512
RESPONSE_WIDTH = 16
RESPONSE_LENGTHS = [12, 3, 7, 1, 9, 5]




def text_prompt(tokenizer, text: str, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, width) left-padded ids and mask of a text-only prompt."""
    ids = torch.tensor(tokenizer(text)["input_ids"])
    row, mask = torch.full((1, width), tokenizer.pad_token_id), torch.zeros(1, width, dtype=torch.long)
    row[0, -len(ids):], mask[0, -len(ids):] = ids, 1
    return row, mask


def rollout_rows(prompt_ids, prompt_mask, multi_modal, lengths, width: int, pad_id: int, generator) -> DataProto:
    """Rows as a rollout returns them: the prompts (bs, P) with random responses of `lengths`
    right-padded to `width`, and made-up advantages."""
    bs = len(lengths)
    responses = torch.randint(0, 600, (bs, width), generator=generator)
    response_mask = (torch.arange(width)[None] < torch.as_tensor(lengths)[:, None]).long()
    responses[response_mask == 0] = pad_id
    return DataProto.from_dict(
        tensors={
            "input_ids": torch.cat([prompt_ids, responses], 1),
            "attention_mask": torch.cat([prompt_mask, response_mask], 1),
            "responses": responses,
            "response_mask": response_mask,
            "advantages": torch.randn(bs, 1, generator=generator) * response_mask,
        },
        non_tensors={"multi_modal_inputs": np.array(multi_modal, dtype=object)},
    )


@pytest.fixture(scope="session")
def make_rollout_rows():
    return rollout_rows


@pytest.fixture(scope="session")
def make_text_prompt():
    return text_prompt


@pytest.fixture(scope="session")
def padded_batch(tiny_model_dir: str, synthetic_data_dir: str) -> DataProto:
    """4 image prompts + 2 text-only prompts, all left-padded to 512; random responses of
    unequal lengths right-padded to 16; old/ref log-probs and advantages made up."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    dataset = RLDataset(
        f"{synthetic_data_dir}/val.parquet", tokenizer, processor, max_prompt_length=MAX_PROMPT,
        min_pixels=3136, max_pixels=12544, format_prompt="configs/format_prompt/r1v.jinja",
    )
    tensors, non_tensors = collate_rl([dataset[i] for i in range(4)], tokenizer.pad_token_id, MAX_PROMPT)
    input_ids, attention_mask = [tensors["input_ids"]], [tensors["attention_mask"]]
    multi_modal = list(non_tensors["multi_modal_inputs"])
    for text in ("What colour is the square? Answer in one word.", "Count: one two three"):
        row, mask = text_prompt(tokenizer, text, MAX_PROMPT)
        input_ids.append(row)
        attention_mask.append(mask)
        multi_modal.append({})
    bs = len(RESPONSE_LENGTHS)
    generator = torch.Generator().manual_seed(0)
    data = rollout_rows(
        torch.cat(input_ids), torch.cat(attention_mask), multi_modal, RESPONSE_LENGTHS, RESPONSE_WIDTH,
        tokenizer.pad_token_id, generator,
    )
    response_mask = data.batch["response_mask"]
    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation="sdpa")
    with torch.no_grad():
        log_probs, _ = forward_response_log_probs(model, data, 1.0, False)
    noise = lambda: 0.3 * torch.randn(bs, RESPONSE_WIDTH, generator=generator)  # noqa: E731
    data.batch["old_log_probs"] = (log_probs + noise()) * response_mask
    data.batch["ref_log_probs"] = (log_probs + noise()) * response_mask
    return data
