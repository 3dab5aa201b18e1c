"""Code-shape counts for the project's packages, each with its target (issue 22).

Counts, for ``pipelines``, ``validation``, ``registry``, ``serving``, ``ops`` and ``dags``
(not tests, not benchmarks):

* **long modules**: modules over 500 lines (target 0);
* **long functions**: functions over 60 lines whose docstring gives no reason, i.e. has no
  line starting ``Long because:`` (target 0). A function that must stay long says why::

      def plan(...):
          \"\"\"The rollout plan.

          Long because: one table of steps reads better than ten helpers.
          \"\"\"

* **private imports**: imports of another top-level package's private names,
  ``from x import _y`` or ``x._y`` on an imported module (target 0); imports of a private
  name from another module of the same package are listed too, but not counted;
* **import cycles**: groups of modules that import each other, directly or through others
  (strongly connected components of the import graph built by ``grimp``; target 0);
* **repeated code**: the pairs counted by the ``duplicates`` command (``duplicates --most
  200 --seconds 120`` in the repository root) when it is on PATH (target at most 40).

``python benchmarks/code_shape.py [--json] [--check]``: prints a table (or JSON); exits 0
unless ``--check`` is given and a target is missed.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("pipelines", "validation", "registry", "serving", "ops", "dags")
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60
REASON_PREFIX = "Long because:"
DUPLICATES_COMMAND = ["duplicates", "--most", "200", "--seconds", "120"]
TARGETS = {
    "long_modules": ("== 0", 0),
    "long_functions": ("== 0", 0),
    "private_imports": ("== 0", 0),
    "import_cycles": ("== 0", 0),
    "repeated_code_pairs": ("<= 40", 40),
}


@dataclass
class Module:
    """One source file: its dotted name, top-level package and path."""

    name: str
    package: str
    path: Path


@dataclass
class Shape:
    """The counts' details: one list of findings per count."""

    long_modules: list[str] = field(default_factory=list)
    long_functions: list[str] = field(default_factory=list)
    private_imports: list[str] = field(default_factory=list)
    private_imports_same_package: list[str] = field(default_factory=list)
    import_cycles: list[list[str]] = field(default_factory=list)
    repeated_code_pairs: int | None = None


def modules(root: Path, packages: list[str]) -> list[Module]:
    """Every ``.py`` file of the packages. A folder without ``__init__.py`` (``dags``) is a
    search-path entry: its files are top-level modules, its sub-folders packages."""
    out = []
    for package in packages:
        base = root / package
        if not base.is_dir():
            continue
        prefix = [package] if (base / "__init__.py").exists() else []
        for path in sorted(base.rglob("*.py")):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if "__pycache__" in parts:
                continue
            if parts[-1] == "__init__":
                parts = parts[:-1]
            name = ".".join(prefix + parts) or package
            out.append(Module(name, package, path))
    return out


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _has_reason(node: ast.AST) -> bool:
    doc = ast.get_docstring(node) or ""  # type: ignore[arg-type]
    return any(line.strip().startswith(REASON_PREFIX) for line in doc.splitlines())


def _long_functions(module: Module, tree: ast.AST) -> list[str]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            if length > MAX_FUNCTION_LINES and not _has_reason(node):
                out.append(f"{module.path}:{node.lineno} {node.name} ({length} lines)")
    return out


