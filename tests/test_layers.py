"""The package's layers import one way (docs/architecture.md): every `import` of vlm_resampler
code, at module level or deferred into a function, goes to the same layer or one below, and no two
subpackages import each other, directly or round a longer loop. Read from the AST, so a deferred
import cannot hide an upward edge."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "vlm_resampler"

# Bottom first. A unit is a subpackage (vlm_resampler/<name>/) or a top-level module
# (vlm_resampler/<name>.py); "" is the package's own __init__ (the public API: load_from_run).
LAYERS = [
    {"errors", "suggest", "version", "cache", "hub", "catalog", "guide_names", "ops", "ranges"},
    {"panorama", "resamplers"},
    {"data"},
    {"models"},
    {"runs"},
    {"training"},
    {"evaluation"},
    {"config"},
    {"inspection"},
    {"sweeps"},
    {"cli", ""},
]
RANK = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}


def unit_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import of vlm_resampler code in the file, wherever it stands."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            # `from vlm_resampler import x` imports the unit x when x is a subpackage or module.
            if name == "vlm_resampler":
                found += [
                    (node.lineno, f"vlm_resampler.{alias.name}")
                    for alias in node.names
                    if unit_of(f"vlm_resampler.{alias.name}") in RANK
                ]
            else:
                found.append((node.lineno, name))
    return [(line, name) for line, name in found if name == "vlm_resampler" or name.startswith("vlm_resampler.")]


def import_edges() -> list[tuple[str, str, str]]:
    """(importing unit, imported unit, 'file:line') for every import that crosses units."""
    edges = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = unit_of(module_name(path))
        for line, name in imported_modules(path):
            target = unit_of(name)
            if target != source:
                edges.append((source, target, f"{path.relative_to(PACKAGE.parent)}:{line}"))
    return edges


def test_every_unit_of_the_package_has_a_layer():
    units = {unit_of(module_name(p)) for p in PACKAGE.rglob("*.py")}
    assert units - set(RANK) == set(), "a new subpackage or module needs a layer here and in docs/architecture.md"
    assert set(RANK) - units == set(), "a layer names a unit that no longer exists"


def test_imports_go_down_the_layers():
    upward = [
        f"{where}: {source} (layer {RANK[source]}) imports {target} (layer {RANK[target]})"
        for source, target, where in import_edges()
        if RANK[target] > RANK[source]
    ]
    assert upward == []


def test_no_two_units_import_each_other_even_round_a_loop():
    graph: dict[str, set[str]] = {}
    for source, target, _ in import_edges():
        graph.setdefault(source, set()).add(target)

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            unit = todo.pop()
            for nxt in graph.get(unit, ()):
                if nxt == goal:
                    return True
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return False

    assert sorted(unit for unit in graph if reaches(unit, unit)) == []


def test_the_checker_sees_a_deferred_upward_import(tmp_path, monkeypatch):
    """The test above could pass by not looking: a planted import inside a function of a low
    layer must be found."""
    package = tmp_path / "vlm_resampler"
    (package / "data").mkdir(parents=True)
    (package / "sweeps").mkdir()
    (package / "__init__.py").write_text("")
    (package / "sweeps" / "__init__.py").write_text("")
    (package / "data" / "__init__.py").write_text("")
    (package / "data" / "x.py").write_text(
        "def f():\n    from ..sweeps import submit\n    from vlm_resampler import sweeps\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", package)
    assert [(s, t) for s, t, _ in import_edges()] == [("data", "sweeps"), ("data", "sweeps")]


MAX_MODULE_LINES = 400  # issue 14: one job per module
MAX_FUNCTION_LINES = 90  # "no function over ~80": the longest today is run_stage, 86


def oversized(package: Path) -> list[str]:
    found = []
    for path in sorted(package.rglob("*.py")):
        text = path.read_text()
        lines = len(text.splitlines())
        if lines > MAX_MODULE_LINES:
            found.append(f"{path.relative_to(package)}: {lines} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    found.append(f"{path.relative_to(package)}: {node.name} is {length} lines")
    return found


def test_no_module_or_function_outgrows_its_limit():
    assert oversized(PACKAGE) == []


def test_the_size_check_sees_a_long_module_and_a_long_function(tmp_path):
    (tmp_path / "long.py").write_text("x = 1\n" * (MAX_MODULE_LINES + 1))
    (tmp_path / "f.py").write_text("def f():\n" + "    x = 1\n" * MAX_FUNCTION_LINES)
    assert oversized(tmp_path) == [
        f"f.py: f is {MAX_FUNCTION_LINES + 1} lines",
        f"long.py: {MAX_MODULE_LINES + 1} lines",
    ]
