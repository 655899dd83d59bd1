"""An offline corpus nobody has to ship: the running Python's standard library (code, docstrings, comments).

Its documents are the `.py` files under `sysconfig.get_paths()["stdlib"]` (no `site-packages`,
no test directories unless asked), one document per file. They are written as one `.jsonl`
file, so `opt_jax.corpus.Corpus` reads them like any other corpus, in a fixed pseudo-random
order of their relative paths (sha256), so that an epoch does not go through the library one
package at a time. The corpus depends on the Python version (3.11 and 3.12 differ): a run
records the file's fingerprint, and `describe()` says which interpreter wrote it.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sysconfig
from collections.abc import Iterator

from opt_jax import atomic
from opt_jax.errors import MissingError

NAME = "stdlib"  # the corpus argument that names this corpus
_SKIPPED_DIRS = ("site-packages", "dist-packages", "__pycache__")
_TEST_DIRS = ("test", "tests", "idle_test")


def stdlib_root() -> str:
    """The running interpreter's standard library directory."""
    return sysconfig.get_paths()["stdlib"]


def stdlib_files(root: str | None = None, include_tests: bool = False) -> list[str]:
    """The library's `.py` files, in the corpus order (sha256 of the path relative to root)."""
    root = root or stdlib_root()
    files = []
    for directory, subdirs, names in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if d not in _SKIPPED_DIRS and (include_tests or d not in _TEST_DIRS))
        files.extend(os.path.join(directory, name) for name in sorted(names) if name.endswith(".py"))
    if not files:
        raise MissingError(f"{root}: no .py files (is this a Python standard library?)")
    return sorted(files, key=lambda path: hashlib.sha256(os.path.relpath(path, root).encode()).hexdigest())


def documents(root: str | None = None, include_tests: bool = False) -> Iterator[dict]:
    """{"text", "path"} of each file that is UTF-8 (a few test files are deliberately not), in corpus order."""
    root = root or stdlib_root()
    for path in stdlib_files(root, include_tests):
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except UnicodeDecodeError:
            continue
        yield {"text": text, "path": os.path.relpath(path, root)}


def describe(root: str | None = None, include_tests: bool = False) -> dict:
    """Where the corpus comes from: interpreter version, library directory, options."""
    return {"python": platform.python_version(), "implementation": platform.python_implementation(),
            "stdlib": root or stdlib_root(), "include_tests": include_tests}


def write_jsonl(path: str, root: str | None = None, include_tests: bool = False) -> str:
    """Write the corpus as a `.jsonl` file at path (atomically, unless it exists); returns path."""
    if os.path.isfile(path):
        return path

    def write(f):
        for document in documents(root, include_tests):
            f.write(json.dumps(document, ensure_ascii=False) + "\n")

    return atomic.write_file(path, write)


DOMAINS = ("prose", "code")  # the library cut in two: its docstrings, and its code without them


def split_domains(text: str) -> dict[str, str] | None:
    """{"prose": the docstrings (module, classes, functions; cleaned, one paragraph each), "code": the source
    without the lines of those docstrings} of one file; None for a file `ast` cannot parse."""
    import ast

    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return None
    prose, cut = [], set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            docstring = ast.get_docstring(node, clean=True)
            if docstring is not None and isinstance(first, ast.Expr):
                prose.append(docstring)
                cut.update(range(first.lineno, first.end_lineno + 1))
    lines = text.splitlines(keepends=True)
    code = "".join(line for number, line in enumerate(lines, start=1) if number not in cut)
    return {"prose": "\n\n".join(prose), "code": code}


def write_domains(directory: str, root: str | None = None, include_tests: bool = False) -> dict[str, str]:
    """The corpus cut into DOMAINS, one `.jsonl` per domain in `directory` (atomically, unless they exist):
    domain -> path. Each file gives one document per domain (its docstrings; its code without them), in
    corpus order."""
    paths = {d: os.path.join(directory, f"{NAME}-{d}.jsonl") for d in DOMAINS}
    if all(os.path.isfile(p) for p in paths.values()):
        return paths
    parts = {d: [] for d in DOMAINS}
    for document in documents(root, include_tests):
        split = split_domains(document["text"])
        for domain, text in (split or {}).items():
            if text.strip():
                parts[domain].append({"text": text, "path": document["path"]})
    os.makedirs(directory, exist_ok=True)
    for domain, path in paths.items():
        atomic.write_file(path, lambda f, docs=parts[domain]: f.writelines(
            json.dumps(d, ensure_ascii=False) + "\n" for d in docs))
    return paths
