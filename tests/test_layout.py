"""The rules of the house that a reader could break without noticing: checked on the source tree."""
from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

HEAVY = {"torch", "transformers", "peft", "bitsandbytes", "accelerate", "safetensors"}


def imports(path: Path) -> set[str]:
    """Every module a file imports (absolute names; relative ones resolved against engine/)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # from .x import y inside engine/
                pkg = path.relative_to(ROOT).parent.parts
                base = ".".join(pkg[: len(pkg) - node.level + 1])
                out.add(f"{base}.{node.module}" if node.module else base)
                out |= {f"{base}.{a.name}" for a in node.names} if not node.module else set()
            else:
                out.add(node.module)
    return out


def files(*folders: str) -> list[Path]:
    return [p for f in folders for p in sorted((ROOT / f).rglob("*.py"))]


def test_pages_and_app_never_import_the_model_stack():
    bad = {str(p.relative_to(ROOT)): sorted(m for m in imports(p) if m.split(".")[0] in HEAVY)
           for p in files("app", "pages")}
    assert not {k: v for k, v in bad.items() if v}, "a page is layout plus calls into the engine"


def test_the_engine_never_imports_streamlit_or_its_own_cli():
    for p in files("engine"):
        mods = imports(p)
        assert not any(m.split(".")[0] == "streamlit" for m in mods), p
        if p.name not in ("cli.py", "__main__.py"):
            assert "engine.cli" not in mods, f"{p}: only cli.py owns parsers; the UI calls the same functions"


def test_no_sys_path_edits_and_no_harry_potter_in_engine_code():
    for p in files("engine", "app", "pages", "bench", "tests"):
        if p.name == "test_layout.py":
            continue
        assert "sys.path.insert" not in p.read_text(encoding="utf-8") and \
            "sys.path.append" not in p.read_text(encoding="utf-8"), p
    for p in files("engine"):
        text = p.read_text(encoding="utf-8")
        assert "Hermione" not in text and "Harry Potter" not in text, f"{p}: the engine knows no book"
