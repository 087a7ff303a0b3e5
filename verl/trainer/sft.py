"""`python3 -m verl.trainer.sft config=configs/sft_x.yaml key=value ...`: cold-start SFT.

The first stage of the Vision-SR1 recipe: supervised fine-tuning of Qwen2.5-VL on LLaMA-Factory
sharegpt conversations (``verl.data.sft_dataset``), loss on assistant tokens only. The result is a
plain Hugging Face folder that the GRPO stage takes as ``worker.actor.model.model_path``.

Single process (CPU or one GPU) or ``torchrun --nproc_per_node N -m verl.trainer.sft ...``; either
way FSDP2 shards (one per rank, a one-rank group alone; gloo on CPU / nccl on GPU) with the RL
workers' mixed precision, and the optimizer step is the RL one (``verl.workers.engine.engine``).
The ``model``, ``optim`` and ``fsdp`` sections are the RL actor's (``verl.workers.config``).

Loss: token-mean over the global batch. Every optimizer step consumes
``gradient_accumulation_steps`` micro-batches of ``per_device_batch_size`` conversations on every
rank; each micro-batch contributes ``sum of its token losses / label tokens of the whole global
batch`` (the count all-reduced over ranks), so the result does not depend on how the global batch
is split into ranks and micro-batches.

Output directory layout::

    output_dir/
      run.lock                            held by the run (verl.utils.folder_lock)
      metrics.jsonl, sft_config.yaml      run log and the resolved config
      latest_global_step.txt, global_step_N/
                                          every trainer.save_freq steps: the RL trainer's checkpoint
                                          (actor/ shards, AdamW state, lr schedule, RNG; manifest.json)
      config.json, model*.safetensors,    the final model, tokenizer and processor
      tokenizer*, preprocessor_config.json, chat_template.jinja, ...

Saves never leave a folder that looks complete but is not: a checkpoint is written to
``global_step_N.tmp``, its manifest last, and renamed (``verl.utils.checkpoint``); the final model
is written to ``.final.tmp`` and its files are moved into ``output_dir`` with ``config.json`` last
(no ``config.json``, no loadable model). Started again in the same output_dir (after a crash or
a kill), a run resumes from the latest intact checkpoint and reproduces the uninterrupted run;
``python3 -m verl.utils.model_merger --local_dir output_dir/global_step_N/actor`` turns a
checkpoint into a Hugging Face folder.
"""

from __future__ import annotations

import copy
import itertools
import math
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from functools import partial
from typing import Any, ClassVar, Iterable, Iterator

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.utils.data import DataLoader, DistributedSampler
from transformers import AutoConfig, AutoProcessor, AutoTokenizer

from verl.data.sft_dataset import IGNORE_INDEX, SFTDataset, collate_sft
from verl.models.lora import fold_adapters, lora_scale
from verl.models.qwen_vl import forward_in_step, position_ids_for
from verl.trainer.config import ConfigError, parse_cli_or_exit, to_yaml
from verl.utils import checkpoint
from verl.utils.cli_exit import exit_cleanly
from verl.utils.folder_lock import LOCK_FILE, CheckpointFolderLock
from verl.utils.manifest import digest_files, write_manifest
from verl.utils.model_source import ModelPathError, check_model_path
from verl.utils.ranges import (
    AT_LEAST_ONE,
    DEFAULT_OR_AT_LEAST_ONE,
    NON_NEGATIVE,
    POSITIVE,
    Choices,
    Range,
    check_ranges,
)
from verl.utils.tracking import SINKS, Tracker
from verl.workers.engine.micro_batch import sum_across_ranks
from verl.workers.engine.model import build_trained_policy
from verl.workers.config import FSDPConfig, ModelConfig, OptimConfig
from verl.workers.engine.engine import Engine, resume_policy, save_policy

