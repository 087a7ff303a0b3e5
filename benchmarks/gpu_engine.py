"""The training engine on one GPU at a real shape, without Ray or vLLM: the prepared check to run
the first time a GPU is at hand (the lent GPU image has torch and transformers only).

A random Qwen2.5-VL-3B of the published widths (`verl/models/published_configs.py`; every decoder
layer unless `--layers` or the memory estimate says fewer, and the script prints which), FSDP2
on one rank with bf16 compute over fp32 master weights and activation checkpointing, as the
workers run it. One GRPO group: a prompt of `--prompt` tokens that is mostly image (random
pixels, one image) and `--n` responses of `--response` tokens. For each training path
(unpacked rows; shared-prompt packing with the dense mask through sdpa; block-sparse with the
`segments` kernel; block-sparse with flex_attention, the GPU default) one log-prob pass and one
update (forward, backward, AdamW):

- seconds and tokens/s after one warm-up pass (the group's n x (P + R) row tokens / s: equal
  work for every path),
- peak GPU memory of the pass beside the dry run's estimate of the same micro-batch
  (`verl.utils.memory_estimate`: actor state + activations + logits + dense masks),
- backward exactness of the flex path: on a small fp32 model, the gradients of one packed
  update (flex) against one update of the unpacked rows (sdpa), max |difference| / max |grad|.

Then the rollout (`--rollout_response` tokens, 0 to skip): the HF engine's decode loop
(`verl/workers/rollout/decode.py`) against transformers' `generate` as the engine called it
before (n return sequences, per-step logits kept for the log-probs), on an unsharded bf16 copy of
the same model: one image prompt of `--prompt` tokens, `--n` samples each forced to the full
length; seconds, tokens/s and peak memory of each.

flash-attn varlen is not a path here: with flash-attn installed the plan keeps packing on
through flex for the language model (`verl.workers.engine.shared_prefix.plan_attention`).

    python3 benchmarks/gpu_engine.py                                   # H100: ~3-6 minutes
    python3 benchmarks/gpu_engine.py --device cpu --size tiny --prompt 48 --n 2 --response 16   # smoke (CI)

On CPU flex has no backward: the smoke mode times its log-prob pass only and checks flex
forward exactness instead of backward. Writes benchmarks/results/gpu_engine.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time

import torch
import torch.distributed as dist

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from training_shapes import memory_estimate  # noqa: E402

from verl.models.block_sparse_attention import text_attention_implementation  # noqa: E402
from verl.protocol import DataProto  # noqa: E402
from verl.workers.engine.shared_prefix import packing_of  # noqa: E402

PATHS = ("unpacked", "dense", "segments", "flex")
GIB = 2**30


def init_single_rank(device: torch.device):
    """A one-rank process group and mesh, so the model is sharded by the workers' own FSDP2 code."""
    from torch.distributed.device_mesh import init_device_mesh

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return init_device_mesh(device.type, (1,))


def model_config(size: str, layers: int | None):
    from verl.models.published_configs import published_config
    from verl.utils.tiny_model import TinyModelSpec, build_config, build_tokenizer

    if size == "tiny":
        spec = TinyModelSpec()
        config = build_config(spec, build_tokenizer(spec))
    else:
        config = published_config(size)
    if layers is not None:
        config.text_config.num_hidden_layers = layers
        if getattr(config.text_config, "layer_types", None):
            config.text_config.layer_types = config.text_config.layer_types[:layers]
    return config


def estimate(config, tokens: int, prompt: int, response: int, n: int, path: str, checkpointing: bool, gpu_gib: float):
    """The dry run's estimate for this in-memory `config` (written to a folder for `model_shape`)."""
    with tempfile.TemporaryDirectory() as folder:
        config.save_pretrained(folder)
        return memory_estimate(folder, tokens, prompt, response, n, path, checkpointing, gpu_gib)


def group_batch(config, prompt: int, n: int, response: int, seed: int = 0) -> DataProto:
    """One prompt of `prompt` tokens (vision start, a square image's merged tokens, vision end,
    random text) repeated for `n` random responses of `response` tokens; random pixels."""
    vision = config.vision_config
    merge = vision.spatial_merge_size
    side = max(1, int((prompt * 0.9) ** 0.5))  # merged tokens per image side: ~90% of the prompt is image
    image_tokens = side * side
    generator = torch.Generator().manual_seed(seed)
    text_tokens = prompt - image_tokens - 2
    vocab = min(config.text_config.vocab_size, 150_000)
    low = 10
    text = torch.randint(low, vocab, (text_tokens,), generator=generator)
    image = torch.full((image_tokens,), config.image_token_id)
    prompt_ids = torch.cat([torch.tensor([config.vision_start_token_id]), image, torch.tensor([config.vision_end_token_id]), text])
    responses = torch.randint(low, vocab, (n, response), generator=generator)
    patches = (side * merge) ** 2
    patch_dim = vision.in_channels * vision.temporal_patch_size * vision.patch_size**2
    images = {
        "pixel_values": torch.randn(patches, patch_dim, generator=generator),
        "image_grid_thw": torch.tensor([[1, side * merge, side * merge]]),
    }
    mask = torch.ones(n, response, dtype=torch.long)
    return DataProto.from_dict(
        tensors={
            "input_ids": torch.cat([prompt_ids.expand(n, -1), responses], 1),
            "attention_mask": torch.ones(n, prompt + response, dtype=torch.long),
            "responses": responses,
            "response_mask": mask,
            "advantages": torch.randn(n, 1, generator=generator) * mask,
            "old_log_probs": (-6.0 + 0.1 * torch.randn(n, response, generator=generator)) * mask,
        },
        non_tensors={"multi_modal_inputs": [dict(images) for _ in range(n)]},
    )


