"""The package's imports run one way: read with ``ast`` (imports under ``if TYPE_CHECKING:`` and inside functions
included), no file imports another that imports it back, however indirectly, and no file imports a layer above its
own; docs/architecture.md states the order these tests enforce. And the general training module names no method's
machinery."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Dict, List, Set, Tuple

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "selfsup"
# Bottom to top: a file may import files of its own layer and of the layers below it. "selfsup" is the package's
# face (selfsup/__init__.py), which re-exports the config and the two LightningModules.
LAYERS = ("options", "distributed", "nn", "optim", "data", "methods", "config", "eval", "train", "cli", "selfsup")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> Dict[str, Path]:
    return {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imported_modules(name: str, path: Path, known: Dict[str, Path]) -> Set[str]:
    """The files of the package that ``path`` imports: ``from a import b`` names the module a.b when it is one (a
    submodule), else the module or package face a."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: Set[str] = set()

    def resolve(dotted: str) -> None:
        while dotted and dotted not in known:
            dotted = dotted.rpartition(".")[0]
        if dotted and dotted != name:
            found.add(dotted)

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                resolve(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                resolve(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return {target for target in found if target == "selfsup" or target.startswith("selfsup.")}


def graph() -> Dict[str, Set[str]]:
    known = modules()
    return {name: imported_modules(name, path, known) for name, path in known.items()}


def layer(name: str) -> int:
    parts = name.split(".")
    return LAYERS.index(parts[1] if len(parts) > 1 else "selfsup")


def cycles(edges: Dict[str, Set[str]]) -> List[List[str]]:
    """One cycle per strongly connected group of files (Tarjan), as the files it holds."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    found: List[List[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(edges.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1 or node in edges.get(node, ()):
                found.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_the_reader_sees_type_checking_and_function_level_imports(tmp_path):
    """The rules below would pass vacuously if the reader missed imports; it reads every form."""
    known = {"selfsup.a": tmp_path / "a.py", "selfsup.b": tmp_path / "b.py", "selfsup.c": tmp_path / "c",
             "selfsup.c.d": tmp_path / "c" / "d.py"}
    source = ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from selfsup.b import thing\n"
              "def f():\n    import selfsup.c.d\nfrom selfsup.c import d, other\n")
    (tmp_path / "a.py").write_text(source)
    assert imported_modules("selfsup.a", tmp_path / "a.py", known) == {"selfsup.b", "selfsup.c", "selfsup.c.d"}
    assert cycles({"x": {"y"}, "y": {"z"}, "z": {"x"}, "w": {"x"}}) == [["x", "y", "z"]]


def test_no_file_imports_itself_back():
    found = cycles(graph())
    assert not found, "import cycles between files: " + "; ".join(" <-> ".join(group) for group in found)


def test_no_file_imports_a_layer_above_its_own():
    upward: List[Tuple[str, str]] = [(name, target) for name, targets in graph().items() for target in targets
                                     if layer(target) > layer(name)]
    assert not upward, "upward imports: " + ", ".join(f"{a} -> {b}" for a, b in sorted(upward))


def test_every_folder_of_the_package_is_a_layer_and_the_docs_state_the_order():
    folders = {path.name for path in PACKAGE.iterdir() if path.is_dir() and (path / "__init__.py").exists()}
    files = {path.stem for path in PACKAGE.glob("*.py") if path.name != "__init__.py"}
    assert folders | files == set(LAYERS) - {"selfsup"}
    text = (ROOT / "docs" / "architecture.md").read_text()
    assert " -> ".join(LAYERS[:-1]) in text


def test_the_training_module_names_no_method_machinery_and_nothing_outside_methods_compares_loss_type():
    module = (PACKAGE / "train" / "module.py").read_text()
    assert not re.search(r"queue|prototype|memory", module, flags=re.IGNORECASE)
    for path in PACKAGE.rglob("*.py"):
        if "methods" not in path.parts:
            assert not re.search(r"loss_type\s*(==|!=|in\b)", path.read_text()), path
