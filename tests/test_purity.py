"""The core package never imports the WebUI, its model code or gradio (only fastface.hosts may)."""
import ast
import pathlib
import subprocess
import sys

FORBIDDEN = ("modules", "ldm", "sgm", "backend", "ldm_patched", "gradio")
CORE = pathlib.Path(__file__).resolve().parent.parent / "fastface"


def core_files():
    return [p for p in CORE.rglob("*.py") if "hosts" not in p.relative_to(CORE).parts]


def test_core_sources_import_nothing_forbidden():
    assert core_files()
    for path in core_files():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                    "import_module", "__import__"):
                names = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
            for name in names:
                assert name.split(".")[0] not in FORBIDDEN, f"{path.name} imports {name}"


def test_importing_the_core_loads_no_forbidden_module():
    modules = sorted(".".join(p.relative_to(CORE.parent).with_suffix("").parts).removesuffix(".__init__")
                     for p in core_files() if p.stem != "__main__")   # __main__ runs the command
    code = (
        "import sys\n"
        f"forbidden = {FORBIDDEN!r}\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in forbidden: raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        + "".join(f"import {m}\n" for m in modules)
        + "print(sorted(m for m in sys.modules if m.split('.')[0] in forbidden))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=CORE.parent, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
