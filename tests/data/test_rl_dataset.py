import io
import json
import logging
import os

import datasets
import numpy as np
import pandas as pd
import pyarrow
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor

from verl.data.format_prompt import load_format_prompt
from verl.data.rl_dataset import RLDataset, collate_rl, make_rl_dataloader, split_image_placeholders
from verl.toy.synthetic import write_synthetic_dataset
from verl.data.vision import resize_image

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SR1_PROMPT = os.path.join(REPO_ROOT, "configs", "format_prompt", "sr1.jinja")
MIN_PIXELS = 56 * 56
MAX_PIXELS = 112 * 112
MAX_PROMPT_LENGTH = 512


@pytest.fixture(scope="module")
def processor(tiny_model_dir):
    return AutoProcessor.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
    out_dir = str(tmp_path_factory.mktemp("shapes"))
    write_synthetic_dataset(out_dir, SR1_PROMPT, seed=0, train_size=12, val_size=8, sft_size=0)
    return out_dir


def make_dataset(data_path, processor, **overrides):
    arguments = dict(
        tokenizer=processor.tokenizer,
        processor=processor,
        max_prompt_length=MAX_PROMPT_LENGTH,
        min_pixels=MIN_PIXELS,
        max_pixels=MAX_PIXELS,
        format_prompt=SR1_PROMPT,
    )
    arguments.update(overrides)
    return RLDataset(data_path, **arguments)


def png_bytes(width: int, height: int, color=(0, 128, 255)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, format="PNG")
    return buffer.getvalue()


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as file:
        for row in rows:
            file.write(json.dumps(row) + "\n")


def test_items_match_the_hf_processor(shapes_dir, processor):
    dataset = make_dataset(os.path.join(shapes_dir, "train.parquet"), processor)
    table = pd.read_parquet(os.path.join(shapes_dir, "train.parquet"))
    template = load_format_prompt(SR1_PROMPT)
    image_pad = processor.image_token_id
    assert len(dataset) == 12
    for item_index in range(4):
        item = dataset[item_index]
        row = table.iloc[item_index]
        source_image = Image.open(io.BytesIO(row["images"][0]["bytes"]))
        resized = resize_image(source_image, MIN_PIXELS, MAX_PIXELS)
        messages = [
            {"role": "user", "content": split_image_placeholders(template.render(content=row["problem"]))}
        ]
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        expected = processor(text=[prompt], images=[resized], return_tensors="pt")

        assert torch.equal(item["input_ids"], expected["input_ids"][0])
        assert torch.equal(item["attention_mask"], expected["attention_mask"][0])
        assert torch.equal(item["multi_modal_inputs"]["pixel_values"], expected["pixel_values"])
        assert torch.equal(item["multi_modal_inputs"]["image_grid_thw"], expected["image_grid_thw"])
        grid = item["multi_modal_inputs"]["image_grid_thw"]
        assert int((item["input_ids"] == image_pad).sum()) == int(grid.prod()) // 4 == 9  # 84x84 -> 3x3
        assert item["raw_prompt_ids"] == processor.tokenizer.encode(prompt, add_special_tokens=False)
        assert item["raw_prompt_ids"].count(image_pad) == 1
        assert item["images"][0].size == (84, 84) and item["images"][0].tobytes() == resized.tobytes()
        assert item["ground_truth"] == row["answer"]
        assert item["problem"] == row["problem"].replace("<image>", "")
        assert item["index"] == item_index
        assert item["distractor"] == row["distractor"] and item["question_type"] == row["question_type"]
        assert dataset.prompt_lengths[item_index] == len(item["input_ids"])


def test_name_at_split_reads_the_local_split_file(shapes_dir, processor):
    dataset = make_dataset(f"{shapes_dir}@val", processor)
    table = pd.read_parquet(os.path.join(shapes_dir, "val.parquet"))
    assert len(dataset) == 8
    assert [dataset[i]["ground_truth"] for i in range(8)] == table["answer"].tolist()


