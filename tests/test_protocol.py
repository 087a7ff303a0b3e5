"""Tests for verl.protocol.DataProto: every operation, round trips and pickling (CPU, ms)."""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np
import pytest
import torch

from verl.protocol import DataProto, DataProtoItem, pad_to_divisor, unpad


def make_data(length: int = 4) -> DataProto:
    """Rows are recognisable by their value: row i has input_ids [10i, 10i+1, 10i+2]."""
    return DataProto.from_dict(
        tensors={
            "input_ids": torch.tensor([0, 1, 2]) + 10 * torch.arange(length)[:, None],
            "reward": torch.arange(length, dtype=torch.float32) / 2,
        },
        non_tensors={
            "uid": [f"u{i}" for i in range(length)],
            "token_ids": [[i] * (i + 1) for i in range(length)],  # ragged lists
            "multi_modal_inputs": [
                {"pixel_values": torch.full((i + 1, 2), float(i)), "image_grid_thw": torch.tensor([[1, 1, i + 1]])}
                for i in range(length)
            ],
        },
        meta_info={"temperature": 1.0},
    )


def assert_same(left: Any, right: Any) -> None:
    """Recursive equality that understands tensors, arrays, dicts and lists."""
    assert type(left) is type(right), (type(left), type(right))
    if isinstance(left, torch.Tensor):
        assert left.dtype == right.dtype and left.shape == right.shape
        assert torch.equal(left, right)
    elif isinstance(left, np.ndarray):
        assert left.dtype == right.dtype and left.shape == right.shape
        if left.dtype == object:
            for a, b in zip(left.reshape(-1), right.reshape(-1)):
                assert_same(a, b)
        else:
            assert np.array_equal(left, right)
    elif isinstance(left, dict):
        assert list(left) == list(right)
        for key in left:
            assert_same(left[key], right[key])
    elif isinstance(left, (list, tuple)):
        assert len(left) == len(right)
        for a, b in zip(left, right):
            assert_same(a, b)
    else:
        assert left == right


def assert_data_equal(left: DataProto, right: DataProto) -> None:
    assert len(left) == len(right)
    assert_same(left.batch, right.batch)
    assert_same(left.non_tensor_batch, right.non_tensor_batch)
    assert_same(left.meta_info, right.meta_info)


def uids(data: DataProto) -> list[str]:
    return list(data.non_tensor_batch["uid"])


# ---------------------------------------------------------------------- construction


def test_make_data_rows():
    data = make_data(3)
    assert data.batch["input_ids"].tolist() == [[0, 1, 2], [10, 11, 12], [20, 21, 22]]


def test_from_dict_turns_nested_lists_into_1d_object_arrays():
    data = DataProto.from_dict(non_tensors={"ids": [[1, 2], [3, 4]], "pair": [(1, 2), (3, 4)]})
    for key in ("ids", "pair"):
        array = data.non_tensor_batch[key]
        assert array.dtype == object and array.shape == (2,)
    assert data.non_tensor_batch["ids"][1] == [3, 4]
    assert data.non_tensor_batch["pair"][0] == (1, 2)
    assert len(data) == 2


def test_from_dict_keeps_numpy_arrays_and_copies_meta_info_dict():
    scores = np.array([1.5, 2.5])
    meta = {"step": 3}
    data = DataProto.from_dict(non_tensors={"score": scores}, meta_info=meta)
    assert data.non_tensor_batch["score"] is scores
    meta["step"] = 4
    assert data.meta_info == {"step": 3}


