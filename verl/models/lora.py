"""LoRA adapters on the policy's linear layers (Hu et al. 2021, arXiv 2106.09685), FSDP2-ready:
used by the shared training engine (RL actor and SFT), weight sync and the checkpoint merger.

A targeted `nn.Linear` (weight W: (out, in)) computes

    y = x W^T + b + (alpha / r) * (x A^T) B^T,    A: (r, in), B: (out, r)

with A Kaiming-uniform and B zero at the start, so a fresh adapter leaves every output unchanged.
Only A and B train; everything else is frozen (and needs no gradient or optimizer state).

The adapter is registered on the linear module itself (`<module>.lora_A`, `<module>.lora_B`) and
applied by a forward hook, instead of wrapping the module (as `peft` does, which renames each
targeted weight to `<module>.base_layer.weight`). Every base parameter therefore keeps its name:
weight sync into the rollout engine, the checkpoint's base keys, the merger and name-based
freezing see exactly the names they see without LoRA, and FSDP2 shards A and B inside the
decoder-layer unit that owns the linear layer. The reference policy is the same module with the
adapters switched off (`adapters_disabled`): no second copy of the weights.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

LORA_A, LORA_B = "lora_A", "lora_B"
# Written next to the model shards of a checkpoint: the merger needs rank/alpha to fold adapters.
LORA_CONFIG_FILE = "lora_config.json"
# The language model's linear layers that get adapters by default: every one of Qwen2.5-VL's and
# Qwen3-VL's (attention and MLP projections), and Qwen3.5's gated delta rule's wide projections
# (`in_proj_qkv` its q/k/v, `in_proj_z` the output gate, `out_proj`), its counterpart of q/k/v/o.
# Left out on purpose: the delta rule's `in_proj_a` / `in_proj_b` (hidden -> one decay step and one
# write strength per value head: as narrow as a rank-r adapter, and the decay enters as
# exp(cumulative sum), the projection where a low-rank update matters least and risks most), and
# Qwen3.5-MoE's router (`gate`) and fused expert tensors (parameters, not linear layers; its
# shared expert's gate/up/down projections are adapted).
LANGUAGE_MODEL_LINEARS = (
    "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "in_proj_qkv", "in_proj_z", "out_proj",
)


@dataclass
class LoRAConfig:
    rank: int = 0
    """Adapter rank r; 0 = off (full fine-tuning)."""
    alpha: float = 16.0
    """The adapter's output is scaled by alpha / rank."""
    target_modules: list[str] = field(default_factory=lambda: list(LANGUAGE_MODEL_LINEARS))
    """Linear layers that get adapters, by the last component of their module name
    (`q_proj` matches every `...self_attn.q_proj`); `all-linear` = every linear layer not excluded."""
    exclude_modules: list[str] = field(default_factory=lambda: ["visual", "lm_head"])
    """Module-name components whose linear layers never get adapters: by default the vision tower
    with its mergers (`model.visual`) and the output head (tied to the embeddings)."""

    @property
    def enabled(self) -> bool:
        return self.rank > 0

    def check(self, key: str) -> None:
        """Raises ValueError naming `key` (the config path, e.g. worker.actor.model.lora) on bad values."""
        if self.rank < 0:
            raise ValueError(f"{key}.rank={self.rank}: must be >= 0 (0 = off)")
        if self.enabled and not self.alpha > 0:
            raise ValueError(f"{key}.alpha={self.alpha}: must be > 0")
        if self.enabled and not self.target_modules:
            raise ValueError(f"{key}.target_modules is empty: name the linear layers to adapt, or `all-linear`")


def lora_scale(config: LoRAConfig) -> float:
    return config.alpha / config.rank


def _is_target(name: str, config: LoRAConfig) -> bool:
    parts = name.split(".")
    if any(part in config.exclude_modules for part in parts):
        return False
    return "all-linear" in config.target_modules or parts[-1] in config.target_modules


def _add_adapter(module: nn.Linear, rank: int, scale: float) -> None:
    weight = module.weight
    lora_a = nn.Parameter(torch.empty(rank, module.in_features, dtype=weight.dtype, device=weight.device))
    # PEFT's default: A like a fresh nn.Linear (Kaiming uniform, a = sqrt(5)), B = 0.
    nn.init.kaiming_uniform_(lora_a, a=math.sqrt(5))
    lora_b = nn.Parameter(torch.zeros(module.out_features, rank, dtype=weight.dtype, device=weight.device))
    module.register_parameter(LORA_A, lora_a)
    module.register_parameter(LORA_B, lora_b)
    module.lora_scale = scale
    module.lora_enabled = True
    module.register_forward_hook(_add_adapter_output)


def _add_adapter_output(module: nn.Linear, args: tuple, output: torch.Tensor) -> torch.Tensor:
    """Forward hook: output + scale * (x A^T) B^T. Under FSDP2 it runs inside the owning unit's
    forward, where A and B are already all-gathered (and cast to the compute dtype)."""
    if not module.lora_enabled:
        return output
    hidden = args[0].to(module.lora_A.dtype)
    return output + nn.functional.linear(nn.functional.linear(hidden, module.lora_A), module.lora_B) * module.lora_scale


