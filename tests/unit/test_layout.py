"""The layout's rules, read from the source: imports flow one way, and each module says its job."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STORAGE_LIBRARIES = {
    "lance",
    "lancedb",
    "lance_ray",
    "pyarrow.parquet",
    "pyarrow.json",
    "pyarrow.dataset",
    "s3fs",
    "fsspec",
    "boto3",
    "botocore",
}


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_the_packages_hold_modules():  # the rules below would pass on an empty or moved tree
    assert len(_modules("connectors")) >= 10 and len(_modules("pipelines")) >= 20 and len(_modules("jobs")) >= 5


def test_connectors_import_nothing_from_pipelines_or_jobs():
    arrows = {
        f"{p.relative_to(ROOT)} -> {name}"
        for p in _modules("connectors")
        for name in _imports(p)
        if name.split(".")[0] in ("pipelines", "jobs")
    }
    assert not arrows, sorted(arrows)


def test_only_connectors_open_parquet_lance_or_object_storage():
    direct = {
        f"{p.relative_to(ROOT)} -> {name}"
        for package in ("pipelines", "jobs")
        for p in _modules(package)
        for name in _imports(p)
        if name in STORAGE_LIBRARIES or name.split(".")[0] in STORAGE_LIBRARIES - {"pyarrow"}
    }
    assert not direct, sorted(direct)


def test_pipelines_never_import_the_jobs():
    arrows = {
        f"{p.relative_to(ROOT)} -> {name}"
        for p in _modules("pipelines")
        for name in _imports(p)
        if name.split(".")[0] == "jobs"
    }
    assert not arrows, sorted(arrows)


def test_every_module_states_its_job_in_its_first_docstring_line():
    missing = [
        str(p.relative_to(ROOT))
        for package in ("connectors", "pipelines", "jobs")
        for p in _modules(package)
        if not (ast.get_docstring(ast.parse(p.read_text())) or "").strip()
    ]
    assert not missing, missing


MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
# pipelines/config.py is the declarative configuration: one pydantic model per config section, each
# field with its default and docs. Its length is the length of the config's reference, not of logic.
LONG_MODULES_ALLOWED = {"pipelines/config.py"}


def test_no_module_in_pipelines_is_over_400_lines():
    long = {
        str(p.relative_to(ROOT)): n
        for p in _modules("pipelines")
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
        and str(p.relative_to(ROOT)) not in LONG_MODULES_ALLOWED
    }
    assert not long, f"modules over {MAX_MODULE_LINES} lines (split them by job): {long}"


def test_no_function_is_over_60_lines():
    long = [
        f"{p.relative_to(ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for package in ("pipelines", "connectors", "jobs", "infra", "scripts")
        for p in _modules(package)
        for node in ast.walk(ast.parse(p.read_text()))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines (split them into named steps): {long}"
