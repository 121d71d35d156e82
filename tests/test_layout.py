"""The package's shape, read with `ast` (nothing imported): no import circle between modules, no
module too long to read, few modules at the top, and each subpackage importing only what its
docstring allows. A cheap guard: a new feature that breaks one of these fails here, by name."""
from __future__ import annotations

import ast
import pathlib
import sys

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "fastface"
MAX_CODE_LINES = 450   # code lines: not blank, not a comment, not a docstring
MAX_TOP_MODULES = 8    # modules directly in fastface/, __init__ included

# What each part of the package may import of FastFace (fastface/__init__.py, each package's
# docstring). A module may always import its own package; `hosts` may import anything.
ALLOWED = {
    "fastface.config": set(),
    "fastface.presets": {"fastface.config"},
    "fastface.infotext": {"fastface.config", "fastface.presets"},
    "fastface.method": {"fastface.config", "fastface.kernels"},
    "fastface.kernels": {"fastface.method.transforms"},
    "fastface.views": set(),
    "fastface.version": set(),
    "fastface.eval": {"fastface.config", "fastface.presets", "fastface.infotext", "fastface.views"},
}


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(name: str) -> set[str]:
    """FastFace modules `name` imports, at the top or inside a function (a lazy import can close a
    circle at run time too). `from pkg import x` counts as importing module pkg.x when that is a
    module, else pkg itself; a package's submodules importing each other do not depend on its
    __init__ (importing `pkg.x` only runs pkg/__init__ first)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in MODULES)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                if f"{source}.{alias.name}" in MODULES:
                    found.add(f"{source}.{alias.name}")
                elif source in MODULES:
                    found.add(source)
    found.discard(name)
    return found


def circles() -> list[list[str]]:
    """The import circles among FastFace's modules (Tarjan's strongly connected components)."""
    graph = {name: imported_modules(name) for name in MODULES}
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def code_lines(path: pathlib.Path) -> int:
    source = path.read_text()
    docstrings = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                docstrings.update(range(first.lineno, first.end_lineno + 1))
    return sum(1 for number, line in enumerate(source.splitlines(), 1)
               if line.strip() and not line.strip().startswith("#") and number not in docstrings)


def test_no_import_circle():
    assert circles() == []


def test_the_circle_finder_finds_circles(tmp_path, monkeypatch):
    """The guard itself: two modules importing each other (one lazily) are reported."""
    package = tmp_path / "fastface"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "a.py").write_text("from . import b\n")
    (package / "sub" / "b.py").write_text("def f():\n    from .a import g\n")
    (package / "c.py").write_text("from .sub import a\n")
    this = sys.modules[__name__]
    monkeypatch.setattr(this, "PACKAGE", package)
    monkeypatch.setattr(this, "MODULES", {module_name(p): p for p in package.rglob("*.py")})
    assert circles() == [["fastface.sub.a", "fastface.sub.b"]]


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_is_short_enough_to_read(name):
    assert code_lines(MODULES[name]) <= MAX_CODE_LINES


def test_few_modules_at_the_top():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= MAX_TOP_MODULES, top


def test_every_package_opens_with_a_docstring():
    for init in PACKAGE.rglob("__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc.splitlines()) >= 3, f"{init.relative_to(PACKAGE.parent)} has no docstring that says what lives there"


@pytest.mark.parametrize("part", sorted(ALLOWED))
def test_each_part_imports_only_what_its_docstring_allows(part):
    allowed = ALLOWED[part]
    inside = lambda name, root: name == root or name.startswith(root + ".")   # noqa: E731
    for name in MODULES:
        if not inside(name, part):
            continue
        for target in imported_modules(name):
            if inside(target, part) or any(inside(target, a) for a in allowed):
                continue
            pytest.fail(f"{name} imports {target}; {part} may import only {sorted(allowed) or 'nothing'} of FastFace")
