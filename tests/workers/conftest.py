"""Fixtures of the worker tests: a fully padded training batch on the tiny model."""

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

from verl.data.rl_dataset import RLDataset, collate_rl
from verl.protocol import DataProto
from verl.workers.actor import forward_response_log_probs

MAX_PROMPT = 512
RESPONSE_WIDTH = 16
RESPONSE_LENGTHS = [12, 3, 7, 1, 9, 5]




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
        ids = torch.tensor(tokenizer(text)["input_ids"])
        row, mask = torch.full((1, MAX_PROMPT), tokenizer.pad_token_id), torch.zeros(1, MAX_PROMPT, dtype=torch.long)
        row[0, -len(ids):], mask[0, -len(ids):] = ids, 1
        input_ids.append(row)
        attention_mask.append(mask)
        multi_modal.append({})
    bs = len(RESPONSE_LENGTHS)
    generator = torch.Generator().manual_seed(0)
    responses = torch.randint(0, 600, (bs, RESPONSE_WIDTH), generator=generator)
    response_mask = torch.zeros(bs, RESPONSE_WIDTH, dtype=torch.long)
    for i, length in enumerate(RESPONSE_LENGTHS):
        response_mask[i, :length] = 1
    responses[response_mask == 0] = tokenizer.pad_token_id
    data = DataProto.from_dict(
        tensors={
            "input_ids": torch.cat([torch.cat(input_ids), responses], 1),
            "attention_mask": torch.cat([torch.cat(attention_mask), response_mask], 1),
            "responses": responses,
            "response_mask": response_mask,
            "advantages": torch.randn(bs, 1, generator=generator) * response_mask,
        },
        non_tensors={"multi_modal_inputs": multi_modal},
    )
    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation="sdpa")
    with torch.no_grad():
        log_probs, _ = forward_response_log_probs(model, data, 1.0, False)
    noise = lambda: 0.3 * torch.randn(bs, RESPONSE_WIDTH, generator=generator)  # noqa: E731
    data.batch["old_log_probs"] = (log_probs + noise()) * response_mask
    data.batch["ref_log_probs"] = (log_probs + noise()) * response_mask
    return data
