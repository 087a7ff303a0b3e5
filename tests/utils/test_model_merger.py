"""scripts/model_merger.py on real FSDP2 shards: two gloo processes shard the tiny Qwen2.5-VL,
take one AdamW step and save their local pieces with `save_rank_state`; the merge must
reproduce the full state dict FSDP itself gathers, bit for bit, and load in transformers and
vLLM."""

import importlib.util
import os
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, AutoTokenizer, GenerationConfig

from verl.utils.checkpoint import save_hf_metadata, save_rank_state
from verl.utils.manifest import write_manifest
from verl.utils.model_merger import (
    MergeResult,
    UnverifiedCheckpointError,
    find_model_shards,
    merge_checkpoint,
    merge_shards,
)

WORLD_SIZE = 2
IMAGE_QUESTION = [
    {
        "role": "user",
        "content": [{"type": "image"}, {"type": "text", "text": "How many red circles are in the image?"}],
    }
]
TEXT_QUESTION = [{"role": "user", "content": "What color is the square at the top?"}]
SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "model_merger.py"


def noise_image(width: int, height: int, seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def hf_greedy(model, processor, messages, images, max_new_tokens: int) -> list[int]:
    """Greedy completion ids from transformers' `generate`, eos ignored so lengths are fixed."""
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[text], images=images, return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, do_sample=False)
    return output[0, inputs["input_ids"].shape[1] :].tolist()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _train_step_and_save(
    rank: int, port: int, batches: list[dict[str, torch.Tensor]], model_dir: str, actor_dir: str, full_state_path: str
) -> None:
    """One rank: FSDP2 exactly as the trainer shards (each vision block and decoder layer, then
    the root), one AdamW step on `batches[rank]`, then the trainer's checkpoint write. Rank 0
    also saves the full state dict FSDP gathers, as the ground truth for the merge."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE)
    try:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (WORLD_SIZE,))
        model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
        for layer in list(model.model.visual.blocks) + list(model.model.language_model.layers):
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        batch = batches[rank]
        model(**batch, labels=batch["input_ids"]).loss.backward()
        optimizer.step()
        save_rank_state(actor_dir, WORLD_SIZE, rank, model, optimizer, {"optimizer_steps": 1})
        full_state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if rank == 0:
            save_hf_metadata(model_dir, os.path.join(actor_dir, "huggingface"))
            torch.save(full_state, full_state_path)
        dist.barrier()
    finally:
        dist.destroy_process_group()


@dataclass(frozen=True)
class FsdpCheckpoint:
    actor_dir: str
    full_state: dict[str, torch.Tensor]  # what get_model_state_dict(full_state_dict=True) returned


@pytest.fixture(scope="module")
def fsdp_checkpoint(tiny_model_dir: str, tmp_path_factory: pytest.TempPathFactory) -> FsdpCheckpoint:
    root = tmp_path_factory.mktemp("fsdp_checkpoint")
    actor_dir = root / "global_step_1" / "actor"
    full_state_path = root / "full_state.pt"
    # Built once here: loading the processor in each spawned process would add seconds of imports.
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    text = processor.apply_chat_template(IMAGE_QUESTION, add_generation_prompt=True, tokenize=False)
    batches = [
        dict(processor(text=[text + "three"], images=[noise_image(90, 70, seed=rank)], return_tensors="pt"))
        for rank in range(WORLD_SIZE)
    ]
    mp.spawn(
        _train_step_and_save,
        args=(_free_port(), batches, tiny_model_dir, str(actor_dir), str(full_state_path)),
        nprocs=WORLD_SIZE,
        join=True,
    )
    write_manifest(str(actor_dir.parent))  # as the trainer does, last
    return FsdpCheckpoint(str(actor_dir), torch.load(full_state_path, weights_only=True))


@pytest.fixture(scope="module")
def merged(fsdp_checkpoint: FsdpCheckpoint, tmp_path_factory: pytest.TempPathFactory) -> MergeResult:
    return merge_checkpoint(fsdp_checkpoint.actor_dir, str(tmp_path_factory.mktemp("merged") / "hf"))


@pytest.fixture(scope="module")
def merged_model(merged: MergeResult):
    return AutoModelForImageTextToText.from_pretrained(merged.target_dir).eval()


def copy_actor_dir(fsdp_checkpoint: FsdpCheckpoint, tmp_path: Path, with_manifest: bool = True) -> Path:
    """A private copy of the checkpoint for tests that write into or corrupt it: its whole
    global_step_1 folder, or (with_manifest=False) the actor/ folder alone."""
    if not with_manifest:
        return Path(shutil.copytree(fsdp_checkpoint.actor_dir, tmp_path / "copied" / "actor"))
    step_dir = shutil.copytree(Path(fsdp_checkpoint.actor_dir).parent, tmp_path / "global_step_1")
    return Path(step_dir) / "actor"


# ---- FSDP2's shard layout and the merge --------------------------------------------------------


def test_shards_are_dim0_chunks_of_the_full_state(fsdp_checkpoint: FsdpCheckpoint):
    pieces = [
        torch.load(Path(fsdp_checkpoint.actor_dir, f"model_world_size_2_rank_{r}.pt"), weights_only=True)
        for r in range(WORLD_SIZE)
    ]
    full = fsdp_checkpoint.full_state
    assert set(pieces[0]) == set(pieces[1]) == set(full)
    for name, tensor in full.items():
        assert [p[name].shape[0] for p in pieces] == [len(c) for c in torch.chunk(tensor, WORLD_SIZE)], name
    # The tied embedding's row count (the tokenizer size) is odd: rank 0 holds one row more.
    vocab_size = full["lm_head.weight"].shape[0]
    assert vocab_size % 2 == 1
    assert pieces[0]["lm_head.weight"].shape[0] == pieces[1]["lm_head.weight"].shape[0] + 1


def test_merged_weights_equal_fsdp_full_state_dict_bit_for_bit(
    fsdp_checkpoint: FsdpCheckpoint, merged: MergeResult, merged_model, tiny_model_dir: str
):
    full = fsdp_checkpoint.full_state
    state = merged_model.state_dict()
    assert set(state) == set(full)
    unequal = [name for name in full if not torch.equal(state[name], full[name])]
    assert unequal == []
    assert merged_model.lm_head.weight is merged_model.model.language_model.embed_tokens.weight
    # The AdamW step moved every tensor, so equality above is not equality with the initial weights.
    initial = AutoModelForImageTextToText.from_pretrained(tiny_model_dir).state_dict()
    assert [name for name in full if torch.equal(initial[name], full[name])] == []
    assert (merged.world_size, merged.num_tensors, merged.dtypes) == (WORLD_SIZE, len(full), ("float32",))
    # Tied lm_head is stored once: weights on disk = unique parameters, fp32.
    unique_bytes = sum(p.numel() * 4 for p in merged_model.parameters())
    assert unique_bytes <= merged.weight_bytes < unique_bytes + 64 * 1024  # plus the safetensors header
    assert merged.weight_bytes == os.path.getsize(Path(merged.target_dir, "model.safetensors"))


def test_merged_folder_has_tokenizer_processor_and_generation_config(merged: MergeResult, tiny_model_dir: str):
    for name in ("tokenizer.json", "tokenizer_config.json", "processor_config.json", "chat_template.jinja"):
        assert Path(merged.target_dir, name).read_bytes() == Path(tiny_model_dir, name).read_bytes(), name
    assert GenerationConfig.from_pretrained(merged.target_dir).eos_token_id == (
        GenerationConfig.from_pretrained(tiny_model_dir).eos_token_id
    )
    tokenizer = AutoTokenizer.from_pretrained(merged.target_dir)
    assert tokenizer.encode("<|im_end|>") == [tokenizer.eos_token_id]
    assert not any(name.endswith((".tmp", ".replaced")) for name in os.listdir(Path(merged.target_dir).parent))


def test_merged_folder_generates_like_the_trained_model(
    fsdp_checkpoint: FsdpCheckpoint, merged: MergeResult, merged_model, tiny_model_dir: str
):
    processor = AutoProcessor.from_pretrained(merged.target_dir)
    trained = AutoModelForImageTextToText.from_pretrained(tiny_model_dir).eval()
    trained.load_state_dict(fsdp_checkpoint.full_state)
    image = noise_image(90, 70, seed=7)
    completion = hf_greedy(merged_model, processor, IMAGE_QUESTION, [image], 12)
    assert completion == hf_greedy(trained, processor, IMAGE_QUESTION, [image], 12)
    assert len(set(completion)) > 1


def test_bfloat16_cast_is_recorded_in_config(fsdp_checkpoint: FsdpCheckpoint, tmp_path: Path):
    result = merge_checkpoint(fsdp_checkpoint.actor_dir, str(tmp_path / "bf16"), dtype=torch.bfloat16)
    model = AutoModelForImageTextToText.from_pretrained(result.target_dir)
    assert result.dtypes == ("bfloat16",)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.config.dtype == model.config.text_config.dtype == model.config.vision_config.dtype == torch.bfloat16
    full = fsdp_checkpoint.full_state
    assert torch.equal(model.state_dict()["lm_head.weight"], full["lm_head.weight"].to(torch.bfloat16))


def test_merge_shards_concatenates_uneven_and_empty_pieces_and_keeps_replicated_buffers():
    weight = torch.arange(12.0).reshape(4, 3)
    bias = torch.tensor([5.0])
    step = torch.tensor(7)
    rank_states = [  # torch.chunk over 3 ranks: 4 rows -> 2, 2, 0; 1 row -> 1, 0, 0
        {"w": weight[:2], "b": bias, "step": step},
        {"w": weight[2:], "b": bias[1:], "step": step},
        {"w": weight[4:], "b": bias[1:], "step": step},
    ]
    shapes = {"w": weight.shape, "b": bias.shape, "step": step.shape}
    merged = merge_shards(rank_states, shapes, ["r0", "r1", "r2"])
    assert torch.equal(merged["w"], weight) and torch.equal(merged["b"], bias) and torch.equal(merged["step"], step)


def test_merge_shards_names_the_key_and_shapes_that_do_not_fit():
    with pytest.raises(ValueError, match=r"w: pieces \[\(2, 3\), \(1, 3\)\] .* model's shape \(4, 3\)"):
        merge_shards([{"w": torch.zeros(2, 3)}, {"w": torch.zeros(1, 3)}], {"w": torch.Size([4, 3])}, ["a", "b"])
    with pytest.raises(ValueError, match=r"pieces \[\(1,\), \(0,\)\] .* model's shape \(\)"):
        merge_shards([{"s": torch.zeros(1)}, {"s": torch.zeros(0)}], {"s": torch.Size([])}, ["a", "b"])
    with pytest.raises(ValueError, match="copies differ"):
        merge_shards([{"s": torch.tensor(1)}, {"s": torch.tensor(2)}], {"s": torch.Size([])}, ["a", "b"])
    with pytest.raises(KeyError, match=r"b\.pt does not match .*missing 1 \[w\], unexpected 1 \[v\]"):
        merge_shards([{"w": torch.zeros(1)}, {"v": torch.zeros(1)}], {"w": torch.Size([2])}, ["a.pt", "b.pt"])


# ---- the command line --------------------------------------------------------------------------


def load_script():
    spec = importlib.util.spec_from_file_location("model_merger_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_default_target_is_the_checkpoints_huggingface_folder(
    fsdp_checkpoint: FsdpCheckpoint, tmp_path: Path, capsys: pytest.CaptureFixture
):
    actor_dir = copy_actor_dir(fsdp_checkpoint, tmp_path)
    load_script().main(["--local_dir", str(actor_dir)])
    hf_dir = actor_dir / "huggingface"
    assert f"merged 2 shards: {len(fsdp_checkpoint.full_state)} tensors (float32)" in capsys.readouterr().out
    assert (hf_dir / "model.safetensors").is_file() and (hf_dir / "chat_template.jinja").is_file()
    assert len(list(actor_dir.glob("model_world_size_2_rank_*.pt"))) == WORLD_SIZE
    # A second merge replaces the folder it wrote, and a crashed run's leftover is discarded.
    (actor_dir / "huggingface.tmp").mkdir()
    load_script().main(["--local_dir", str(actor_dir)])
    assert sorted(p.name for p in actor_dir.iterdir() if p.is_dir()) == ["huggingface"]
    model = AutoModelForImageTextToText.from_pretrained(hf_dir)
    assert torch.equal(model.lm_head.weight, fsdp_checkpoint.full_state["lm_head.weight"])


def test_cli_help_describes_the_options(capsys: pytest.CaptureFixture):
    with pytest.raises(SystemExit) as exit_info:
        load_script().main(["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    for option in ("--local_dir", "--target_dir", "--dtype", "--hf_upload_path"):
        assert option in help_text


# ---- bad input ---------------------------------------------------------------------------------


def fake_checkpoint(actor_dir: Path, shard_names: list[str], with_config: bool = True) -> Path:
    """Shard files with placeholder content: layout checks run before any file is read."""
    actor_dir.mkdir(parents=True)
    for name in shard_names:
        (actor_dir / name).write_bytes(b"")
    if with_config:
        (actor_dir / "huggingface").mkdir()
        (actor_dir / "huggingface" / "config.json").write_text("{}")
    return actor_dir


def test_missing_rank_names_directory_and_files(tmp_path: Path):
    actor_dir = fake_checkpoint(tmp_path / "actor", ["model_world_size_4_rank_0.pt", "model_world_size_4_rank_2.pt"])
    with pytest.raises(FileNotFoundError) as error:
        merge_checkpoint(str(actor_dir))
    assert str(actor_dir) in str(error.value)
    assert "model_world_size_4_rank_1.pt, model_world_size_4_rank_3.pt (world size 4)" in str(error.value)


def test_rank_beyond_world_size_is_refused(tmp_path: Path):
    names = ["model_world_size_2_rank_0.pt", "model_world_size_2_rank_1.pt", "model_world_size_2_rank_2.pt"]
    actor_dir = fake_checkpoint(tmp_path / "actor", names)
    with pytest.raises(ValueError, match=r"holds ranks \[2\] beyond world size 2"):
        merge_checkpoint(str(actor_dir))


def test_mixed_world_sizes_are_refused(tmp_path: Path):
    names = ["model_world_size_2_rank_0.pt", "model_world_size_2_rank_1.pt", "model_world_size_4_rank_0.pt"]
    actor_dir = fake_checkpoint(tmp_path / "actor", names)
    with pytest.raises(ValueError, match=r"mixes model shards of several world sizes \[2, 4\]"):
        merge_checkpoint(str(actor_dir))


def test_missing_huggingface_folder_is_named(tmp_path: Path):
    actor_dir = fake_checkpoint(tmp_path / "actor", ["model_world_size_1_rank_0.pt"], with_config=False)
    with pytest.raises(FileNotFoundError, match=f"{actor_dir / 'huggingface'}/config.json is missing"):
        merge_checkpoint(str(actor_dir))


def test_empty_directory_and_step_directory_are_refused(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match=f"no model_world_size_W_rank_R.pt files in {tmp_path}"):
        merge_checkpoint(str(tmp_path))
    (tmp_path / "actor").mkdir()
    with pytest.raises(FileNotFoundError, match=f"did you mean {tmp_path / 'actor'}"):
        merge_checkpoint(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        merge_checkpoint(str(tmp_path / "nowhere"))


def test_checkpoint_keys_must_match_the_model(fsdp_checkpoint: FsdpCheckpoint, tmp_path: Path):
    actor_dir = copy_actor_dir(fsdp_checkpoint, tmp_path, with_manifest=False)
    rank_1 = actor_dir / "model_world_size_2_rank_1.pt"
    state = torch.load(rank_1, weights_only=True)
    state["model.visual.extra.weight"] = state.pop("model.language_model.norm.weight")
    torch.save(state, rank_1)
    with pytest.raises(
        KeyError,
        match=r"model_world_size_2_rank_1.pt does not match .*missing 1 \[model.language_model.norm.weight\], "
        r"unexpected 1 \[model.visual.extra.weight\]",
    ):
        merge_checkpoint(str(actor_dir), str(tmp_path / "out"), allow_unverified=True)
    assert not (tmp_path / "out").exists()


def test_truncated_shard_file_is_named(fsdp_checkpoint: FsdpCheckpoint, tmp_path: Path):
    actor_dir = copy_actor_dir(fsdp_checkpoint, tmp_path, with_manifest=False)
    rank_1 = actor_dir / "model_world_size_2_rank_1.pt"
    rank_1.write_bytes(rank_1.read_bytes()[:1000])
    with pytest.raises(ValueError, match=f"cannot read {rank_1} as a dict of plain tensors"):
        merge_checkpoint(str(actor_dir), str(tmp_path / "out"), allow_unverified=True)


@pytest.mark.timeout(120)
def test_manifest_names_a_shard_with_flipped_bytes_and_passes_an_intact_one(
    fsdp_checkpoint: FsdpCheckpoint, tmp_path: Path
):
    """64 flipped bytes inside a weight load without error and would merge silently: the
    checkpoint's manifest (written last by the trainer) catches them, naming the file."""
    actor_dir = copy_actor_dir(fsdp_checkpoint, tmp_path)
    write_manifest(str(actor_dir.parent))
    result = merge_checkpoint(str(actor_dir), str(tmp_path / "intact"))
    assert result.num_tensors == len(fsdp_checkpoint.full_state)
    rank_1 = actor_dir / "model_world_size_2_rank_1.pt"
    data = bytearray(rank_1.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(b ^ 0xFF for b in data[middle : middle + 64])
    rank_1.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f"integrity check failed: {rank_1} fails its SHA-256 check"):
        merge_checkpoint(str(actor_dir), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_a_copied_actor_folder_with_flipped_bytes_is_refused_unless_allowed(
    fsdp_checkpoint: FsdpCheckpoint, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    """An actor/ folder copied out of its global_step_N has no manifest beside it: flipped bytes
    in a weight load without error, so the merge refuses, saying what it could not check."""
    actor_dir = copy_actor_dir(fsdp_checkpoint, tmp_path, with_manifest=False)
    rank_1 = actor_dir / "model_world_size_2_rank_1.pt"
    data = bytearray(rank_1.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(b ^ 0xFF for b in data[middle : middle + 64])
    rank_1.write_bytes(bytes(data))
    with pytest.raises(UnverifiedCheckpointError) as error:
        load_script().main(["--local_dir", str(actor_dir), "--target_dir", str(tmp_path / "out")])
    message = str(error.value)
    assert f"refusing to merge unverified {actor_dir}: {actor_dir.parent / 'manifest.json'} does not exist" in message
    assert "model_world_size_2_rank_0.pt, model_world_size_2_rank_1.pt" in message
    assert "were not checked for truncation or altered bytes" in message and "--allow_unverified" in message
    assert not (tmp_path / "out").exists()
    # Asked for explicitly, it merges, and the warning names what went unchecked.
    load_script().main(["--local_dir", str(actor_dir), "--target_dir", str(tmp_path / "out"), "--allow_unverified"])
    assert (tmp_path / "out" / "model.safetensors").is_file()
    assert "merging unverified" in caplog.text and "were not checked" in caplog.text


def test_tied_weights_that_differ_are_an_error(fsdp_checkpoint: FsdpCheckpoint, tmp_path: Path):
    actor_dir = copy_actor_dir(fsdp_checkpoint, tmp_path, with_manifest=False)
    rank_0 = actor_dir / "model_world_size_2_rank_0.pt"
    state = torch.load(rank_0, weights_only=True)
    state["lm_head.weight"] = state["lm_head.weight"] + 1
    torch.save(state, rank_0)
    with pytest.raises(ValueError, match=r"checkpoint's \['lm_head.weight'\] differ"):
        merge_checkpoint(str(actor_dir), str(tmp_path / "out"), allow_unverified=True)


def test_targets_that_must_not_be_replaced(fsdp_checkpoint: FsdpCheckpoint, tmp_path: Path):
    actor_dir = Path(fsdp_checkpoint.actor_dir)
    with pytest.raises(ValueError, match="contains the checkpoint"):
        merge_checkpoint(str(actor_dir), str(actor_dir.parent))
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a model folder"):
        merge_checkpoint(str(actor_dir), str(notes))
    assert (notes / "todo.txt").read_text() == "keep me"


def test_layout_is_read_from_file_names(fsdp_checkpoint: FsdpCheckpoint):
    layout = find_model_shards(fsdp_checkpoint.actor_dir)
    assert layout.world_size == WORLD_SIZE
    assert [os.path.basename(p) for p in layout.paths] == [f"model_world_size_2_rank_{r}.pt" for r in range(2)]


# ---- vLLM --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def merged_vllm_engine(merged: MergeResult, vllm_engine_on):
    """An in-process vLLM engine on the merged folder; process-global side effects undone after."""
    with vllm_engine_on(merged.target_dir) as llm:
        yield llm


@pytest.mark.vllm
def test_vllm_loads_merged_folder_and_greedy_equals_transformers(
    merged_vllm_engine, merged: MergeResult, merged_model
):
    import vllm

    processor = AutoProcessor.from_pretrained(merged.target_dir)
    text = processor.apply_chat_template(TEXT_QUESTION, add_generation_prompt=True, tokenize=False)
    params = vllm.SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)
    (output,) = merged_vllm_engine.generate([text], params)
    assert list(output.outputs[0].token_ids) == hf_greedy(merged_model, processor, TEXT_QUESTION, None, 16)
