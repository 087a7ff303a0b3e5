"""`DataProto`: the batch container passed between the single controller and the Ray workers.

A `DataProto` holds three dicts:

- `batch`: named tensors that all share the first (batch) dimension, e.g. `input_ids` (B, L);
- `non_tensor_batch`: named numpy arrays (usually `dtype=object`) of length B, for per-sample
  values that are not rectangular tensors: strings, token-id lists, `multi_modal_inputs` dicts
  holding per-sample `pixel_values` of varying size, lists of PIL images;
- `meta_info`: free-form metadata about the whole batch (sampling settings, token counts, ...).

Conventions (the same as verl/EasyR1, so trainer code reads the same):

- Slicing (`data[a:b]`, `slice`, `chunk`, `split`) returns views sharing memory with the
  original; gathering (`data[[i, j]]`, `repeat`, `concat`, `pad_to_divisor`) copies tensors.
  Non-tensor objects are never copied, only referenced: `repeat` makes the n copies of a sample
  share the same `multi_modal_inputs` dict (cheap, and pickle sends it once).
- `to`, `union`, `rename` and `reorder` modify the DataProto in place and return it.
- `data[i]` with an int returns a `DataProtoItem` (one sample, batch dimension dropped), like
  indexing a tensor; every other index returns a `DataProto`.

Pickling (Ray): CPU tensors travel as numpy buffers, which pickle protocol 5 (used by Ray) sends
out-of-band without a copy; torch's own pickling writes every storage through `torch.save`
into bytes and always sends a view's whole base storage. Measured here (CPU, 2 cores) on a
512 x 2048 int64 `input_ids` + `attention_mask` batch (16 MiB), protocol 5:

    torch's own pickling   in-band 16 MiB   dumps 15.7 ms   loads 5.2 ms (11.3 ms in-band)
    this __getstate__      out-of-band      dumps  0.02 ms  loads 0.01 ms (1.7 ms in-band)
    a 64-row slice         torch: 16 MiB (whole base storage)   here: 2 MiB
    ray.put / ray.get      torch: 20 / 26 ms                    here: 6 / 4 ms
    ... + 230 MiB of pixel_values in multi_modal_inputs dicts:
    ray.put / ray.get      torch: 649 / 254 ms                  here: 77 / 84 ms

Tensors stored directly in an object array or inside (nested) plain dicts in it, such as
`multi_modal_inputs[i]["pixel_values"]`, travel the same way. Tensors inside lists or tuples
are left to torch's pickling: walking every token-id list would cost more than it saves.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

__all__ = ["DataProto", "DataProtoItem", "pad_to_divisor", "unpad"]

# Index types accepted by `DataProto.__getitem__` for gathering rows.
IndexLike = int | slice | Sequence[int] | np.ndarray | torch.Tensor


@dataclass(eq=False)
class DataProtoItem:
    """One sample of a `DataProto`: `batch[key]` is that sample's tensor without the batch
    dimension (a view), `non_tensor_batch[key]` the stored object, `meta_info` the shared dict."""

    batch: dict[str, torch.Tensor]
    non_tensor_batch: dict[str, Any]
    meta_info: dict[str, Any]


@dataclass(eq=False)
class DataProto:
    """Named tensors and numpy arrays sharing the batch dimension, plus batch-level metadata.

    Build it with `DataProto.from_dict` (which converts lists to object arrays) or directly from
    tensors and numpy arrays; both validate lengths. See the module docstring for the
    view/copy and in-place conventions.
    """

    batch: dict[str, torch.Tensor] = field(default_factory=dict)
    non_tensor_batch: dict[str, np.ndarray] = field(default_factory=dict)
    meta_info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.check_consistency()

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_dict(
        cls,
        tensors: dict[str, torch.Tensor] | None = None,
        non_tensors: dict[str, np.ndarray | Sequence[Any]] | None = None,
        meta_info: dict[str, Any] | None = None,
    ) -> DataProto:
        """Build a DataProto; `non_tensors` values may be lists or tuples (one entry per sample),
        which become 1-D object arrays without numpy broadcasting nested lists into 2-D."""
        tensors = tensors or {}
        non_tensors = non_tensors or {}
        for key, value in tensors.items():
            if not isinstance(value, torch.Tensor):
                raise TypeError(
                    f"DataProto.from_dict: tensors[{key!r}] must be a torch.Tensor, "
                    f"got {type(value).__name__}; put per-sample Python objects in non_tensors"
                )
        arrays = {key: _as_array(key, value) for key, value in non_tensors.items()}
        return cls(batch=dict(tensors), non_tensor_batch=arrays, meta_info=dict(meta_info or {}))

    def check_consistency(self) -> None:
        """Raise if a value has the wrong type, a key is both a tensor and a non-tensor, or two
        values disagree on the batch size (the error names both keys and both lengths)."""
        reference: tuple[str, int] | None = None
        for kind, values, value_type in (
            ("batch", self.batch, torch.Tensor),
            ("non_tensor_batch", self.non_tensor_batch, np.ndarray),
        ):
            if not isinstance(values, dict):
                raise TypeError(f"DataProto.{kind} must be a dict, got {type(values).__name__}")
            for key, value in values.items():
                if not isinstance(value, value_type):
                    hint = " (use DataProto.from_dict to convert lists)" if kind == "non_tensor_batch" else ""
                    raise TypeError(
                        f"DataProto.{kind}[{key!r}] must be a {value_type.__module__}."
                        f"{value_type.__name__}, got {type(value).__name__}{hint}"
                    )
                if value.ndim == 0:
                    raise ValueError(
                        f"DataProto.{kind}[{key!r}] is 0-dimensional; every value needs a batch "
                        "dimension (put batch-level scalars in meta_info)"
                    )
                length = value.shape[0]
                if reference is None:
                    reference = (f"{kind}[{key!r}]", length)
                elif length != reference[1]:
                    raise ValueError(
                        f"DataProto length mismatch: {kind}[{key!r}] has length {length}, but "
                        f"{reference[0]} has length {reference[1]}"
                    )
        shared = self.batch.keys() & self.non_tensor_batch.keys()
        if shared:
            raise ValueError(f"DataProto keys {sorted(shared)} are in both batch and non_tensor_batch")
        if not isinstance(self.meta_info, dict):
            raise TypeError(f"DataProto.meta_info must be a dict, got {type(self.meta_info).__name__}")

    # ------------------------------------------------------------------ size and indexing

    def __len__(self) -> int:
        for value in self.batch.values():
            return value.shape[0]
        for value in self.non_tensor_batch.values():
            return value.shape[0]
        return 0

    def __getitem__(self, index: IndexLike) -> DataProto | DataProtoItem:
        """`data[i]` -> DataProtoItem (negative i allowed); `data[a:b]` (step 1) -> views;
        `data[a:b:s]`, `data[[i, j]]`, `data[int_array]`, `data[bool_mask]` -> copies in that order."""
        if isinstance(index, (torch.Tensor, np.ndarray)) and index.ndim == 0:
            index = index.item()
        if isinstance(index, (int, np.integer)) and not isinstance(index, bool):
            return self._item(int(index))
        if isinstance(index, slice):
            if index.step in (None, 1):
                start, end, _ = index.indices(len(self))
                return self.slice(start, end)
            return self._gather(np.arange(len(self))[index].copy())
        return self._gather(self._normalise_index(index))

    def _item(self, position: int) -> DataProtoItem:
        length = len(self)
        if not -length <= position < length:
            raise IndexError(f"DataProto index {position} out of range for length {length}")
        return DataProtoItem(
            batch={key: value[position] for key, value in self.batch.items()},
            non_tensor_batch={key: value[position] for key, value in self.non_tensor_batch.items()},
            meta_info=self.meta_info,
        )

    def _normalise_index(self, index: Sequence[int] | np.ndarray | torch.Tensor) -> np.ndarray:
        """An int64 array of non-negative row positions from an int sequence/array or a bool mask."""
        length = len(self)
        if isinstance(index, torch.Tensor):
            index = index.detach().cpu().numpy()
        positions = np.asarray(index)
        if positions.size == 0:
            positions = positions.astype(np.int64)
        if positions.ndim != 1:
            raise IndexError(f"DataProto index must be 1-D, got shape {tuple(positions.shape)}")
        if positions.dtype == np.bool_:
            if positions.shape[0] != length:
                raise IndexError(
                    f"DataProto boolean mask has length {positions.shape[0]}, data has length {length}"
                )
            return np.flatnonzero(positions)
        if not np.issubdtype(positions.dtype, np.integer):
            raise IndexError(f"DataProto index must hold integers or booleans, got dtype {positions.dtype}")
        out_of_range = (positions < -length) | (positions >= length)
        if out_of_range.any():
            raise IndexError(
                f"DataProto index {int(positions[out_of_range][0])} out of range for length {length}"
            )
        return np.where(positions < 0, positions + length, positions).astype(np.int64)

    def _gather(self, positions: np.ndarray) -> DataProto:
        index = torch.from_numpy(positions)
        return DataProto(
            batch={key: value[index.to(value.device)] for key, value in self.batch.items()},
            non_tensor_batch={key: value[positions] for key, value in self.non_tensor_batch.items()},
            meta_info=dict(self.meta_info),
        )

    def slice(self, start: int | None = None, end: int | None = None) -> DataProto:
        """Rows [start, end) with Python slice semantics (negative and out-of-range bounds clamp).
        Tensors and arrays are views of this DataProto's storage; meta_info is a shallow copy."""
        start, end, _ = slice(start, end).indices(len(self))
        end = max(start, end)
        return DataProto(
            batch={key: value[start:end] for key, value in self.batch.items()},
            non_tensor_batch={key: value[start:end] for key, value in self.non_tensor_batch.items()},
            meta_info=dict(self.meta_info),
        )

    def reorder(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> DataProto:
        """In place: row i becomes old row `indices[i]`; `indices` must be a permutation of
        range(len(self)) (for sub-selection or duplication use `data[indices]`). Returns self."""
        positions = self._normalise_index(indices)
        if positions.shape[0] != len(self) or not np.array_equal(np.sort(positions), np.arange(len(self))):
            raise ValueError(
                f"DataProto.reorder needs a permutation of range({len(self)}), got {positions.tolist()}"
            )
        reordered = self._gather(positions)
        self.batch, self.non_tensor_batch = reordered.batch, reordered.non_tensor_batch
        return self

    # ------------------------------------------------------------------ keys

    def select(
        self,
        batch_keys: Sequence[str] | None = None,
        non_tensor_batch_keys: Sequence[str] | None = None,
        meta_info_keys: Sequence[str] | None = None,
        deepcopy: bool = False,
    ) -> DataProto:
        """A new DataProto with only the given keys; None keeps every key of that kind.
        With deepcopy=False values are shared with self; with True tensors are cloned and
        non-tensors and meta_info deep-copied."""
        batch = _pick(self.batch, batch_keys, "batch")
        non_tensor_batch = _pick(self.non_tensor_batch, non_tensor_batch_keys, "non_tensor_batch")
        meta_info = _pick(self.meta_info, meta_info_keys, "meta_info")
        if deepcopy:
            batch = {key: value.clone() for key, value in batch.items()}
            non_tensor_batch = copy.deepcopy(non_tensor_batch)
            meta_info = copy.deepcopy(meta_info)
        return DataProto(batch=batch, non_tensor_batch=non_tensor_batch, meta_info=meta_info)

    def pop(
        self,
        batch_keys: Sequence[str] | None = None,
        non_tensor_batch_keys: Sequence[str] | None = None,
        meta_info_keys: Sequence[str] | None = None,
    ) -> DataProto:
        """Remove the given keys from self and return them as a new DataProto; None pops nothing
        of that kind (unlike `select`). All keys are checked before anything is removed."""
        popped = DataProto(
            batch=_pick(self.batch, batch_keys or [], "batch"),
            non_tensor_batch=_pick(self.non_tensor_batch, non_tensor_batch_keys or [], "non_tensor_batch"),
            meta_info=_pick(self.meta_info, meta_info_keys or [], "meta_info"),
        )
        for own, taken in (
            (self.batch, popped.batch),
            (self.non_tensor_batch, popped.non_tensor_batch),
            (self.meta_info, popped.meta_info),
        ):
            for key in taken:
                del own[key]
        return popped

    def rename(self, old_keys: str | Sequence[str], new_keys: str | Sequence[str]) -> DataProto:
        """In place: rename batch or non_tensor_batch keys (renames are simultaneous, so
        swapping two keys works). Returns self."""
        old = [old_keys] if isinstance(old_keys, str) else list(old_keys)
        new = [new_keys] if isinstance(new_keys, str) else list(new_keys)
        if len(old) != len(new):
            raise ValueError(f"DataProto.rename: {len(old)} old keys {old} but {len(new)} new keys {new}")
        if len(set(new)) != len(new):
            raise ValueError(f"DataProto.rename: duplicate new keys {new}")
        for key in old:
            if key not in self.batch and key not in self.non_tensor_batch:
                raise KeyError(f"DataProto.rename: no key {key!r}; keys are {self._all_keys()}")
        kept = set(self._all_keys()) - set(old)
        clashes = sorted(kept & set(new))
        if clashes:
            raise ValueError(f"DataProto.rename: new keys {clashes} already exist")
        mapping = dict(zip(old, new))
        self.batch = {mapping.get(key, key): value for key, value in self.batch.items()}
        self.non_tensor_batch = {mapping.get(key, key): value for key, value in self.non_tensor_batch.items()}
        return self

    def union(self, other: DataProto) -> DataProto:
        """In place: add other's keys to self. A key present in both must hold equal values
        (same shape, dtype and elements; for meta_info, equal values), else ValueError; both
        must have the same length when both hold per-sample data. Returns self."""
        if self._all_keys() and other._all_keys() and len(self) != len(other):
            raise ValueError(f"DataProto.union: lengths differ ({len(self)} vs {len(other)})")
        crossed = sorted(
            (self.batch.keys() & other.non_tensor_batch.keys())
            | (self.non_tensor_batch.keys() & other.batch.keys())
        )
        if crossed:
            raise ValueError(
                f"DataProto.union: keys {crossed} are tensors in one DataProto and non-tensors in the other"
            )
        merged = (
            ("batch", self.batch, other.batch),
            ("non_tensor_batch", self.non_tensor_batch, other.non_tensor_batch),
            ("meta_info", self.meta_info, other.meta_info),
        )
        for kind, own, theirs in merged:
            for key, value in theirs.items():
                if key in own and not _values_equal(own[key], value):
                    raise ValueError(f"DataProto.union: {kind}[{key!r}] differs between the two DataProtos")
        for _, own, theirs in merged:
            own.update(theirs)
        return self

    def _all_keys(self) -> list[str]:
        return [*self.batch, *self.non_tensor_batch]

    # ------------------------------------------------------------------ split and merge

    def chunk(self, chunks: int) -> list[DataProto]:
        """`chunks` equal pieces (views). The length must divide evenly: pad first with
        `pad_to_divisor` and drop the padding with `unpad` after `concat`."""
        _check_positive_int(chunks, "chunks")
        if len(self) % chunks:
            raise ValueError(
                f"DataProto.chunk: batch size {len(self)} is not divisible by chunks={chunks}; "
                f"pad first with pad_to_divisor(data, {chunks}) and unpad the concatenated result"
            )
        size = len(self) // chunks
        return [self.slice(i * size, (i + 1) * size) for i in range(chunks)]

    def split(self, split_size: int) -> list[DataProto]:
        """Consecutive pieces of `split_size` rows (views); the last one may be shorter."""
        _check_positive_int(split_size, "split_size")
        return [self.slice(start, start + split_size) for start in range(0, len(self), split_size)]

    @staticmethod
    def concat(data: Sequence[DataProto]) -> DataProto:
        """Concatenate along the batch dimension (the inverse of chunk/split). All pieces need
        the same keys; meta_info is the first piece's, plus keys only later pieces have; a
        key with different values in two pieces raises ValueError."""
        if not data:
            raise ValueError("DataProto.concat needs at least one DataProto")
        first = data[0]
        meta_info = dict(first.meta_info)
        for position, piece in enumerate(data[1:], start=1):
            for kind, expected, found in (
                ("batch", first.batch.keys(), piece.batch.keys()),
                ("non_tensor_batch", first.non_tensor_batch.keys(), piece.non_tensor_batch.keys()),
            ):
                if expected != found:
                    raise ValueError(
                        f"DataProto.concat: piece {position} has {kind} keys {sorted(found)}, "
                        f"piece 0 has {sorted(expected)}"
                    )
            for key, value in piece.meta_info.items():
                if key in meta_info and not _values_equal(meta_info[key], value):
                    raise ValueError(
                        f"DataProto.concat: meta_info[{key!r}] of piece {position} differs from "
                        "an earlier piece's"
                    )
                meta_info.setdefault(key, value)
        batch = {}
        for key in first.batch:
            tensors = [piece.batch[key] for piece in data]
            try:
                batch[key] = torch.cat(tensors, dim=0)
            except RuntimeError as error:
                shapes = [f"{tuple(t.shape)} {t.dtype} {t.device}" for t in tensors]
                raise ValueError(
                    f"DataProto.concat: cannot concatenate batch[{key!r}] {shapes}: {error}"
                ) from error
        non_tensor_batch = {}
        for key in first.non_tensor_batch:
            arrays = [piece.non_tensor_batch[key] for piece in data]
            try:
                non_tensor_batch[key] = np.concatenate(arrays, axis=0)
            except ValueError as error:
                shapes = [f"{array.shape} {array.dtype}" for array in arrays]
                raise ValueError(
                    f"DataProto.concat: cannot concatenate non_tensor_batch[{key!r}] {shapes}: {error}"
                ) from error
        return DataProto(batch=batch, non_tensor_batch=non_tensor_batch, meta_info=meta_info)

    def repeat(self, repeat_times: int, interleave: bool = True) -> DataProto:
        """Each row `repeat_times` times: interleaved [a, a, b, b] keeps a prompt's samples
        adjacent (GRPO groups), otherwise [a, b, a, b]. Tensors are copied; non-tensor objects
        are shared references."""
        _check_positive_int(repeat_times, "repeat_times")
        if interleave:
            batch = {key: value.repeat_interleave(repeat_times, dim=0) for key, value in self.batch.items()}
            non_tensor_batch = {
                key: np.repeat(value, repeat_times, axis=0) for key, value in self.non_tensor_batch.items()
            }
        else:
            batch = {
                key: value.repeat(repeat_times, *([1] * (value.ndim - 1))) for key, value in self.batch.items()
            }
            non_tensor_batch = {
                key: np.tile(value, (repeat_times,) + (1,) * (value.ndim - 1))
                for key, value in self.non_tensor_batch.items()
            }
        return DataProto(batch=batch, non_tensor_batch=non_tensor_batch, meta_info=dict(self.meta_info))

    # ------------------------------------------------------------------ devices and pickling

    def to(self, device: str | torch.device) -> DataProto:
        """In place: move every tensor to `device` (non-tensors stay in host memory). Returns self."""
        self.batch = {key: value.to(device) for key, value in self.batch.items()}
        return self

    def __getstate__(self) -> dict[str, Any]:
        # One memo for the whole state keeps shared objects shared (the n repeats of a
        # prompt's multi_modal_inputs pickle once).
        memo: dict[int, Any] = {}
        return {
            "batch": {key: _pack(value, memo) for key, value in self.batch.items()},
            "non_tensor_batch": {key: _pack(value, memo) for key, value in self.non_tensor_batch.items()},
            "meta_info": _pack(self.meta_info, memo),
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        memo: dict[int, Any] = {}
        self.batch = {key: _unpack(value, memo) for key, value in state["batch"].items()}
        self.non_tensor_batch = {key: _unpack(value, memo) for key, value in state["non_tensor_batch"].items()}
        self.meta_info = _unpack(state["meta_info"], memo)
        self.check_consistency()

    def __repr__(self) -> str:
        lines = [f"DataProto(len={len(self)}, tensor bytes={_format_bytes(self._tensor_bytes())}"]
        for key, value in self.batch.items():
            dtype = str(value.dtype).removeprefix("torch.")
            lines.append(f"  batch[{key!r}]: {dtype}{list(value.shape)} on {value.device}")
        for key, value in self.non_tensor_batch.items():
            lines.append(f"  non_tensor_batch[{key!r}]: {value.dtype}{list(value.shape)}")
        lines.append(f"  meta_info keys: {sorted(map(str, self.meta_info))})")
        return "\n".join(lines)

    def _tensor_bytes(self) -> int:
        return sum(value.numel() * value.element_size() for value in self.batch.values())


# ---------------------------------------------------------------------- padding


def pad_to_divisor(data: DataProto, divisor: int) -> tuple[DataProto, int]:
    """Append copies of the leading rows (cycling when `divisor` exceeds the length) so that the
    length divides by `divisor`. Returns (padded data, pad_size); `unpad(padded, pad_size)`
    restores the original. With pad_size 0 the input itself is returned."""
    _check_positive_int(divisor, "divisor")
    length = len(data)
    pad_size = -length % divisor
    if pad_size == 0:
        return data, 0
    pieces = [data]
    remaining = pad_size
    while remaining > 0:
        take = min(remaining, length)
        pieces.append(data.slice(0, take))
        remaining -= take
    return DataProto.concat(pieces), pad_size


def unpad(data: DataProto, pad_size: int) -> DataProto:
    """Drop the last `pad_size` rows added by `pad_to_divisor` (a view; the input when 0)."""
    if pad_size < 0 or pad_size > len(data):
        raise ValueError(f"unpad: pad_size {pad_size} must be in [0, {len(data)}]")
    return data if pad_size == 0 else data.slice(0, len(data) - pad_size)


# ---------------------------------------------------------------------- helpers


def _as_array(key: str, value: np.ndarray | Sequence[Any]) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, (list, tuple)):
        array = np.empty(len(value), dtype=object)
        for position, element in enumerate(value):
            array[position] = element
        return array
    raise TypeError(
        f"DataProto.from_dict: non_tensors[{key!r}] must be a numpy array, list or tuple, "
        f"got {type(value).__name__}"
    )


def _pick(values: dict[str, Any], keys: Sequence[str] | None, kind: str) -> dict[str, Any]:
    if keys is None:
        return dict(values)
    if isinstance(keys, str):
        raise TypeError(f"DataProto: {kind} keys must be a list of names, got the string {keys!r}")
    missing = [key for key in keys if key not in values]
    if missing:
        raise KeyError(f"DataProto: {kind} has no keys {missing}; it has {sorted(values)}")
    return {key: values[key] for key in keys}


def _check_positive_int(value: int, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"DataProto: {name} must be a positive int, got {value!r}")


def _values_equal(left: Any, right: Any) -> bool:
    """Structural equality for tensors, numpy arrays (object arrays element-wise) and nested
    dicts/lists/tuples of them; other values compare with `==`."""
    if left is right:
        return True
    if isinstance(left, torch.Tensor) or isinstance(right, torch.Tensor):
        return (
            isinstance(left, torch.Tensor)
            and isinstance(right, torch.Tensor)
            and left.shape == right.shape
            and left.dtype == right.dtype
            and torch.equal(left, right.to(left.device))
        )
    if isinstance(left, np.ndarray) or isinstance(right, np.ndarray):
        if not (isinstance(left, np.ndarray) and isinstance(right, np.ndarray) and left.shape == right.shape):
            return False
        if left.dtype == object or right.dtype == object:
            return all(_values_equal(a, b) for a, b in zip(left.flat, right.flat))
        return left.dtype == right.dtype and bool(np.array_equal(left, right))
    if isinstance(left, dict) and isinstance(right, dict):
        return left.keys() == right.keys() and all(_values_equal(left[key], right[key]) for key in left)
    if isinstance(left, (list, tuple)) and isinstance(right, (list, tuple)):
        return (
            type(left) is type(right)
            and len(left) == len(right)
            and all(_values_equal(a, b) for a, b in zip(left, right))
        )
    return bool(left == right)


# Pickling: tensors become `_TensorBuffer`s (numpy views; pickle protocol 5 sends contiguous
# ones out-of-band and only the viewed elements either way).

_NUMPY_DTYPES = frozenset(
    {
        torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
        torch.float16, torch.float32, torch.float64, torch.complex64, torch.complex128,
    }
)
# Dtypes numpy lacks (bfloat16, float8, ...) travel as the integer type of the same width.
_SAME_WIDTH_INTEGER = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


@dataclass(frozen=True)
class _TensorBuffer:
    array: np.ndarray
    dtype: torch.dtype


def _pack(value: Any, memo: dict[int, Any]) -> Any:
    """Replace tensors (also inside plain dicts and object arrays, recursively) by
    `_TensorBuffer`s; containers without tensors are returned unchanged, not copied."""
    if id(value) in memo:
        return memo[id(value)]
    if isinstance(value, torch.Tensor):
        packed = _pack_tensor(value)
    elif type(value) is dict:
        items = {key: _pack(element, memo) for key, element in value.items()}
        packed = items if any(items[key] is not value[key] for key in value) else value
    elif isinstance(value, np.ndarray) and value.dtype == object:
        packed = _map_object_array(value, lambda element: _pack(element, memo))
    else:
        return value
    memo[id(value)] = packed
    return packed


def _unpack(value: Any, memo: dict[int, Any]) -> Any:
    """Inverse of `_pack`; objects shared in the packed state stay shared."""
    if id(value) in memo:
        return memo[id(value)]
    if isinstance(value, _TensorBuffer):
        # Ray hands out read-only views of its shared object store; a tensor over such memory
        # would let in-place ops corrupt other readers' copy, so copy those.
        array = value.array if value.array.flags.writeable else value.array.copy()
        tensor = torch.from_numpy(array)
        unpacked = tensor if tensor.dtype == value.dtype else tensor.view(value.dtype)
    elif type(value) is dict:
        items = {key: _unpack(element, memo) for key, element in value.items()}
        unpacked = items if any(items[key] is not value[key] for key in value) else value
    elif isinstance(value, np.ndarray) and value.dtype == object:
        unpacked = _map_object_array(value, lambda element: _unpack(element, memo))
    else:
        return value
    memo[id(value)] = unpacked
    return unpacked


def _pack_tensor(tensor: torch.Tensor) -> _TensorBuffer | torch.Tensor:
    if tensor.layout != torch.strided:
        return tensor
    if tensor.device.type == "cpu" and not tensor.requires_grad:
        tensor = tensor.resolve_conj().resolve_neg()
        if tensor.dtype in _NUMPY_DTYPES:
            return _TensorBuffer(tensor.numpy(), tensor.dtype)
        if tensor.element_size() in _SAME_WIDTH_INTEGER:
            return _TensorBuffer(tensor.view(_SAME_WIDTH_INTEGER[tensor.element_size()]).numpy(), tensor.dtype)
    # Left to torch's pickling, which writes the whole storage: compact views first.
    needed_bytes = tensor.numel() * tensor.element_size()
    owns_exactly_its_storage = tensor.storage_offset() == 0 and tensor.untyped_storage().nbytes() == needed_bytes
    if tensor.is_contiguous() and owns_exactly_its_storage:
        return tensor
    return tensor.detach().clone(memory_format=torch.contiguous_format).requires_grad_(tensor.requires_grad)


def _map_object_array(array: np.ndarray, function: Callable[[Any], Any]) -> np.ndarray:
    """`function` applied to every element; the input array itself when nothing changed."""
    mapped = np.empty(array.shape, dtype=object)
    flat_in, flat_out = array.reshape(-1), mapped.reshape(-1)
    changed = False
    for position, element in enumerate(flat_in):
        result = function(element)
        flat_out[position] = result
        changed = changed or result is not element
    return mapped if changed else array


def _format_bytes(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    scaled, unit = size / 1024, "KiB"
    for larger in ("MiB", "GiB"):
        if scaled < 1024:
            break
        scaled, unit = scaled / 1024, larger
    return f"{scaled:.1f} {unit}"
