"""The architecture as a test: the import graph of `fmae` and `fmae_tui`, read with `ast` (nothing is
imported or run), holds to the layering of docs/architecture.md.

(a) no import cycle between modules; (b) no torch / timm / cv2 / facenet_pytorch import reachable at
module level from the app or from the torch-free layer (`TORCH_FREE`: queue, report, runs, config and
the rest the app reads, the CLI, the data tools); (c) no module imports another's private name (a
leading underscore, dunders aside; a private submodule is a module, not a name); (d) no source file of
`fmae` or `fmae_tui` over 500 lines; (e) imports (in functions too) go only down `LAYERS`, the diagram
of docs/architecture.md: nothing in `fmae` imports `fmae_tui`, the torch side sits above the run folder.
Each check lists every violation at once.

What counts as an edge A → B (A imports B):
- `import a.b` and `from a.b import n`: the module named, or `a.b.n` itself when `n` is a submodule.
- Imports inside functions are edges for (a): a lazy import still makes two modules know each other,
  and a loop through one breaks as soon as the import moves to the top. They are not edges for (b):
  lazy imports are exactly how the CLI and the data tools keep torch out of a fast start.
- `if TYPE_CHECKING:` imports never run, so they are no edges at all.
- Importing `a.b.c` runs `a/__init__.py` and `a/b/__init__.py` first. That counts for (b) (the code
  runs), but not for (a): a package whose `__init__` hands on its submodules' names would otherwise be
  a "cycle" with each of them.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("fmae", "fmae_tui")
HEAVY = {"torch", "timm", "cv2", "facenet_pytorch"}
MAX_LINES = 500
# The torch-free layer (besides all of fmae_tui): a module is in it when its name is or starts with one
# of these (`fmae.report` covers the report package and the older `fmae.report_*` modules): what the app
# reads (DESIGN.md's layering), the CLI (whose fast start is its lazy imports) and the data tools
# (docs/architecture.md: all of fmae/data/ outside fmae/data/torch/).
# `fmae.run` covers the run_* modules (run_spec, run_watch, run_cache, run_speed, run_diff, run_lock).
TORCH_FREE = ("fmae.queue", "fmae.queue_ops", "fmae.report", "fmae.runs", "fmae.config", "fmae.run_config",
              "fmae.registry", "fmae.gpus", "fmae.scheduler", "fmae.experiments", "fmae.cli", "fmae.data",
              "fmae.run", "fmae.study", "fmae.executors", "fmae.summary", "fmae.metric_catalogue", "fmae.metrics",
              "fmae.recipes", "fmae.folds", "fmae.model_specs", "fmae.notify", "fmae.file_tail", "fmae.errors",
              "fmae.atomic_write", "fmae.process_exit", "fmae.features")
TORCH_SIDE = ("fmae.data.torch",)
# The layers of docs/architecture.md's diagram, top to bottom: a module imports (in a function too) only
# its own layer or one below. A module belongs to the layer of its longest matching name (`fmae.data.torch`
# before `fmae.data`; the name `fmae` stands for the package's __init__ alone, in the base).
LAYERS = (
    ("app", ("fmae_tui",)),
    ("cli", ("fmae.cli", "fmae.__main__")),
    ("dispatch", ("fmae.queue_ops", "fmae.scheduler", "fmae.executors")),
    ("features", ("fmae.features",)),
    ("train", ("fmae.train",)),
    ("predict", ("fmae.predict", "fmae.visualize")),
    ("models", ("fmae.models",)),
    ("data.torch", ("fmae.data.torch",)),
    ("readers", ("fmae.report", "fmae.run_watch", "fmae.run_index", "fmae.run_cache", "fmae.run_diff", "fmae.run_speed",
                 "fmae.notify")),
    ("study", ("fmae.study", "fmae.experiments", "fmae.queue")),
    ("run", ("fmae.runs", "fmae.run_spec", "fmae.run_config", "fmae.summary", "fmae.metric_catalogue",
             "fmae.metrics", "fmae.run_lock", "fmae.gpus")),
    ("data", ("fmae.data",)),
    ("tables", ("fmae.config", "fmae.registry", "fmae.recipes", "fmae.folds", "fmae.model_specs")),
    ("base", ("fmae.errors", "fmae.atomic_write", "fmae.file_tail", "fmae.process_exit", "fmae.elapsed",
              "fmae")),
)


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the module it names (internal or external, dotted)
    names: tuple[str, ...]  # for `from target import names`; empty for `import target`
    line: int
    lazy: bool  # inside a function


def module_files(root: Path) -> dict[str, Path]:
    files = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            files[name] = path
    return files


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(module: str, path: Path) -> Iterator[Import]:
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(), str(path))

    def visit(node: ast.AST, lazy: bool) -> Iterator[Import]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for other in child.orelse:
                    yield from visit(other, lazy)
                continue
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield Import(module, alias.name, (), child.lineno, lazy)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = module.split(".")
                    anchor = anchor if is_package else anchor[:-1]
                    anchor = anchor[: len(anchor) - (child.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                yield Import(module, base, tuple(a.name for a in child.names), child.lineno, lazy)
            yield from visit(child, lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    yield from visit(tree, False)


def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


class Graph:
    def __init__(self, root: Path = REPO) -> None:
        self.root = root
        self.files = module_files(root)
        self.imports = [imp for name, path in self.files.items() for imp in _imports(name, path)]

    def targets(self, imp: Import) -> list[str]:
        """The internal modules an import names: the submodules of a `from` import, else its module."""
        if imp.target not in self.files:
            return []
        subs = [f"{imp.target}.{n}" for n in imp.names if f"{imp.target}.{n}" in self.files]
        plain = not imp.names or len(subs) < len(imp.names)
        return subs + ([imp.target] if plain else [])

    def edges(self, *, lazy: bool) -> dict[str, dict[str, Import]]:
        out: dict[str, dict[str, Import]] = {name: {} for name in self.files}
        for imp in self.imports:
            if imp.lazy and not lazy:
                continue
            for target in self.targets(imp):
                if target != imp.source:
                    out[imp.source].setdefault(target, imp)
        return out

    def where(self, imp: Import) -> str:
        return f"{self.files[imp.source].relative_to(self.root)}:{imp.line}"


def _cycles(edges: dict[str, dict[str, Import]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            strongconnect(v)
    return sorted(found)


def cycle_violations(graph: Graph) -> list[str]:
    edges = graph.edges(lazy=True)
    lines = []
    for component in _cycles(edges):
        members = set(component)
        ties = [f"{a} → {b} ({graph.where(imp)}{', in a function' if imp.lazy else ''})"
                for a in component for b, imp in sorted(edges[a].items()) if b in members]
        lines.append(f"cycle {' ⇄ '.join(component)}: " + "; ".join(ties))
    return lines


def heavy_violations(graph: Graph) -> list[str]:
    """Each torch-free module that reaches a heavy import at module level, with the chain that does."""
    edges = graph.edges(lazy=False)
    for name in graph.files:  # importing a module runs its packages' __init__ first
        for parent in _parents(name):
            if parent in graph.files:
                edges[name].setdefault(parent, Import(name, parent, (), 0, False))
    heavy_at = {imp.source: imp for imp in graph.imports
                if not imp.lazy and imp.target.split(".")[0] in HEAVY}
    def under(m: str, prefixes: tuple[str, ...]) -> bool:
        return any(m == p or m.startswith(p + ".") or m.startswith(p + "_") for p in prefixes)

    roots = [m for m in graph.files if m.split(".")[0] == "fmae_tui"
             or (under(m, TORCH_FREE) and not under(m, TORCH_SIDE))]
    lines = []
    for root in sorted(roots):
        # Breadth first, so the chain shown is a shortest one.
        came_from: dict[str, str | None] = {root: None}
        frontier = [root]
        hit = None
        while frontier and hit is None:
            nxt = []
            for m in frontier:
                if m in heavy_at:
                    hit = m
                    break
                for t in edges[m]:
                    if t not in came_from:
                        came_from[t] = m
                        nxt.append(t)
            frontier = nxt
        if hit is not None:
            chain = [hit]
            while came_from[chain[-1]] is not None:
                chain.append(came_from[chain[-1]])
            imp = heavy_at[hit]
            lines.append(f"{root} reaches {imp.target} at module level: {' → '.join(reversed(chain))} "
                         f"({graph.where(imp)})")
    return lines


def layer_of(module: str) -> int | None:
    """The index in LAYERS of a module's layer (its longest matching name), None for one no layer names."""
    best = None
    for i, (_, names) in enumerate(LAYERS):
        for name in names:
            inside = module.startswith(name + ".") and name != "fmae"  # `fmae`: its __init__ only
            if (module == name or inside) and (best is None or len(name) > best[1]):
                best = (i, len(name))
    return None if best is None else best[0]


