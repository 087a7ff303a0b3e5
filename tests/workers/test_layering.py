"""Layering: the workers never import the trainer (the trainer drives the workers), and the
algorithm maths imports neither Ray nor a model library."""

import ast
from pathlib import Path

VERL = Path(__file__).resolve().parents[2] / "verl"


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


def test_workers_do_not_import_the_trainer():
    offenders = {str(path.relative_to(VERL)): sorted(n for n in runtime_imports(path) if n.startswith("verl.trainer"))
                 for path in (VERL / "workers").rglob("*.py")}
    assert {path: names for path, names in offenders.items() if names} == {}


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
