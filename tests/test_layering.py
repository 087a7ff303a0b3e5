"""Layering of the package: floors that only import downward, maths and data without Ray or a model
runtime, and one module holding the optimizer-step loop."""

import ast
from pathlib import Path

VERL = Path(__file__).resolve().parents[1] / "verl"


def runtime_imports(path: Path) -> set[str]:
    """Modules imported by `path`, skipping `if TYPE_CHECKING:` blocks (annotations only)."""
    tree = ast.parse(path.read_text())
    skipped = {id(node) for block in ast.walk(tree) if isinstance(block, ast.If)
               and getattr(block.test, "id", None) == "TYPE_CHECKING" for node in ast.walk(block)}
    names = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


# Floors of the package, lowest first. A module may import its own floor and the floors below it,
# never one above: the controller drives the workers, the workers never reach back up. `stages`
# sits above `workers` because the self-reward samples through the rollout interface (its
# SamplingConfig); nothing below `trainer` imports Ray's single controller.
FLOORS = (
    ("utils", "models", "protocol"),
    ("data", "rewards", "algorithms"),
    ("toy",),
    ("workers",),
    ("stages",),
    ("single_controller",),
    ("trainer",),
    ("eval",),
)
FLOOR_OF = {package: floor for floor, packages in enumerate(FLOORS) for package in packages}


def package_of(module: str) -> str | None:
    """The top-level package (or `protocol`) of a `verl.` module name; None outside verl."""
    parts = module.split(".")
    return parts[1] if parts[0] == "verl" and len(parts) > 1 else None


def test_every_package_has_a_floor():
    packages = {path.relative_to(VERL).parts[0].removesuffix(".py") for path in VERL.rglob("*.py")} - {"__init__"}
    assert packages == set(FLOOR_OF), packages ^ set(FLOOR_OF)


def test_no_import_runs_up_a_floor():
    upward = []
    for path in sorted(VERL.rglob("*.py")):
        source = path.relative_to(VERL).parts[0].removesuffix(".py")
        if source == "__init__":
            continue
        for module in sorted(runtime_imports(path)):
            target = package_of(module)
            if target in FLOOR_OF and FLOOR_OF[target] > FLOOR_OF[source]:
                upward.append(f"{path.relative_to(VERL)} ({source}, floor {FLOOR_OF[source]}) imports {module} (floor {FLOOR_OF[target]})")
    assert upward == []


def test_maths_data_and_stages_import_neither_ray_nor_a_model_runtime():
    """The maths, the data and the stages run on tensors and token ids: no Ray, no vLLM, no
    torch.distributed (tokenizers and processors from transformers are data, and allowed)."""
    offenders = {}
    for package in ("algorithms", "data", "rewards", "stages", "protocol.py"):
        for path in sorted((VERL / package).rglob("*.py")) if not package.endswith(".py") else [VERL / package]:
            bad = sorted(m for m in runtime_imports(path) if m.split(".")[0] in ("ray", "vllm") or m.startswith("torch.distributed"))
            if bad:
                offenders[str(path.relative_to(VERL))] = bad
    assert offenders == {}


def test_core_algos_is_pure_torch():
    imports = runtime_imports(VERL / "algorithms" / "core_algos.py")
    assert not {name for name in imports if name.split(".")[0] in ("ray", "transformers", "vllm", "verl")}


OPTIMIZER_CALLS = {"zero_grad", "backward", "clip_grad_norm_"}
"""Calls that make up an optimizer step; `.step()` counts when its receiver names an optimizer or scheduler."""


def optimizer_step_calls(path: Path) -> list[str]:
    """`file:line call` of every optimizer-step call in `path` (see `OPTIMIZER_CALLS`)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        receiver = ast.unparse(node.func.value)
        is_step = node.func.attr == "step" and ("optimizer" in receiver or "scheduler" in receiver)
        if node.func.attr in OPTIMIZER_CALLS or is_step:
            found.append(f"{path.relative_to(VERL)}:{node.lineno} {ast.unparse(node.func)}")
    return found


def test_one_module_holds_the_optimizer_step_loop():
    """SFT, the actor and the critic train through `verl.workers.engine.engine.Engine`: zeroing,
    backward, clipping and the optimizer/scheduler steps are written once, there."""
    calls = [call for path in sorted(VERL.rglob("*.py")) for call in optimizer_step_calls(path)]
    assert {call.split(":")[0] for call in calls} == {"workers/engine/engine.py"}, calls
    called = sorted(call.rsplit(".", 1)[1] for call in calls)
    assert called == ["backward", "clip_grad_norm_", "step", "step", "zero_grad"], calls  # each once