def upward_violations(graph: Graph) -> list[str]:
    """Each import (in a function too) of a higher layer than the importer's, and each module in no layer:
    the layering is one-way, the app at the top."""
    lines = [f"{graph.files[m].relative_to(graph.root)}: {m} is in no layer of LAYERS (add it to one)"
             for m in graph.files if layer_of(m) is None]
    for imp in graph.imports:
        for target in graph.targets(imp):
            a, b = layer_of(imp.source), layer_of(target)
            if a is not None and b is not None and b < a:
                lines.append(f"{graph.where(imp)}: {imp.source} ({LAYERS[a][0]}) imports {target} ({LAYERS[b][0]})")
    return lines


def private_violations(graph: Graph) -> list[str]:
    lines = []
    for imp in graph.imports:
        if imp.target.split(".")[0] not in PACKAGES:
            continue
        for name in imp.names:
            private = name.startswith("_") and not (name.startswith("__") and name.endswith("__"))
            if private and f"{imp.target}.{name}" not in graph.files and imp.target != imp.source:
                lines.append(f"{graph.where(imp)}: {imp.source} imports {imp.target}.{name}")
    return lines


def size_violations(graph: Graph) -> list[str]:
    lines = []
    for path in sorted(set(graph.files.values())):
        n = len(path.read_text().splitlines())
        if n > MAX_LINES:
            lines.append(f"{path.relative_to(graph.root)}: {n} lines")
    return lines


