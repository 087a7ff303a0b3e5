"""The one image configuration shared by the trainer, the HF rollout and vLLM.

"Image features and image tokens do not match" errors come from two engines resizing the same
image differently. Every image is therefore resized here, once, to Qwen's grid (sides multiples
of ``patch_size * merge_size``: 28 for Qwen2/2.5-VL, 32 for Qwen3-VL; area in
``[min_pixels, max_pixels]``), and every processor call is given the same pixel range
(``processor_size_kwargs``) so its own resize is the identity. The grid ``factor`` is read from
the checkpoint's image processor (``resize_factor``), never assumed.
"""

import io
import os
from typing import Any

import torch
from PIL import Image
from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

# Qwen2/2.5-VL: one merged visual token covers a (14 * 2) x (14 * 2) pixel square. Qwen3-VL
# (patch 16) uses 32; `resize_factor` reads it from a checkpoint's image processor.
QWEN_RESIZE_FACTOR = 28
# PIL reports corrupt files as OSError, but also SyntaxError (broken PNG chunks) and ValueError.
_PIL_READ_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def resized_shape(
    width: int, height: int, min_pixels: int, max_pixels: int, factor: int = QWEN_RESIZE_FACTOR
) -> tuple[int, int]:
    """(width, height) that ``resize_image`` produces for an image of this size.

    Qwen's smart-resize (the function the HF image processor itself calls): both sides rounded to
    multiples of ``factor`` (see ``resize_factor``), area clamped into ``[min_pixels, max_pixels]``,
    aspect ratio kept as closely as possible.
    """
    if min_pixels > max_pixels:
        raise ValueError(f"min_pixels ({min_pixels}) must not exceed max_pixels ({max_pixels})")
    new_height, new_width = smart_resize(height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
    return new_width, new_height


def resize_image(
    image: Image.Image, min_pixels: int, max_pixels: int, factor: int = QWEN_RESIZE_FACTOR
) -> Image.Image:
    """RGB copy of ``image`` resized to Qwen's grid (see ``resized_shape``); bicubic like the HF processor."""
    image = image.convert("RGB")
    size = resized_shape(image.width, image.height, min_pixels, max_pixels, factor)
    if image.size == size:
        return image
    return image.resize(size, resample=Image.Resampling.BICUBIC)


def merged_token_count(width: int, height: int, factor: int = QWEN_RESIZE_FACTOR) -> int:
    """Number of ``<|image_pad|>`` tokens an already-resized image expands to."""
    return (width // factor) * (height // factor)


def processor_size_kwargs(min_pixels: int, max_pixels: int) -> dict[str, dict[str, int]]:
    """Keyword arguments that pin the Qwen image processor's pixel range to ours.

    Pass them to every ``image_processor(...)`` call and as vLLM's ``mm_processor_kwargs``: on an
    image already produced by ``resize_image`` the processor's smart-resize is then the identity,
    whatever range its checkpoint config says.
    """
    return {"size": {"shortest_edge": min_pixels, "longest_edge": max_pixels}}


def process_images(image_processor: Any, images: list[Image.Image], min_pixels: int, max_pixels: int) -> dict:
    """`{pixel_values, image_grid_thw}` of already-resized images through the one processor
    configuration every engine shares; {} when there are no images."""
    if not images:
        return {}
    processed = image_processor(images=images, return_tensors="pt", **processor_size_kwargs(min_pixels, max_pixels))
    return {"pixel_values": processed["pixel_values"], "image_grid_thw": processed["image_grid_thw"]}


def resize_factor(image_processor: Any) -> int:
    """Side in pixels of one merged visual token, ``patch_size * merge_size`` of a Qwen image
    processor (28 for Qwen2/2.5-VL, 32 for Qwen3-VL); raises for a processor without both."""
    patch, merge = getattr(image_processor, "patch_size", None), getattr(image_processor, "merge_size", None)
    if not isinstance(patch, int) or not isinstance(merge, int):
        raise ValueError(
            f"{type(image_processor).__name__} has patch_size={patch!r}, merge_size={merge!r}: "
            "verl.data.vision needs a Qwen-VL image processor (integer patch and merge sizes)"
        )
    return patch * merge


BLANK_FILL = (255, 255, 255)
"""The blank-image control's fill: plain white, the background of most charts, documents and the
synthetic shapes task, so a blank image is "the same picture with nothing in it"."""


def blank_like(image: Image.Image) -> Image.Image:
    """A blank RGB image of ``image``'s size: after ``resize_image`` it expands to the same number
    of vision tokens, so the prompt differs from the original only in visual content."""
    return Image.new("RGB", image.size, BLANK_FILL)


def open_image(obj: Any, where: str, base_dir: str | None = None) -> Image.Image:
    """Opens ``obj`` lazily (header read, pixels not decoded): cheap access to ``.size``.

    ``obj`` is a path (relative paths are resolved against ``base_dir``), raw bytes, a
    ``{"bytes": ..., "path": ...}`` dict (what HF ``datasets`` stores for an ``Image`` feature),
    or a PIL image. ``where`` (file, row, field) is put into every error message.
    """
    if isinstance(obj, Image.Image):
        return obj
    if isinstance(obj, dict):
        if obj.get("bytes") is not None:
            return open_image(obj["bytes"], where, base_dir)
        if obj.get("path") is not None:
            return open_image(obj["path"], where, base_dir)
        raise ValueError(f"{where}: image dict has neither 'bytes' nor 'path': keys {sorted(obj)}")
    if isinstance(obj, (bytes, bytearray, memoryview)):
        source: Any = io.BytesIO(bytes(obj))
        description = f"{len(obj)} bytes"
    elif isinstance(obj, (str, os.PathLike)):
        path = os.fspath(obj)
        if base_dir is not None and not os.path.isabs(path):
            path = os.path.join(base_dir, path)
        if not os.path.isfile(path):
            raise ValueError(f"{where}: image file not found: {path}")
        source = path
        description = path
    else:
        raise ValueError(
            f"{where}: expected an image path, bytes, {{'bytes', 'path'}} dict or PIL image, "
            f"got {type(obj).__name__}"
        )
    try:
        return Image.open(source)
    except _PIL_READ_ERRORS as error:
        raise ValueError(f"{where}: cannot read image ({description}): {error}") from error


def image_size(obj: Any, where: str, base_dir: str | None = None) -> tuple[int, int]:
    """(width, height) of an image from its header only; accepts what ``open_image`` accepts."""
    if isinstance(obj, Image.Image):
        return obj.size
    with open_image(obj, where, base_dir) as image:
        return image.size


def check_decodes(obj: Any, where: str, base_dir: str | None = None) -> tuple[int, int]:
    """Decodes every pixel of the image once and returns its (width, height): a file truncated
    after a valid header passes `image_size` but fails here (ValueError naming ``where``)."""
    if isinstance(obj, Image.Image):
        return obj.size
    image = open_image(obj, where, base_dir)
    try:
        image.load()
        return image.size
    except _PIL_READ_ERRORS as error:
        raise ValueError(f"{where}: cannot decode image: {error}") from error
    finally:
        image.close()


def load_image(obj: Any, where: str, base_dir: str | None = None) -> Image.Image:
    """Fully decoded RGB image from any input ``open_image`` accepts; errors name ``where``."""
    image = open_image(obj, where, base_dir)
    try:
        return image.convert("RGB")
    except _PIL_READ_ERRORS as error:
        raise ValueError(f"{where}: cannot decode image: {error}") from error
    finally:
        if image is not obj:  # close only the file handles opened here, never the caller's image
            image.close()


def expand_image_tokens(
    prompt_ids: list[int], image_grid_thw: torch.Tensor, image_token_id: int, merge_size: int
) -> list[int]:
    """Replaces the i-th ``image_token_id`` by ``prod(image_grid_thw[i]) // merge_size**2`` copies.

    prompt_ids: token ids with ONE image pad token per image (what the chat template emits and what
        rollout engines take); image_grid_thw: (num_images, 3) patch grid (t, h, w) per image.
    Returns the ids the language model sees, one pad token per merged visual token: identical to
    what the HF processor produces from the same text and images.
    """
    num_placeholders = sum(1 for token in prompt_ids if token == image_token_id)
    if num_placeholders != image_grid_thw.shape[0]:
        raise ValueError(
            f"prompt has {num_placeholders} image tokens (id {image_token_id}) but "
            f"{image_grid_thw.shape[0]} images"
        )
    tokens_per_image = (image_grid_thw.prod(dim=-1) // merge_size**2).tolist()
    expanded: list[int] = []
    image_index = 0
    for token in prompt_ids:
        if token == image_token_id:
            expanded.extend([image_token_id] * tokens_per_image[image_index])
            image_index += 1
        else:
            expanded.append(token)
    return expanded


def multimodal_token_types(input_ids: torch.Tensor, image_token_id: int, video_token_id: int) -> torch.Tensor:
    """``mm_token_type_ids`` for Qwen2.5-VL's forward: 1 on image tokens, 2 on video tokens, else 0.

    transformers 5 computes the 3-D (M-RoPE) positions only when this tensor is passed; without
    it the model silently falls back to 1-D positions. Same shape as ``input_ids``.
    """
    token_types = torch.zeros_like(input_ids)
    token_types[input_ids == image_token_id] = 1
    token_types[input_ids == video_token_id] = 2
    return token_types
