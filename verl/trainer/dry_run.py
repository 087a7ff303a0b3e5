"""`trainer.dry_run=true`: check a GPU recipe on any machine before it is sent to a cluster.

Nothing is trained, no Ray cluster starts and no weights load. Checked, in order:
1. the config (the same `PPOConfig.validate` a real run does);
2. the batch arithmetic per step and per GPU;
3. the data: every local train/val source is read through the real `RLDataset` (columns, images,
   prompt lengths against max_prompt_length); a hub source cannot be read offline, so a small
   fixture is written with the recipe's column names and read instead (format prompt, pixel
   range and prompt length are still checked);
4. the model: the real architecture on the meta device (the folder's config.json, or the
   published Qwen2.5-VL architecture its path names), its parameter count;
5. a per-GPU memory estimate of each phase of the step (`verl.utils.memory_estimate`).
Prompt lengths use the model folder's tokenizer when it is there, else the tiny model's
stand-in tokenizer (image tokens, most of a prompt, are exact either way; text tokens differ).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass

import numpy as np
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

from verl.toy.synthetic import generate_split, write_rl_split
from verl.models.lora import LoRAConfig, apply_lora
from verl.models.published_configs import config_for_model_path
from verl.models.qwen_vl import decoder_layers, recurrent_layers, vision_parts
from verl.trainer.config import PPOConfig
from verl.trainer.datasets import build_rl_dataset
from verl.utils.memory_estimate import GIB, MemoryEstimate, ModelShape, StepSettings, estimate_memory
from verl.toy.tiny_model import SPECS, TinyModelSpec, build_processor, build_tokenizer
from verl.workers.engine.shared_prefix import AttentionPlan, plan_attention

FIXTURE_ROWS = 8


@dataclass(frozen=True)
class DryRunReport:
    lines: list[str]
    shape: ModelShape
    memory: MemoryEstimate
    gpu_memory_gib: float

    @property
    def fits(self) -> bool:
        return self.memory.peak <= self.gpu_memory_gib * GIB

    def text(self) -> str:
        return "\n".join(self.lines)


def _is_local(path: str) -> bool:
    return os.path.exists(path) or os.path.isdir(path.rsplit("@", 1)[0])


def batch_lines(config: PPOConfig) -> list[str]:
    """Per-step and per-GPU batch arithmetic (config.validate has checked divisibility)."""
    data, actor, rollout = config.data, config.worker.actor, config.worker.rollout
    world = config.world_size
    responses = data.rollout_batch_size * rollout.n
    updates = data.rollout_batch_size // actor.global_batch_size * actor.ppo_epochs
    per_gpu_update = actor.global_batch_size * rollout.n // world
    lines = [
        f"world size {world} ({config.trainer.nnodes} node(s) x {config.trainer.n_gpus_per_node} GPUs)",
        f"per step: {data.rollout_batch_size} prompts x n={rollout.n} = {responses} responses"
        + (f", + {responses} self-reward re-answers (text only)" if config.self_reward.enable else ""),
        f"optimizer updates per step: {updates} (rollout {data.rollout_batch_size} / global batch "
        f"{actor.global_batch_size} x ppo_epochs {actor.ppo_epochs}); {per_gpu_update} responses per GPU per update",
    ]
    if actor.use_dynamic_batch_size:
        lines.append(
            f"micro-batches: token budget {update_tokens(config)} (update) / {experience_tokens(config)} "
            f"(log-probs) per GPU; at full-length rows {per_gpu_update // actor.micro_batch_size_per_device_for_update} "
            "micro-batches per update, fewer for shorter rows"
        )
    else:
        lines.append(
            f"micro-batches: {per_gpu_update // actor.micro_batch_size_per_device_for_update} of "
            f"{actor.micro_batch_size_per_device_for_update} rows per update per GPU"
        )
    return lines


def update_tokens(config: PPOConfig) -> int:
    actor, data = config.worker.actor, config.data
    row = data.max_prompt_length + data.max_response_length
    return actor.max_token_len_per_device or actor.micro_batch_size_per_device_for_update * row


def experience_tokens(config: PPOConfig) -> int:
    actor, data = config.worker.actor, config.data
    row = data.max_prompt_length + data.max_response_length
    return actor.max_token_len_per_device_for_experience or actor.micro_batch_size_per_device_for_experience * row


def gpu_attention_plan(config: PPOConfig) -> AttentionPlan:
    """The training forwards' attention on the GPUs the dry run sizes; `auto` attention is
    counted as sdpa (flash-attn may be missing there: the case with the larger dense mask).
    A model with recurrent layers (Qwen3.5) trains unpacked (`plan_attention`)."""
    model = config.worker.actor.model
    attention = "sdpa" if model.attn_implementation == "auto" else model.attn_implementation
    text_config = config_for_model_path(model.model_path)[0].get_text_config()
    return plan_attention(
        attention, model.share_prompt_prefix, model.packing_attention, "cuda", recurrent_layers(text_config)
    )


def packed_group_tokens(config: PPOConfig, plan: AttentionPlan) -> int:
    """P + n x R, the longest packed sequence, when the packing mask is dense (its L^2 bytes are
    counted); 0 when rows are unpacked or packed block-sparse (a flex BlockMask is a few
    integers per 128 x 128 tile)."""
    if plan.packing != "dense":
        return 0
    data = config.data
    return data.max_prompt_length + config.worker.rollout.n * data.max_response_length


def _tokenizer_and_processor(model_path: str):
    """The model folder's own tokenizer/processor, else the tiny model's (see module docstring)."""
    if os.path.isfile(os.path.join(os.path.expanduser(model_path), "tokenizer_config.json")):
        return AutoTokenizer.from_pretrained(model_path), AutoProcessor.from_pretrained(model_path), "the model's"
    # The stand-in's image processor has the recipe model's patch size: Qwen3-VL's and Qwen3.5's 32-pixel tokens.
    spec = SPECS.get(config_for_model_path(model_path)[0].model_type, TinyModelSpec())
    tokenizer = build_tokenizer(spec)
    return tokenizer, build_processor(spec, tokenizer), "stand-in (tiny model)"


def _write_fixture(config: PPOConfig, out_dir: str) -> str:
    """A few synthetic rows in the recipe's schema (its column names), as parquet."""
    import pyarrow.parquet as pq

    path = os.path.join(out_dir, "fixture.parquet")
    write_rl_split(generate_split(FIXTURE_ROWS, seed=0, split="train"), path, image_size=112)
    table = pq.read_table(path).select(["problem", "answer", "images"])
    data = config.data
    pq.write_table(table.rename_columns([data.prompt_key, data.answer_key, data.image_key]), path)
    return path


