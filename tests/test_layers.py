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


def _imports(path: str, module_level_only: bool = False) -> set[str]:
    """Every absolute module name `path` imports (names imported from a module count as submodules)."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    nodes = tree.body if module_level_only else ast.walk(tree)
    if module_level_only:  # top-level statements, and those nested in top-level if / try blocks
        nodes = [n for top in tree.body for n in ([top] if isinstance(top, (ast.Import, ast.ImportFrom))
                                                  else ast.walk(top) if isinstance(top, (ast.If, ast.Try)) else [])]
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


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


def test_the_rules_see_violations():
    """The checks above are not vacuous: this file's own imports are read, and a planted import is caught."""
    assert "helpers.ROOT" in _imports(__file__)
    assert "analyses.report" in _imports(os.path.join(ROOT, "analyses", "__init__.py"))


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