def test_jsonl_and_json_with_relative_image_paths(tmp_path, processor):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(png_bytes(100, 50))
    (tmp_path / "img" / "b.png").write_bytes(png_bytes(60, 60))
    rows = [
        {"problem": "Compare <image> and <image>.", "answer": "a", "images": ["img/a.png", "img/b.png"]},
        {"problem": "<image>Colour?", "answer": "blue", "images": ["img/b.png"]},
    ]
    write_jsonl(tmp_path / "data.jsonl", rows)
    (tmp_path / "data.json").write_text(json.dumps(rows))
    for name in ("data.jsonl", "data.json"):
        dataset = make_dataset(str(tmp_path / name), processor, format_prompt=None)
        first = dataset[0]
        # 100x50 -> 112x56 (8 tokens); 60x60 -> 56x56 (4 tokens)
        assert [image.size for image in first["images"]] == [(112, 56), (56, 56)]
        assert first["multi_modal_inputs"]["image_grid_thw"].tolist() == [[1, 4, 8], [1, 4, 4]]
        assert int((first["input_ids"] == processor.image_token_id).sum()) == 8 + 4
        assert first["problem"] == "Compare  and ."
        assert dataset[1]["ground_truth"] == "blue"


def test_save_to_disk_dirs_and_text_only_rows(tmp_path, processor):
    features = datasets.Features(
        {
            "problem": datasets.Value("string"),
            "answer": datasets.Value("string"),
            "images": datasets.List(datasets.Image()),
        }
    )
    rows = {
        "problem": ["<image>What is it?", "No image here."],
        "answer": ["x", "y"],
        "images": [[{"bytes": png_bytes(84, 84), "path": None}], []],
    }
    table = datasets.Dataset.from_dict(rows, features=features)
    table.save_to_disk(str(tmp_path / "single"))
    datasets.DatasetDict({"test": table}).save_to_disk(str(tmp_path / "splits"))
    for data_path in (str(tmp_path / "single"), f"{tmp_path / 'splits'}@test"):
        dataset = make_dataset(data_path, processor, format_prompt=None)
        assert len(dataset[0]["images"]) == 1
        text_only = dataset[1]
        assert text_only["images"] == [] and text_only["multi_modal_inputs"] == {}
        assert processor.image_token_id not in text_only["input_ids"].tolist()
        assert text_only["raw_prompt_ids"] == text_only["input_ids"].tolist()
    with pytest.raises(ValueError, match=r"holds several splits \['test'\]"):
        make_dataset(str(tmp_path / "splits"), processor)


def test_text_only_dataset_and_system_prompt(tmp_path, processor):
    write_jsonl(tmp_path / "text.jsonl", [{"question": "What is 2+2?", "solution": "4"}])
    dataset = make_dataset(
        str(tmp_path / "text.jsonl"),
        processor,
        prompt_key="question",
        answer_key="solution",
        image_key=None,
        format_prompt=None,
        system_prompt="Be brief.",
    )
    item = dataset[0]
    text = processor.tokenizer.decode(item["raw_prompt_ids"])
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert item["ground_truth"] == "4" and item["multi_modal_inputs"] == {}


def test_missing_column_names_file_and_found_columns(tmp_path, processor):
    write_jsonl(tmp_path / "bad.jsonl", [{"question": "<image>q", "answer": "a", "images": []}])
    with pytest.raises(
        ValueError, match=r"bad.jsonl: missing column\(s\) \['problem'\]; columns found: .*question"
    ):
        make_dataset(str(tmp_path / "bad.jsonl"), processor)


def test_unreadable_image_names_row_and_field(tmp_path, processor):
    rows = [
        {"problem": "<image>ok", "answer": "a", "images": [{"bytes": png_bytes(84, 84), "path": None}]},
        {"problem": "<image>broken", "answer": "b", "images": [{"bytes": b"garbage", "path": None}]},
    ]
    pd.DataFrame(rows).to_parquet(tmp_path / "broken.parquet")
    with pytest.raises(ValueError, match=r"broken.parquet row 1 field 'images\[0\]': cannot read image"):
        make_dataset(str(tmp_path / "broken.parquet"), processor)


