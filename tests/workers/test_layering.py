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
