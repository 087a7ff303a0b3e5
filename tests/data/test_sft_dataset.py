import json
import math
import os

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from verl.data.rl_dataset import split_image_placeholders
from verl.data.sft_dataset import IGNORE_INDEX, SFTDataset, collate_sft
from verl.toy.synthetic import write_synthetic_dataset
from verl.data.vision import resize_image

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SR1_PROMPT = os.path.join(REPO_ROOT, "configs", "format_prompt", "sr1.jinja")
MIN_PIXELS = 56 * 56
MAX_PIXELS = 112 * 112


@pytest.fixture(scope="module")
def processor(tiny_model_dir):
    return AutoProcessor.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def shapes_sft(tmp_path_factory):
    out_dir = str(tmp_path_factory.mktemp("shapes"))
    return write_synthetic_dataset(out_dir, SR1_PROMPT, seed=0, train_size=0, val_size=0, sft_size=6).sft


def make_dataset(path, processor, max_length=1024, truncation="error"):
    return SFTDataset(
        str(path), processor.tokenizer, processor, max_length, MIN_PIXELS, MAX_PIXELS, truncation=truncation
    )


def labelled_text(item, tokenizer) -> str:
    return tokenizer.decode(item["labels"][item["labels"] != IGNORE_INDEX])


def write_png(path, width=84, height=84):
    Image.new("RGB", (width, height), (200, 30, 30)).save(path)


def test_labels_cover_exactly_the_assistant_turn(shapes_sft, processor):
    dataset = make_dataset(shapes_sft, processor)
    records = json.load(open(shapes_sft, encoding="utf-8"))
    assert len(dataset) == len(records) == 6 + 6  # 6 image records + 6 text-only re-prompt records
    for row, record in enumerate(records):
        item = dataset[row]
        assistant = record["messages"][1]["content"]
        assert labelled_text(item, processor.tokenizer) == assistant + "<|im_end|>"
        # Supervised tokens are one contiguous run ending at the closing <|im_end|>, before the final newline.
        supervised = (item["labels"] != IGNORE_INDEX).nonzero().flatten()
        assert supervised.tolist() == list(range(supervised[0], supervised[-1] + 1))
        assert item["input_ids"][supervised[-1]] == processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
        assert supervised[-1] == len(item["input_ids"]) - 2
        assert torch.equal(item["labels"][supervised], item["input_ids"][supervised])


def test_input_ids_and_pixels_match_the_hf_processor(shapes_sft, processor):
    dataset = make_dataset(shapes_sft, processor)
    record = json.load(open(shapes_sft, encoding="utf-8"))[0]
    user, assistant = record["messages"]
    chat = [{"role": "user", "content": split_image_placeholders(user["content"])}, assistant]
    text = processor.apply_chat_template(chat, tokenize=False)
    image = resize_image(
        Image.open(os.path.join(os.path.dirname(shapes_sft), record["images"][0])), MIN_PIXELS, MAX_PIXELS
    )
    expected = processor(text=[text], images=[image], return_tensors="pt")
    item = dataset[0]
    assert torch.equal(item["input_ids"], expected["input_ids"][0])
    assert torch.equal(item["mm_token_type_ids"], expected["mm_token_type_ids"][0])
    assert torch.equal(item["multi_modal_inputs"]["pixel_values"], expected["pixel_values"])
    assert item["multi_modal_inputs"]["image_grid_thw"].tolist() == [[1, 6, 6]]
    assert int(item["mm_token_type_ids"].sum()) == 9  # 84x84 image: 3x3 merged tokens
    assert (item["labels"][item["mm_token_type_ids"] == 1] == IGNORE_INDEX).all()


def test_sharegpt_conversations_variant_with_system_and_two_turns(tmp_path, processor):
    write_png(tmp_path / "a.png")
    record = {
        "conversations": [
            {"from": "human", "value": "<image>What colour?"},
            {"from": "gpt", "value": "Red."},
            {"from": "human", "value": "Sure?"},
            {"from": "gpt", "value": "Yes, \\boxed{red}"},
        ],
        "system": "You look carefully.",
        "images": ["a.png"],
    }
    (tmp_path / "chat.jsonl").write_text(json.dumps(record) + "\n")
    item = make_dataset(tmp_path / "chat.jsonl", processor)[0]
    assert labelled_text(item, processor.tokenizer) == "Red.<|im_end|>Yes, \\boxed{red}<|im_end|>"
    text = processor.tokenizer.decode(item["input_ids"][item["mm_token_type_ids"] == 0])
    assert text.startswith(
        "<|im_start|>system\nYou look carefully.<|im_end|>\n<|im_start|>user\n<|vision_start|>"
    )


def test_text_only_record_has_no_image_inputs(tmp_path, processor):
    record = {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}
    (tmp_path / "text.json").write_text(json.dumps([record]))
    item = make_dataset(tmp_path / "text.json", processor)[0]
    assert item["multi_modal_inputs"] == {}
    assert labelled_text(item, processor.tokenizer) == "4<|im_end|>"