def noise_png(width: int, height: int) -> bytes:
    """PNG of random pixels: it compresses poorly, so a cut after the header loses pixel data."""
    buffer = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_image_truncated_after_a_valid_header_stops_the_build_naming_its_row(tmp_path, processor):
    truncated = noise_png(96, 96)[:2000]
    assert Image.open(io.BytesIO(truncated)).size == (96, 96)  # the header alone still reads fine
    rows = [{"problem": "<image>ok", "answer": "a", "images": [{"bytes": noise_png(96, 96), "path": None}]}] * 3
    rows.append({"problem": "<image>cut", "answer": "b", "images": [{"bytes": truncated, "path": None}]})
    pd.DataFrame(rows).to_parquet(tmp_path / "cut.parquet")
    with pytest.raises(ValueError, match=r"cut.parquet row 3 field 'images\[0\]': cannot decode image: .*truncated"):
        make_dataset(str(tmp_path / "cut.parquet"), processor)


@pytest.mark.parametrize(
    "name, content, expected",
    [
        ("empty.jsonl", b"", r"empty.jsonl: the file is empty \(0 bytes\)"),
        ("empty.parquet", None, r"empty.parquet: the parquet file has no rows"),
        ("junk.parquet", b"not a parquet file at all", r"junk.parquet: not a readable parquet file: "),
        ("bad.jsonl", b'{"problem": "q", "answer": ', r"bad.jsonl: cannot read jsonl file: \w+Error: .+"),
    ],
)
def test_empty_and_unreadable_files_say_what_is_wrong(tmp_path, processor, name, content, expected):
    from verl.data.rl_dataset import load_table

    path = tmp_path / name
    if content is None:
        pd.DataFrame({"problem": pd.Series([], dtype=str), "answer": pd.Series([], dtype=str)}).to_parquet(path)
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=expected):
        load_table(str(path))


def _rss_anon_mib() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) / 1024 for line in status if line.startswith("RssAnon:"))


def test_loading_a_file_leaves_no_heap_that_grows_with_its_bytes(tmp_path, monkeypatch):
    """datasets converts the file to a memory-mapped Arrow file; Arrow's memory pool used to keep
    the conversion's buffers (~2.4x the file's bytes) resident for the whole run."""
    from verl.data.rl_dataset import load_table

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    images = [{"bytes": rng.bytes(60_000), "path": None} for _ in range(16)]  # incompressible, like JPEG
    rows = 1000
    pd.DataFrame({
        "problem": ["<image>q"] * rows, "answer": ["a"] * rows, "images": [[images[i % 16]] for i in range(rows)],
    }).to_parquet(tmp_path / "big.parquet", use_dictionary=False)
    file_mib = os.path.getsize(tmp_path / "big.parquet") / 2**20
    pyarrow.default_memory_pool().release_unused()  # what writing the file left in the pool
    before = _rss_anon_mib()
    table = load_table(str(tmp_path / "big.parquet"))
    grown = _rss_anon_mib() - before
    assert len(table.rows) == rows and file_mib > 50
    assert grown < 0.25 * file_mib, f"heap grew {grown:.0f} MiB loading a {file_mib:.0f} MiB file"


def test_placeholder_count_mismatch_names_row(tmp_path, processor):
    (tmp_path / "a.png").write_bytes(png_bytes(84, 84))
    write_jsonl(
        tmp_path / "mismatch.jsonl",
        [
            {"problem": "<image>fine", "answer": "a", "images": ["a.png"]},
            {"problem": "<image><image>two?", "answer": "b", "images": ["a.png"]},
        ],
    )
    with pytest.raises(
        ValueError, match=r"mismatch.jsonl row 1 field 'problem': 2 <image> placeholder\(s\) but 1 image"
    ):
        make_dataset(str(tmp_path / "mismatch.jsonl"), processor)


