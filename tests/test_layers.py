"""The layer table of ARCHITECTURE.md, held by reading every module's imports.

Every `import` and `from ... import` in lmstack/**/*.py is read with `ast`: at module level,
inside functions (a lazy import is still an import), under `if TYPE_CHECKING:` and inside
`try:`, plus `importlib.import_module("...")` with a literal name. Relative imports are resolved
against the importing module. An import passes when the imported package sits on a lower layer,
is the importer's own package, or is a sideways edge the table names (`ALLOWED_SIDEWAYS`).

    python tests/test_layers.py     # prints the layer table and every offending import
"""

from __future__ import annotations

import ast
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lmstack"

# ARCHITECTURE.md's table. Ground level (0): errors and atomic, which everyone may import, the
# package's own __init__ (a version string) and configs/ (TOML files, no Python). quickstart.py
# is the `make run` job: it drives every layer as the CLI does, so it sits beside cli.py.
LAYERS = {
    "lmstack": 0, "lmstack.errors": 0, "lmstack.atomic": 0, "lmstack.configs": 0,
    "lmstack.tokenizer": 1,
    "lmstack.data": 2,
    "lmstack.models": 3,
    "lmstack.train": 4, "lmstack.eval": 4,
    "lmstack.infer": 5,
    "lmstack.interop": 6, "lmstack.posttrain": 6, "lmstack.retrieval": 6,
    "lmstack.program": 6,   # the public name of lmstack/infer/program/: a re-export
    "lmstack.serve": 7, "lmstack.apps": 7,
    "lmstack.cli": 8, "lmstack.quickstart": 8,
}
# Same-layer imports the table allows: apps use serve's keys, limits and protocol helpers; the
# CLI's `run` subcommand calls the quickstart; posttrain's PEFT adapters use interop's Hugging
# Face name table and config mapping (one place for each fact; interop imports no posttrain).
ALLOWED_SIDEWAYS = {("lmstack.apps", "lmstack.serve"), ("lmstack.cli", "lmstack.quickstart"),
                    ("lmstack.posttrain", "lmstack.interop")}
# Plain-Python layers: a learner reads them without PyTorch.
NO_TORCH = {"lmstack.tokenizer", "lmstack.data"}


@dataclass(frozen=True)
class Import:
    module: str   # the importing module, dotted
    line: int
    target: str   # the imported module, dotted and absolute