def data_lines(config: PPOConfig, tokenizer, processor) -> list[str]:
    """Reads each data source through RLDataset; errors name the source, row and field."""
    data = config.data
    lines = []
    sources = [("data.train_files", data.train_files), ("data.val_files", data.val_files)]
    with tempfile.TemporaryDirectory() as tmp:
        for key, source in sources:
            if not source:
                continue
            path, note = source, ""
            if not _is_local(source):
                path, note = _write_fixture(config, tmp), f" (hub source not read offline: checked on a {FIXTURE_ROWS}-row fixture with its column names)"
            dataset = build_rl_dataset(config, path, tokenizer, processor)
            lengths = dataset.prompt_lengths
            lines.append(
                f"{key}={source}{note}: {len(dataset)} of {len(lengths)} prompts kept; prompt tokens "
                f"median {int(np.median(lengths))}, max {int(lengths.max())} (max_prompt_length {data.max_prompt_length})"
            )
    return lines


def model_shape(model_path: str, freeze_vision_tower: bool, lora: LoRAConfig | None = None) -> tuple[ModelShape, str]:
    """Parameter counts of the real architecture, built on the meta device (no memory, no weights);
    with `lora` enabled the adapters are added and only they count as trainable."""
    model_config, source = config_for_model_path(model_path)
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(model_config)
        if lora is not None and lora.enabled:
            apply_lora(model, lora, "worker.actor.model.lora")
    parameters = sum(p.numel() for p in model.parameters())
    frozen = 0
    if lora is not None and lora.enabled:
        frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    elif freeze_vision_tower:
        frozen = sum(p.numel() for module in vision_parts(model)[0] for p in module.parameters())
    text = model_config.get_text_config()
    shape = ModelShape(
        parameters=parameters,
        trainable_parameters=parameters - frozen,
        largest_unit_parameters=max(sum(p.numel() for p in layer.parameters()) for layer in decoder_layers(model)),
        hidden_size=text.hidden_size,
        intermediate_size=text.intermediate_size,
        num_layers=text.num_hidden_layers,
        vocab_size=text.vocab_size,
    )
    return shape, source


