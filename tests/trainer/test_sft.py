import itertools
import json
import os
import signal
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from transformers import AutoModelForImageTextToText, AutoProcessor

from verl.toy.synthetic import generate_split, write_sft_file
from verl.models.qwen_vl import position_ids_for
from verl.trainer.config import ConfigError, parse_cli
from verl.utils import checkpoint
from verl.utils.model_merger import merge_checkpoint
from verl.trainer.sft import (
    FINAL_TMP_DIR,
    IGNORE_INDEX,
    SFTConfig,
    SFTTrainer,
    StepRecord,
    count_label_tokens,
    main,
    publish_final_model,
    supervised_loss_sum,
    total_optimizer_steps,
)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SR1_PROMPT = os.path.join(REPO_ROOT, "configs", "format_prompt", "sr1.jinja")
TEXT_ONLY_ANSWER = "<think> The description says the circle is red. </think> \\boxed{red}"


@pytest.fixture(scope="module", autouse=True)
def one_rank_group_closed_after_the_module():
    """SFT always shards, so a trainer in this process starts a one-rank process group; the
    modules after this one (an in-process vLLM engine reads an open group as a launcher's) must
    not find it."""
    opened_here = not dist.is_initialized()
    yield
    if opened_here and dist.is_initialized():
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def sft_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    """8 conversations: 7 with an image (the synthetic task) and, at row 3, one text-only."""
    out_dir = str(tmp_path_factory.mktemp("sft_data"))
    path = write_sft_file(generate_split(7, seed=0, split="sft"), out_dir, SR1_PROMPT, image_size=84)
    with open(path, encoding="utf-8") as file:
        records = [record for record in json.load(file) if record["images"]]  # the 7 image conversations
    text_only = {
        "messages": [
            {"role": "user", "content": "Text description: a red circle.\nQuestion: What color is the circle?"},
            {"role": "assistant", "content": TEXT_ONLY_ANSWER},
        ]
    }
    records.insert(3, text_only)
    with open(path, "w", encoding="utf-8") as file:
        json.dump(records, file)
    return path


