"""The package's layout rules (docs/architecture.md), checked on its source: every import, function-local ones too.

- no import circle among the package's modules;
- no private (underscore) name imported from another module;
- ``spec/`` and ``graph/`` import nothing above them; ``spec/`` imports neither onnx nor numpy;
- nothing outside ``plugin/`` imports pytest.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "pytest_quantacc"
# What each foundation layer may import from the package (besides itself).
BELOW = {"spec": {"errors"}, "graph": {"errors", "samples"}}


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, root: Path = PACKAGE) -> list[tuple[str, str, int]]:
    """(imported module, imported name or "", line) for every import statement of the file."""
    mod = module_name(path, root)
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, "", node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out += [(target, a.name, node.lineno) for a in node.names]
    return out


def internal_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> package modules it imports. A name that is itself a module counts as that module; package
    ``__init__`` modules are left out (they hold no code the modules need)."""
    files = {module_name(p, root): p for p in root.rglob("*.py")}
    modules = {m for m, p in files.items() if p.name != "__init__.py"}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for m in modules:
        for target, name, _ in imports(files[m], root):
            dest = f"{target}.{name}" if f"{target}.{name}" in modules else target
            if dest in modules and dest != m:
                graph[m].add(dest)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (or a module importing itself)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph.get(v, ()):
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_finds_a_planted_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_import_parser_sees_function_local_and_relative_imports(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "top.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "a.py").write_text("def f():\n    from ..top import _hidden\n")
    (pkg / "sub" / "b.py").write_text("from . import a\n")
    assert imports(pkg / "sub" / "a.py", pkg) == [("pkg.top", "_hidden", 2)]
    assert internal_graph(pkg) == {"pkg.top": set(), "pkg.sub.a": {"pkg.top"}, "pkg.sub.b": {"pkg.sub.a"}}


def test_no_import_circle():
    assert cycles(internal_graph()) == []


def test_no_private_name_imported_across_modules():
    bad = [f"{p.relative_to(PACKAGE.parent)}:{line}: {target}.{name}"
           for p in PACKAGE.rglob("*.py") for target, name, line in imports(p)
           if target.startswith("pytest_quantacc") and name.startswith("_") and name != "__version__"]
    assert bad == []


def test_foundation_layers_import_nothing_above_them():
    bad = []
    for layer, allowed in BELOW.items():
        for p in (PACKAGE / layer).rglob("*.py"):
            for target, name, line in imports(p):
                if target == "pytest_quantacc" and name == "__version__":
                    continue
                top = target.split(".")[1] if target.startswith("pytest_quantacc.") else None
                if target.startswith("pytest_quantacc") and top not in allowed | {layer}:
                    bad.append(f"{p.relative_to(PACKAGE.parent)}:{line}: {target}")
                if layer == "spec" and target.split(".")[0] in ("onnx", "numpy", "onnxruntime"):
                    bad.append(f"{p.relative_to(PACKAGE.parent)}:{line}: {target}")
    assert bad == []


def test_only_the_plugin_imports_pytest():
    bad = [f"{p.relative_to(PACKAGE.parent)}:{line}" for p in PACKAGE.rglob("*.py")
           if "plugin" not in p.relative_to(PACKAGE).parts
           for target, _, line in imports(p) if target.split(".")[0] in ("pytest", "_pytest")]
    assert bad == []


def test_documented_import_paths_resolve():
    """README and docs/diagnosis.md import these by name; the layout may move modules, not these names."""
    import pytest_quantacc
    from pytest_quantacc import remedy

    for name in ("load_spec", "evaluate", "evaluate_model", "ModelResult", "ModelSpec", "Spec", "QuantaccInputError"):
        assert callable(getattr(pytest_quantacc, name)), name
    assert callable(remedy.deepen) and callable(remedy.patch_yaml) and callable(remedy.write_fix)