def test_a_typed_image_token_late_in_the_file_stops_the_build_naming_its_row(tmp_path, processor):
    """Row 1500 of 2,000 has a literal <|image_pad|> in its question: its placeholder count is right
    (one <image>, one image) but its tokenised prompt has two image tokens. A short run would never
    draw it; the build checks every row's tokens, so start-up stops naming file, row and field."""
    image = {"bytes": png_bytes(56, 56), "path": None}
    rows = [{"problem": f"<image>What color is shape {i}?", "answer": "red", "images": [image]} for i in range(2000)]
    rows[1500]["problem"] = "<image>What is <|image_pad|> here?"
    pd.DataFrame(rows).to_parquet(tmp_path / "typed.parquet")
    with pytest.raises(
        ValueError,
        match=r"typed.parquet row 1500 field 'problem': the tokenised prompt has 2 image token\(s\) <\|image_pad\|> "
        r"for 1 image\(s\) in 'images'",
    ):
        make_dataset(str(tmp_path / "typed.parquet"), processor)
    # Evaluation's skip_bad_rows leaves exactly that row out, with the same message.
    dataset = make_dataset(str(tmp_path / "typed.parquet"), processor, skip_bad_rows=True)
    assert list(dataset.bad_rows) == [1500] and len(dataset) == 1999
    assert "2 image token(s)" in dataset.bad_rows[1500]


def test_non_string_answer_names_row(tmp_path, processor):
    write_jsonl(tmp_path / "numeric.jsonl", [{"problem": "q", "answer": 4, "images": []}])
    with pytest.raises(
        ValueError, match=r"numeric.jsonl row 0 field 'answer': expected a string answer, got int 4"
    ):
        make_dataset(str(tmp_path / "numeric.jsonl"), processor)


def test_overlong_prompts_raise_or_are_filtered_with_a_count(tmp_path, processor, caplog):
    rows = [
        {"problem": "short", "answer": "a"},
        {"problem": "long " * 200, "answer": "b"},
        {"problem": "short again", "answer": "c"},
    ]
    write_jsonl(tmp_path / "lengths.jsonl", rows)
    path = str(tmp_path / "lengths.jsonl")
    common = dict(image_key=None, format_prompt=None, max_prompt_length=64)
    with pytest.raises(
        ValueError, match=r"lengths.jsonl row 1: prompt is \d+ tokens .* over max_prompt_length=64"
    ):
        make_dataset(path, processor, filter_overlong_prompts=False, **common)
    with caplog.at_level(logging.WARNING, logger="verl.data.rl_dataset"):
        dataset = make_dataset(path, processor, filter_overlong_prompts=True, **common)
    assert "dropped 1 of 3 prompts longer than max_prompt_length=64" in caplog.text
    assert [dataset[i]["index"] for i in range(len(dataset))] == [0, 2]
    assert [dataset[i]["ground_truth"] for i in range(len(dataset))] == ["a", "c"]


def test_image_tokens_count_towards_prompt_length(tmp_path, processor):
    (tmp_path / "big.png").write_bytes(png_bytes(112, 112))  # 16 image tokens
    write_jsonl(tmp_path / "img.jsonl", [{"problem": "<image>q", "answer": "a", "images": ["big.png"]}])
    text_tokens = (
        make_dataset(str(tmp_path / "img.jsonl"), processor, format_prompt=None).prompt_lengths[0] - 16
    )
    path = str(tmp_path / "img.jsonl")
    make_dataset(path, processor, format_prompt=None, max_prompt_length=text_tokens + 16)
    with pytest.raises(ValueError, match="over max_prompt_length"):
        make_dataset(
            path,
            processor,
            format_prompt=None,
            max_prompt_length=text_tokens + 15,
            filter_overlong_prompts=False,
        )


def feature(input_ids, index):
    return {
        "input_ids": torch.tensor(input_ids),
        "attention_mask": torch.ones(len(input_ids), dtype=torch.long),
        "raw_prompt_ids": list(input_ids),
        "ground_truth": str(index),
        "index": index,
    }


def test_collate_left_pads_and_builds_object_arrays():
    tensors, non_tensors = collate_rl(
        [feature([7, 8, 9], 0), feature([1, 2, 3, 4, 5], 1)], pad_token_id=0, max_prompt_length=6
    )
    assert tensors["input_ids"].tolist() == [[0, 0, 0, 7, 8, 9], [0, 1, 2, 3, 4, 5]]
    assert tensors["attention_mask"].tolist() == [[0, 0, 0, 1, 1, 1], [0, 1, 1, 1, 1, 1]]
    assert set(non_tensors) == {"raw_prompt_ids", "ground_truth", "index"}
    raw = non_tensors["raw_prompt_ids"]
    assert raw.dtype == object and raw.shape == (2,)
    assert raw[0] == [7, 8, 9] and raw[1] == [1, 2, 3, 4, 5]
    assert non_tensors["ground_truth"].tolist() == ["0", "1"]


