"""LoRA GRPO on the tiny Qwen3-VL through the real CLI (Ray, 2 FSDP2 ranks): vLLM rollout on merged
weights, the reference = adapters off, resume, and the merger's folded model and PEFT adapter, which
vLLM loads from disk and decodes like HF `generate`."""

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

from verl.data.rl_dataset import RLDataset
from verl.utils.model_merger import merge_checkpoint
from verl.workers.rollout import GenerationRequest, RolloutEngine, RolloutTokenIds, SamplingConfig, make_rollout_engine

REPO_ROOT = Path(__file__).resolve().parents[2]
RANK, ALPHA = 8, 16.0
MIN_PIXELS, MAX_PIXELS = 4096, 16384
GREEDY_TOKENS = 8
# fp32 on both sides, the same weights and the same expanded prompt: HF and vLLM differ only in kernels
# and summation order (fp32 eps 1.2e-7 on log-probs near -6, the tiny vocabulary's ln 600). Measured:
# 2.6e-6 over 8 tokens; the bound leaves ~40x margin and sits ~4 orders below the adapters' effect.
LOGPROB_TOLERANCE = 1e-4

pytestmark = pytest.mark.e2e

LENGTH_REWARD = """
def length_reward(reward_inputs):
    # The random tiny model never earns format or accuracy: a length score gives GRPO non-zero advantages.
    return [{"overall": item.response_length / 48.0} for item in reward_inputs]
"""


def run_cli(*overrides: str) -> str:
    env = dict(os.environ, RAY_DEDUP_LOGS="0", PYTHONUNBUFFERED="1")
    command = [sys.executable, "-m", "verl.trainer.main", "config=configs/tiny_cpu.yaml", *overrides]
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=420)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    return output


@dataclass(frozen=True)
class LoraRun:
    """The CLI run's checkpoint folder, the resumed run's output, and the merger's two folders."""

    ckpt: str
    resumed_output: str
    merged_dir: str
    adapter_dir: str


@pytest.fixture(scope="module")
def lora_run(tiny_qwen3_vl_dir, synthetic_data_dir, tmp_path_factory) -> LoraRun:
    """Two LoRA GRPO steps with vLLM, a resumed third step with HF, the step-3 checkpoint merged."""
    tmp_path = tmp_path_factory.mktemp("lora_run")
    ckpt = str(tmp_path / "ckpt")
    reward_file = tmp_path / "length_reward.py"
    reward_file.write_text(LENGTH_REWARD)
    common = [
        f"worker.actor.model.model_path={tiny_qwen3_vl_dir}",
        f"data.train_files={synthetic_data_dir}/train.parquet",
        f"data.val_files={synthetic_data_dir}/val.parquet",
        f"trainer.save_checkpoint_path={ckpt}",
        "trainer.logger=[file]",
        "trainer.val_before_train=false",
        "trainer.val_freq=-1",
        "trainer.save_freq=1",
        f"reward.reward_function={reward_file}:length_reward",
        # Qwen3-VL's 32-pixel tokens: 64x64 .. 128x128 images are 4 to 16 visual tokens.
        f"data.min_pixels={MIN_PIXELS}",
        f"data.max_pixels={MAX_PIXELS}",
        f"worker.actor.model.lora.rank={RANK}",
        f"worker.actor.model.lora.alpha={ALPHA}",
        "worker.actor.optim.lr=2e-2",  # adapters start at B = 0: big steps make step 2's KL visible
        "worker.actor.global_batch_size=8",
        "worker.actor.micro_batch_size_per_device_for_update=8",
    ]
    # Two steps with vLLM (merged weights synced after each update), checkpoints at 1 and 2.
    run_cli(*common, "worker.rollout.name=vllm", "worker.rollout.enforce_eager=true", "trainer.max_steps=2")
    # Resume for a third step, rolled out by the HF engine from the same merged weights.
    resumed = run_cli(*common, "worker.rollout.name=hf", "trainer.max_steps=3")
    merged_dir, adapter_dir = str(tmp_path / "merged"), str(tmp_path / "adapter")
    merge_checkpoint(os.path.join(ckpt, "global_step_3/actor"), merged_dir, adapter_dir=adapter_dir)
    return LoraRun(ckpt, resumed, merged_dir, adapter_dir)