def full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor of an FSDP shard (SFT always shards, one rank included)."""
    return (tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor).detach()


def weights(model) -> dict[str, torch.Tensor]:
    return {name: full(weight) for name, weight in model.named_parameters()}


def make_config(model_dir: str, train_file: str, output_dir: str, **overrides) -> SFTConfig:
    settings = {
        "model.model_path": model_dir,
        "data.train_file": train_file,
        "data.max_length": 512,
        "data.min_pixels": 3136,
        "data.max_pixels": 12544,
        "data.num_workers": 0,
        "optim.lr": 3e-3,
        "optim.lr_warmup_ratio": 0.0,
        "optim.lr_scheduler": "constant",
        "trainer.output_dir": output_dir,
        "trainer.per_device_batch_size": 4,
        "trainer.gradient_accumulation_steps": 1,
        "trainer.num_epochs": 1,
        "trainer.logging_steps": 1,
        "trainer.device": "cpu",
        "trainer.logger": "[file]",
        "trainer.seed": 0,
    }
    settings.update(overrides)
    return parse_cli(SFTConfig, [f"{key}={value}" for key, value in settings.items()])


@pytest.fixture(scope="module")
def trained(tiny_model_dir: str, sft_file: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[SFTTrainer, list]:
    """6 steps over the 8 conversations (3 epochs of 2 steps), checkpoint every 2 steps."""
    output_dir = str(tmp_path_factory.mktemp("sft_run") / "out")
    config = make_config(tiny_model_dir, sft_file, output_dir, **{"trainer.num_epochs": 3, "trainer.save_freq": 2})
    trainer = SFTTrainer(config)
    result = trainer.fit()
    return trainer, result.steps


def test_loss_falls_over_a_few_steps(trained):
    _, steps = trained
    assert [record.step for record in steps] == [1, 2, 3, 4, 5, 6]
    first_epoch = (steps[0].loss + steps[1].loss) / 2
    last_epoch = (steps[4].loss + steps[5].loss) / 2
    assert last_epoch < 0.7 * first_epoch, [record.loss for record in steps]


def test_only_assistant_tokens_carry_labels(trained, sft_file):
    trainer, _ = trained
    with open(sft_file, encoding="utf-8") as file:
        records = json.load(file)
    tokenizer = trainer.tokenizer
    for row, record in enumerate(records):
        labels = trainer.dataset[row]["labels"]
        supervised = labels[labels != IGNORE_INDEX]
        assistant = record["messages"][-1]["content"] + tokenizer.eos_token
        assert tokenizer.decode(supervised) == assistant
        assert len(supervised) == len(tokenizer(assistant, add_special_tokens=False)["input_ids"])
        assert count_label_tokens(labels[None]) == len(supervised)


def test_loss_sum_equals_transformers_loss_on_assistant_tokens(trained):
    trainer, _ = trained
    batch = next(iter(trainer.loader))
    model = trainer.model
    with torch.no_grad():
        ours = supervised_loss_sum(model, batch, torch.device("cpu"))
        position_ids = position_ids_for(model, batch["input_ids"], batch["attention_mask"], batch["image_grid_thw"])
        reference = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            position_ids=position_ids,
            pixel_values=batch["pixel_values"],
            image_grid_thw=batch["image_grid_thw"],
            labels=batch["labels"],
            use_cache=False,
        ).loss  # mean over the label tokens
    torch.testing.assert_close(ours, reference * count_label_tokens(batch["labels"]), rtol=1e-5, atol=1e-4)


def test_saved_folder_loads_with_the_trained_weights(trained):
    trainer, _ = trained
    output_dir = trainer.config.trainer.output_dir
    loaded = AutoModelForImageTextToText.from_pretrained(output_dir)
    trained_weights = weights(trainer.model)
    loaded_weights = dict(loaded.named_parameters())
    assert loaded_weights.keys() == trained_weights.keys()
    for name, weight in trained_weights.items():
        torch.testing.assert_close(loaded_weights[name], weight, rtol=0, atol=0, msg=name)
    initial = AutoModelForImageTextToText.from_pretrained(trainer.config.model.model_path)
    assert not torch.equal(
        initial.lm_head.weight, loaded.lm_head.weight
    ), "the saved weights should be the trained ones, not the initial ones"
    processor = AutoProcessor.from_pretrained(output_dir)
    assert processor.chat_template == trainer.processor.chat_template
    assert processor.tokenizer.get_vocab() == trainer.tokenizer.get_vocab()
    assert not os.path.exists(os.path.join(output_dir, FINAL_TMP_DIR))
    # Checkpoints every 2 steps and at the end, in the RL trainer's format; the merger turns the
    # last one into the trained weights.
    assert checkpoint.list_checkpoints(output_dir) == [2, 4, 6]
    merged = merge_checkpoint(os.path.join(output_dir, "global_step_6", "actor"), output_dir + "_merged_6").target_dir
    merged_weights = dict(AutoModelForImageTextToText.from_pretrained(merged).named_parameters())
    for name, weight in trained_weights.items():
        torch.testing.assert_close(merged_weights[name], weight, rtol=0, atol=0, msg=name)
    with open(os.path.join(output_dir, "metrics.jsonl"), encoding="utf-8") as file:
        logged = [json.loads(line) for line in file]
    assert [entry["step"] for entry in logged] == [1, 2, 3, 4, 5, 6]
    assert {"train/loss", "train/lr", "train/grad_norm", "perf/tokens_per_s", "perf/eta_s"} <= logged[0].keys()


def _first_step(
    model_dir: str, sft_file: str, output_dir: str, **overrides
) -> tuple[StepRecord, dict[str, torch.Tensor], list[int]]:
    """Step 1's record, its (unclipped) gradients and the label tokens of each micro-batch."""
    config = make_config(model_dir, sft_file, output_dir, **{"trainer.max_grad_norm": 1e9, **overrides})
    trainer = SFTTrainer(config)
    micro_batches = list(itertools.islice(iter(trainer.loader), config.trainer.gradient_accumulation_steps))
    record = trainer.train_step(micro_batches, step=1)
    gradients = {name: full(p.grad).clone() for name, p in trainer.model.named_parameters()}
    return record, gradients, [count_label_tokens(batch["labels"]) for batch in micro_batches]


def test_token_mean_does_not_depend_on_micro_batching(tiny_model_dir, sft_file, tmp_path):
    whole, whole_gradients, _ = _first_step(tiny_model_dir, sft_file, str(tmp_path / "whole"))
    split, split_gradients, label_counts = _first_step(
        tiny_model_dir,
        sft_file,
        str(tmp_path / "split"),
        **{"trainer.per_device_batch_size": 1, "trainer.gradient_accumulation_steps": 4},
    )
    # Rows differ in assistant length, so a mean of per-micro-batch means would not match.
    assert len(set(label_counts)) > 1
    assert split.label_tokens == whole.label_tokens == sum(label_counts)
    assert split.loss == pytest.approx(whole.loss, rel=1e-6)
    assert split.grad_norm == pytest.approx(whole.grad_norm, rel=1e-5)
    for name, gradient in whole_gradients.items():
        torch.testing.assert_close(split_gradients[name], gradient, rtol=1e-4, atol=1e-7, msg=name)


