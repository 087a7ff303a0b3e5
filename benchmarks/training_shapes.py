"""Shapes the training-path benchmarks share (long_sequence.py, gpu_engine.py, vs_trl.py).

- `COMPUTE_SPEC`: a ~7 M random Qwen2.5-VL (text 384 x 4 layers, vision 128 x 2 blocks) built
  with `TinyModelSpec`, big enough that matmuls, not Python, set the step time on CPU; its
  processor sizes a 224 x 224 image to 64 visual tokens, so a plain synthetic-shapes prompt is
  ~100 tokens and mostly image, as in a real run (7.48 M parameters).
- `group_batch`: a rollout-like batch of GRPO groups (prompts from the synthetic task, each
  repeated for `n` random responses of exactly `response_length` tokens), left-padded prompts
  and right-padded responses as the rollout hands them to the trainer.
- `actor_for` and `measure_*`: one process, no Ray: the actor's log-prob pass and update on a
  model loaded for one packing path (`PATHS`).
"""

from __future__ import annotations

import os
import sys
import time

import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

from verl.protocol import DataProto  # noqa: E402
from verl.toy.tiny_model import TinyModelSpec, build_tiny_model  # noqa: E402

COMPUTE_IMAGE_SIZE = 224
COMPUTE_SPEC = TinyModelSpec(
    text_hidden_size=384,
    text_intermediate_size=1024,
    text_num_layers=4,
    text_num_heads=6,
    text_num_kv_heads=2,
    vision_depth=2,
    vision_hidden_size=128,
    vision_intermediate_size=256,
    vision_num_heads=2,
    min_pixels=COMPUTE_IMAGE_SIZE * COMPUTE_IMAGE_SIZE,
    max_pixels=COMPUTE_IMAGE_SIZE * COMPUTE_IMAGE_SIZE,
    initializer_range=0.02,
)
FORMAT_PROMPT = os.path.join(REPO_ROOT, "configs/format_prompt/sr1.jinja")

# How the training forwards attend (`verl.workers.engine.shared_prefix.plan_attention`): one row
# each; packed with a dense mask (sdpa); packed block-sparse with the `segments` kernel (the CPU
# default) or the flex_attention kernel (the GPU default; forward only on CPU).
PATHS = ("unpacked", "dense", "segments", "flex")


def build_model(out_dir: str, spec: TinyModelSpec = COMPUTE_SPEC, seed: int = 0) -> str:
    return build_tiny_model(out_dir, seed=seed, spec=spec)


def parameter_count(model_dir: str) -> int:
    from transformers import AutoConfig, AutoModelForImageTextToText

    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(model_dir))
    return sum(p.numel() for p in model.parameters())


def write_data(out_dir: str, prompts: int, image_size: int = COMPUTE_IMAGE_SIZE) -> str:
    """Synthetic shapes train split of `prompts` rows with `image_size` images; returns the folder."""
    from dataclasses import replace

    from verl.toy.synthetic import SyntheticTaskSpec, write_synthetic_dataset

    spec = replace(SyntheticTaskSpec(), image_size=image_size)
    write_synthetic_dataset(out_dir, FORMAT_PROMPT, seed=0, train_size=prompts, val_size=8, sft_size=8, spec=spec)
    return out_dir


def group_batch(
    model_dir: str, data_dir: str, prompts: int, n: int, response_length: int, max_prompt_length: int = 400,
    image_pixels: int = COMPUTE_IMAGE_SIZE**2, format_prompt: str | None = None, seed: int = 0,
) -> DataProto:
    """`prompts` x `n` rows: each prompt (the plain question, or rendered with the
    `format_prompt` jinja file) repeated for `n` random responses of `response_length` tokens,
    with advantages and made-up old log-probs so every loss term runs."""
    from transformers import AutoProcessor, AutoTokenizer

    from verl.data.rl_dataset import RLDataset, collate_rl

    tokenizer, processor = AutoTokenizer.from_pretrained(model_dir), AutoProcessor.from_pretrained(model_dir)
    dataset = RLDataset(
        os.path.join(data_dir, "train.parquet"), tokenizer, processor, max_prompt_length=max_prompt_length,
        min_pixels=image_pixels, max_pixels=image_pixels, format_prompt=format_prompt,
    )
    tensors, non_tensors = collate_rl(
        [dataset[i // n] for i in range(prompts * n)], tokenizer.pad_token_id, max_prompt_length
    )
    generator = torch.Generator().manual_seed(seed)
    rows = prompts * n
    # Ordinary tokens only: a special one (an image pad above all) would change the row's meaning.
    special = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)
    ordinary = torch.tensor([i for i in range(tokenizer.vocab_size) if i not in special])
    responses = ordinary[torch.randint(0, len(ordinary), (rows, response_length), generator=generator)]
    mask = torch.ones(rows, response_length, dtype=torch.long)
    return DataProto.from_dict(
        tensors={
            "input_ids": torch.cat([tensors["input_ids"], responses], 1),
            "attention_mask": torch.cat([tensors["attention_mask"], mask], 1),
            "responses": responses,
            "response_mask": mask,
            "advantages": torch.randn(rows, 1, generator=generator) * mask,
            "old_log_probs": (-6.0 + 0.1 * torch.randn(rows, response_length, generator=generator)) * mask,
        },
        non_tensors={"multi_modal_inputs": non_tensors["multi_modal_inputs"]},
    )


def load_for_path(model_dir: str, path: str, device: torch.device, dtype: torch.dtype = torch.float32):
    """The model as `plan_attention` loads it for `path` (block-sparse paths: the language model
    on the kernel's attention, the vision tower on sdpa)."""
    from verl.models.block_sparse_attention import text_attention_implementation
    from verl.workers.engine.model import build_policy

    attention = text_attention_implementation(path, "sdpa") if path in ("segments", "flex") else "sdpa"
    return build_policy(model_dir, device, attention, dtype=dtype)


def actor_for(model, path: str, max_token_len: int, entropy_coeff: float = 0.0):
    from verl.workers.actor import PPOActor
    from verl.workers.config import ActorConfig

    config = ActorConfig(use_kl_loss=False, entropy_coeff=entropy_coeff)
    return PPOActor(
        model, config, total_optimizer_steps=1000, temperature=1.0, max_token_len=max_token_len,
        max_token_len_for_experience=max_token_len, share_prefix=path != "unpacked",
    )


def memory_estimate(
    model_dir: str, tokens: int, prompt: int, response: int, n: int, path: str, checkpointing: bool = False,
    gpu_gib: float = 80.0,
):
    """The dry run's `MemoryEstimate` (`verl.utils.memory_estimate`, bf16 on GPU, one rank) for
    micro-batches of `tokens` tokens of a group of `n` x `response` after a `prompt`, on
    `path` (only `dense` builds an (L, L) mask)."""
    from verl.trainer.dry_run import model_shape
    from verl.utils.memory_estimate import StepSettings, estimate_memory

    shape, _ = model_shape(model_dir, False)
    settings = StepSettings(
        world_size=1, max_prompt_length=prompt, max_response_length=response, update_tokens_per_micro_batch=tokens,
        experience_tokens_per_micro_batch=tokens, gradient_checkpointing=checkpointing, param_offload=False,
        optimizer_offload=False, with_reference=False, reference_offload=False, gpu_memory_utilization=0.0,
        gpu_memory_gib=gpu_gib, packed_group_tokens=prompt + n * response if path == "dense" else 0,
    )
    return estimate_memory(shape, settings)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start