USAGE = """usage: python3 -m verl.trainer.sft config=CONFIG.yaml [section.key=value ...]
       torchrun --nproc_per_node N -m verl.trainer.sft config=CONFIG.yaml [...]

Cold-start supervised fine-tuning of a Qwen2.5-VL model on sharegpt conversations
(loss on assistant tokens only). Writes a Hugging Face folder to trainer.output_dir.
Example: python3 -m verl.trainer.sft config=configs/sft_tiny_cpu.yaml trainer.max_steps=20

Keys and their defaults (see verl/trainer/sft.py for what each one means):
"""

FINAL_TMP_DIR = ".final.tmp"
CONFIG_FILE = "config.json"
DATA_SETTINGS_FILE = "sft_data_settings.pt"
"""Beside a checkpoint's shards: the settings its step's data position depends on."""


@dataclass
class SFTDataConfig:
    # Allowed values, checked with the shared sections' by check_ranges (verl/utils/ranges.py).
    RANGES: ClassVar[dict[str, Range]] = {
        "max_length": AT_LEAST_ONE, "min_pixels": AT_LEAST_ONE, "max_pixels": AT_LEAST_ONE,
        "num_workers": NON_NEGATIVE,
    }
    CHOICES: ClassVar[dict[str, Choices]] = {"truncation": ("error", "right")}

    train_file: str = ""
    """LLaMA-Factory sharegpt .json (list) or .jsonl file; image paths relative to it."""
    max_length: int = 4096
    """Tokens per conversation, image tokens expanded."""
    truncation: str = "error"
    """error: a longer conversation stops the run, naming its row; right: cut its end."""
    min_pixels: int = 262144
    """Images are resized to at least this many pixels (use the GRPO stage's value)."""
    max_pixels: int = 4194304
    """...and at most this many."""
    shuffle: bool = True
    """Reshuffle the conversations every epoch (seeded by trainer.seed)."""
    num_workers: int = 2
    """DataLoader worker processes per rank (image decoding and resizing); 0 = in the main process."""


def sft_optim() -> OptimConfig:
    """The RL optimizer section with SFT's defaults: a higher peak, no weight decay, 10% warm-up
    then cosine decay."""
    return OptimConfig(lr=1e-5, weight_decay=0.0, lr_warmup_ratio=0.1, lr_scheduler="cosine")


@dataclass
class SFTTrainerConfig:
    RANGES: ClassVar[dict[str, Range]] = {
        "per_device_batch_size": AT_LEAST_ONE, "gradient_accumulation_steps": AT_LEAST_ONE,
        "num_epochs": AT_LEAST_ONE, "max_steps": DEFAULT_OR_AT_LEAST_ONE, "max_grad_norm": POSITIVE,
        "save_freq": Range(-1), "save_limit": Range(-1), "logging_steps": AT_LEAST_ONE,
    }
    CHOICES: ClassVar[dict[str, Choices]] = {"device": ("auto", "cuda", "cpu"), "logger": SINKS}

    output_dir: str = ""
    """Run folder: metrics, checkpoints and, at the end, the fine-tuned Hugging Face model."""
    overwrite_output_dir: bool = False
    """Delete a non-empty output_dir at start instead of refusing to run."""
    per_device_batch_size: int = 8
    """Conversations per forward/backward on one device."""
    gradient_accumulation_steps: int = 2
    """Micro-batches per optimizer step; global batch = per_device x accumulation x world size."""
    num_epochs: int = 3
    """Passes over the training file."""
    max_steps: int | None = None
    """Stop after this many optimizer steps (when fewer than the epochs give)."""
    seed: int = 42
    """Seed of the data order and of torch/numpy/random."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm."""
    save_freq: int = 0
    """Checkpoint (output_dir/global_step_N, the RL trainer's resumable format: weight shards,
    AdamW state, lr schedule, RNG; `python3 -m verl.utils.model_merger` turns one into a Hugging
    Face folder) every N steps; -1: only at the end; 0: never (only the final model)."""
    save_limit: int = -1
    """Keep the newest N checkpoints (-1: all)."""
    find_last_checkpoint: bool = True
    """Resume automatically from the latest intact checkpoint in output_dir (a run started again
    after a crash continues where its last checkpoint left it)."""
    logging_steps: int = 10
    """Print and log metrics every this many steps (and at the last step)."""
    device: str = "auto"
    """auto | cuda | cpu."""
    logger: list[str] = field(default_factory=lambda: ["console", "file"])
    """console (status line), file (metrics.jsonl, always on), wandb, tensorboard."""
    project_name: str = "vision_sr1"
    """Logger project."""
    experiment_name: str = "sft"
    """Logger run name."""