def test_frozen_vision_tower_stays_fixed_under_gradient_checkpointing(tiny_model_dir, sft_file, tmp_path):
    overrides = {"model.freeze_vision_tower": True, "model.enable_gradient_checkpointing": True, "trainer.max_steps": 1}
    trainer = SFTTrainer(make_config(tiny_model_dir, sft_file, str(tmp_path / "out"), **overrides))
    trainer.fit()
    initial = dict(AutoModelForImageTextToText.from_pretrained(tiny_model_dir).named_parameters())
    for name, weight in weights(trainer.model).items():
        frozen = name.startswith(("model.visual.patch_embed.", "model.visual.blocks."))
        assert torch.equal(weight, initial[name]) == frozen, name


def test_bf16_source_checkpoint_is_saved_in_bf16(tiny_model_dir, sft_file, tmp_path):
    source = str(tmp_path / "bf16_source")
    AutoModelForImageTextToText.from_pretrained(tiny_model_dir, dtype=torch.bfloat16).save_pretrained(source)
    AutoProcessor.from_pretrained(tiny_model_dir).save_pretrained(source)
    trainer = SFTTrainer(make_config(source, sft_file, str(tmp_path / "out"), **{"trainer.max_steps": 1}))
    assert trainer.model.dtype == torch.float32  # fp32 master weights while training
    # The RL workers' precision path in one process too: FSDP2 shards, mixed precision in fsdp.torch_dtype.
    assert all(hasattr(weight, "full_tensor") for weight in trainer.model.parameters())
    trainer.fit()
    saved = AutoModelForImageTextToText.from_pretrained(str(tmp_path / "out"), dtype="auto")
    assert saved.dtype == torch.bfloat16
    saved_weights = dict(saved.named_parameters())
    for name, weight in weights(trainer.model).items():
        assert torch.equal(saved_weights[name], weight.to(torch.bfloat16)), name


def test_total_optimizer_steps_counts_partial_last_step():
    assert total_optimizer_steps(micro_batches_per_epoch=5, accumulation=2, num_epochs=3, max_steps=None) == 9
    assert total_optimizer_steps(micro_batches_per_epoch=5, accumulation=2, num_epochs=3, max_steps=4) == 4


def test_publish_final_model_moves_config_last(tmp_path):
    staging = tmp_path / "out" / FINAL_TMP_DIR
    staging.mkdir(parents=True)
    (tmp_path / "out" / "config.json").write_text("old")
    for name, text in (("config.json", "new"), ("model.safetensors", "w")):
        (staging / name).write_text(text)
    publish_final_model(str(staging), str(tmp_path / "out"))
    assert sorted(os.listdir(tmp_path / "out")) == ["config.json", "model.safetensors"]
    assert (tmp_path / "out" / "config.json").read_text() == "new"
    broken = tmp_path / "broken" / FINAL_TMP_DIR
    broken.mkdir(parents=True)
    (broken / "model.safetensors").write_text("w")
    with pytest.raises(FileNotFoundError, match="config.json"):
        publish_final_model(str(broken), str(tmp_path / "broken"))


def test_config_errors_name_the_key(tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"unknown config key 'trainer.outptu_dir'.*'trainer.output_dir'"):
        parse_cli(SFTConfig, ["trainer.outptu_dir=x"])
    # SFT's keys before it took the RL sections' names: the error names the new one.
    with pytest.raises(ConfigError, match=r"unknown config key 'model.dtype' \(renamed to 'fsdp.torch_dtype'\)"):
        parse_cli(SFTConfig, ["model.dtype=bf16"])
    with pytest.raises(ConfigError, match=r"'optim.lr'"):
        parse_cli(SFTConfig, ["optim.lr=fast"])
    config = make_config("m", "t.json", str(tmp_path / "o"), **{"trainer.gradient_accumulation_steps": 0})
    with pytest.raises(ConfigError, match=r"trainer.gradient_accumulation_steps=0 must be >= 1"):
        config.validate()
    for key, value, message in (
        ("optim.betas", "[0.9,1.0]", r"optim.betas=\(0.9, 1.0\) must be in \[0, 1\)"),
        ("optim.lr", float("nan"), r"optim.lr=nan must be a finite number"),
    ):
        with pytest.raises(ConfigError, match=message):
            make_config("m", "t.json", str(tmp_path / "o"), **{key: value}).validate()
    with pytest.raises(SystemExit) as exit_info:
        main(["model.model_path=m", "data.train_file=t.json", "trainer.output_dir=o", "optim.lr_scheduler=linear"])
    assert exit_info.value.code == 2
    assert "optim.lr_scheduler='linear' is not one of constant, cosine" in capsys.readouterr().err


