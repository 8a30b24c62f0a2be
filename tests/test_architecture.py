"""The package's shape: imports point one way along the pipeline and there is no import cycle.

Stages, in order (a module may import its own stage and earlier ones, never a later one):
records → lm-eval hook → cases → engine → graph/faithfulness → store → analysis → report →
run orchestration (config, identity, distributed, pipeline, sweep, demo, zoo) → command line.
Imports inside functions count (a deferred import is still a dependency). The root package may
be imported by anyone for ``__version__`` only.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "harness_xai"

#: module prefix → stage (the longest matching prefix wins)
STAGES = {
    "harness_xai.errors": 0, "harness_xai.registry": 0, "harness_xai.records": 0,
    "harness_xai.checkpoints": 0,
    "harness_xai.lmeval_hook": 1,
    "harness_xai.contrast": 2,
    "harness_xai.lrp": 3,
    "harness_xai.graph": 4, "harness_xai.faithfulness": 4,
    "harness_xai.store": 5,
    "harness_xai.analysis": 6,
    "harness_xai.report": 7,
    "harness_xai.config": 8, "harness_xai.identity": 8, "harness_xai.distributed": 8,
    "harness_xai.pipeline": 8, "harness_xai.sweep": 8, "harness_xai.demo": 8,
    "harness_xai.zoo": 8,
    "harness_xai.cli": 9, "harness_xai.__main__": 9, "harness_xai": 9,
}


def _modules(package: Path) -> dict[str, Path]:
    out = {}
    for path in package.rglob("*.py"):
        if "migrations" in path.parts:
            continue
        name = ".".join(path.relative_to(package.parent).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[tuple[str, bool]]:
    """(imported module of the package, whether it is just ``__version__`` of the root)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [(a.name, False) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            names = [a.name for a in node.names]
            targets = [(f"{base}.{n}", False) for n in names]
            targets.append((base, base == "harness_xai" and names == ["__version__"]))
        else:
            continue
        for target, version_only in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name and target.startswith("harness_xai"):
                out.add((target, version_only))
    return out


def _stage(module: str) -> int:
    prefix = max((p for p in STAGES if module == p or module.startswith(p + ".")), key=len)
    return STAGES[prefix]


def _graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    modules = _modules(package)
    graph = {}
    for name, path in modules.items():
        deps = set()
        for target, version_only in _imports(name, path, set(modules)):
            if target == "harness_xai" and version_only:
                continue
            if name.startswith(target + "."):  # a module importing its own package
                continue
            deps.add(target)
        graph[name] = deps
    return graph


def test_imports_point_one_way_along_the_pipeline():
    backwards = [f"{m} (stage {_stage(m)}) imports {d} (stage {_stage(d)})"
                 for m, deps in _graph().items() for d in deps if _stage(d) > _stage(m)]
    assert backwards == []


def test_no_import_cycles():
    assert _cycles(_graph()) == []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return cycles


def test_the_checks_see_a_backward_import_and_a_cycle(tmp_path):
    """The two checks above can fail: a fake package with a deferred store → report import and
    a records ↔ errors cycle is caught by both."""
    fake = tmp_path / "harness_xai"
    for rel, text in {"__init__.py": "", "errors.py": "from harness_xai import records\n",
                      "records.py": "import harness_xai.errors\n",
                      "store/__init__.py": "def f():\n    from harness_xai.report import x\n",
                      "report/__init__.py": "x = 1\n"}.items():
        (fake / rel).parent.mkdir(parents=True, exist_ok=True)
        (fake / rel).write_text(text)
    graph = _graph(fake)
    assert "harness_xai.report" in graph["harness_xai.store"]
    assert _stage("harness_xai.report") > _stage("harness_xai.store")
    assert _cycles(graph) == [["harness_xai.errors", "harness_xai.records"]]
