"""The embedded default model: cached conversion, and it really knows Harry Potter."""
import json

import pytest

from conftest import run_cli


@pytest.mark.slow
def test_inspect_cli_knows_hermione():
    r = run_cli("inspect", "Harry Potter's two best friends are Ron and", "--json", "--top-k", "5")
    assert r.returncode == 0, r.stderr
    last = json.loads(r.stdout)["positions"][-1]["baseline"]
    assert last[0]["token"] == " Herm" and last[0]["prob"] > 0.5


def test_second_load_reads_the_cached_safetensors(embedded_dir, monkeypatch):
    """Once converted, loading never touches the GGUF again (its timing is in bench/inspect.py)."""
    import transformers

    from engine.models import ModelConfig, load_model

    seen = []
    original = transformers.AutoModelForCausalLM.from_pretrained
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                        lambda *a, **k: seen.append((a, k)) or original(*a, **k))
    load_model(ModelConfig())
    assert len(seen) == 1 and "gguf_file" not in seen[0][1]
    assert (embedded_dir / "model.safetensors").exists()
