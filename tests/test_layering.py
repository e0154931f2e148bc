"""The package layout tells the pipeline, and no module reaches backwards: a stage imports only
stages before it (data -> generators -> classifiers -> features -> selection -> metrics ->
downstream -> report -> pipeline -> compare -> study -> cli; config, files, runtime and distributed are below everything)."""

from __future__ import annotations

import ast
from pathlib import Path

import synthmed

ORDER = ["synthmed", "config", "files", "runtime", "distributed", "data", "generators", "classifiers", "features", "selection",
         "metrics", "downstream", "report", "pipeline", "compare", "study", "cli", "__main__"]
ROOT = Path(synthmed.__file__).parent


def _stage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "synthmed"


def _imports(path: Path, module: str) -> list[str]:
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)]
                out.append(".".join(base + ([node.module] if node.module else [])))
            elif node.module:
                out.append(node.module)
    return [m for m in out if m == "synthmed" or m.startswith("synthmed.")]


def backward_imports() -> list[str]:
    bad = []
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        here = _stage(module)
        assert here in ORDER, f"{module}: stage '{here}' is not in the layering ORDER; place it there"
        for target in _imports(path, module):
            if ORDER.index(_stage(target)) > ORDER.index(here):
                bad.append(f"{module} imports {target}")
    return bad


def test_no_module_imports_a_later_stage():
    assert backward_imports() == []


def test_the_checker_sees_relative_and_lazy_imports(tmp_path, monkeypatch):
    # a planted backward import (lazy, relative) inside a copy of one stage must be found
    pkg = tmp_path / "synthmed"
    (pkg / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "data" / "__init__.py").write_text("")
    (pkg / "data" / "leak.py").write_text("def f():\n    from ..report import html\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", pkg)
    assert backward_imports() == ["synthmed.data.leak imports synthmed.report"]