def _report(what: str, violations: list[str]) -> str:
    return f"{len(violations)} {what}:\n" + "\n".join(f"  {v}" for v in violations)


# --- the checks -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def graph() -> Graph:
    return Graph()


def test_no_import_cycles(graph):
    violations = cycle_violations(graph)
    assert not violations, _report("import cycle(s) (module-level and in-function imports)", violations)


def test_the_torch_free_layer_reaches_no_torch(graph):
    violations = heavy_violations(graph)
    assert not violations, _report(f"module(s) of the torch-free layer reaching {', '.join(sorted(HEAVY))}",
                                   violations)


def test_imports_only_go_down_the_layers(graph):
    violations = upward_violations(graph)
    assert not violations, _report("import(s) up the layers of docs/architecture.md (or modules in none)",
                                   violations)


def test_no_private_name_crosses_a_module(graph):
    violations = private_violations(graph)
    assert not violations, _report("import(s) of another module's private name", violations)


def test_no_source_file_over_500_lines(graph):
    violations = size_violations(graph)
    assert not violations, _report(f"source file(s) over {MAX_LINES} lines", violations)


def test_the_fast_commands_load_no_torch_when_run(tmp_path):
    """What (b) and the CLI's lazy imports promise, seen at run time: `fmae --help`, `fmae queue ls` and
    `fmae report` answer in one interpreter that has never loaded torch, timm or cv2."""
    runs = tmp_path / "runs"
    code = ("import sys\nfrom fmae.cli import main\n"
            f"for args in (['--help'], ['queue', 'ls', '--runs-dir', {str(runs)!r}],"
            f" ['report', '--runs-dir', {str(runs)!r}]):\n"
            "    sys.argv = ['fmae', *args]\n"
            "    try:\n        main()\n    except SystemExit as e:\n        print('exit', e.code)\n"
            f"print(sorted(m for m in {sorted(HEAVY)!r} if m in sys.modules))")
    env = {"FMAE_NO_AUTOSTART": "1", "COLUMNS": "120", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=120)
    lines = proc.stdout.splitlines()
    assert [line for line in lines if line.startswith("exit ")] == ["exit 0", "exit 0", "exit 2"], proc.stdout
    assert "no training runs to report" in proc.stderr and "Traceback" not in proc.stderr
    assert lines[-1] == "[]", proc.stdout


# --- the checks check -------------------------------------------------------------------------------

def test_each_check_finds_its_violation(tmp_path):
    """A tiny package with one of each violation: every check must name it (and nothing else)."""
    pkg = tmp_path / "fmae"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "queue.py").write_text("from fmae.sub import helpers\n")  # torch-free, reaches torch below
    (pkg / "sub" / "__init__.py").write_text("from fmae.sub.helpers import run\n")  # re-export: no cycle
    (pkg / "sub" / "helpers.py").write_text(
        "import torch\nfrom fmae.sub.lazy import _hidden\n\ndef run():\n    pass\n")
    (pkg / "sub" / "lazy.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from fmae import queue\n"
        "_hidden = 1\n\ndef later():\n    from . import helpers\n" + "# padding\n" * MAX_LINES)
    (tmp_path / "fmae_tui").mkdir()
    (tmp_path / "fmae_tui" / "__init__.py").write_text("def start():\n    import fmae.sub.helpers\n")
    graph = Graph(tmp_path)
    assert cycle_violations(graph) == [
        "cycle fmae.sub.helpers ⇄ fmae.sub.lazy: fmae.sub.helpers → fmae.sub.lazy (fmae/sub/helpers.py:2); "
        "fmae.sub.lazy → fmae.sub.helpers (fmae/sub/lazy.py:7, in a function)"]
    assert heavy_violations(graph) == [
        "fmae.queue reaches torch at module level: fmae.queue → fmae.sub.helpers (fmae/sub/helpers.py:1)"]
    assert private_violations(graph) == ["fmae/sub/helpers.py:2: fmae.sub.helpers imports fmae.sub.lazy._hidden"]
    assert size_violations(graph) == [f"fmae/sub/lazy.py: {MAX_LINES + 7} lines"]


def test_the_layer_check_finds_an_engine_module_importing_the_app_and_a_module_in_no_layer(tmp_path):
    (tmp_path / "fmae").mkdir()
    (tmp_path / "fmae" / "__init__.py").write_text("")
    (tmp_path / "fmae" / "runs.py").write_text("def show():\n    from fmae_tui.app import main\n")
    (tmp_path / "fmae_tui").mkdir()
    (tmp_path / "fmae_tui" / "__init__.py").write_text("import fmae.runs\n")
    (tmp_path / "fmae_tui" / "app.py").write_text("def main():\n    pass\n")
    (tmp_path / "fmae" / "stray.py").write_text("")
    assert upward_violations(Graph(tmp_path)) == [
        "fmae/stray.py: fmae.stray is in no layer of LAYERS (add it to one)",
        "fmae/runs.py:2: fmae.runs (run) imports fmae_tui.app (app)"]