def test_refuses_a_non_empty_output_dir(tiny_model_dir, sft_file, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="not empty.*overwrite_output_dir"):
        SFTTrainer(make_config(tiny_model_dir, sft_file, str(tmp_path / "out")))


def _fsdp_rank(rank: int, world_size: int, port: int, model_dir: str, sft_file: str, output_dir: str) -> None:
    os.environ.update(
        {"RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(rank),
         "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    )
    torch.set_num_threads(1)
    config = make_config(
        model_dir,
        sft_file,
        output_dir,
        **{"trainer.max_steps": 2, "trainer.per_device_batch_size": 1, "trainer.gradient_accumulation_steps": 2},
    )
    SFTTrainer(config).fit()
    torch.distributed.destroy_process_group()


def test_two_fsdp_ranks_match_one_process(tiny_model_dir, sft_file, tmp_path):
    """2 gloo ranks x 2 micro-batches of 1 = the single process's batch of 4, same sample order
    (DistributedSampler interleaves one permutation); the text-only row runs alone on its rank
    with the vision tower's blank-image anchor (verl.models.qwen_vl.forward_in_step)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    output_dir = str(tmp_path / "fsdp")
    mp.spawn(_fsdp_rank, args=(2, port, tiny_model_dir, sft_file, output_dir), nprocs=2, join=True)
    single = SFTTrainer(make_config(tiny_model_dir, sft_file, str(tmp_path / "single"), **{"trainer.max_steps": 2}))
    single_steps = single.fit().steps
    with open(os.path.join(output_dir, "metrics.jsonl"), encoding="utf-8") as file:
        sharded_steps = [json.loads(line) for line in file]
    assert [entry["step"] for entry in sharded_steps] == [1, 2]
    for entry, record in zip(sharded_steps, single_steps):
        assert entry["train/loss"] == pytest.approx(record.loss, rel=1e-5)
        assert entry["train/grad_norm"] == pytest.approx(record.grad_norm, rel=1e-4)
    sharded = dict(AutoModelForImageTextToText.from_pretrained(output_dir).named_parameters())
    trained = weights(single.model)
    assert sharded.keys() == trained.keys()
    # Adam turns float-rounding differences of near-zero gradients into visible (<< lr) weight
    # differences; a wrong weighting or scale shows up in the losses and gradient norms above.
    for name, weight in trained.items():
        torch.testing.assert_close(sharded[name], weight, rtol=0, atol=5e-4, msg=name)


def test_lora_sft_trains_adapters_only_and_saves_them_folded(tiny_model_dir, sft_file, tmp_path):
    overrides = {"model.lora.rank": 4, "model.lora.alpha": 8, "model.enable_gradient_checkpointing": True, "trainer.max_steps": 2}
    trainer = SFTTrainer(make_config(tiny_model_dir, sft_file, str(tmp_path / "out"), **overrides))
    assert all(name.endswith((".lora_A", ".lora_B")) for name, p in trainer.model.named_parameters() if p.requires_grad)
    trainer.fit()
    initial = dict(AutoModelForImageTextToText.from_pretrained(tiny_model_dir).named_parameters())
    saved = dict(AutoModelForImageTextToText.from_pretrained(trainer.config.trainer.output_dir).named_parameters())
    assert saved.keys() == initial.keys()
    live = weights(trainer.model)
    for name, weight in saved.items():
        module = name.removesuffix(".weight")
        if f"{module}.lora_A" in live:  # adapted: base + alpha/r B A, and moved by training
            expected = initial[name] + 2.0 * live[f"{module}.lora_B"].detach() @ live[f"{module}.lora_A"].detach()
            torch.testing.assert_close(weight, expected, rtol=0, atol=1e-6, msg=name)
            assert not torch.equal(weight, initial[name]), name
        else:
            assert torch.equal(weight, initial[name]), name


def test_a_broken_data_file_is_one_message_with_the_traceback_in_a_log(tiny_model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("VERL_DEBUG", raising=False)
    broken = tmp_path / "broken.json"
    broken.write_text('[{"messages": [')  # cut off mid-file
    with pytest.raises(SystemExit) as exit_info:
        main([f"model.model_path={tiny_model_dir}", f"data.train_file={broken}", f"trainer.output_dir={tmp_path / 'o'}"])
    assert exit_info.value.code == 1
    lines = capsys.readouterr().err.splitlines()
    assert not any("Traceback" in line for line in lines), lines
    assert lines[-2].startswith("(traceback of this error: ") and lines[-1].startswith("error: ")
    log = lines[-2].removeprefix("(traceback of this error: ").split(";")[0]
    assert "Traceback (most recent call last)" in open(log).read()


# Runs `verl.trainer.sft.main` and SIGKILLs itself right after metrics.jsonl receives the row of
# step $SFT_KILL_AT_STEP: no `finally`, no lock release, like a node that dies mid-run.
KILLED_RUN = """
import os, signal, sys
from verl.trainer import sft
from verl.utils.tracking import Tracker
log = Tracker.log
def log_then_die(self, metrics, step):
    log(self, metrics, step)
    if step == int(os.environ["SFT_KILL_AT_STEP"]):
        os.kill(os.getpid(), signal.SIGKILL)
Tracker.log = log_then_die
sft.main(sys.argv[1:])
"""


def _metrics(output_dir: str) -> list[dict]:
    with open(os.path.join(output_dir, "metrics.jsonl"), encoding="utf-8") as file:
        return [json.loads(line) for line in file]


def test_a_run_killed_after_a_checkpoint_resumes_to_the_uninterrupted_result(tiny_model_dir, sft_file, tmp_path):
    """6 steps of 2 micro-batches of 2 (2 steps per epoch), checkpoints at steps 3 and 6; the run
    is killed (SIGKILL) after logging step 5, and the same command started again resumes from
    step 3, mid-epoch (its first micro-batches skipped), and ends with the uninterrupted run's
    per-step losses, grad norms, lrs and final weights."""
    overrides = {
        "trainer.num_epochs": 3, "trainer.per_device_batch_size": 2, "trainer.gradient_accumulation_steps": 2,
        "trainer.save_freq": 3, "optim.lr_scheduler": "cosine", "optim.lr_warmup_ratio": 0.2,
    }
    def args(output_dir: str) -> list[str]:
        return [f"{key}={value}" for key, value in {
            "model.model_path": tiny_model_dir, "data.train_file": sft_file, "data.max_length": 512,
            "data.min_pixels": 3136, "data.max_pixels": 12544, "data.num_workers": 0, "optim.lr": 3e-3,
            "trainer.output_dir": output_dir, "trainer.logging_steps": 1, "trainer.device": "cpu",
            "trainer.logger": "[file]", "trainer.seed": 0, **overrides,
        }.items()]

    # Both runs in processes alike (one thread each): float sums in the same order.
    env = {**os.environ, "PYTHONPATH": REPO_ROOT, "SFT_KILL_AT_STEP": "5", "OMP_NUM_THREADS": "1"}
    run = lambda *command: subprocess.run([sys.executable, *command], env=env, capture_output=True, text=True, cwd=REPO_ROOT)  # noqa: E731
    output_dir, expected_dir = str(tmp_path / "resumed"), str(tmp_path / "uninterrupted")
    killed = run("-c", KILLED_RUN, *args(output_dir))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert checkpoint.list_checkpoints(output_dir) == [3]
    assert [row["step"] for row in _metrics(output_dir)] == [1, 2, 3, 4, 5]
    assert not os.path.exists(os.path.join(output_dir, "config.json"))  # no final model: it died mid-run
    assert os.path.getsize(os.path.join(output_dir, "run.lock")) > 0  # never released

    resumed = run("-m", "verl.trainer.sft", *args(output_dir))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed from {os.path.join(output_dir, 'global_step_3')} (step 3)" in resumed.stdout
    assert "taking over the lock of a run that did not release it" in resumed.stdout
    uninterrupted = run("-m", "verl.trainer.sft", *args(expected_dir))
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-2000:]

    expected, got = _metrics(expected_dir), _metrics(output_dir)
    assert [row["step"] for row in got] == [1, 2, 3, 4, 5, 6]  # the killed run's rows 4 and 5 went to .superseded
    for key in ("train/loss", "train/grad_norm", "train/lr", "train/label_tokens"):
        assert [row[key] for row in got] == [row[key] for row in expected], key
    final = dict(AutoModelForImageTextToText.from_pretrained(output_dir).named_parameters())
    for name, weight in AutoModelForImageTextToText.from_pretrained(expected_dir).named_parameters():
        assert torch.equal(final[name], weight), name
