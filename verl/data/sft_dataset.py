"""Cold-start SFT data: LLaMA-Factory sharegpt files -> input_ids / labels / image inputs.

Accepted records (json list or jsonl), image paths relative to the data file::

    {"messages": [{"role": "user", "content": "<image>..."}, {"role": "assistant", "content": "..."}],
     "images": ["images/0.png"], "system": "optional system prompt"}
    {"conversations": [{"from": "human", "value": "<image>..."}, {"from": "gpt", "value": "..."}],
     "images": [...]}

Every assistant turn (content and its closing ``<|im_end|>``) carries loss; system, user and
template tokens get label -100.
"""

import json
import os
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch.utils.data import Dataset
from transformers import PreTrainedTokenizerBase, ProcessorMixin

from verl.data.rl_dataset import IMAGE_PLACEHOLDER, split_image_placeholders
from verl.data.vision import (
    image_size,
    load_image,
    merged_token_count,
    multimodal_token_types,
    process_images,
    resize_image,
    resize_factor,
    resized_shape,
)

IGNORE_INDEX = -100
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
}


@dataclass(frozen=True)
class Conversation:
    """One validated record: chat turns with string content, image paths as written in the file."""

    messages: list[dict[str, str]]
    image_paths: list[str]


@dataclass(frozen=True)
class TokenizedConversation:
    """Token ids (image tokens expanded) and labels of one conversation, same length."""

    input_ids: list[int]
    labels: list[int]


