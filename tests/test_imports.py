"""The geovision package imports in one direction: no import cycle between its modules.

The graph is read from the source with :mod:`ast`; nothing is imported. Its rules:

* **Nodes.** Every module of the package; a package's ``__init__.py`` is the
  package's module (``geovision/models/__init__.py`` is ``geovision.models``). A
  folder without ``__init__.py`` (a namespace package) runs no code and is no node.
* **Every import statement is an edge**: at module level, inside functions and
  classes, and under ``if TYPE_CHECKING:`` alike. An import inside a function
  only postpones the cycle to run time, and a package ``__init__`` that imports a
  higher layer lazily (``geovision/__init__.py``'s PEP 562 ``__getattr__`` for
  ``geovision.predict``) still depends on it.
* **Forms.** ``import a.b.c`` and ``import a.b.c as x`` are edges to ``a.b.c``;
  ``from a.b import c`` is an edge to the module ``a.b.c`` when there is one,
  else to ``a.b``; relative imports (``from . import x``, ``from ..a import b``)
  are resolved against the importing module's package.
* **Parent packages.** Importing ``a.b.c`` first runs the packages ``a`` and
  ``a.b``, so those are edges too -- except a package that contains the importing
  module: Python has run it before the importing module starts, so the edge adds
  no order and is not counted. In particular the implicit "importing
  ``geovision.x.y`` imports ``geovision``" never counts (else
  ``geovision/__init__``'s lazy workflows would close a cycle with every module
  below them), while an explicit ``from geovision import name`` or
  ``import geovision`` does: that is why the version lives in
  ``geovision._version``.

``test_cycle_finder_finds_known_cycles`` runs the same finder on a small package
with known cycles, so this test can fail.
"""

from __future__ import annotations

import ast
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).parents[1]


@dataclass(frozen=True)
class Edge:
    """One import: ``source`` imports ``target`` at ``path:line`` (``statement`` as written)."""

    source: str
    target: str
    path: str
    line: int
    statement: str

    def __str__(self) -> str:
        return f"{self.source} -> {self.target}  ({self.path}:{self.line}: {self.statement})"