def test_collate_right_pads_and_concatenates_images():
    def item(length, num_patches, grid):
        return {
            "input_ids": torch.arange(1, length + 1),
            "attention_mask": torch.ones(length, dtype=torch.long),
            "labels": torch.full((length,), 9),
            "mm_token_type_ids": torch.zeros(length, dtype=torch.long),
            "multi_modal_inputs": {
                "pixel_values": torch.full((num_patches, 2), float(num_patches)),
                "image_grid_thw": torch.tensor([grid]),
            }
            if num_patches
            else {},
        }

    batch = collate_sft([item(2, 4, [1, 2, 2]), item(4, 0, None), item(3, 8, [1, 2, 4])], pad_token_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 0, 0], [1, 2, 3, 4], [1, 2, 3, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 0]]
    assert batch["labels"].tolist() == [[9, 9, -100, -100], [9, 9, 9, 9], [9, 9, 9, -100]]
    assert batch["pixel_values"].shape == (12, 2) and batch["pixel_values"][4:, 0].tolist() == [8.0] * 8
    assert batch["image_grid_thw"].tolist() == [[1, 2, 2], [1, 2, 4]]


def test_right_truncation_keeps_image_and_part_of_the_answer(tmp_path, processor):
    write_png(tmp_path / "a.png")
    answer = "word " * 40
    record = {
        "messages": [{"role": "user", "content": "<image>Say it."}, {"role": "assistant", "content": answer}],
        "images": ["a.png"],
    }
    (tmp_path / "long.json").write_text(json.dumps([record]))
    full = make_dataset(tmp_path / "long.json", processor)[0]
    full_length = len(full["input_ids"])
    inside_image = int(full["mm_token_type_ids"].nonzero()[0]) + 3
    with pytest.raises(
        ValueError, match=rf"long.json row 0: {full_length} tokens .* over max_length={full_length - 10}"
    ):
        make_dataset(tmp_path / "long.json", processor, max_length=full_length - 10)
    item = make_dataset(tmp_path / "long.json", processor, max_length=full_length - 10, truncation="right")[0]
    assert len(item["input_ids"]) == len(item["labels"]) == full_length - 10
    assert answer.startswith(labelled_text(item, processor.tokenizer))
    with pytest.raises(ValueError, match="would cut image tokens"):
        make_dataset(tmp_path / "long.json", processor, max_length=inside_image, truncation="right")
    first_label = int((full["labels"] != IGNORE_INDEX).nonzero()[0])
    with pytest.raises(
        ValueError, match=f"long.json row 0: no assistant token within max_length={first_label}"
    ):
        make_dataset(tmp_path / "long.json", processor, max_length=first_label, truncation="right")


def chat(user: str, assistant: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (
            {"messages": chat("<image>q", "a"), "images": []},
            r"bad.json row 0: 1 <image> placeholder\(s\) but 0 image",
        ),
        ({"messages": chat("q", "a"), "images": ["nope.png"]}, r"bad.json row 0: 0 <image> placeholder"),
        (
            {"conversations": [{"from": "robot", "value": "q"}]},
            r"bad.json row 0 field 'conversations'\[0\]: unknown role 'robot'",
        ),
        (
            {"messages": [{"role": "user", "content": "q"}]},
            r"bad.json row 0: the last turn must be the assistant's",
        ),
        (
            {"messages": [{"role": "assistant", "content": "a"}]},
            r"bad.json row 0: turn 0 is 'assistant', expected 'user'",
        ),
        (
            {"messages": chat("q", "<image>a"), "images": ["a.png"]},
            r"bad.json row 0 field 'messages'\[1\]: <image> is only allowed in user turns",
        ),
        (
            {"messages": chat(["q"], "a")},
            r"bad.json row 0 field 'messages'\[0\]: content must be a string, got list",
        ),
        (
            {"text": "q"},
            r"bad.json row 0: needs a 'messages' or 'conversations' field; keys found: \['text'\]",
        ),
        (
            {"messages": chat("<image>q", "a"), "images": ["missing.png"]},
            r"bad.json row 0 field 'images'\[0\]: image file not found: .*missing.png",
        ),
    ],
)
def test_bad_records_name_file_row_and_field(tmp_path, processor, record, message):
    (tmp_path / "bad.json").write_text(json.dumps([record]))
    with pytest.raises(ValueError, match=message):
        make_dataset(tmp_path / "bad.json", processor)


def test_unreadable_image_and_invalid_jsonl_line(tmp_path, processor):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    record = {
        "messages": [{"role": "user", "content": "<image>q"}, {"role": "assistant", "content": "a"}],
        "images": ["broken.png"],
    }
    (tmp_path / "broken.json").write_text(json.dumps([record]))
    with pytest.raises(ValueError, match=r"broken.json row 0 field 'images'\[0\]: cannot read image"):
        make_dataset(tmp_path / "broken.json", processor)
    (tmp_path / "lines.jsonl").write_text(json.dumps(record) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"lines.jsonl line 2: invalid JSON"):
        make_dataset(tmp_path / "lines.jsonl", processor)


def test_collated_batch_trains_the_tiny_model(shapes_sft, processor, tiny_model_dir):
    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir, dtype=torch.float32)
    dataset = make_dataset(shapes_sft, processor)
    batch = collate_sft([dataset[0], dataset[1]], pad_token_id=processor.tokenizer.pad_token_id)
    loss = model(**batch).loss
    loss.backward()
    assert torch.isfinite(loss)
    # Loss averages over supervised tokens only: the ln(vocab) scale of a random model.
    assert abs(loss.item() - math.log(model.config.text_config.vocab_size)) < 1.5