def read_records(path: str) -> list[Any]:
    """Records of a json list or a jsonl file; errors name the file (and line for jsonl)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"SFT data file not found: {path}")
    with open(path, encoding="utf-8") as file:
        if path.endswith(".jsonl"):
            records = []
            for line_number, line in enumerate(file, start=1):
                if not line.strip():
                    continue
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise ValueError(f"{path} line {line_number}: invalid JSON: {error}") from error
            return records
        try:
            records = json.load(file)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: invalid JSON: {error}") from error
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a JSON list of records, got {type(records).__name__}")
    return records


def parse_conversation(record: Any, where: str) -> Conversation:
    """Validates one sharegpt record (either variant) into ``Conversation``.

    Rules: optional system turn first, then user/assistant alternating, ending with assistant;
    ``<image>`` only in user turns, as many as ``images`` entries.
    """
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if "messages" in record:
        turns_key, role_key, content_key = "messages", "role", "content"
    elif "conversations" in record:
        turns_key, role_key, content_key = "conversations", "from", "value"
    else:
        raise ValueError(
            f"{where}: needs a 'messages' or 'conversations' field; keys found: {sorted(record)}"
        )
    turns = record[turns_key]
    if not isinstance(turns, list) or not turns:
        raise ValueError(f"{where} field {turns_key!r}: expected a non-empty list of turns")
    messages: list[dict[str, str]] = []
    system = record.get("system")
    if system is not None:
        if not isinstance(system, str):
            raise ValueError(f"{where} field 'system': expected a string, got {type(system).__name__}")
        messages.append({"role": "system", "content": system})
    for position, turn in enumerate(turns):
        turn_where = f"{where} field {turns_key!r}[{position}]"
        if not isinstance(turn, dict) or role_key not in turn or content_key not in turn:
            raise ValueError(f"{turn_where}: expected an object with {role_key!r} and {content_key!r}")
        role = SHAREGPT_ROLES.get(turn[role_key])
        if role is None:
            raise ValueError(
                f"{turn_where}: unknown role {turn[role_key]!r}; expected one of {sorted(SHAREGPT_ROLES)}"
            )
        content = turn[content_key]
        if not isinstance(content, str):
            raise ValueError(f"{turn_where}: content must be a string, got {type(content).__name__}")
        if role != "user" and IMAGE_PLACEHOLDER in content:
            raise ValueError(f"{turn_where}: {IMAGE_PLACEHOLDER} is only allowed in user turns")
        messages.append({"role": role, "content": content})
    dialogue_start = 1 if messages[0]["role"] == "system" else 0
    for position, message in enumerate(messages[dialogue_start:]):
        expected = "user" if position % 2 == 0 else "assistant"
        if message["role"] != expected:
            raise ValueError(
                f"{where}: turn {position} is {message['role']!r}, expected {expected!r} "
                "(optional system first, then user/assistant alternating)"
            )
    if messages[-1]["role"] != "assistant":
        raise ValueError(f"{where}: the last turn must be the assistant's")
    image_paths = record.get("images") or []
    if not isinstance(image_paths, list) or not all(isinstance(image, str) for image in image_paths):
        raise ValueError(f"{where} field 'images': expected a list of path strings")
    num_placeholders = sum(message["content"].count(IMAGE_PLACEHOLDER) for message in messages)
    if num_placeholders != len(image_paths):
        raise ValueError(
            f"{where}: {num_placeholders} {IMAGE_PLACEHOLDER} placeholder(s) but {len(image_paths)} image(s)"
        )
    return Conversation(messages, image_paths)


def _chat_messages(messages: list[dict[str, str]]) -> list[dict[str, Any]]:
    """Template-ready messages: user turns with images as content lists with image items."""
    return [
        {"role": message["role"], "content": split_image_placeholders(message["content"])}
        if IMAGE_PLACEHOLDER in message["content"]
        else message
        for message in messages
    ]


class SFTDataset(Dataset):
    """Supervised conversations with assistant-only labels and Qwen2.5-VL image inputs."""

    def __init__(
        self,
        data_path: str,
        tokenizer: PreTrainedTokenizerBase,
        processor: ProcessorMixin,
        max_length: int,
        min_pixels: int,
        max_pixels: int,
        truncation: Literal["error", "right"] = "error",
    ):
        """
        Args:
            data_path: sharegpt json or jsonl file.
            max_length: longest sequence in tokens, image tokens expanded.
            min_pixels, max_pixels: image area range after resizing (see ``verl.data.vision``).
            truncation: "error" raises on a longer conversation; "right" cuts its end (never
                through image tokens, never down to zero supervised tokens).
        """
        if truncation not in ("error", "right"):
            raise ValueError(f"truncation must be 'error' or 'right', got {truncation!r}")
        self.factor = resize_factor(processor.image_processor)
        self.source = data_path
        self.base_dir = os.path.dirname(os.path.abspath(data_path))
        self.tokenizer = tokenizer
        self.processor = processor
        self.max_length = max_length
        self.min_pixels = min_pixels
        self.max_pixels = max_pixels
        self.truncation = truncation
        self.image_token_id: int = processor.image_token_id
        self.video_token_id: int = processor.video_token_id
        self.eos_token: str = tokenizer.eos_token
        self.conversations = [
            parse_conversation(record, f"{data_path} row {row}")
            for row, record in enumerate(read_records(data_path))
        ]
        if not self.conversations:
            raise ValueError(f"{data_path}: no records")
        # Tokenise everything once up front so bad rows and over-long rows fail before training.
        for row in range(len(self.conversations)):
            self._tokenize(row, self._header_token_counts(row))

    def __len__(self) -> int:
        return len(self.conversations)

    def _image_where(self, row: int, position: int) -> str:
        return f"{self.source} row {row} field 'images'[{position}]"

    def _header_token_counts(self, row: int) -> list[int]:
        """Visual tokens per image from image headers only (no pixel decoding)."""
        counts = []
        for position, path in enumerate(self.conversations[row].image_paths):
            width, height = image_size(path, self._image_where(row, position), self.base_dir)
            shape = resized_shape(width, height, self.min_pixels, self.max_pixels, self.factor)
            counts.append(merged_token_count(*shape, self.factor))
        return counts

    def _assistant_char_spans(self, row: int, chat: list[dict[str, Any]], text: str) -> list[tuple[int, int]]:
        """[start, end) character spans of each assistant content + closing eos token in ``text``.

        Rendering the conversation up to each assistant turn locates the turn without parsing
        the template; the template must render a prefix of the conversation as a prefix of the text.
        """
        spans = []
        for turn, message in enumerate(chat):
            if message["role"] != "assistant":
                continue
            prompt = self.processor.apply_chat_template(
                chat[:turn], add_generation_prompt=True, tokenize=False
            )
            supervised = message["content"] + self.eos_token
            if not text.startswith(prompt) or not text[len(prompt) :].startswith(supervised):
                raise ValueError(
                    f"{self.source} row {row} turn {turn}: the chat template does not render the assistant "
                    f"turn as <generation prompt> + content + {self.eos_token}; cannot place labels"
                )
            spans.append((len(prompt), len(prompt) + len(supervised)))
        return spans

    def _tokenize(self, row: int, image_token_counts: list[int]) -> TokenizedConversation:
        """Token ids and labels, each image pad expanded to ``image_token_counts[i]`` tokens, truncated."""
        where = f"{self.source} row {row}"
        chat = _chat_messages(self.conversations[row].messages)
        text = self.processor.apply_chat_template(chat, add_generation_prompt=False, tokenize=False)
        spans = self._assistant_char_spans(row, chat, text)
        encoding = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        input_ids: list[int] = []
        labels: list[int] = []
        image_index = 0
        for token, (start, _) in zip(encoding["input_ids"], encoding["offset_mapping"], strict=True):
            if token == self.image_token_id:
                if image_index == len(image_token_counts):
                    raise ValueError(f"{where}: more image pad tokens in the text than images")
                input_ids.extend([token] * image_token_counts[image_index])
                labels.extend([IGNORE_INDEX] * image_token_counts[image_index])
                image_index += 1
                continue
            supervised = any(span_start <= start < span_end for span_start, span_end in spans)
            input_ids.append(token)
            labels.append(token if supervised else IGNORE_INDEX)
        if image_index != len(image_token_counts):
            raise ValueError(
                f"{where}: {image_index} image pad tokens in the text but {len(image_token_counts)} images"
            )
        if len(input_ids) > self.max_length:
            if self.truncation == "error":
                raise ValueError(
                    f"{where}: {len(input_ids)} tokens (image tokens expanded), over "
                    f"max_length={self.max_length}; raise max_length, lower max_pixels, "
                    "or use truncation='right'"
                )
            if self.image_token_id in input_ids[self.max_length :]:
                raise ValueError(
                    f"{where}: truncating to max_length={self.max_length} would cut image tokens"
                )
            input_ids, labels = input_ids[: self.max_length], labels[: self.max_length]
        if all(label == IGNORE_INDEX for label in labels):
            raise ValueError(f"{where}: no assistant token within max_length={self.max_length}")
        return TokenizedConversation(input_ids, labels)

    def __getitem__(self, row: int) -> dict[str, Any]:
        images = [
            resize_image(
                load_image(path, self._image_where(row, position), self.base_dir),
                self.min_pixels,
                self.max_pixels,
                self.factor,
            )
            for position, path in enumerate(self.conversations[row].image_paths)
        ]
        multi_modal_inputs = process_images(self.processor.image_processor, images, self.min_pixels, self.max_pixels)
        image_token_counts: list[int] = []
        if images:
            merge_size = self.processor.image_processor.merge_size
            image_token_counts = (multi_modal_inputs["image_grid_thw"].prod(dim=-1) // merge_size**2).tolist()
        tokenized = self._tokenize(row, image_token_counts)
        input_ids = torch.tensor(tokenized.input_ids, dtype=torch.long)
        return {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "labels": torch.tensor(tokenized.labels, dtype=torch.long),
            "mm_token_type_ids": multimodal_token_types(input_ids, self.image_token_id, self.video_token_id),
            "multi_modal_inputs": multi_modal_inputs,
        }


def collate_sft(features: list[dict[str, Any]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch ready for ``model(**batch)``.

    Returns input_ids / attention_mask / labels / mm_token_type_ids (batch, longest), padding
    with pad_token_id / 0 / -100 / 0; when any item has images, pixel_values
    (total_patches, patch_dim) and image_grid_thw (total_images, 3) concatenated in item order.
    """
    longest = max(len(feature["input_ids"]) for feature in features)
    padding_values = {
        "input_ids": pad_token_id,
        "attention_mask": 0,
        "labels": IGNORE_INDEX,
        "mm_token_type_ids": 0,
    }
    batch: dict[str, torch.Tensor] = {}
    for key, padding_value in padding_values.items():
        padded = torch.full((len(features), longest), padding_value, dtype=torch.long)
        for position, feature in enumerate(features):
            padded[position, : len(feature[key])] = feature[key]
        batch[key] = padded
    with_images = [feature["multi_modal_inputs"] for feature in features if feature["multi_modal_inputs"]]
    if with_images:
        batch["pixel_values"] = torch.cat([inputs["pixel_values"] for inputs in with_images])
        batch["image_grid_thw"] = torch.cat([inputs["image_grid_thw"] for inputs in with_images])
    return batch