def apply_lora(model: nn.Module, config: LoRAConfig, key: str = "lora") -> list[str]:
    """Adds adapters to the targeted linear layers of `model` (before FSDP sharding) and freezes
    every other parameter. Returns the adapted module names; raises naming `key` when nothing
    matches (a typo in target_modules must not silently train nothing)."""
    config.check(key)
    model.requires_grad_(False)
    targets = [name for name, module in model.named_modules() if isinstance(module, nn.Linear) and _is_target(name, config)]
    if not targets:
        raise ValueError(
            f"{key}.target_modules={config.target_modules} matched no linear layer outside "
            f"{key}.exclude_modules={config.exclude_modules}"
        )
    modules = dict(model.named_modules())
    for name in targets:
        _add_adapter(modules[name], config.rank, lora_scale(config))
    return targets


def lora_modules(model: nn.Module) -> dict[str, nn.Module]:
    """{module name: module} of every adapted layer of `model` (empty without LoRA)."""
    return {name: module for name, module in model.named_modules() if hasattr(module, LORA_A)}


def is_adapter_name(name: str) -> bool:
    """Whether a state-dict / parameter name is an adapter matrix (`....lora_A` / `....lora_B`)."""
    return name.endswith((f".{LORA_A}", f".{LORA_B}"))


@contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[None]:
    """Inside, `model` computes the base policy (the reference model of the KL term)."""
    modules = list(lora_modules(model).values())
    for module in modules:
        module.lora_enabled = False
    try:
        yield
    finally:
        for module in modules:
            module.lora_enabled = True


def merged_weight(weight: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, scale: float) -> torch.Tensor:
    """W + scale * B A: the single weight (out, in) that computes base + adapter."""
    return (weight.float() + scale * (lora_b.float() @ lora_a.float())).to(weight.dtype)


def fold_adapters(state: Mapping[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    """A full state dict with adapters (`M.weight`, `M.lora_A`, `M.lora_B`) -> the plain model's
    state dict with `M.weight` merged (see `merged_weight`). Raises naming a half adapter."""
    folded = {name: tensor for name, tensor in state.items() if not is_adapter_name(name)}
    for name in state:
        if not name.endswith(f".{LORA_A}"):
            continue
        module = name[: -len(LORA_A) - 1]
        if f"{module}.{LORA_B}" not in state or f"{module}.weight" not in state:
            raise KeyError(f"adapter {name} has no matching {module}.{LORA_B} / {module}.weight")
        folded[f"{module}.weight"] = merged_weight(state[f"{module}.weight"], state[name], state[f"{module}.{LORA_B}"], scale)
    orphans = [name for name in state if name.endswith(f".{LORA_B}") and f"{name[: -len(LORA_B)]}{LORA_A}" not in state]
    if orphans:
        raise KeyError(f"adapter matrices without their lora_A: {orphans[:5]}")
    return folded


@dataclass(frozen=True)
class SavedLoRA:
    """What a LoRA checkpoint records beside its shards (`lora_config.json`)."""

    config: LoRAConfig
    base_model: str
    """The model folder training started from: the frozen base the adapters apply to."""
    adapters_only: bool
    """The shards hold the adapters alone (the base is read from `base_model`); False for
    checkpoints written before adapter-only saving, whose shards hold every weight."""


def save_lora_config(directory: str, config: LoRAConfig, base_model: str) -> None:
    """Writes the adapter settings and the base model the adapters were trained on, for shards
    that hold the adapters alone."""
    with open(os.path.join(directory, LORA_CONFIG_FILE), "w") as f:
        json.dump({**asdict(config), "base_model": base_model, "shards": "adapters"}, f, indent=2)


def load_lora_config(directory: str) -> SavedLoRA | None:
    """The LoRA settings saved beside a checkpoint's shards; None when the run was full
    fine-tuning."""
    path = os.path.join(directory, LORA_CONFIG_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        saved = json.load(f)
    base_model = saved.pop("base_model")
    adapters_only = saved.pop("shards", "all") == "adapters"
    return SavedLoRA(LoRAConfig(**saved), base_model, adapters_only)


def peft_adapter(
    state: Mapping[str, torch.Tensor], config: LoRAConfig, name_of: Callable[[str], str], base_model: str
) -> tuple[dict, dict[str, torch.Tensor]]:
    """(adapter_config.json content, adapter_model.safetensors tensors) in PEFT's LoRA format.

    `name_of(in-memory weight name) -> checkpoint-file weight name` puts the adapter on the base
    checkpoint's own module names, the names PEFT and vLLM resolve against the base model's files:
    key `base_model.model.<module>.lora_A.weight` (r, in) and `...lora_B.weight` (out, r).
    `base_model` is the model the adapter applies to: the one training started from (never a
    merged folder, which already contains the adapter)."""
    tensors = {}
    for name, tensor in state.items():
        if is_adapter_name(name):
            module, matrix = name.rsplit(".", 1)
            checkpoint_module = name_of(f"{module}.weight")[: -len(".weight")]
            tensors[f"base_model.model.{checkpoint_module}.{matrix}.weight"] = tensor.contiguous()
    if not tensors:
        raise ValueError("no adapter matrices in the state dict: the checkpoint was not trained with LoRA")
    modules = sorted({key[len("base_model.model.") :].rsplit(".", 2)[0] for key in tensors})
    adapter_config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": config.rank,
        "lora_alpha": config.alpha,
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        # A regex PEFT full-matches against module names: exactly the adapted modules (a list of
        # short names like `gate_proj` would also hit the vision tower's MLPs).
        "target_modules": "|".join(re.escape(module) for module in modules),
        "modules_to_save": None,
        "init_lora_weights": True,
    }
    return adapter_config, tensors
