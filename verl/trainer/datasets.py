"""The RL datasets and data loaders a run builds from its config (training, validation and the
dry run read data through the same code)."""

from __future__ import annotations

import os

from verl.data.rl_dataset import RLDataset, make_rl_dataloader
from verl.trainer.config import ConfigError, PPOConfig


def build_rl_dataset(config: PPOConfig, path: str, tokenizer, processor) -> RLDataset:
    """The RL dataset of `path` with the data settings of `config` (training, validation, dry run)."""
    data = config.data
    # A local file or folder that is missing fails here in one line; hub names (org/name@split) pass on.
    data_root = path.split("@")[0]
    looks_local = data_root.endswith((".parquet", ".jsonl", ".json")) or data_root.startswith(
        ("data/", "./", "../", "/", "~")
    )
    if looks_local and not os.path.exists(os.path.expanduser(data_root)):
        hint = (
            "; build the tiny recipe's data with `python3 scripts/make_synthetic_dataset.py --out "
            f"{os.path.dirname(data_root)}`" if "tiny_shapes" in data_root else ""
        )
        raise ConfigError(f"data file not found: {path} (data.train_files / data.val_files){hint}")
    return RLDataset(
        data_path=path,
        tokenizer=tokenizer,
        processor=processor,
        prompt_key=data.prompt_key,
        answer_key=data.answer_key,
        image_key=data.image_key,
        format_prompt=data.format_prompt,
        max_prompt_length=data.max_prompt_length,
        min_pixels=data.min_pixels,
        max_pixels=data.max_pixels,
        filter_overlong_prompts=data.filter_overlong_prompts,
        system_prompt=data.system_prompt,
    )


def build_dataloaders(config: PPOConfig, tokenizer, processor):
    data = config.data

    train = None
    if data.train_files and not config.trainer.val_only:
        train_set = build_rl_dataset(config, data.train_files, tokenizer, processor)
        if len(train_set) < data.rollout_batch_size:
            raise ConfigError(
                f"data.train_files={data.train_files} has {len(train_set)} usable prompts, fewer than "
                f"data.rollout_batch_size={data.rollout_batch_size}"
            )
        train = make_rl_dataloader(
            train_set, data.rollout_batch_size, data.shuffle, data.seed, True, tokenizer.pad_token_id,
            data.max_prompt_length,
        )
    val = None
    if data.val_files:
        val_set = build_rl_dataset(config, data.val_files, tokenizer, processor)
        batch_size = len(val_set) if data.val_batch_size < 0 else data.val_batch_size
        val = make_rl_dataloader(val_set, batch_size, False, data.seed, False, tokenizer.pad_token_id, data.max_prompt_length)
    return train, val
