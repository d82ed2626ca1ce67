"""Write the hash locks `make setup` installs from: `make lock` after changing a pin.

requirements.lock      the runtime closure of requirements.txt, every package `==` with its hashes
requirements-dev.lock  the same for requirements.txt + requirements-dev.txt (what `make test` installs)
requirements-nodeps.txt, requirements-gemma.txt keep their own `--hash` lines (--no-deps installs)

pip resolves the closure (`pip install --dry-run --report`); each pinned version then carries the
sha256 of every file PyPI has for it (any CPU, any wheel tag: pip checks the one it picks) and of the
file pip picked here (torch's CPU build is a local wheel, not on PyPI). Nothing is installed.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEADER = ("# Written by `make lock` (.ci/lock.py) from {src}: do not edit; change the pin there and re-lock.\n"
          "# `make setup` installs this with --require-hashes: a file whose sha256 is not listed is refused.\n")


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pypi_hashes(name: str, version: str) -> set[str]:
    """sha256 of every file PyPI's simple index lists for name==version (wheels of every tag, sdists)."""
    with urllib.request.urlopen(f"https://pypi.org/simple/{norm(name)}/", timeout=60) as r:
        page = r.read().decode()
    out = set()
    for filename, digest in re.findall(r'href="[^"]*/([^/"#]+)#sha256=([0-9a-f]{64})"', page):
        if filename.endswith(".whl"):
            fname, fversion = filename.split("-")[:2]
        else:
            stem = re.sub(r"\.(tar\.gz|zip|tar\.bz2)$", "", filename)
            fname, _, fversion = stem.rpartition("-")
        if norm(fname) == norm(name) and fversion == version:
            out.add(digest)
    return out


def resolve(files: list[str], no_deps: bool = False) -> list[tuple[str, str, set[str]]]:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        args = [sys.executable, "-m", "pip", "install", "-q", "--dry-run", "--ignore-installed",
                "--report", str(report)] + (["--no-deps"] if no_deps else [])
        for f in files:
            args += ["-r", str(ROOT / f)]
        subprocess.run(args, check=True, stderr=subprocess.DEVNULL)
        items = json.loads(report.read_text())["install"]
    out = []
    for item in items:
        name, version = item["metadata"]["name"], item["metadata"]["version"]
        here = item["download_info"].get("archive_info", {}).get("hashes", {}).get("sha256")
        public = version.split("+")[0]  # torch 2.13.0+cpu: pinned as 2.13.0, which the local build satisfies
        hashes = ({here} if here else set()) | (set() if "+" in version else pypi_hashes(name, version))
        out.append((name, public, hashes))
    return sorted(out, key=lambda t: norm(t[0]))


def write(path: Path, src: str, rows) -> None:
    lines = [HEADER.format(src=src)]
    for name, version, hashes in rows:
        lines.append(f"{norm(name)}=={version} \\\n" + " \\\n".join(f"    --hash=sha256:{h}" for h in sorted(hashes)) + "\n")
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(lines))
    tmp.replace(path)
    print(f"{path.name}: {len(rows)} packages")


def pin_nodeps(path: Path) -> None:
    """requirements-nodeps.txt keeps its comments; each `name==version` line gets its hashes."""
    hashes = {norm(n): (v, h) for n, v, h in resolve([path.name], no_deps=True)}
    out = []
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("--hash"):
            continue  # the old hashes: written afresh below
        if line.startswith("#") or not line.strip():
            out.append(line)
            continue
        name = norm(line.split("==")[0].strip())
        version, hs = hashes[name]
        out.append(f"{name}=={version} \\\n" + " \\\n".join(f"    --hash=sha256:{h}" for h in sorted(hs)))
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(out) + "\n")
    tmp.replace(path)
    print(f"{path.name}: {len(hashes)} packages")


def main() -> None:
    pin_nodeps(ROOT / "requirements-nodeps.txt")
    pin_nodeps(ROOT / "requirements-gemma.txt")
    write(ROOT / "requirements.lock", "requirements.txt", resolve(["requirements.txt"]))
    write(ROOT / "requirements-dev.lock", "requirements.txt + requirements-dev.txt",
          resolve(["requirements.txt", "requirements-dev.txt"]))


if __name__ == "__main__":
    main()