@dataclass
class SFTConfig:
    # Keys of SFT configs before SFT took the RL sections' names: an old config's error names the new key.
    RENAMED_KEYS: ClassVar[dict[str, str]] = {
        "model.dtype": "fsdp.torch_dtype",
        "model.gradient_checkpointing": "model.enable_gradient_checkpointing",
        "optim.warmup_ratio": "optim.lr_warmup_ratio",
        "optim.max_grad_norm": "trainer.max_grad_norm",
        "trainer.save_steps": "trainer.save_freq",
    }

    # The RL actor's model, optim and fsdp sections (verl.workers.config): same keys, same meaning.
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=sft_optim)
    fsdp: FSDPConfig = field(default_factory=FSDPConfig)
    data: SFTDataConfig = field(default_factory=SFTDataConfig)
    trainer: SFTTrainerConfig = field(default_factory=SFTTrainerConfig)

    def validate(self) -> None:
        """Checks values before anything is loaded; each message names the key."""
        model, data, trainer = self.model, self.data, self.trainer
        try:
            check_ranges(self)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        for key, value in (
            ("model.model_path", model.model_path),
            ("data.train_file", data.train_file),
            ("trainer.output_dir", trainer.output_dir),
        ):
            if not value:
                raise ConfigError(f"{key} is empty")
        if data.min_pixels > data.max_pixels:
            raise ConfigError(f"data.min_pixels={data.min_pixels} > data.max_pixels={data.max_pixels}")
        try:
            self.model.lora.check("model.lora")
        except ValueError as error:
            raise ConfigError(str(error)) from None


@dataclass(frozen=True)
class StepRecord:
    """What one optimizer step did (global over ranks)."""

    step: int
    loss: float
    """Token-mean cross-entropy over the global batch's label tokens."""
    grad_norm: float
    lr: float
    label_tokens: int
    tokens: int
    """Non-padding tokens (image tokens included) of the global batch."""
    seconds: float


@dataclass
class SFTResult:
    """What `SFTTrainer.fit` returns."""

    output_dir: str
    steps: list[StepRecord]
    train_seconds: float


@dataclass(frozen=True)
class DistributedContext:
    """This process's place in the run; world_size 1 without torchrun."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str) -> DistributedContext:
    """Reads RANK/WORLD_SIZE/LOCAL_RANK (torchrun) and starts the process group; one process
    without torchrun gets a one-rank group (in-process store), so it shards like the rest."""
    rank = int(os.environ.get("RANK", "0"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_name == "cuda" or (device_name == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise ConfigError("trainer.device=cuda but torch sees no CUDA device")
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    backend = "nccl" if use_cuda else "gloo"
    if not dist.is_initialized():
        if world_size > 1:
            dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))
        else:
            dist.init_process_group(backend=backend, store=dist.HashStore(), rank=0, world_size=1)
    return DistributedContext(rank, world_size, device)


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def total_optimizer_steps(
    micro_batches_per_epoch: int, accumulation: int, num_epochs: int, max_steps: int | None
) -> int:
    """Steps of the run; an epoch's last step may accumulate fewer micro-batches."""
    steps = num_epochs * math.ceil(micro_batches_per_epoch / accumulation)
    return steps if max_steps is None else min(steps, max_steps)


def chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """Consecutive lists of `size` items (the last one shorter)."""
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def count_label_tokens(labels: torch.Tensor) -> int:
    """Supervised next-token targets in a (batch, length) label tensor (position 0 is never one)."""
    return int((labels[:, 1:] != IGNORE_INDEX).sum())