def package_modules(root: Path, package: str) -> dict[str, Path]:
    """Module name -> file for every module of ``package`` (whose folder is ``root / package``)."""
    modules = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _resolve_base(module: str, is_package: bool, level: int, name: str | None) -> str:
    """The absolute module named by ``from <level dots><name> import ...`` in ``module``."""
    if level == 0:
        return name or ""
    parts = module.split(".") if is_package else module.split(".")[:-1]
    if level - 1 > len(parts):
        raise ValueError(f"relative import beyond the top-level package in {module}")
    parts = parts[: len(parts) - (level - 1)]
    return ".".join([*parts, *(name.split(".") if name else [])])


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, known: set[str]) -> list[str]:
    """The modules an import statement names explicitly."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = _resolve_base(module, is_package, node.level, node.module)
    targets = []
    for alias in node.names:
        submodule = f"{base}.{alias.name}"
        targets.append(submodule if alias.name != "*" and submodule in known else base)
    return targets


def import_graph(root: Path, package: str) -> list[Edge]:
    """Every import edge between modules of ``package`` (see the module docstring for the rules)."""
    modules = package_modules(root, package)
    known = set(modules)
    edges: list[Edge] = []
    for module, path in modules.items():
        is_package = path.name == "__init__.py"
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source, filename=str(path))
        ancestors = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)}
        if is_package:
            ancestors.add(module)
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            statement = ast.get_source_segment(source, node) or ""
            for target in _targets(node, module, is_package, known):
                parts = target.split(".")
                parents = [".".join(parts[:i]) for i in range(1, len(parts))]
                for name in [target, *(p for p in parents if p not in ancestors)]:
                    if name in known and name != module:
                        edges.append(Edge(module, name, str(path.relative_to(root)), node.lineno,
                                          " ".join(statement.split())))
    return edges


def find_cycles(edges: list[Edge]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted; sorted."""
    graph: dict[str, set[str]] = {}
    for edge in edges:
        graph.setdefault(edge.source, set()).add(edge.target)
        graph.setdefault(edge.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(start: str) -> None:  # iterative, so deep graphs do not hit the recursion limit
        work = [(start, iter(sorted(graph[start])))]
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
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(components)


def describe(cycles: list[list[str]], edges: list[Edge]) -> str:
    """Each cycle's modules and the import statements that tie them together."""
    lines = []
    for component in cycles:
        members = set(component)
        lines.append(f"cycle between {', '.join(component)}:")
        lines += [f"    {edge}" for edge in edges if edge.source in members and edge.target in members]
    return "\n".join(lines)


def test_geovision_has_no_import_cycles() -> None:
    edges = import_graph(REPO, "geovision")
    assert len(edges) > 100, "the import graph looks empty; is the package where the test expects it?"
    cycles = find_cycles(edges)
    assert not cycles, "import cycles in geovision (rules in tests/test_imports.py):\n" + describe(cycles, edges)


def test_models_import_down_the_line() -> None:
    """geovision.models: config <- bundle <- detectors <- registry <- predictor <- task predictors <- factory."""
    order = ["config", "bundle", "detectors", "registry", "pretrained", "predictor",
             "segmentation", "detection", "onnx", "factory"]
    rank = {f"geovision.models.{name}": i for i, name in enumerate(order)}
    upward = [edge for edge in import_graph(REPO, "geovision")
              if edge.source in rank and edge.target in rank and rank[edge.target] >= rank[edge.source]]
    assert not upward, "imports against geovision.models' order:\n" + "\n".join(map(str, upward))


def test_package_top_level_names_are_the_workflows() -> None:
    """``geovision.predict`` and friends are the workflows' functions, imported when first asked for."""
    import geovision
    import geovision.workflows.predict
    import geovision.workflows.stress
    import geovision.workflows.train

    assert geovision.predict is geovision.workflows.predict.predict
    assert geovision.train is geovision.workflows.train.train
    assert geovision.stress is geovision.workflows.stress.stress
    assert {"predict", "train", "stress", "__version__"} <= set(dir(geovision))
    with pytest.raises(AttributeError, match="no attribute 'predcit'"):
        geovision.predcit  # noqa: B018
    from geovision._version import __version__

    assert geovision.__version__ == __version__


def write_package(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")


def test_cycle_finder_finds_known_cycles(tmp_path: Path) -> None:
    write_package(tmp_path, {
        # the package's lazy convenience import of a top layer counts, its children's implicit import of it does not
        "pkg/__init__.py": """
            def __getattr__(name):
                from pkg.top import run
                return run
        """,
        "pkg/top.py": "from pkg.a import A\nimport pkg.sub.leaf\n",
        # a cycle through a function-level relative import
        "pkg/a.py": "from pkg.b import B\nA = 1\n",
        "pkg/b.py": "B = 2\ndef f():\n    from . import a\n    return a\n",
        # a cycle through `import x.y as z` and `from package import submodule`
        "pkg/c.py": "import pkg.d as d\n",
        "pkg/d.py": "from pkg import c\n",
        # a subpackage whose __init__ imports its own module: no cycle (the parent is already running)
        "pkg/sub/__init__.py": "from .leaf import LEAF\n",
        "pkg/sub/leaf.py": "from ..a import A\nLEAF = A\n",
        # a namespace folder (no __init__.py) is no module
        "pkg/ns/tool.py": "from pkg.sub import leaf\n",
    })
    edges = import_graph(tmp_path, "pkg")
    pairs = {(e.source, e.target) for e in edges}
    assert ("pkg", "pkg.top") in pairs  # the lazy import in __getattr__
    assert ("pkg.b", "pkg.a") in pairs and ("pkg.c", "pkg.d") in pairs and ("pkg.d", "pkg.c") in pairs
    assert ("pkg.top", "pkg.sub") in pairs  # importing pkg.sub.leaf runs pkg.sub first
    assert not any(target == "pkg" for _, target in pairs)  # implicit imports of one's own package
    assert ("pkg.sub.leaf", "pkg.sub") not in pairs
    assert find_cycles(edges) == [["pkg.a", "pkg.b"], ["pkg.c", "pkg.d"]]
    message = describe(find_cycles(edges), edges)
    assert "pkg/b.py:3: from . import a" in message and "pkg/d.py:1: from pkg import c" in message

    # an explicit import of the package from below its lazy top layer closes a cycle
    write_package(tmp_path, {"pkg/a.py": "from pkg import VERSION\nA = 1\n", "pkg/b.py": "B = 2\n"})
    cycles = find_cycles(import_graph(tmp_path, "pkg"))
    assert len(cycles) == 2 and {"pkg", "pkg.a", "pkg.top"} <= set(cycles[0]) and cycles[1] == ["pkg.c", "pkg.d"]


@pytest.mark.parametrize(("module", "is_package", "level", "name", "expected"), [
    ("p.a.b", False, 1, None, "p.a"),
    ("p.a.b", False, 2, "c", "p.c"),
    ("p.a", True, 1, "b", "p.a.b"),
    ("p.a", True, 2, None, "p"),
    ("p.a.b", False, 0, "x.y", "x.y"),
])
def test_relative_imports_resolve(module: str, is_package: bool, level: int, name: str | None, expected: str) -> None:
    assert _resolve_base(module, is_package, level, name) == expected
