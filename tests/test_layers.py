"""The lab's layers (issue 17): `lint-imports` keeps .importlinter's contracts (entry points down to
errors/units/paths, lab.models' own order, no import circle at any depth), and the pages, which are not a
package import-linter can see, are checked here from their source: they stand beside the CLI at the top,
so they use lab's public names and never the CLI, and lab never imports them."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted((ROOT / "pages").glob("*.py")) + [ROOT / "app.py"]


def imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(module, names, line) of every import in a file, function-local ones included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, [a.name for a in node.names], node.lineno))
    return found


def test_the_layers_contracts_are_kept():
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    if lint is None:
        pytest.skip("import-linter is not installed (make setup-dev installs it)")
    p = subprocess.run([lint, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "0 broken" in p.stdout


def test_pages_use_lab_public_names_and_never_the_cli():
    bad = []
    for page in PAGES:
        for module, names, line in imports(page):
            if not module.startswith("lab"):
                continue
            where = f"{page.relative_to(ROOT)}:{line}"
            if module == "lab.__main__" or module == "lab.cli" or module.startswith("lab.cli."):
                bad.append(f"{where} imports {module}: pages and the CLI are both entry points")
            if any(part.startswith("_") for part in module.split(".")) or any(n.startswith("_") for n in names):
                bad.append(f"{where} imports a private name of {module}: {names}")
    assert not bad, "\n".join(bad)


def test_lab_never_imports_the_pages_or_the_app():
    bad = [f"{py.relative_to(ROOT)}:{line} imports {module}"
           for py in sorted((ROOT / "lab").rglob("*.py"))
           for module, _, line in imports(py) if module.split(".")[0] in ("pages", "app", "streamlit")]
    assert not bad, "\n".join(bad)


def test_pages_stay_short_functions_small_and_the_readme_a_front_door():
    """Issue 17's sizes, held: no page over 350 lines, no function in lab/ or pages/ over 60, README under 200."""
    long_pages = {p.name: n for p in PAGES if (n := len(p.read_text().splitlines())) > 350}
    assert not long_pages, f"pages over 350 lines (split them by concern, as pages/_training_*.py are): {long_pages}"
    long_functions = []
    for path in sorted((ROOT / "lab").rglob("*.py")) + PAGES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                long_functions.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} "
                                      f"({node.end_lineno - node.lineno + 1} lines)")
    assert not long_functions, long_functions
    assert len((ROOT / "README.md").read_text().splitlines()) < 200


def _local_imports(path: Path):
    """(line, module, top-level modules of the file, source lines) of each import inside a function."""
    source = path.read_text()
    tree = ast.parse(source)
    top = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            top |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            top.add(node.module)
    found = {}
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, ast.Import):
                    found[node.lineno] = node.names[0].name
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    found[node.lineno] = node.module
    return sorted(found.items()), top, source.splitlines()


def test_function_local_imports_are_heavy_and_say_why():
    """Issue 17: an import inside a function only where the import is genuinely heavy (torch, transformers, peft,
    bitsandbytes, the Hub client, a lab module that imports them...), each with a one-line reason: a comment on its
    line, or on the line above its block of imports. The standard library and what the file imports at its top
    anyway belong at the top."""
    bad = []
    for path in sorted((ROOT / "lab").rglob("*.py")) + PAGES:
        found, top, lines = _local_imports(path)
        for line, module in found:
            where = f"{path.relative_to(ROOT)}:{line} {module}"
            package = module.split(".")[0]
            if package in sys.stdlib_module_names:
                bad.append(f"{where}: the standard library is cheap, import it at the top")
            elif module in top or (package not in ("lab", "pages") and package in {t.split(".")[0] for t in top}):
                bad.append(f"{where}: the file imports it at the top already")
            first = line
            while first > 1 and lines[first - 2].lstrip().startswith(("import ", "from ")):
                first -= 1  # the first import of this block: a comment above it speaks for the block
            if "#" not in lines[line - 1] and not lines[first - 2].lstrip().startswith("#"):
                bad.append(f"{where}: say why it is imported here (a comment), or import it at the top")
    assert not bad, "\n".join(bad)
