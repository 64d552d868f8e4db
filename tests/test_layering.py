"""The package's import graph has no circles: a module imports only modules below it.

Every import counts, also those inside functions and under TYPE_CHECKING: a lazy import
hides a circle from the interpreter, not from a reader (issue 21: analysis <-> pipeline <->
report, hookspecs <-> plugin and tflite context/fusion/qplan/rules were such circles).
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"nirc": ROOT / "nirc", "nirc.passes": ROOT / "passes", "nirc.targets": ROOT / "targets"}


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            if any(part in {"build", ".venv"} for part in path.relative_to(folder).parts):
                continue
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


def import_graph() -> nx.DiGraph:
    modules = _modules()
    graph = nx.DiGraph()
    for name, path in modules.items():
        graph.add_node(name)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    keep = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*keep, *([node.module] if node.module else [])])
                # `from pkg import sub` imports the submodule; `from mod import name` the module.
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            graph.add_edges_from((name, t) for t in targets if t in modules and t != name)
    return graph


def test_no_import_cycles() -> None:
    circles = [sorted(c) for c in nx.strongly_connected_components(import_graph()) if len(c) > 1]
    assert circles == []


def test_the_graph_sees_lazy_and_type_checking_imports() -> None:
    """The checker must be able to fail: it sees imports inside functions and TYPE_CHECKING blocks."""
    graph = import_graph()
    assert graph.has_edge("nirc.analysis", "nirc.lowering")  # inside with_layer_costs
    assert graph.has_edge("nirc.hookspecs", "nirc.registry")  # under TYPE_CHECKING
    assert graph.has_edge("nirc.pipeline", "nirc.analysis")


def test_passes_folder_holds_passes() -> None:
    """Public modules in passes/ are passes; substitute-blocks' rules are the block_rules package."""
    import importlib
    import inspect

    from nirc.pass_base import Pass

    for path in sorted((ROOT / "passes").glob("*.py")):
        if path.name.startswith("_"):
            continue  # __init__ and shared private helpers (_rewrite, _affine, ...)
        module = importlib.import_module(f"nirc.passes.{path.stem}")
        defined = [
            c for _, c in inspect.getmembers(module, inspect.isclass)
            if issubclass(c, Pass) and c.__module__ == module.__name__ and not inspect.isabstract(c)
        ]
        assert len(defined) == 1, f"passes/{path.name} defines {len(defined)} passes"
    assert not list((ROOT / "passes").glob("_rules_*.py")) and not (ROOT / "passes" / "_rule_base.py").exists()
    rules = {p.stem for p in (ROOT / "passes" / "block_rules").glob("*.py")}
    assert {"base", "kernels", "reparam", "stem"} <= rules