def _absolute(module: Module, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    is_package = module.path.name == "__init__.py"
    parts = module.name.split(".")
    base = parts if is_package else parts[:-1]
    base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
    return ".".join(base + ([node.module] if node.module else []))


def _private_imports(
    module: Module, tree: ast.AST, owner: dict[str, str]
) -> list[tuple[str, str, int]]:
    """(imported module, private name, line) for each private name taken from a project
    module other than this one."""
    found: list[tuple[str, str, int]] = []
    aliases: dict[str, str] = {}  # local name -> project module
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in owner:
                    local = alias.asname or alias.name
                    aliases[local] = alias.name
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(module, node)
            for alias in node.names:
                full = f"{source}.{alias.name}"
                if full in owner:  # a module imported from its package
                    aliases[alias.asname or alias.name] = full
                elif _is_private(alias.name) and source in owner:
                    found.append((source, alias.name, node.lineno))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _is_private(node.attr):
            dotted = _dotted(node.value)
            if dotted in aliases:
                found.append((aliases[dotted], node.attr, node.lineno))
    return [f for f in found if f[0] != module.name]


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        head = _dotted(node.value)
        return f"{head}.{node.attr}" if head else None
    return None


def import_cycles(root: Path, packages: list[str]) -> list[list[str]]:
    """Groups of modules that import each other (strongly connected components, size > 1)."""
    import grimp

    names, paths = [], []
    for package in packages:
        base = root / package
        if (base / "__init__.py").exists():
            names.append(package)
            paths.append(str(root))
        elif base.is_dir():  # a search-path folder (dags): its sub-packages
            names += [p.name for p in sorted(base.iterdir()) if (p / "__init__.py").exists()]
            paths.append(str(base))
    if not names:
        return []
    sys.path[:0] = [p for p in dict.fromkeys(paths) if p not in sys.path]
    graph = grimp.build_graph(*names, cache_dir=None)
    edges = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    return [sorted(c) for c in _components(edges) if len(c) > 1]


def _components(edges: dict[str, list[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components, iteratively (no recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(edges.get(start, ())))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(edges.get(child, ()))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    item = stack.pop()
                    on_stack.discard(item)
                    group.append(item)
                    if item == node:
                        break
                out.append(group)
    return sorted(out)


def repeated_code_pairs(root: Path) -> int | None:
    """The pair count of ``duplicates`` (its first line), or None when it is not on PATH."""
    if shutil.which(DUPLICATES_COMMAND[0]) is None:
        return None
    done = subprocess.run(
        DUPLICATES_COMMAND, cwd=root, capture_output=True, text=True, timeout=600, check=False
    )
    first = (done.stdout.splitlines() or [""])[0]
    if first.startswith("no duplicates"):
        return 0
    match = re.match(r"\s*(\d+) pairs?", first)
    if match is None:
        raise RuntimeError(f"cannot read the duplicates count from {first!r}")
    return int(match.group(1))


def measure(root: Path, packages: list[str], duplicates: bool = True) -> Shape:
    """All counts for the packages under ``root``."""
    shape = Shape()
    found = modules(root, packages)
    owner = {m.name: m.package for m in found}
    for module in found:
        text = module.path.read_text(encoding="utf-8")
        lines = len(text.splitlines())
        if lines > MAX_MODULE_LINES:
            shape.long_modules.append(f"{module.path} ({lines} lines)")
        tree = ast.parse(text, filename=str(module.path))
        shape.long_functions += _long_functions(module, tree)
        for source, name, line in _private_imports(module, tree, owner):
            where = f"{module.path}:{line} {source}.{name}"
            if owner[source] != module.package:
                shape.private_imports.append(where)
            else:
                shape.private_imports_same_package.append(where)
    shape.import_cycles = import_cycles(root, packages)
    shape.repeated_code_pairs = repeated_code_pairs(root) if duplicates else None
    return shape


def report(shape: Shape, root: Path) -> dict[str, Any]:
    """Each count with its target and whether it is met; the details after."""
    counts = {
        "long_modules": len(shape.long_modules),
        "long_functions": len(shape.long_functions),
        "private_imports": len(shape.private_imports),
        "import_cycles": len(shape.import_cycles),
        "repeated_code_pairs": shape.repeated_code_pairs,
    }
    rows = {}
    for name, count in counts.items():
        target, limit = TARGETS[name]
        status = "n/a" if count is None else ("met" if count <= limit else "missed")
        rows[name] = {"count": count, "target": target, "status": status}

    def rel(items: list[str]) -> list[str]:
        return [item.replace(f"{root}/", "") for item in items]

    details = {
        "long_modules": rel(shape.long_modules),
        "long_functions": rel(shape.long_functions),
        "private_imports": rel(shape.private_imports),
        "private_imports_same_package": rel(shape.private_imports_same_package),
        "import_cycles": shape.import_cycles,
    }
    return {"counts": rows, "details": details}


def print_table(result: dict[str, Any], details: bool) -> None:
    print(f"{'count':<22}{'value':>8}  {'target':<8}status")
    for name, row in result["counts"].items():
        value = "n/a" if row["count"] is None else str(row["count"])
        print(f"{name:<22}{value:>8}  {row['target']:<8}{row['status']}")
    if result["counts"]["repeated_code_pairs"]["count"] is None:
        print("(repeated code: the duplicates command is not available)")
    if not details:
        return
    for name, items in result["details"].items():
        if items:
            print(f"\n{name}:")
            for item in items:
                print(f"  {' <-> '.join(item) if isinstance(item, list) else item}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--details", action="store_true", help="list every finding")
    parser.add_argument("--root", type=Path, default=ROOT, help="the repository root")
    parser.add_argument("--packages", nargs="+", default=list(PACKAGES))
    parser.add_argument("--no-duplicates", action="store_true", help="skip the duplicates command")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    result = report(measure(root, args.packages, not args.no_duplicates), root)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result, args.details)
    missed = any(row["status"] == "missed" for row in result["counts"].values())
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
