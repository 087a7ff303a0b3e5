import io

import pytest
import torch
from PIL import Image
from transformers import Qwen2VLImageProcessor

from verl.data.vision import (
    expand_image_tokens,
    image_size,
    load_image,
    merged_token_count,
    multimodal_token_types,
    processor_size_kwargs,
    resize_image,
    resized_shape,
)

MIN_PIXELS = 56 * 56
MAX_PIXELS = 112 * 112


def png(width: int, height: int, color: tuple[int, int, int] = (255, 0, 0)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((84, 84), (84, 84)),  # already on the grid and in range: unchanged
        ((100, 50), (112, 56)),  # sides rounded to multiples of 28
        ((2000, 1000), (140, 56)),  # beta = sqrt(2e6 / 12544) = 12.63: floor(5.66)*28, floor(2.83)*28
        ((20, 10), (84, 56)),  # beta = sqrt(3136 / 200) = 3.96: ceil(2.83)*28, ceil(1.41)*28
    ],
)
def test_resized_shape_follows_qwen_smart_resize(size, expected):
    assert resized_shape(*size, MIN_PIXELS, MAX_PIXELS) == expected


def test_resized_shape_rejects_inverted_pixel_range():
    with pytest.raises(ValueError, match="min_pixels"):
        resized_shape(84, 84, MAX_PIXELS, MIN_PIXELS)


def test_resize_image_returns_rgb_on_the_grid():
    image = resize_image(Image.new("RGBA", (100, 50)), MIN_PIXELS, MAX_PIXELS)
    assert image.mode == "RGB"
    assert image.size == (112, 56)
    assert merged_token_count(*image.size) == 4 * 2


def test_processor_with_pinned_size_keeps_our_pixels_whatever_its_checkpoint_range():
    # The checkpoint's own range (56*56..112*112) would shrink this image; the pinned range must not.
    processor = Qwen2VLImageProcessor(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
    min_pixels, max_pixels = 28 * 28 * 4, 28 * 28 * 40
    image = resize_image(Image.new("RGB", (300, 150), (0, 0, 255)), min_pixels, max_pixels)
    processed = processor(
        images=[image], return_tensors="pt", **processor_size_kwargs(min_pixels, max_pixels)
    )
    width, height = image.size
    assert processed["image_grid_thw"].tolist() == [[1, height // 14, width // 14]]
    assert processed["pixel_values"].shape[0] == (height // 14) * (width // 14)


def test_load_image_accepts_every_input_kind(tmp_path):
    data = png(30, 20)
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(data)
    inputs = [
        "img/a.png",
        str(tmp_path / "img" / "a.png"),
        data,
        {"bytes": data, "path": None},
        {"bytes": None, "path": "img/a.png"},
        Image.open(io.BytesIO(data)).convert("L"),
    ]
    for obj in inputs:
        image = load_image(obj, "row 0", base_dir=str(tmp_path))
        assert image.mode == "RGB" and image.size == (30, 20)
        assert image_size(obj, "row 0", base_dir=str(tmp_path)) == (30, 20)
    assert load_image(data, "row 0").getpixel((0, 0)) == (255, 0, 0)


def test_load_image_errors_name_where(tmp_path):
    where = "data.parquet row 7 field 'images'[0]"
    with pytest.raises(ValueError, match=r"data.parquet row 7 field 'images'\[0\]: cannot read image"):
        load_image(b"not an image", where)
    with pytest.raises(ValueError, match=r"row 7 .*image file not found: .*missing.png"):
        load_image("missing.png", where, base_dir=str(tmp_path))
    with pytest.raises(ValueError, match=r"row 7 .*neither 'bytes' nor 'path'"):
        load_image({"bytes": None, "path": None}, where)
    with pytest.raises(ValueError, match=r"row 7 .*got int"):
        load_image(3, where)
    truncated = png(64, 64)[:60]
    with pytest.raises(ValueError, match=r"row 7 .*(cannot read|cannot decode)"):
        load_image(truncated, where)


def test_expand_image_tokens_repeats_each_pad_by_its_merged_grid():
    image_pad = 5
    grid = torch.tensor([[1, 4, 4], [1, 2, 6]])  # 16/4 = 4 and 12/4 = 3 merged tokens
    expanded = expand_image_tokens([1, image_pad, 2, image_pad, 3], grid, image_pad, merge_size=2)
    assert expanded == [1, 5, 5, 5, 5, 2, 5, 5, 5, 3]


def test_expand_image_tokens_rejects_count_mismatch():
    with pytest.raises(ValueError, match="2 image tokens .* but 1 images"):
        expand_image_tokens([5, 5], torch.tensor([[1, 2, 2]]), 5, merge_size=2)


def test_multimodal_token_types_marks_image_and_video_tokens():
    input_ids = torch.tensor([[1, 5, 5, 6, 2]])
    assert multimodal_token_types(input_ids, image_token_id=5, video_token_id=6).tolist() == [[0, 1, 1, 2, 0]]