@pytest.mark.vllm
def test_qwen3_vl_lora_grpo_moves_only_adapters_resumes_and_merges(lora_run: LoraRun, tiny_qwen3_vl_dir):
    ckpt, merged_dir, adapter_dir = lora_run.ckpt, lora_run.merged_dir, lora_run.adapter_dir
    assert f"resumed from {ckpt}/global_step_2 (step 2)" in lora_run.resumed_output

    with open(os.path.join(ckpt, "metrics.jsonl")) as f:
        metrics = [json.loads(line) for line in f]
    assert [m["step"] for m in metrics] == [1, 2, 3]
    for step in metrics:
        # The engine's log-probs (plain model, merged weights) equal the LoRA actor's (base + adapter).
        assert 0 < step["rollout/logprob_gap_max"] < 1e-3, step
        assert step["actor/grad_norm"] > 0
    # Step 1 starts at B = 0 (actor = reference); after an adapter update the KL is non-zero.
    assert metrics[0]["actor/kl_loss"] == 0.0 and metrics[1]["actor/kl_loss"] > 0 and metrics[2]["actor/kl_loss"] > 0
    # Only adapters train: the optimizer state holds them alone (2 x 14 adapted linears, 2 ranks' pieces),
    # and so do the model shards (the frozen base is the model folder; the merger reads it there).
    optim = torch.load(os.path.join(ckpt, "global_step_3/actor/optim_world_size_2_rank_0.pt"), weights_only=False)
    assert len(optim["state"]) == 2 * 14
    for rank in range(2):
        shard = torch.load(os.path.join(ckpt, f"global_step_3/actor/model_world_size_2_rank_{rank}.pt"), weights_only=True)
        assert len(shard) == 2 * 14 and all(name.endswith((".lora_A", ".lora_B")) for name in shard)

    adapter_config = json.load(open(os.path.join(adapter_dir, "adapter_config.json")))
    assert adapter_config["peft_type"] == "LORA" and adapter_config["r"] == RANK and adapter_config["lora_alpha"] == ALPHA
    assert adapter_config["base_model_name_or_path"] == tiny_qwen3_vl_dir  # the adapter applies to the base
    adapter = load_file(os.path.join(adapter_dir, "adapter_model.safetensors"))
    assert len(adapter) == 2 * 14 and not any("visual" in key for key in adapter)

    base = dict(AutoModelForImageTextToText.from_pretrained(tiny_qwen3_vl_dir, dtype=torch.float32).named_parameters())
    merged_model = AutoModelForImageTextToText.from_pretrained(merged_dir, dtype=torch.float32)
    merged = dict(merged_model.named_parameters())
    assert set(merged) == set(base)
    delta_norm = 0.0
    for name, weight in merged.items():
        key = f"base_model.model.{name.removesuffix('.weight')}"
        if f"{key}.lora_A.weight" in adapter:
            expected = base[name] + ALPHA / RANK * adapter[f"{key}.lora_B.weight"] @ adapter[f"{key}.lora_A.weight"]
            torch.testing.assert_close(weight, expected, atol=1e-6, rtol=0)
            delta_norm += float((weight - base[name]).detach().norm())
        else:  # every other weight, the vision tower included, is the base's, bit for bit
            assert torch.equal(weight, base[name]), name
    assert delta_norm > 0


