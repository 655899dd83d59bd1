"""The one-way layers, read from the source (ast): what each package may import."""

import ast
import os
import re

from helpers import ROOT

STUDY = {"coverage", "dead", "detectors", "figures", "positional", "report", "study", "suppression", "tokens",
         "neurons.atlas", "neurons.data_files", "neurons.facts", "neurons.fired", "neurons.token_index",
         "interventions.ablation", "interventions.passes", "interventions.results", "interventions.spec",
         "interventions.attribution"}


def _modules(package: str):
    """(dotted name, path) of every module under a top-level folder of the repository."""
    for dirpath, _, files in os.walk(os.path.join(ROOT, package)):
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                yield rel.removesuffix(".__init__"), path


def _import_statements(path: str, module_level_only: bool = False) -> list[tuple[str, list[str]]]:
    """(module, names imported from it) of every absolute import in `path`; names are [] for `import module`."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    nodes = tree.body if module_level_only else ast.walk(tree)
    if module_level_only:  # top-level statements, and those nested in top-level if / try blocks
        nodes = [n for top in tree.body for n in ([top] if isinstance(top, (ast.Import, ast.ImportFrom))
                                                  else ast.walk(top) if isinstance(top, (ast.If, ast.Try)) else [])]
    found = []
    for node in nodes:
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, [alias.name for alias in node.names]))
    return found


def _imports(path: str, module_level_only: bool = False) -> set[str]:
    """Every absolute module name `path` imports (names imported from a module count as submodules)."""
    return {imported for module, names in _import_statements(path, module_level_only)
            for imported in [module, *(f"{module}.{name}" for name in names)]}


def _violations(packages, forbidden) -> list[str]:
    return [f"{name} imports {imported}" for package in packages for name, path in _modules(package)
            for imported in sorted(_imports(path)) if forbidden(name, imported)]


def _top(imported: str) -> str:
    return imported.split(".")[0]


def test_opt_jax_imports_nothing_from_the_analyses_benchmarks_or_scripts():
    assert not _violations(["opt_jax"], lambda _, imp: _top(imp) in ("analyses", "benchmarks", "scripts"))


def test_collection_imports_no_study_module():
    def study(_, imp):
        parts = imp.split(".")
        return parts[0] == "analyses" and (len(parts) == 1 or parts[1] != "collection")

    assert not _violations(["analyses/collection"], study)


def test_the_study_reads_stores_only_through_collections_reader():
    study_modules = {f"analyses.{m}" for m in STUDY}
    assert not _violations(["analyses"], lambda name, imp: name in study_modules and
                           imp.startswith("analyses.collection.store"))


def test_libraries_import_no_benchmarks():
    assert not _violations(["opt_jax", "analyses"], lambda _, imp: _top(imp) == "benchmarks")


def test_no_module_imports_pyplot_at_module_level():
    found = [f"{name} imports pyplot at module level" for package in ("opt_jax", "analyses", "benchmarks", "scripts")
             for name, path in _modules(package) if {"matplotlib.pyplot", "pylab"} & _imports(path, True)]
    assert not found


def _import_graph(packages) -> dict[str, set[str]]:
    """Each module of the packages -> the modules of the packages it imports, anywhere in it (in functions and
    `if TYPE_CHECKING:` blocks too): `from pkg import name` is the submodule pkg.name where there is one, else
    pkg; a package's own __init__ counts like any module."""
    paths = {name: path for package in packages for name, path in _modules(package)}
    graph = {}
    for name, path in paths.items():
        imported = set()
        for module, names in _import_statements(path):
            imported |= {f"{module}.{item}" if f"{module}.{item}" in paths else module for item in names} or {module}
        graph[name] = (imported & set(paths)) - {name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles of a graph: for each module in a strongly connected group of two or more, its shortest
    cycle ([a, b, ..., a], from the cycle's first module in sorted order), each cycle listed once, sorted."""
    cycles = set()
    for group in _strongly_connected(graph):
        for start in group:
            path = _shortest_path_back(graph, start, group)
            first = path.index(min(path[:-1]))
            cycles.add(tuple(path[first:-1] + path[:first] + [path[first]]))
    return sorted(map(list, cycles))


def _strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """The groups of two or more modules that all reach one another (Kosaraju: two depth-first passes)."""
    reverse = {node: set() for node in graph}
    for node, targets in graph.items():
        for target in targets:
            reverse.setdefault(target, set()).add(node)

    def visit(node, edges, seen, out):
        """Depth first from node along edges (skipping seen ones, marking them), appending each node when done."""
        stack = [(node, iter(sorted(edges.get(node, ()))))]
        seen.add(node)
        while stack:
            current, targets = stack[-1]
            target = next((t for t in targets if t not in seen), None)
            if target is None:
                stack.pop()
                out.append(current)
            else:
                seen.add(target)
                stack.append((target, iter(sorted(edges.get(target, ())))))

    order, seen = [], set()
    for node in sorted(graph):
        if node not in seen:
            visit(node, graph, seen, order)
    groups, seen = [], set()
    for node in reversed(order):
        if node not in seen:
            group = []
            visit(node, reverse, seen, group)
            groups.append(set(group))
    return [group for group in groups if len(group) > 1]


def _shortest_path_back(graph: dict[str, set[str]], start: str, group: set[str]) -> list[str]:
    """The shortest path start -> ... -> start through the group (breadth first)."""
    parents, frontier = {start: None}, [start]
    while frontier:
        following = []
        for node in frontier:
            for target in sorted(graph[node] & group):
                if target == start:
                    path = [node]
                    while parents[path[-1]] is not None:
                        path.append(parents[path[-1]])
                    return path[::-1] + [start]
                if target not in parents:
                    parents[target] = node
                    following.append(target)
        frontier = following
    raise AssertionError(f"{start} has no path back to itself in {sorted(group)}")


def test_no_import_cycles():
    """No module imports, however indirectly, a module that imports it: the modules form layers."""
    cycles = _cycles(_import_graph(["opt_jax", "analyses", "benchmarks", "scripts"]))
    for cycle in cycles:
        print("import cycle: " + " -> ".join(cycle))
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in cycles)


def test_the_rules_see_violations():
    """The checks above are not vacuous: this file's own imports are read, and a planted import is caught."""
    assert "helpers.ROOT" in _imports(__file__)
    assert "analyses.report" in _imports(os.path.join(ROOT, "analyses", "__init__.py"))


def test_the_cycle_finder_sees_cycles():
    """Imports in functions count, `from pkg import module` is the module, and planted cycles are each found."""
    graph = _import_graph(["opt_jax", "benchmarks"])
    assert "benchmarks.cpu" in graph["benchmarks.commit_idle"]  # imported inside a function
    assert {"opt_jax.atomic", "opt_jax.train.rundir"} <= graph["opt_jax.train.loop"]
    assert "opt_jax" not in graph["opt_jax.train.loop"]  # `from opt_jax import atomic` is opt_jax.atomic
    graph["opt_jax.errors"] = graph["opt_jax.errors"] | {"opt_jax.config"}  # planted: errors <-> config
    assert _cycles(graph) == [["opt_jax.config", "opt_jax.errors", "opt_jax.config"]]
    synthetic = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": {"e"}, "e": {"d"}, "f": {"a"},
                 "x": {"y", "z"}, "y": {"x"}, "z": {"x", "f"}}
    assert _cycles(synthetic) == [["a", "b", "c", "a"], ["d", "e", "d"], ["x", "y", "x"], ["x", "z", "x"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


# Distribution name -> the module it provides, where they differ.
_IMPORT_NAMES = {"orbax-checkpoint": "orbax", "absl-py": "absl"}


def test_every_pinned_dependency_is_imported():
    """setup.cfg requires nothing the code does not use (jaxlib: the runtime `import jax` loads)."""
    import configparser
    import sys

    import jax  # noqa: F401  (loads jaxlib)

    config = configparser.ConfigParser()
    config.read(os.path.join(ROOT, "setup.cfg"))
    pins = [re.split(r"[<>=!~ ]", line.strip())[0] for line in config["options"]["install_requires"].splitlines()
            if line.strip()]
    imported = {_top(imp) for package in ("opt_jax", "analyses", "benchmarks", "scripts")
                for _, path in _modules(package) for imp in _imports(path)}
    unused = [pin for pin in pins if _IMPORT_NAMES.get(pin, pin) not in imported
              and not (pin == "jaxlib" and "jaxlib" in sys.modules)]
    assert not unused and len(pins) > 10, (unused, pins)
