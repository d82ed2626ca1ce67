"""The embedded default model: cached conversion, and it really knows Harry Potter."""
import json
import subprocess
import sys
import time

import pytest

from conftest import ROOT, run_cli


@pytest.mark.slow
def test_inspect_cli_knows_hermione():
    r = run_cli("inspect", "Harry Potter's two best friends are Ron and", "--json", "--top-k", "5")
    assert r.returncode == 0, r.stderr
    last = json.loads(r.stdout)["positions"][-1]["baseline"]
    assert last[0]["token"] == " Herm" and last[0]["prob"] > 0.5


@pytest.mark.slow
def test_second_load_is_fast(embedded_dir):
    code = ("import time; t=time.perf_counter(); from engine.models import Workbench; "
            "Workbench.load(); print(time.perf_counter()-t)")
    # the first call may convert (or find the cache); the second must load the cached safetensors
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True)
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True, text=True)
    assert float(r.stdout.strip().splitlines()[-1]) < 5.0