def supervised_loss_sum(model: nn.Module, batch: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
    """Sum over label tokens of the next-token cross-entropy (scalar, fp32).

    batch: input_ids / attention_mask / labels (bs, L), optional pixel_values (patches, dim) and
    image_grid_thw (images, 3). Logits are computed only at positions where some row has a
    supervised next token (``logits_to_keep``), not for every prompt and image token: with
    Qwen's 152k vocabulary full logits dominate the memory of a step.
    """
    input_ids, attention_mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    image_grid_thw = batch.get("image_grid_thw")
    position_ids = position_ids_for(model, input_ids, attention_mask, image_grid_thw)
    # Logits at position t predict token t + 1.
    predicting = (labels[:, 1:] != IGNORE_INDEX).any(dim=0).nonzero().squeeze(1)  # (K,)
    targets = labels[:, predicting + 1].to(device)  # (bs, K)
    multi_modal = {key: batch[key].to(device) for key in ("pixel_values", "image_grid_thw") if key in batch}
    output = forward_in_step(  # text-only micro-batches keep FSDP ranks in lockstep (see there)
        model,
        input_ids=input_ids.to(device),
        attention_mask=attention_mask.to(device),
        position_ids=position_ids.to(device),
        use_cache=False,
        logits_to_keep=predicting.to(device),
        **multi_modal,
    )
    supervised = targets != IGNORE_INDEX
    return F.cross_entropy(output.logits[supervised].float(), targets[supervised], reduction="sum")


def _format_duration(seconds: float) -> str:
    seconds = int(max(0.0, seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def find_resume_checkpoint(trainer: SFTTrainerConfig) -> str | None:
    """The checkpoint a run in `trainer.output_dir` continues from: its latest intact
    global_step_N (with find_last_checkpoint, unless overwrite_output_dir), else None for a
    fresh start. Refuses to mix two runs in one folder: a non-empty output_dir without a
    checkpoint needs overwrite_output_dir, and one whose every checkpoint is damaged stops the
    run naming them."""
    path = trainer.output_dir
    if trainer.overwrite_output_dir:
        return None
    if trainer.find_last_checkpoint and checkpoint.list_checkpoints(path):
        found, warnings = checkpoint.find_latest_intact_checkpoint(path)
        for warning in warnings:
            print(f"WARNING: {warning}", file=sys.stderr, flush=True)
        if found is None:
            raise checkpoint.CheckpointError(
                f"every checkpoint under {path} is damaged:\n  " + "\n  ".join(warnings)
                + "\nRepair or remove them, or set trainer.overwrite_output_dir=true to start over"
            )
        return found
    contents = sorted(set(os.listdir(path)) - {LOCK_FILE}) if os.path.isdir(path) else []
    if contents:
        raise ConfigError(
            f"trainer.output_dir={path} is not empty ({contents[:5]}) and holds no checkpoint to resume; "
            "choose a new folder or set trainer.overwrite_output_dir=true to delete it"
        )
    return None


def clear_folder(path: str, keep: str) -> None:
    """Removes everything in `path` except the entry `keep` (the run's lock, held while clearing)."""
    for name in os.listdir(path):
        if name != keep:
            target = os.path.join(path, name)
            shutil.rmtree(target) if os.path.isdir(target) and not os.path.islink(target) else os.remove(target)


def publish_final_model(staging_dir: str, output_dir: str) -> None:
    """Moves every file of `staging_dir` into `output_dir`, config.json last, then removes `staging_dir`.

    Any earlier config.json is removed first, so until the last rename the folder does not load.
    """
    names = sorted(os.listdir(staging_dir))
    if CONFIG_FILE not in names:
        raise FileNotFoundError(f"{staging_dir} has no {CONFIG_FILE}; refusing to publish it as a model")
    stale_config = os.path.join(output_dir, CONFIG_FILE)
    if os.path.exists(stale_config):
        os.remove(stale_config)
    for name in [n for n in names if n != CONFIG_FILE] + [CONFIG_FILE]:
        os.replace(os.path.join(staging_dir, name), os.path.join(output_dir, name))
    os.rmdir(staging_dir)


class SFTTrainer:
    """Builds model, data and the training engine from an `SFTConfig`; `fit()` trains, saves
    checkpoints and the final model. In an output_dir with a checkpoint it resumes from the
    latest intact one (`find_resume_checkpoint`)."""

    def __init__(self, config: SFTConfig, context: DistributedContext | None = None):
        config.validate()
        self.config = config
        self.context = context or init_distributed(config.trainer.device)
        ctx, model_cfg, data_cfg, optim_cfg, trainer_cfg = (
            self.context, config.model, config.data, config.optim, config.trainer,
        )
        # Every rank checks before rank 0 writes anything, so a refusal stops all ranks alike.
        self.resume_from = find_resume_checkpoint(trainer_cfg)
        if ctx.is_distributed:
            dist.barrier()
        # One run per output_dir (verl.utils.folder_lock), held until `fit` ends; a killed run's
        # lock is dropped by the kernel and taken over by the run that resumes it.
        self.folder_lock = CheckpointFolderLock(trainer_cfg.output_dir) if ctx.is_main else None
        if self.folder_lock is not None:
            self.folder_lock.acquire()
            if self.resume_from is None:
                clear_folder(trainer_cfg.output_dir, keep=LOCK_FILE)
            with open(os.path.join(trainer_cfg.output_dir, "sft_config.yaml"), "w", encoding="utf-8") as file:
                file.write(to_yaml(config))
        if ctx.is_distributed:
            dist.barrier()
        set_seed(trainer_cfg.seed)

        check_model_path(model_cfg.model_path, "model.model_path")
        self.tokenizer = AutoTokenizer.from_pretrained(model_cfg.tokenizer_path or model_cfg.model_path)
        self.processor = AutoProcessor.from_pretrained(model_cfg.tokenizer_path or model_cfg.model_path)
        self.dataset = SFTDataset(
            data_cfg.train_file,
            self.tokenizer,
            self.processor,
            max_length=data_cfg.max_length,
            min_pixels=data_cfg.min_pixels,
            max_pixels=data_cfg.max_pixels,
            truncation=data_cfg.truncation,
        )
        self.sampler = DistributedSampler(
            self.dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=data_cfg.shuffle, seed=trainer_cfg.seed
        )
        self.pad_token_id: int = self.tokenizer.pad_token_id
        if self.pad_token_id is None:
            self.pad_token_id = self.tokenizer.eos_token_id
        self.loader = self._loader(self.sampler)
        self.total_steps = total_optimizer_steps(
            len(self.loader), trainer_cfg.gradient_accumulation_steps, trainer_cfg.num_epochs, trainer_cfg.max_steps
        )

        # The saved model keeps the source checkpoint's dtype (bf16 for Qwen's releases).
        self.save_dtype: torch.dtype = AutoConfig.from_pretrained(model_cfg.model_path).dtype or torch.float32
        # The RL actor's build and precision path, one process included.
        fsdp_cfg = config.fsdp
        mesh = init_device_mesh(ctx.device.type, (ctx.world_size,))
        self.model = build_trained_policy(
            model_cfg, fsdp_cfg, ctx.device, mesh, model_cfg.attn_implementation, "model.lora"
        )
        try:
            self.engine = Engine(
                self.model, optim_cfg, self.total_steps, trainer_cfg.max_grad_norm,
                offload_optimizer=fsdp_cfg.optimizer_offload and ctx.device.type == "cuda",
            )
        except ValueError as error:  # every parameter frozen
            raise ConfigError(str(error)) from None
        self.start_step = 0
        if self.resume_from is not None:
            self.start_step = self._resume(self.resume_from)

    def _loader(self, sampler: Iterable[int]) -> DataLoader:
        """Micro-batches of `per_device_batch_size` conversations in `sampler`'s order."""
        return DataLoader(
            self.dataset,
            batch_size=self.config.trainer.per_device_batch_size,
            sampler=sampler,
            collate_fn=partial(collate_sft, pad_token_id=self.pad_token_id),
            num_workers=self.config.data.num_workers,
        )

    def _epoch_micro_batches(self, epoch: int, skip: int) -> Iterable[dict[str, torch.Tensor]]:
        """This rank's micro-batches of `epoch` after the first `skip` (a resume mid-epoch starts
        where its checkpoint stopped, without loading the conversations it skips)."""
        self.sampler.set_epoch(epoch)
        if skip == 0:
            return self.loader
        order = list(self.sampler)[skip * self.config.trainer.per_device_batch_size :]
        return self._loader(order)

    def train_step(self, micro_batches: list[dict[str, torch.Tensor]], step: int) -> StepRecord:
        """One optimizer step over this rank's micro-batches of the global batch
        (`Engine.train_batch`: each micro-batch's loss is its token sum over the global batch's
        label-token count)."""
        start = time.perf_counter()
        ctx = self.context
        local_labels = sum(count_label_tokens(batch["labels"]) for batch in micro_batches)
        local_tokens = sum(int(batch["attention_mask"].sum()) for batch in micro_batches)
        global_labels, global_tokens = sum_across_ranks([local_labels, local_tokens])
        if global_labels == 0:
            raise ValueError(f"step {step}: the global batch has no supervised token")
        local_loss_sum = 0.0

        def loss_fn(batch: dict[str, torch.Tensor]) -> torch.Tensor:
            nonlocal local_loss_sum
            loss_sum = supervised_loss_sum(self.model, batch, ctx.device)
            local_loss_sum += loss_sum.item()
            return loss_sum / global_labels

        result = self.engine.train_batch(
            micro_batches, loss_fn,
            lambda count: f"step {step}: non-finite SFT loss on {count} micro-batch(es); lower optim.lr or check "
            "the data (e.g. with fsdp.torch_dtype=float32)",
        )
        if not result.stepped and ctx.is_main:  # one overflowing batch does not poison the weights
            print(f"step {step}: gradient norm {result.grad_norm}, optimizer step skipped", file=sys.stderr, flush=True)
        (global_loss_sum,) = sum_across_ranks([local_loss_sum])
        return StepRecord(
            step=step,
            loss=global_loss_sum / global_labels,
            grad_norm=result.grad_norm,
            lr=result.lr,
            label_tokens=int(global_labels),
            tokens=int(global_tokens),
            seconds=time.perf_counter() - start,
        )

    def _data_settings(self) -> dict[str, Any]:
        """What the data position of a checkpoint (its step) depends on: a resume must see the same."""
        trainer_cfg = self.config.trainer
        return {
            "trainer.per_device_batch_size": trainer_cfg.per_device_batch_size,
            "trainer.gradient_accumulation_steps": trainer_cfg.gradient_accumulation_steps,
            "trainer.seed": trainer_cfg.seed,
            "data.shuffle": self.config.data.shuffle,
            "world size": self.context.world_size,
            "conversations": len(self.dataset),
        }

    def save_checkpoint(self, step: int) -> str:
        """output_dir/global_step_{step} in the RL trainer's format (`save_policy`: the engine's
        shards, AdamW state, lr schedule and RNG, the HF metadata), the data position's settings,
        the manifest last, then published atomically (`verl.utils.checkpoint.commit_checkpoint`).
        A collective: every rank calls it."""
        ctx, root = self.context, self.config.trainer.output_dir
        tmp_dir = checkpoint.step_dir(root, step) + ".tmp"
        if ctx.is_main:
            with checkpoint.naming_write_errors(root):
                checkpoint.temporary_step_dir(root, step)
        if ctx.is_distributed:
            dist.barrier()
        model_cfg = self.config.model
        with checkpoint.naming_write_errors(tmp_dir):
            written = save_policy(
                self.engine, os.path.join(tmp_dir, "actor"), model_cfg.model_path, model_cfg.lora, model_cfg.model_path
            )
            digests = digest_files(tmp_dir, [f"actor/{name}" for name in written])
        gathered = [None] * ctx.world_size
        if ctx.is_distributed:
            dist.all_gather_object(gathered, digests)
        else:
            gathered = [digests]
        published = checkpoint.step_dir(root, step)
        if ctx.is_main:
            checkpoint.save_file(self._data_settings(), os.path.join(tmp_dir, DATA_SETTINGS_FILE))
            with checkpoint.naming_write_errors(tmp_dir):
                write_manifest(tmp_dir, {rel: entry for rank_digests in gathered for rel, entry in rank_digests.items()})
            with checkpoint.naming_write_errors(root):
                published = checkpoint.commit_checkpoint(root, step, tmp_dir, self.config.trainer.save_limit)
        if ctx.is_distributed:
            dist.barrier()
        return published

    def _resume(self, path: str) -> int:
        """Loads checkpoint `path` into the engine; returns its step. Refuses a checkpoint whose
        data position means other conversations here (`_data_settings` changed)."""
        settings_path = os.path.join(path, DATA_SETTINGS_FILE)
        if not os.path.isfile(settings_path):
            raise checkpoint.CheckpointError(f"checkpoint {path} lacks {DATA_SETTINGS_FILE}: not an SFT checkpoint")
        saved = torch.load(settings_path, weights_only=False)
        changed = {key: (saved.get(key), value) for key, value in self._data_settings().items() if saved.get(key) != value}
        if changed:
            raise checkpoint.CheckpointError(
                f"checkpoint {path} was written with other data settings, its step would skip other conversations: "
                + ", ".join(f"{key} {old} -> {new}" for key, (old, new) in changed.items())
                + "; resume with the saved values or set trainer.overwrite_output_dir=true to start over"
            )
        model_cfg = self.config.model
        resume_policy(self.engine, os.path.join(path, "actor"), model_cfg.lora, model_cfg.model_path, "model.model_path")
        step = checkpoint.step_of(path)
        if self.context.is_main:
            print(f"resumed from {path} (step {step})", flush=True)
        return step

    def save(self, target_dir: str) -> None:
        """Writes a complete HF folder (weights in the source dtype, config, generation config,
        tokenizer, processor with chat template) to `target_dir` via a temporary folder, moved
        in with config.json last (`publish_final_model`). A collective when sharded: every rank
        must call it (a collective)."""
        ctx = self.context
        state = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if self.config.model.lora.enabled:  # the saved folder is the plain model, adapters folded in
            state = fold_adapters(state, lora_scale(self.config.model.lora))
        if ctx.is_main:
            staging = os.path.join(target_dir, FINAL_TMP_DIR)
            shutil.rmtree(staging, ignore_errors=True)
            state = {name: tensor.detach().to("cpu", self.save_dtype) for name, tensor in state.items()}
            self.model.save_pretrained(staging, state_dict=state, safe_serialization=True)
            # save_pretrained records the live (fp32 master) parameters' dtype; the files hold save_dtype.
            saved_config = copy.deepcopy(self.model.config)
            for config in [saved_config] + [getattr(saved_config, name) for name in saved_config.sub_configs]:
                config.dtype = self.save_dtype
            saved_config.save_pretrained(staging)
            self.processor.save_pretrained(staging)
            publish_final_model(staging, target_dir)
        if ctx.is_distributed:
            dist.barrier()

    def fit(self) -> SFTResult:
        """Trains for the configured epochs/steps from `start_step`, logs, saves checkpoints and
        the final model; releases the output_dir's lock at the end."""
        ctx, trainer_cfg = self.context, self.config.trainer
        tracker = None
        if ctx.is_main:
            tracker = Tracker(
                [backend for backend in trainer_cfg.logger if backend != "console"],
                trainer_cfg.project_name,
                trainer_cfg.experiment_name,
                trainer_cfg.output_dir,
                asdict(self.config),
            )
            # Rows logged after the checkpoint by the run that died are logged again below.
            tracker.drop_rows_from(self.start_step + 1)
            print(
                f"SFT: {len(self.dataset)} conversations, {ctx.world_size} rank(s) on {ctx.device.type}, global batch "
                f"{trainer_cfg.per_device_batch_size * trainer_cfg.gradient_accumulation_steps * ctx.world_size}, "
                f"{self.total_steps} optimizer steps",
                flush=True,
            )
        accumulation = trainer_cfg.gradient_accumulation_steps
        steps_per_epoch = math.ceil(len(self.loader) / accumulation)
        records: list[StepRecord] = []
        window: list[StepRecord] = []
        start = time.perf_counter()
        step = self.start_step
        try:
            for epoch in itertools.count(step // steps_per_epoch):
                if step >= self.total_steps:
                    break
                skip = (step - epoch * steps_per_epoch) * accumulation
                for micro_batches in chunks(self._epoch_micro_batches(epoch, skip), accumulation):
                    if step >= self.total_steps:
                        break
                    record = self.train_step(micro_batches, step + 1)
                    step += 1
                    records.append(record)
                    window.append(record)
                    is_last = step == self.total_steps
                    save_freq = trainer_cfg.save_freq
                    if save_freq != 0 and ((save_freq > 0 and step % save_freq == 0) or is_last):
                        self.save_checkpoint(step)
                    if step % trainer_cfg.logging_steps == 0 or is_last:
                        if tracker is not None:
                            elapsed = time.perf_counter() - start
                            self._log(tracker, window, step, epoch_progress=step / steps_per_epoch, elapsed=elapsed)
                        window = []
            train_seconds = time.perf_counter() - start
            self.save(trainer_cfg.output_dir)
        finally:
            if tracker is not None:
                tracker.close()
            if self.folder_lock is not None:
                self.folder_lock.release()
        if ctx.is_main:
            print(
                f"SFT done: {step} steps in {_format_duration(train_seconds)}; model saved to {trainer_cfg.output_dir}",
                flush=True,
            )
        return SFTResult(trainer_cfg.output_dir, records, train_seconds)

    def _log(self, tracker: Any, window: list[StepRecord], step: int, epoch_progress: float, elapsed: float) -> None:
        """Metrics of the steps since the last log: mean loss and grad norm, throughput, ETA."""
        window_seconds = sum(record.seconds for record in window)
        metrics = {
            "train/loss": float(np.mean([record.loss for record in window])),
            "train/grad_norm": float(np.mean([record.grad_norm for record in window])),
            "train/lr": window[-1].lr,
            "train/epoch": epoch_progress,
            "train/label_tokens": float(sum(record.label_tokens for record in window)),
            "perf/tokens_per_s": sum(record.tokens for record in window) / max(window_seconds, 1e-9),
            "perf/step_time_s": window_seconds / len(window),
            "perf/eta_s": elapsed / step * (self.total_steps - step),
        }
        tracker.log(metrics, step)
        if "console" in self.config.trainer.logger:
            print(
                f"step {step}/{self.total_steps} (epoch {epoch_progress:.2f}) | loss {metrics['train/loss']:.4f} | "
                f"lr {metrics['train/lr']:.2e} | grad_norm {metrics['train/grad_norm']:.3f} | "
                f"{metrics['perf/tokens_per_s']:,.0f} tok/s | elapsed {_format_duration(elapsed)} | "
                f"ETA {_format_duration(metrics['perf/eta_s'])}",
                flush=True,
            )


def main(argv: list[str] | None = None) -> None:
    config = parse_cli_or_exit(SFTConfig, argv, USAGE + to_yaml(SFTConfig()))
    if config is None:
        return
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if os.environ.get("RANK", "0") == "0":
        print(to_yaml(config), flush=True)
    # Any error is one message on stderr, its traceback in the temporary folder's error.log (not
    # output_dir: a file there would make the rerun refuse a non-empty folder).
    with exit_cleanly(tempfile.gettempdir()):
        try:
            trainer = SFTTrainer(config)
        except ConfigError as error:
            print(f"config error: {error}", file=sys.stderr)
            sys.exit(2)
        except ModelPathError as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)
        trainer.fit()
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