def memory_lines(memory: MemoryEstimate, gpu_memory_gib: float, rollout_name: str) -> list[str]:
    def gib(value: float) -> str:
        return f"{value / GIB:7.1f}"

    rows = [
        ("actor state (params, grads, AdamW)", memory.actor_state),
        ("reference params", memory.reference),
        ("FSDP gathered units", memory.gathered_units),
        ("update activations", memory.update_activations),
        ("update logits", memory.update_logits),
        ("log-prob activations", memory.experience_activations),
        ("log-prob logits", memory.experience_logits),
        ("packed attention masks (update)", memory.update_packing_mask),
        ("packed attention masks (log-probs)", memory.experience_packing_mask),
        (f"rollout engine ({rollout_name})", memory.rollout_engine),
    ]
    lines = ["per-GPU memory estimate (GiB; lower bound, see verl/utils/memory_estimate.py):"]
    lines += [f"  {name:<38}{gib(value)}" for name, value in rows]
    lines += [
        f"  {'phase: rollout':<38}{gib(memory.rollout_phase)}",
        f"  {'phase: log-probs':<38}{gib(memory.experience_phase)}",
        f"  {'phase: update':<38}{gib(memory.update_phase)}",
        f"  {'peak':<38}{gib(memory.peak)}  of {gpu_memory_gib:.0f} GiB per GPU "
        + ("(fits)" if memory.peak <= gpu_memory_gib * GIB else "(DOES NOT FIT: lower the token budgets or offload)"),
    ]
    return lines


def dry_run(config: PPOConfig) -> DryRunReport:
    """Runs every check of the module docstring; raises on the first failing one."""
    config.validate()
    trainer, actor, data, rollout = config.trainer, config.worker.actor, config.data, config.worker.rollout
    lines = ["dry run: config valid"] + batch_lines(config)
    tokenizer, processor, tokenizer_source = _tokenizer_and_processor(actor.model.model_path)
    lines.append(f"tokenizer: {tokenizer_source}")
    lines += data_lines(config, tokenizer, processor)
    shape, source = model_shape(actor.model.model_path, actor.model.freeze_vision_tower, actor.model.lora)
    lines.append(
        f"model: {source}: {shape.parameters / 1e9:.2f} B parameters ({shape.trainable_parameters / 1e9:.2f} B trainable), "
        f"{shape.num_layers} layers x {shape.hidden_size}, vocab {shape.vocab_size}"
    )
    # With LoRA the reference is the actor with adapters off: no second copy.
    plan = gpu_attention_plan(config)
    lines.append(f"training forwards (on GPU): {plan.reason}")
    with_reference = (actor.use_kl_loss or config.algorithm.kl_coef > 0) and not actor.model.lora.enabled
    colocated = trainer.rollout_mode == "colocated"
    settings = StepSettings(
        world_size=config.world_size,
        max_prompt_length=data.max_prompt_length,
        max_response_length=data.max_response_length,
        update_tokens_per_micro_batch=update_tokens(config),
        experience_tokens_per_micro_batch=experience_tokens(config),
        gradient_checkpointing=actor.model.enable_gradient_checkpointing,
        param_offload=actor.fsdp.param_offload,
        optimizer_offload=actor.fsdp.optimizer_offload,
        with_reference=with_reference,
        reference_offload=config.worker.ref.fsdp.param_offload,
        # one_step_off: the engines sit on GPUs of their own, not beside the training state.
        gpu_memory_utilization=rollout.gpu_memory_utilization if rollout.name == "vllm" and colocated else 0.0,
        gpu_memory_gib=trainer.dry_run_gpu_memory_gib,
        packed_group_tokens=packed_group_tokens(config, plan),
        entropy_gradient=actor.entropy_coeff != 0.0,
    )
    memory = estimate_memory(shape, settings)
    lines += memory_lines(memory, trainer.dry_run_gpu_memory_gib, rollout.name)
    if not colocated:
        engines = trainer.rollout_nnodes * trainer.rollout_n_gpus_per_node
        lines.append(
            f"rollout engines (one_step_off): {engines} GPU(s) of their own, each holding the whole model "
            f"({2 * shape.parameters / 2**30:.1f} GiB in bf16, worker.rollout.dtype={rollout.dtype}) and its KV cache"
        )
    if config.algorithm.adv_estimator == "gae":
        # The critic is a second full model with its own fp32 master weights, gradients and AdamW moments.
        critic_gib = 16.0 * shape.parameters / config.world_size / 2**30
        lines.append(
            f"not counted above: the GAE critic's state, ~{critic_gib:.1f} GiB per GPU (fp32 weights, gradients, "
            "AdamW moments), plus its forward/backward activations"
        )
    return DryRunReport(lines, shape, memory, trainer.dry_run_gpu_memory_gib)