@pytest.mark.parametrize(
    "tensors, non_tensors, message",
    [
        (
            {"a": torch.zeros(4, 2), "b": torch.zeros(3)},
            None,
            "batch['b'] has length 3, but batch['a'] has length 4",
        ),
        (
            {"a": torch.zeros(4)},
            {"uid": ["x"] * 5},
            "non_tensor_batch['uid'] has length 5, but batch['a'] has length 4",
        ),
    ],
)
def test_length_mismatch_names_keys_and_lengths(tensors, non_tensors, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        DataProto.from_dict(tensors=tensors, non_tensors=non_tensors)


def test_invalid_values_are_rejected_with_the_key():
    with pytest.raises(TypeError, match=r"non_tensor_batch\['uid'\].*from_dict"):
        DataProto(non_tensor_batch={"uid": ["a", "b"]})
    with pytest.raises(TypeError, match=r"tensors\['ids'\]"):
        DataProto.from_dict(tensors={"ids": [1, 2]})
    with pytest.raises(TypeError, match=r"non_tensors\['uid'\]"):
        DataProto.from_dict(non_tensors={"uid": "abc"})
    with pytest.raises(ValueError, match=r"batch\['loss'\] is 0-dimensional"):
        DataProto(batch={"loss": torch.tensor(1.0)})
    with pytest.raises(ValueError, match=r"\['x'\] are in both"):
        DataProto(batch={"x": torch.zeros(2)}, non_tensor_batch={"x": np.zeros(2)})


def test_check_consistency_catches_later_direct_mutation():
    data = make_data(4)
    data.batch["extra"] = torch.zeros(5)
    with pytest.raises(ValueError, match=r"batch\['extra'\] has length 5"):
        data.check_consistency()


def test_len():
    assert len(make_data(4)) == 4
    assert len(DataProto()) == 0
    assert len(DataProto.from_dict(non_tensors={"uid": ["a", "b"]})) == 2


# ---------------------------------------------------------------------- indexing


def test_int_index_returns_item_without_batch_dimension():
    data = make_data(4)
    item = data[1]
    assert isinstance(item, DataProtoItem)
    assert item.batch["input_ids"].tolist() == [10, 11, 12]
    assert item.batch["reward"].item() == 0.5
    assert item.non_tensor_batch["uid"] == "u1"
    assert item.non_tensor_batch["token_ids"] == [1, 1]
    assert item.non_tensor_batch["multi_modal_inputs"]["pixel_values"].shape == (2, 2)
    assert item.meta_info == {"temperature": 1.0}
    assert data[-1].non_tensor_batch["uid"] == "u3"
    assert data[np.int64(2)].non_tensor_batch["uid"] == "u2"
    assert data[torch.tensor(0)].non_tensor_batch["uid"] == "u0"
    assert [item.non_tensor_batch["uid"] for item in data] == ["u0", "u1", "u2", "u3"]
    with pytest.raises(IndexError, match="index 4 out of range for length 4"):
        data[4]


def test_slice_is_a_view():
    data = make_data(5)
    part = data[1:3]
    assert isinstance(part, DataProto)
    assert part.batch["input_ids"].tolist() == [[10, 11, 12], [20, 21, 22]]
    assert uids(part) == ["u1", "u2"]
    part.batch["reward"][0] = 100.0
    assert data.batch["reward"][1].item() == 100.0
    assert uids(data.slice(-2)) == ["u3", "u4"]
    assert uids(data.slice(3, 100)) == ["u3", "u4"]
    assert len(data.slice(4, 2)) == 0


def test_stepped_slice_and_gathers_copy_rows_in_order():
    data = make_data(5)
    assert uids(data[::2]) == ["u0", "u2", "u4"]
    assert uids(data[::-2]) == ["u4", "u2", "u0"]
    assert data[[3, 0, 3]].batch["input_ids"].tolist() == [[30, 31, 32], [0, 1, 2], [30, 31, 32]]
    assert uids(data[np.array([4, -5])]) == ["u4", "u0"]
    assert uids(data[torch.tensor([2, 1])]) == ["u2", "u1"]
    assert uids(data[[False, True, False, True, False]]) == ["u1", "u3"]
    assert uids(data[torch.tensor([True, False, False, False, True])]) == ["u0", "u4"]
    assert len(data[[]]) == 0
    gathered = data[[0]]
    gathered.batch["reward"][0] = 100.0
    assert data.batch["reward"][0].item() == 0.0


@pytest.mark.parametrize(
    "index, message",
    [
        ([0, 5], "index 5 out of range"),
        ([True, False], "mask has length 2"),
        ([[0]], "must be 1-D"),
        ([0.5], "integers or booleans"),
    ],
)
def test_bad_gather_index_raises(index, message):
    with pytest.raises(IndexError, match=message):
        make_data(5)[index]


def test_reorder_in_place_needs_a_permutation():
    data = make_data(3)
    assert data.reorder([2, 0, 1]) is data
    assert uids(data) == ["u2", "u0", "u1"]
    assert data.batch["input_ids"][:, 0].tolist() == [20, 0, 10]
    with pytest.raises(ValueError, match="permutation of range"):
        data.reorder([0, 0, 1])


# ---------------------------------------------------------------------- keys


def test_select_shares_values_unless_deepcopy():
    data = make_data(3)
    picked = data.select(batch_keys=["reward"], non_tensor_batch_keys=["uid"], meta_info_keys=[])
    assert list(picked.batch) == ["reward"] and list(picked.non_tensor_batch) == ["uid"] and picked.meta_info == {}
    assert picked.batch["reward"] is data.batch["reward"]
    everything = data.select()
    assert list(everything.batch) == ["input_ids", "reward"] and everything.meta_info == {"temperature": 1.0}
    copied = data.select(deepcopy=True)
    copied.batch["reward"][0] = 9.0
    copied.non_tensor_batch["token_ids"][0].append(7)
    copied.non_tensor_batch["multi_modal_inputs"][0]["pixel_values"].fill_(5.0)
    assert data.batch["reward"][0].item() == 0.0
    assert data.non_tensor_batch["token_ids"][0] == [0]
    assert data.non_tensor_batch["multi_modal_inputs"][0]["pixel_values"].sum().item() == 0.0
    with pytest.raises(KeyError, match=r"batch has no keys \['nope'\]"):
        data.select(batch_keys=["nope"])


def test_pop_removes_and_returns_only_named_keys():
    data = make_data(3)
    popped = data.pop(batch_keys=["input_ids"], non_tensor_batch_keys=["uid"], meta_info_keys=["temperature"])
    assert list(popped.batch) == ["input_ids"] and uids(popped) == ["u0", "u1", "u2"]
    assert popped.meta_info == {"temperature": 1.0}
    assert list(data.batch) == ["reward"]
    assert list(data.non_tensor_batch) == ["token_ids", "multi_modal_inputs"]
    assert data.meta_info == {}
    assert len(data.pop()) == 0 and list(data.batch) == ["reward"]
    with pytest.raises(KeyError):
        data.pop(batch_keys=["reward", "missing"])
    assert list(data.batch) == ["reward"]  # nothing removed when a key is missing


def test_rename_in_place_including_swap():
    data = make_data(2)
    assert data.rename("uid", "prompt_uid") is data
    assert list(data.non_tensor_batch["prompt_uid"]) == ["u0", "u1"]
    data.rename(["input_ids", "reward"], ["reward", "input_ids"])
    assert data.batch["reward"].tolist() == [[0, 1, 2], [10, 11, 12]]
    with pytest.raises(ValueError, match=r"new keys \['input_ids'\] already exist"):
        data.rename("reward", "input_ids")
    with pytest.raises(KeyError, match="no key 'missing'"):
        data.rename("missing", "other")


def test_union_merges_in_place_and_accepts_equal_overlap():
    data = make_data(3)
    other = DataProto.from_dict(
        tensors={"reward": data.batch["reward"].clone(), "values": torch.ones(3)},
        non_tensors={
            "multi_modal_inputs": list(make_data(3).non_tensor_batch["multi_modal_inputs"]),  # equal, not identical
            "answer": ["a", "b", "c"],
        },
        meta_info={"temperature": 1.0, "step": 2},
    )
    assert data.union(other) is data
    assert list(data.batch) == ["input_ids", "reward", "values"]
    assert list(data.non_tensor_batch["answer"]) == ["a", "b", "c"]
    assert data.meta_info == {"temperature": 1.0, "step": 2}


@pytest.mark.parametrize(
    "other, message",
    [
        (DataProto.from_dict(tensors={"reward": torch.ones(3)}), r"batch\['reward'\] differs"),
        (  # same values, other dtype
            DataProto.from_dict(tensors={"reward": torch.arange(3, dtype=torch.float64) / 2}),
            r"batch\['reward'\] differs",
        ),
        (DataProto.from_dict(non_tensors={"uid": ["u0", "u1", "x"]}), r"non_tensor_batch\['uid'\] differs"),
        (
            DataProto.from_dict(non_tensors={"multi_modal_inputs": [{"pixel_values": torch.zeros(1, 2)}] * 3}),
            r"non_tensor_batch\['multi_modal_inputs'\] differs",
        ),
        (DataProto(meta_info={"temperature": 0.5}), r"meta_info\['temperature'\] differs"),
        (DataProto.from_dict(tensors={"values": torch.ones(4)}), r"lengths differ \(3 vs 4\)"),
        (DataProto.from_dict(tensors={"uid": torch.ones(3)}), r"\['uid'\] are tensors in one"),
    ],
)
def test_union_conflicts_raise_and_leave_self_unchanged(other, message):
    data = make_data(3)
    with pytest.raises(ValueError, match=message):
        data.union(other)
    assert list(data.batch) == ["input_ids", "reward"] and data.meta_info == {"temperature": 1.0}


# ---------------------------------------------------------------------- split and merge


def test_chunk_concat_round_trip():
    data = make_data(6)
    chunks = data.chunk(3)
    assert [uids(chunk) for chunk in chunks] == [["u0", "u1"], ["u2", "u3"], ["u4", "u5"]]
    assert_data_equal(DataProto.concat(chunks), data)


def test_chunk_indivisible_error_suggests_padding():
    with pytest.raises(ValueError, match=r"batch size 5 is not divisible by chunks=2.*pad_to_divisor"):
        make_data(5).chunk(2)
    with pytest.raises(ValueError, match="chunks must be a positive int"):
        make_data(4).chunk(0)


def test_split_concat_round_trip_with_short_last_piece():
    data = make_data(5)
    pieces = data.split(2)
    assert [len(piece) for piece in pieces] == [2, 2, 1]
    assert uids(pieces[-1]) == ["u4"]
    assert_data_equal(DataProto.concat(pieces), data)
    assert [len(piece) for piece in data.split(10)] == [5]


def test_concat_meta_info_and_key_checks():
    first, second = make_data(4).chunk(2)
    second.meta_info = {"temperature": 1.0, "extra": "x"}
    assert DataProto.concat([first, second]).meta_info == {"temperature": 1.0, "extra": "x"}
    second.meta_info = {"temperature": 0.0}
    with pytest.raises(ValueError, match=r"meta_info\['temperature'\] of piece 1 differs"):
        DataProto.concat([first, second])
    expected = r"piece 1 has batch keys \['input_ids'\], piece 0 has \['input_ids', 'reward'\]"
    with pytest.raises(ValueError, match=expected):
        DataProto.concat([first, second.select(batch_keys=["input_ids"], meta_info_keys=[])])
    mismatched = first.select(meta_info_keys=[])
    mismatched.batch["input_ids"] = torch.zeros(2, 4, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"cannot concatenate batch\['input_ids'\]"):
        DataProto.concat([first, mismatched])
    with pytest.raises(ValueError, match="at least one"):
        DataProto.concat([])


def test_repeat_interleaved_keeps_samples_of_a_prompt_adjacent():
    data = make_data(2)
    repeated = data.repeat(2, interleave=True)
    assert torch.equal(repeated.batch["input_ids"], torch.tensor([[0, 1, 2], [0, 1, 2], [10, 11, 12], [10, 11, 12]]))
    assert torch.equal(repeated.batch["reward"], torch.tensor([0.0, 0.0, 0.5, 0.5]))
    assert uids(repeated) == ["u0", "u0", "u1", "u1"]
    assert list(repeated.non_tensor_batch["token_ids"]) == [[0], [0], [1, 1], [1, 1]]
    mm = repeated.non_tensor_batch["multi_modal_inputs"]
    assert mm[0] is mm[1] is data.non_tensor_batch["multi_modal_inputs"][0]  # shared, not copied
    assert repeated.meta_info == {"temperature": 1.0}


def test_repeat_tiled_and_2d_non_tensors():
    data = make_data(2)
    data.non_tensor_batch["pairs"] = np.array([[1, 2], [3, 4]])
    tiled = data.repeat(3, interleave=False)
    assert torch.equal(tiled.batch["reward"], torch.tensor([0.0, 0.5, 0.0, 0.5, 0.0, 0.5]))
    assert tiled.batch["input_ids"][:, 0].tolist() == [0, 10, 0, 10, 0, 10]
    assert uids(tiled) == ["u0", "u1"] * 3
    assert tiled.non_tensor_batch["pairs"].tolist() == [[1, 2], [3, 4]] * 3
    assert data.repeat(2).non_tensor_batch["pairs"].tolist() == [[1, 2], [1, 2], [3, 4], [3, 4]]
    assert_data_equal(data.repeat(1), data)


@pytest.mark.parametrize("length, divisor, expected_pad, expected_uids", [
    (5, 4, 3, ["u0", "u1", "u2", "u3", "u4", "u0", "u1", "u2"]),
    (2, 8, 6, ["u0", "u1"] * 4),  # cycles when the pad exceeds the length
    (4, 2, 0, ["u0", "u1", "u2", "u3"]),
])
def test_pad_to_divisor_then_unpad_is_identity(length, divisor, expected_pad, expected_uids):
    data = make_data(length)
    padded, pad_size = pad_to_divisor(data, divisor)
    assert pad_size == expected_pad and len(padded) % divisor == 0
    assert uids(padded) == expected_uids
    assert torch.equal(padded.batch["input_ids"][length:], data.batch["input_ids"][torch.arange(pad_size) % length])
    assert_data_equal(unpad(padded, pad_size), data)
    assert_data_equal(DataProto.concat(padded.chunk(divisor)).slice(0, length), data)


def test_padding_edge_cases():
    data = make_data(3)
    assert pad_to_divisor(data, 3)[0] is data and unpad(data, 0) is data
    with pytest.raises(ValueError, match="divisor must be a positive int"):
        pad_to_divisor(data, 0)
    with pytest.raises(ValueError, match=r"pad_size 4 must be in \[0, 3\]"):
        unpad(data, 4)


def test_to_moves_in_place():
    data = make_data(2)
    assert data.to("cpu") is data
    assert data.to(torch.device("meta")).batch["reward"].device.type == "meta"
    assert isinstance(data.non_tensor_batch["uid"], np.ndarray)


def test_repr_summarises_keys_shapes_dtypes():
    text = repr(make_data(4))
    assert "DataProto(len=4" in text
    assert "batch['input_ids']: int64[4, 3] on cpu" in text
    assert "non_tensor_batch['uid']: object[4]" in text
    assert "meta_info keys: ['temperature']" in text


# ---------------------------------------------------------------------- pickling


def test_pickle_round_trip_keeps_values_dtypes_and_sharing():
    data = make_data(3).repeat(2)
    data.batch["bf16"] = torch.arange(6, dtype=torch.bfloat16).reshape(6, 1) / 4
    data.batch["mask"] = torch.tensor([True, False] * 3)
    data.batch["transposed"] = torch.arange(12).reshape(2, 6).T  # non-contiguous
    data.non_tensor_batch["score"] = np.arange(6, dtype=np.float32)
    data.meta_info["token_counts"] = torch.tensor([5, 7])
    restored = pickle.loads(pickle.dumps(data))
    assert_data_equal(restored, data)
    mm = restored.non_tensor_batch["multi_modal_inputs"]
    assert mm[0] is mm[1] and mm[0] is not mm[2]
    restored.batch["input_ids"].add_(1)
    assert data.batch["input_ids"][0, 0].item() == 0


def test_pickle_sends_tensors_as_out_of_band_buffers():
    data = make_data(2)
    data.batch["big"] = torch.zeros(2, 4096, dtype=torch.int64)
    buffers: list[pickle.PickleBuffer] = []
    payload = pickle.dumps(data, protocol=5, buffer_callback=buffers.append)
    assert sum(memoryview(buffer).nbytes for buffer in buffers) >= 2 * 4096 * 8
    assert len(payload) < 4096
    # Ray hands back read-only buffers: the restored tensors must own writable memory.
    read_only = [memoryview(buffer).toreadonly() for buffer in buffers]
    restored = pickle.loads(payload, buffers=read_only)
    restored.batch["big"].add_(1)
    assert data.batch["big"].sum().item() == 0
    assert_data_equal(restored.select(batch_keys=["input_ids"]), data.select(batch_keys=["input_ids"]))


def test_slice_pickles_without_its_base_storage():
    data = DataProto.from_dict(tensors={"input_ids": torch.zeros(64, 1024, dtype=torch.int64)})
    whole = len(pickle.dumps(data))
    part = data.slice(0, 8)
    part_size = len(pickle.dumps(part))
    assert whole > 64 * 1024 * 8
    assert part_size < whole / 6  # 8 of 64 rows, not the whole storage
    assert_data_equal(pickle.loads(pickle.dumps(part)), part)


def test_views_left_to_torch_pickling_are_compacted():
    base = torch.arange(64 * 1024, dtype=torch.float32).reshape(64, 1024).requires_grad_()
    data = DataProto.from_dict(tensors={"logits": base.detach()[:8].requires_grad_()})  # not sent as numpy
    payload = pickle.dumps(data)
    assert len(payload) < 64 * 1024 * 4 / 6
    restored = pickle.loads(payload)
    assert restored.batch["logits"].requires_grad
    assert torch.equal(restored.batch["logits"].detach(), base.detach()[:8])


# ---------------------------------------------------------------------- object arrays through every op


@pytest.mark.parametrize(
    "operation, expected_rows",
    [
        (lambda d: d[1:3], [1, 2]),
        (lambda d: d[[3, 0]], [3, 0]),
        (lambda d: d.select(deepcopy=True), [0, 1, 2, 3]),
        (lambda d: DataProto.concat(d.chunk(2)), [0, 1, 2, 3]),
        (lambda d: DataProto.concat(d.split(3)), [0, 1, 2, 3]),
        (lambda d: d.repeat(2), [0, 0, 1, 1, 2, 2, 3, 3]),
        (lambda d: d.repeat(2, interleave=False), [0, 1, 2, 3, 0, 1, 2, 3]),
        (lambda d: pad_to_divisor(d, 3)[0], [0, 1, 2, 3, 0, 1]),
        (lambda d: pickle.loads(pickle.dumps(d)), [0, 1, 2, 3]),
        (lambda d: d.union(DataProto.from_dict(tensors={"v": torch.ones(4)})), [0, 1, 2, 3]),
        (lambda d: d.reorder([3, 2, 1, 0]), [3, 2, 1, 0]),
    ],
)
def test_object_arrays_of_dicts_and_lists_survive(operation, expected_rows):
    original = make_data(4)
    result = operation(make_data(4))
    for key in ("token_ids", "multi_modal_inputs", "uid"):
        array = result.non_tensor_batch[key]
        assert array.dtype == object and array.shape == (len(expected_rows),)
        for position, row in enumerate(expected_rows):
            assert_same(array[position], original.non_tensor_batch[key][row])