def test_collate_keeps_equal_length_lists_one_dimensional():
    # np.array(list_of_lists) would build a (2, 2) int array here.
    _, non_tensors = collate_rl([feature([1, 2], 0), feature([3, 4], 1)], pad_token_id=0, max_prompt_length=2)
    assert non_tensors["raw_prompt_ids"].shape == (2,) and non_tensors["raw_prompt_ids"][1] == [3, 4]


def test_collate_rejects_prompt_longer_than_max():
    with pytest.raises(ValueError, match=r"row 3\) has 3 prompt tokens, over max_prompt_length=2"):
        collate_rl([feature([1, 2, 3], 3)], pad_token_id=0, max_prompt_length=2)


def loader_indices(loader, num_batches=None):
    indices = []
    for step, (_, non_tensors) in enumerate(loader):
        indices.append(non_tensors["index"].tolist())
        if num_batches is not None and step + 1 == num_batches:
            break
    return indices


@pytest.mark.parametrize("num_workers", [0, 1])
def test_dataloader_resumes_mid_epoch_in_the_same_order(shapes_dir, processor, num_workers):
    dataset = make_dataset(os.path.join(shapes_dir, "train.parquet"), processor)

    def new_loader():
        return make_rl_dataloader(
            dataset, batch_size=3, shuffle=True, seed=5, drop_last=True,
            pad_token_id=processor.tokenizer.pad_token_id, max_prompt_length=MAX_PROMPT_LENGTH,
            num_workers=num_workers,
        )  # fmt: skip

    reference = new_loader()
    epoch_0, epoch_1 = loader_indices(reference), loader_indices(reference)
    assert sorted(sum(epoch_0, [])) == list(range(12)) and epoch_0 != epoch_1  # reshuffled per epoch

    interrupted = new_loader()
    assert loader_indices(interrupted, num_batches=2) == epoch_0[:2]
    state = interrupted.state_dict()
    assert state["epoch"] == 0 and state["offset"] == 6
    resumed = new_loader()
    resumed.load_state_dict(state)
    assert loader_indices(resumed) == epoch_0[2:]
    assert loader_indices(resumed) == epoch_1


def test_dataloader_refuses_state_of_another_order(shapes_dir, processor):
    dataset = make_dataset(os.path.join(shapes_dir, "train.parquet"), processor)
    arguments = dict(
        batch_size=2, shuffle=True, drop_last=False, pad_token_id=0, max_prompt_length=MAX_PROMPT_LENGTH
    )
    state = make_rl_dataloader(dataset, seed=1, **arguments).state_dict()
    with pytest.raises(ValueError, match="saved with seed=1, this run has seed=2"):
        make_rl_dataloader(dataset, seed=2, **arguments).load_state_dict(state)


def test_unshuffled_loader_keeps_file_order_and_pads_left(shapes_dir, processor):
    dataset = make_dataset(os.path.join(shapes_dir, "val.parquet"), processor)
    loader = make_rl_dataloader(
        dataset, batch_size=4, shuffle=False, seed=0, drop_last=False,
        pad_token_id=processor.tokenizer.pad_token_id, max_prompt_length=MAX_PROMPT_LENGTH,
    )  # fmt: skip
    tensors, non_tensors = next(iter(loader))
    assert non_tensors["index"].tolist() == [0, 1, 2, 3]
    assert tensors["input_ids"].shape == (4, MAX_PROMPT_LENGTH)
    lengths = tensors["attention_mask"].sum(dim=1)
    for row in range(4):
        assert torch.equal(
            tensors["input_ids"][row, MAX_PROMPT_LENGTH - lengths[row] :], dataset[row]["input_ids"]
        )
    assert isinstance(non_tensors["images"][0][0], Image.Image)
    assert np.all(
        non_tensors["distractor"]
        == pd.read_parquet(os.path.join(shapes_dir, "val.parquet"))["distractor"][:4]
    )
