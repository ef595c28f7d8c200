"""The package's import graph: no cycles, and every import points down the layers of docs/design.md.

Imports are read from the source (module level, inside functions, and ``importlib.import_module``
calls with a literal or f-string name), not from ``sys.modules``, so lazy imports count too.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "focusformer_fast"
DESIGN = ROOT / "docs" / "design.md"


def package_modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> source file, for every module of ``focusformer_fast``."""
    out = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules that module ``name`` (source ``path``) imports, lazily or not."""
    package = name if _is_package(path) else name.rpartition(".")[0]
    found: set[str] = set()

    def add(target: str) -> None:
        if target in modules:
            found.add(target)

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                if f"{source}.{alias.name}" in modules:
                    add(f"{source}.{alias.name}")
                else:
                    add(source)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module":
            arg = node.args[0] if node.args else None
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                add(arg.value)
            elif isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
                prefix = arg.values[0].value
                found.update(m for m in modules if m.startswith(prefix) and m != prefix.rstrip("."))
    found.discard(name)
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    modules = package_modules(root)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle ``[a, b, ..., a]`` of ``graph``, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def design_layers() -> dict[str, int]:
    """Module (or package) name -> layer number, from the table under "## Layers" in docs/design.md."""
    text = DESIGN.read_text()
    section = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
    layers = {}
    for row in re.findall(r"^\|\s*(\d+)\s*\|[^|]*\|([^|]*)\|", section, re.MULTILINE):
        for mod in re.findall(r"`([\w.]+)`", row[1]):
            layers[PACKAGE if mod == "__init__" else f"{PACKAGE}.{mod}"] = int(row[0])
    return layers


def layer_of(module: str, layers: dict[str, int]) -> int | None:
    """The layer of ``module``: its own entry, else its closest listed subpackage's."""
    parts = module.split(".")
    for i in range(len(parts), 1, -1):
        if ".".join(parts[:i]) in layers:
            return layers[".".join(parts[:i])]
    return layers.get(module)


def test_the_package_has_no_import_cycle():
    assert find_cycle(import_graph(ROOT)) is None


def test_a_lazy_import_cycle_is_found(tmp_path):
    pkg = tmp_path / PACKAGE
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "low.py").write_text("def f():\n    from .high import g\n    return g\n")
    (pkg / "high.py").write_text("from . import low\n\ndef g():\n    return low\n")
    (pkg / "sub").mkdir()
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "k.py").write_text("import importlib\nimportlib.import_module(f'focusformer_fast.{0}')\n")
    graph = import_graph(tmp_path)
    assert graph[f"{PACKAGE}.sub.k"] == {f"{PACKAGE}.low", f"{PACKAGE}.high", f"{PACKAGE}.sub"}
    assert find_cycle(graph) in ([f"{PACKAGE}.high", f"{PACKAGE}.low", f"{PACKAGE}.high"],
                                 [f"{PACKAGE}.low", f"{PACKAGE}.high", f"{PACKAGE}.low"])


def test_every_module_has_a_layer_and_imports_only_down():
    layers = design_layers()
    graph = import_graph(ROOT)
    unplaced = [m for m in graph if layer_of(m, layers) is None]
    assert not unplaced, f"modules docs/design.md does not place in a layer: {unplaced}"
    upward = [f"{m} (layer {layer_of(m, layers)}) imports {t} (layer {layer_of(t, layers)})"
              for m, targets in graph.items() for t in targets if layer_of(t, layers) > layer_of(m, layers)]
    assert not upward, "\n".join(upward)


def test_design_names_only_modules_and_files_that_exist():
    modules = package_modules(ROOT)
    missing = [m for m in design_layers() if m not in modules]
    assert not missing, f"docs/design.md names modules that do not exist: {missing}"
    for doc in (DESIGN, ROOT / "docs" / "method.md"):
        paths = re.findall(r"`([\w.-]+/[\w./-]+)`", doc.read_text())
        absent = [p for p in paths if not (ROOT / p).exists()]
        assert not absent, f"{doc.name} names files that do not exist: {absent}"


@pytest.mark.parametrize("doc", ["README.md", "docs/design.md", "docs/method.md"])
def test_docs_point_at_nothing_outside_the_repository(doc):
    text = (ROOT / doc).read_text()
    assert not re.search(r"\.\./shared|METHOD\.md|DESIGN\.md|ANCHORS\.md|TOOLCHAIN\.md", text)