@pytest.mark.vllm
def test_vllm_on_merged_folder_equals_hf_generate_with_an_image(
    lora_run: LoraRun, tiny_qwen3_vl_dir, synthetic_data_dir, vllm_started
):
    """The merged folder, loaded from disk by the rollout's vLLM engine, greedy-decodes an image prompt
    of the training data into HF `generate`'s tokens with the same per-token log-probs."""
    merged_dir = lora_run.merged_dir
    tokenizer, processor = AutoTokenizer.from_pretrained(merged_dir), AutoProcessor.from_pretrained(merged_dir)
    token_ids = RolloutTokenIds.from_tokenizer(tokenizer, AutoConfig.from_pretrained(merged_dir))
    # The rollout's request: a validation row chat-templated by the run's dataset (one image pad) and
    # its image resized to the run's pixel range.
    dataset = RLDataset(
        f"{synthetic_data_dir}/val.parquet", tokenizer, processor, max_prompt_length=256,
        min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS, format_prompt=str(REPO_ROOT / "configs/format_prompt/r1v.jinja"),
    )
    item = dataset[0]
    assert len(item["images"]) == 1
    # Stops suppressed until the end: both engines decode exactly GREEDY_TOKENS tokens.
    greedy = SamplingConfig(n=1, temperature=0.0, max_tokens=GREEDY_TOKENS, min_tokens=GREEDY_TOKENS)

    def start() -> RolloutEngine:
        return make_rollout_engine(
            "vllm", merged_dir, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS, dtype="float32", max_model_len=512,
            enforce_eager=True, max_num_batched_tokens=512, max_num_seqs=1, cpu_kv_cache_space_gib=1,
        )

    with vllm_started(start) as engine:
        ((from_vllm,),) = engine.generate([GenerationRequest(item["raw_prompt_ids"], item["images"])], greedy)

    # HF's own path: the processor expands the image pads (as the dataset did for the trainer).
    inputs = processor(text=[tokenizer.decode(item["raw_prompt_ids"])], images=item["images"], return_tensors="pt")
    assert inputs["input_ids"][0].tolist() == item["input_ids"].tolist()
    hf_generate = dict(
        do_sample=False, max_new_tokens=GREEDY_TOKENS, min_new_tokens=GREEDY_TOKENS, eos_token_id=list(token_ids.stop),
        suppress_tokens=list(token_ids.forbidden), pad_token_id=token_ids.pad, output_logits=True,
        return_dict_in_generate=True,
    )
    merged_model = AutoModelForImageTextToText.from_pretrained(merged_dir, dtype=torch.float32).eval()
    base_model = AutoModelForImageTextToText.from_pretrained(tiny_qwen3_vl_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        merged_out = merged_model.generate(**inputs, **hf_generate)
        base_first_logits = base_model(**inputs).logits[0, -1]
    hf_tokens = merged_out.sequences[0, inputs["input_ids"].shape[1] :].tolist()
    # Raw log-probs (before suppression), the quantity both engines return and the trainer recomputes.
    hf_logprobs = [
        float(torch.log_softmax(step_logits[0], dim=-1)[token])
        for step_logits, token in zip(merged_out.logits, hf_tokens)
    ]

    assert from_vllm.token_ids == hf_tokens and len(hf_tokens) == GREEDY_TOKENS
    gap = max(abs(a - b) for a, b in zip(from_vllm.logprobs, hf_logprobs))
    # The same first token's log-prob under the base model: how far the adapters moved it. A vLLM that
    # loaded the base weights, or dropped the folded deltas, would be off by this much.
    base_first = float(torch.log_softmax(base_first_logits, dim=-1)[hf_tokens[0]])
    adapter_shift = abs(base_first - hf_logprobs[0])
    print(f"merged LoRA: vLLM vs HF greedy tokens {hf_tokens}, max |log-prob gap| {gap:.2e}; "
          f"first token's log-prob shift from the base {adapter_shift:.2e}")
    assert gap < LOGPROB_TOLERANCE
    assert adapter_shift > 100 * LOGPROB_TOLERANCE