def set_path(model, path: str, vision_attention: str = "sdpa") -> None:
    """The model's attention for `path` (a block-sparse kernel's name records the kernel)."""
    block_sparse = path in ("segments", "flex")
    model.set_attn_implementation(text_attention_implementation(path, vision_attention) if block_sparse else "sdpa")
    assert packing_of(model) == (path if block_sparse else "dense"), (path, packing_of(model))


def actor_for(model, path: str, tokens: int):
    from verl.workers.actor import PPOActor
    from verl.workers.config import ActorConfig

    return PPOActor(
        model, ActorConfig(use_kl_loss=False), total_optimizer_steps=10, temperature=1.0, max_token_len=tokens,
        max_token_len_for_experience=tokens, share_prefix=path != "unpacked",
    )


def measure(device: torch.device, fn) -> tuple[float, float]:
    """(seconds, peak bytes; 0 on CPU) of `fn`."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return seconds, float(torch.cuda.max_memory_allocated()) if device.type == "cuda" else 0.0


def flex_exactness(device: torch.device, mesh) -> dict:
    """Small fp32 model: flex-packed vs unpacked (sdpa) gradients of one update on `device`
    (forward log-probs only on CPU, which has no flex backward)."""
    from transformers import Qwen2_5_VLForConditionalGeneration
    from torch.distributed.fsdp import MixedPrecisionPolicy

    from verl.workers.actor import compute_log_probs
    from verl.workers.engine.fsdp import shard_model

    config = model_config("tiny", None)
    data = group_batch(config, prompt=40, n=4, response=48, seed=1)
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(config).to(device)
    model = shard_model(model, mesh, MixedPrecisionPolicy(param_dtype=torch.float32))
    tokens = 4 * 88
    mask = data.batch["response_mask"].bool()
    if device.type != "cuda":
        log_probs = {}
        for path in ("unpacked", "flex"):
            set_path(model, path)
            log_probs[path], _ = compute_log_probs(model, data, 99, 1.0, False, tokens, share_prefix=path != "unpacked")
        difference = (log_probs["flex"] - log_probs["unpacked"])[mask].abs().max().item()
        return {"checked": "forward log-probs (CPU has no flex backward)", "max_abs_difference": difference}
    gradients = {}
    for path in ("unpacked", "flex"):
        set_path(model, path)
        actor = actor_for(model, path, tokens)
        actor.optimizer.zero_grad(set_to_none=True)
        actor.backward_mini_batch(data)
        gradients[path] = {name: p.grad.full_tensor().clone() for name, p in model.named_parameters() if p.grad is not None}
    scale = max(g.abs().max().item() for g in gradients["unpacked"].values())
    difference = max((gradients["flex"][k] - g).abs().max().item() for k, g in gradients["unpacked"].items())
    return {"checked": "update gradients", "max_abs_difference": difference, "max_abs_gradient": scale,
            "relative": difference / scale}


def rollout_rows(model, data: DataProto, n: int, response: int, device: torch.device) -> list[dict]:
    """The decode loop and `generate` on the group's prompt: n samples of `response` tokens each."""
    from transformers import GenerationConfig

    from verl.workers.rollout.base import SamplingConfig
    from verl.workers.rollout.decode import TokenFilter, decode

    model.eval()
    prompt_length = data.batch["input_ids"].shape[1] - data.batch["responses"].shape[1]
    input_ids = data.batch["input_ids"][:1, :prompt_length].to(device)
    images = {key: value.to(device) for key, value in data.non_tensor_batch["multi_modal_inputs"][0].items()}
    images["pixel_values"] = images["pixel_values"].to(model.dtype)
    inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), **images}
    sampling = SamplingConfig(n=n, max_tokens=response, min_tokens=response, seed=0)
    stop = torch.tensor([model.config.text_config.eos_token_id or 0])
    no_tokens = torch.zeros(0, dtype=torch.long)

    def loop():
        decode(model, inputs, sampling, TokenFilter(no_tokens, stop, response), 0, n, torch.Generator(device).manual_seed(0))

    def transformers_generate():
        result = model.generate(
            **inputs, mm_token_type_ids=(input_ids == model.config.image_token_id).int(),
            generation_config=GenerationConfig(
                do_sample=True, top_k=0, top_p=1.0, temperature=1.0, num_return_sequences=n, max_new_tokens=response,
                min_new_tokens=response, eos_token_id=stop.tolist(), pad_token_id=0, return_dict_in_generate=True,
                output_logits=True,
            ),
        )
        generated = result.sequences[:, prompt_length:]
        torch.stack([torch.log_softmax(logits.float(), -1).gather(1, generated[:, i, None])[:, 0]
                     for i, logits in enumerate(result.logits)], 1)

    rows = []
    with torch.no_grad():
        for name, fn in (("decode_loop", loop), ("generate", transformers_generate)):
            fn()
            seconds, peak = measure(device, fn)
            rows.append({"path": name, "pass": "rollout", "seconds": seconds, "tokens_per_s": n * response / seconds,
                         "peak_gib": peak / GIB})
            print(f"  {name:11s} rollout  {seconds:8.3f} s  {n * response / seconds:10.0f} tok/s  "
                  f"peak {peak / GIB:6.2f} GiB", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--size", default="3b", help="3b, 7b (published widths) or tiny")
    parser.add_argument("--layers", type=int, default=None, help="decoder layers (default: all that fit the estimate)")
    parser.add_argument("--prompt", type=int, default=1024)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--response", type=int, default=1024)
    parser.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS)
    parser.add_argument("--rollout_response", type=int, default=256, help="rollout tokens per sample (0: skip)")
    parser.add_argument("--out", default=os.path.join(REPO_ROOT, "benchmarks/results/gpu_engine.json"))
    args = parser.parse_args()
    device = torch.device(args.device, 0) if args.device == "cuda" else torch.device("cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_engine.py: no CUDA device; use --device cpu --size tiny for the smoke mode")
    from transformers import Qwen2_5_VLForConditionalGeneration
    from torch.distributed.fsdp import MixedPrecisionPolicy

    from verl.workers.engine.fsdp import shard_model

    mesh = init_single_rank(device)
    checkpointing = device.type == "cuda"
    gpu_gib = torch.cuda.get_device_properties(0).total_memory / GIB if device.type == "cuda" else 0.0
    unpacked_tokens = args.n * (args.prompt + args.response)
    layers = args.layers
    config = model_config(args.size, layers)
    if layers is None and device.type == "cuda":
        # Every layer unless the dry run's estimate of the largest pass says it does not fit in 90%.
        layers = config.text_config.num_hidden_layers
        while layers > 1 and estimate(
            model_config(args.size, layers), unpacked_tokens, args.prompt, args.response, args.n, "dense",
            checkpointing, gpu_gib,
        ).update_phase > 0.9 * gpu_gib * GIB:
            layers -= 1
        config = model_config(args.size, layers)
    layers = config.text_config.num_hidden_layers
    print(f"model: Qwen2.5-VL {args.size} widths, {layers} decoder layers"
          f"{'' if args.layers or layers == model_config(args.size, None).text_config.num_hidden_layers else ' (fewer: the estimate says all do not fit)'}; "
          f"group: prompt {args.prompt} + {args.n} x {args.response}; device {device}", flush=True)

    compute_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration(config)  # fp32 master weights
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    model = shard_model(model, mesh, MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32))
    data = group_batch(config, args.prompt, args.n, args.response)

    rows = []
    for path in args.paths:
        set_path(model, path)
        actor = actor_for(model, path, unpacked_tokens)
        passes = [("log_probs", lambda: actor.compute_log_probs(data))]
        if path != "flex" or device.type == "cuda":
            passes.append(("update", lambda: actor.update_policy(data, num_mini_batches=1, step=1)))
        for name, fn in passes:
            fn()  # warm-up: flex compiles its kernel on first use, AdamW creates its state
            seconds, peak = measure(device, fn)
            tokens = args.prompt + args.n * args.response if path != "unpacked" else unpacked_tokens
            memory = estimate(config, tokens, args.prompt, args.response, args.n, path, checkpointing, gpu_gib or 80.0)
            estimated = memory.update_phase if name == "update" else memory.experience_phase
            row = {"path": path, "pass": name, "seconds": seconds, "tokens_per_s": unpacked_tokens / seconds,
                   "peak_gib": peak / GIB, "estimate_gib": estimated / GIB}
            rows.append(row)
            print(f"  {path:9s} {name:10s} {seconds:8.3f} s  {row['tokens_per_s']:10.0f} tok/s  "
                  f"peak {row['peak_gib']:6.2f} GiB  estimate {row['estimate_gib']:6.2f} GiB", flush=True)
    if args.rollout_response:
        with torch.device(device):
            rollout_model = Qwen2_5_VLForConditionalGeneration(config).to(compute_dtype)
        rows += rollout_rows(rollout_model, data, args.n, args.rollout_response, device)
        del rollout_model
    exactness = flex_exactness(device, mesh)
    print(f"flex exactness ({exactness['checked']}): max |difference| {exactness['max_abs_difference']:.2e}"
          + (f", relative to max |grad| {exactness['relative']:.2e}" if "relative" in exactness else ""))
    result = {
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "size": args.size, "layers": layers, "prompt": args.prompt, "n": args.n,
        "response": args.response, "gradient_checkpointing": checkpointing, "rows": rows, "flex_exactness": exactness,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {args.out}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
