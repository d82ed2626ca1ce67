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


# -- what the code depends on ---------------------------------------------------------------------------
def pinned(name: str) -> dict[str, tuple[str, list[str]]]:
    """{normalised distribution name: (version, sha256 hashes)} of a requirements or lock file: every
    entry `name==version`, optionally followed by `--hash=sha256:...` continuation lines."""
    import re

    text = (ROOT / name).read_text(encoding="utf-8").replace("\\\n", " ")
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)==([A-Za-z0-9_.+-]+)((?:\s+--hash=sha256:[0-9a-f]{64})*)", line)
        assert m, f"{name}: {line[:80]!r} is not pinned as name==version [--hash=sha256:...]"
        out[re.sub(r"[-_.]+", "-", m[1]).lower()] = (m[2], re.findall(r"[0-9a-f]{64}", m[3]))
    return out


def pins(name: str) -> dict[str, str]:
    """{normalised distribution name: version} of a requirements file."""
    return {k: v for k, (v, _) in pinned(name).items()}


def test_every_package_make_setup_installs_is_hash_locked():
    """`make setup` installs the locks with --require-hashes: each must hold every pin of its sources at
    the same version, and every package of the closure with at least one sha256 (`make lock` writes them)."""
    runtime, dev = pins("requirements.txt"), pins("requirements-dev.txt")
    for lock, sources in (("requirements.lock", runtime), ("requirements-dev.lock", runtime | dev)):
        locked = pinned(lock)
        for dist, version in sources.items():
            assert dist in locked, f"{dist} is pinned but not in {lock}: run `make lock`"
            assert locked[dist][0] == version, f"{lock} has {dist} {locked[dist][0]}, the pin is {version}: run `make lock`"
        assert all(h for _, h in locked.values()), f"{lock}: an entry without a hash"
    for name in ("requirements-nodeps.txt", "requirements-gemma.txt"):
        assert all(h for _, h in pinned(name).values()), f"{name}: an entry without a hash"
    assert "--require-hashes -r requirements.lock" in (ROOT / "Makefile").read_text()


def third_party(folders: tuple[str, ...]) -> dict[str, set[str]]:
    """{top-level module: files} of every non-stdlib, non-project import under `folders`."""
    import sys

    own = {"engine", "app", "pages", "conftest", "helpers"}
    out: dict[str, set[str]] = {}
    for p in files(*folders):
        for m in imports(p):
            top = m.split(".")[0]
            if top not in sys.stdlib_module_names and top not in own and not top.startswith("test_"):
                out.setdefault(top, set()).add(str(p.relative_to(ROOT)))
    return out


def test_every_package_the_code_imports_is_pinned_once():
    import importlib.metadata
    import re

    runtime, dev, nodeps = pins("requirements.txt"), pins("requirements-dev.txt"), pins("requirements-nodeps.txt")
    assert not (runtime.keys() & dev.keys()) and not (runtime.keys() & nodeps.keys()), "one pin per package"
    assert {"pytest", "playwright"} <= dev.keys() and not {"pytest", "playwright"} & runtime.keys(), \
        "`make run` installs no test tools"
    dists = importlib.metadata.packages_distributions()
    for folders, allowed in ((("engine", "app", "pages", "bench"), runtime), (("tests",), runtime | dev)):
        for module, where in sorted(third_party(folders).items()):
            names = {re.sub(r"[-_.]+", "-", d).lower() for d in dists.get(module, [])}
            assert names & allowed.keys(), f"{module} (imported by {sorted(where)[:3]}) is not pinned: {names or 'not installed'}"


def test_the_environment_holds_the_pinned_versions():
    """What `make setup` installed is what the files pin (a stale .venv fails here, not somewhere odd)."""
    import importlib.metadata

    for name in ("requirements-dev.lock", "requirements-nodeps.txt", "requirements-gemma.txt"):
        for dist, version in pins(name).items():
            got = importlib.metadata.version(dist)
            assert got.split("+")[0] == version, f"{dist} {got} is installed, {name} pins {version}"  # +cpu: a local build


# -- the import graph -------------------------------------------------------------------------------------
def engine_graph() -> dict[str, set[str]]:
    """{module: engine modules it imports}, imports inside functions counted; `from . import x` of a
    submodule is an edge to that submodule (its package's __init__ runs first, but that is no cycle)."""
    mods = {}
    for p in files("engine"):
        name = ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        mods[name] = p
    graph = {m: set() for m in mods}
    for m, p in mods.items():
        pkg = m if p.name == "__init__.py" else m.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                parts = pkg.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1]) if node.level else ""
                base = f"{base}.{node.module}".strip(".") if node.module else base
                subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in mods]
                targets = subs if len(subs) == len(node.names) else [base, *subs]
                if node.level:  # a relative import names an engine module: one that exists
                    assert base in mods, f"{p.relative_to(ROOT)}:{node.lineno}: no module {base}"
            else:
                continue
            graph[m] |= {t for t in targets if t in mods and t != m}
    return graph


def test_no_import_cycle_in_the_engine():
    graph = engine_graph()
    assert graph["engine.config"] and graph["engine.pipeline"], "the graph sees imports"
    seen: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m: str, path: list[str]) -> None:
        seen[m] = 1
        for t in sorted(graph[m]):
            assert seen.get(t) != 1, "import cycle: " + " -> ".join(path[path.index(t):] + [t] if t in path else path + [t])
            if t not in seen:
                visit(t, path + [t])
        seen[m] = 2

    for m in sorted(graph):
        if m not in seen:
            visit(m, [m])


def test_test_modules_share_through_conftest_and_helpers_only():
    """A test module never imports another (a rename or a moved constant then breaks only one file)."""
    for p in files("tests"):
        tests_imported = sorted(m for m in imports(p) if m.split(".")[0].startswith("test_"))
        assert not tests_imported, f"{p.name} imports {tests_imported}: move what they share to tests/helpers.py"