def module_name(path: Path, root: Path = ROOT) -> str:
    """lmstack/infer/engine.py -> lmstack.infer.engine; a package's __init__ is the package."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(module: str, is_package: bool, level: int, name: str | None) -> str:
    """The absolute name of `from {'.' * level}{name} import ...` written in `module`."""
    if level == 0:
        return name or ""
    base = module.split(".")
    base = base if is_package else base[:-1]   # a module's package is its parent
    base = base[:len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def imports_of(source: str, module: str, is_package: bool = False,
               known: set[str] = frozenset()) -> list[Import]:
    """Every import in `source`, wherever it stands (functions, classes, try, if).

    `from pkg import x` names the submodule pkg.x when `known` holds it, else pkg itself.

    >>> [i.target for i in imports_of("def f():\\n    from ..infer import engine", "lmstack.models.gpt")]
    ['lmstack.infer']
    """
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [Import(module, node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, is_package, node.level, node.module)
            for a in node.names:
                sub = f"{base}.{a.name}"
                found.append(Import(module, node.lineno, sub if sub in known else base))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            found.append(Import(module, node.lineno, node.args[0].value))
    return found


def unit(module: str) -> str | None:
    """The row of LAYERS a module belongs to (its longest prefix; `lmstack` itself only for the
    package's __init__), None when it has none.

    >>> unit("lmstack.infer.engine"), unit("lmstack"), unit("lmstack.nowhere"), unit("torch")
    ('lmstack.infer', 'lmstack', None, None)
    """
    if module == "lmstack":
        return module
    parts = module.split(".")
    for n in range(len(parts), 1, -1):
        if ".".join(parts[:n]) in LAYERS:
            return ".".join(parts[:n])
    return None


def violation(imp: Import) -> str | None:
    """Why `imp` runs against the table, or None when it is allowed."""
    src, dst = unit(imp.module), unit(imp.target)
    top = imp.target.split(".")[0]
    if src in NO_TORCH and top == "torch":
        return f"{src} (layer {LAYERS[src]}) must not import torch"
    if dst is None:
        if top == "lmstack":
            return f"{imp.target} is not in the layer table: add its package to LAYERS"
        return None   # a third-party or standard-library module
    if src == dst or LAYERS[dst] == 0 or (src, dst) in ALLOWED_SIDEWAYS:
        return None
    if LAYERS[dst] > LAYERS[src]:
        return f"layer {LAYERS[src]} ({src}) -> layer {LAYERS[dst]} ({dst}): upward"
    if LAYERS[dst] == LAYERS[src]:
        return f"layer {LAYERS[src]} ({src}) -> layer {LAYERS[dst]} ({dst}): sideways"
    return None


def scan(package: Path = PACKAGE) -> tuple[dict[str, Path], list[Import]]:
    """Every module under `package` and every import they make."""
    files = {module_name(p): p for p in sorted(package.rglob("*.py"))}
    known = set(files)
    imports = []
    for name, path in files.items():
        imports += imports_of(path.read_text(), name, path.name == "__init__.py", known)
    return files, imports


def offences(files: dict[str, Path], imports: list[Import], root: Path = ROOT) -> list[str]:
    """One line per offending import: file:line: importer -> imported: why."""
    lines = []
    for imp in imports:
        why = violation(imp)
        if why:
            path = files[imp.module].relative_to(root)
            lines.append(f"{path}:{imp.line}: {imp.module} -> {imp.target}: {why}")
    return lines


def cycles(imports: list[Import]) -> list[list[str]]:
    """Import cycles between lmstack modules (strongly connected components of 2 or more).

    A package's __init__ that re-exports its submodules is left out of the graph: importing
    `lmstack.infer` to reach `lmstack.infer.engine` is the package's door, not a dependency loop.
    """
    graph: dict[str, set[str]] = {}
    for i in imports:
        if i.target.startswith("lmstack.") and i.target != i.module:
            graph.setdefault(i.module, set()).add(i.target)
    inits = {m for m in graph if any(t.startswith(m + ".") for t in graph[m])}
    graph = {m: {t for t in ts if t not in inits} for m, ts in graph.items() if m not in inits}
    return [c for c in _components(graph) if len(c) > 1]


def _components(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components, iteratively (no recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        m = stack.pop()
                        on_stack.discard(m)
                        comp.append(m)
                        if m == node:
                            break
                    out.append(sorted(comp))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph.get(child, ())))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return out


def table(files: dict[str, Path], imports: list[Import]) -> str:
    """The layer table as markdown: modules per layer and lmstack imports checked."""
    modules = Counter(unit(m) for m in files)
    checked = Counter(unit(i.module) for i in imports if i.target.split(".")[0] == "lmstack")
    rows = ["| layer | package | modules | lmstack imports checked |", "|---|---|---|---|"]
    for name, layer in sorted(LAYERS.items(), key=lambda kv: (kv[1], kv[0])):
        if modules[name]:
            rows.append(f"| {layer} | `{name}` | {modules[name]} | {checked[name]} |")
    rows.append(f"| | total | {sum(modules.values())} | {sum(checked.values())} "
                f"(of {len(imports)} imports) |")
    return "\n".join(rows)


# ---- the tests ------------------------------------------------------------------------------


def test_every_module_has_a_layer():
    files, _ = scan()
    assert [m for m in files if unit(m) is None] == []


def test_no_import_runs_against_the_layer_table():
    files, imports = scan()
    assert len(files) > 50 and len(imports) > 500   # the scan read the package
    bad = offences(files, imports)
    assert not bad, "imports against ARCHITECTURE.md's layer table:\n" + "\n".join(bad)


def test_no_import_cycles_between_modules():
    _, imports = scan()
    found = cycles(imports)
    assert not found, "import cycles (lazy imports included):\n" + "\n".join(
        " <-> ".join(c) for c in found)


def test_negative_controls_are_flagged(tmp_path):
    """The checker sees what it must: lazy, relative, TYPE_CHECKING, import_module, torch."""
    pkg = tmp_path / "lmstack"
    (pkg / "models").mkdir(parents=True)
    (pkg / "tokenizer").mkdir()
    (pkg / "infer").mkdir()
    (pkg / "models" / "gpt.py").write_text(
        "import torch\n"                                   # fine: models may use torch
        "from lmstack.tokenizer import Tokenizer\n"        # fine: downward
        "def load():\n"
        "    from ..infer.engine import Engine\n"          # lazy + relative + upward
        "    return Engine\n")
    (pkg / "models" / "ring.py").write_text("from lmstack.models import gpt\n")
    (pkg / "models" / "__init__.py").write_text("")
    (pkg / "tokenizer" / "bpe.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import torch.nn\n"        # no torch in the tokenizer
        "import importlib\n"
        "x = importlib.import_module('lmstack.data.sources')\n")   # upward, by name
    (pkg / "infer" / "engine.py").write_text("import lmstack.train.loop\nimport lmstack.nowhere\n")
    (pkg / "infer" / "a.py").write_text("def f():\n    from lmstack.infer import b\n")
    (pkg / "infer" / "b.py").write_text("from lmstack.infer.a import f\n")
    files = {module_name(p, tmp_path): p for p in pkg.rglob("*.py")}
    imports = []
    for name, path in files.items():
        imports += imports_of(path.read_text(), name, path.name == "__init__.py", set(files))
    bad = offences(files, imports, tmp_path)
    assert len(bad) == 4, bad
    assert any("gpt.py:4" in b and "layer 3 (lmstack.models) -> layer 5 (lmstack.infer)" in b for b in bad)
    assert any("bpe.py:3" in b and "must not import torch" in b for b in bad)
    assert any("bpe.py:5" in b and "-> layer 2 (lmstack.data): upward" in b for b in bad)
    assert any("lmstack.nowhere is not in the layer table" in b for b in bad)
    assert not any("train" in b for b in bad)          # infer -> train is downward: allowed
    assert cycles(imports) == [["lmstack.infer.a", "lmstack.infer.b"]]


def test_sideways_is_flagged_and_named_exceptions_pass():
    sideways = Import("lmstack.eval.perplexity", 1, "lmstack.train.metrics")
    assert "sideways" in violation(sideways)
    assert violation(Import("lmstack.apps.db", 1, "lmstack.serve.security")) is None
    assert "sideways" in violation(Import("lmstack.serve.app", 1, "lmstack.apps.db"))  # not back


if __name__ == "__main__":
    files, imports = scan()
    print(table(files, imports))
    for line in offences(files, imports):
        print(line)
    for c in cycles(imports):
        print("cycle:", " <-> ".join(c))
    sys.exit(0)
