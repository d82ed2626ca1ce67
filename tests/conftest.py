"""Shared fixtures: the embedded tokenizer, a tiny random Llama with it, LoRA adapters on it.

The tiny model has the real SmolLM2 vocabulary (so translation and alignment see real token
forms) but 2 layers of width 32, so a forward pass takes milliseconds.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: see engine/__init__.py

ROOT = Path(__file__).resolve().parents[1]  # engine and app are installed (`pip install -e .` in make setup)
ASSETS = ROOT / "assets"


@pytest.fixture(scope="session")
def embedded_dir() -> Path:
    from engine.models import embedded_path

    return embedded_path()


@pytest.fixture(scope="session")
def tokenizer():
    """The embedded model's tokenizer, or OBLIVIATE_TOKENIZER's (a tokenizer folder: bench/gpu.sh runs
    the 4-bit tests on a machine without the embedded model)."""
    from transformers import AutoTokenizer

    from engine.models import embedded_path

    return AutoTokenizer.from_pretrained(os.environ.get("OBLIVIATE_TOKENIZER") or embedded_path())


def make_tiny_llama(path: Path, tokenizer, seed: int = 0, context: int = 256, layers: int = 2,
                    hidden: int = 32) -> Path:
    """Width 32 for speed; `hidden=64` for the 4-bit tests, whose every linear layer must fit NF4's
    block of 64 inputs (and bitsandbytes' CPU tiles of 32 outputs: the KV projections are 2 x 16)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=context,
        tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def make_lora(path: Path, model_dir: Path, seed: int = 1, r: int = 4) -> Path:
    """A LoRA adapter with random (non-zero) A and B, so it really changes the logits."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    cfg = LoraConfig(r=r, lora_alpha=2 * r, target_modules="all-linear", init_lora_weights=False)
    peft_model = get_peft_model(base, cfg)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_" in n:
                p.normal_(0, 0.5)
    peft_model.save_pretrained(path)
    return path


def make_tiny_gemma(path: Path, tokenizer, seed: int = 0, layers: int = 2, hidden: int = 64) -> Path:
    """A random Gemma-3-shaped model (Gemma3ForCausalLM: sliding and global attention layers, q/k norms,
    tied embeddings, the 262k vocabulary) with the real Gemma tokenizer: width 64 fits NF4's blocks."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(seed)
    cfg = Gemma3TextConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512, sliding_window=16,
        layer_types=["sliding_attention", "full_attention"][:layers] + ["full_attention"] * max(0, layers - 2),
        tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    Gemma3ForCausalLM(cfg).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def gemma_tokenizer():
    """Gemma 3's real tokenizer (262k pieces), from the embedded Gemma package (`make setup-gemma`, which
    `make test` runs); converted from its GGUF once per machine."""
    import importlib.util

    from transformers import AutoTokenizer

    from engine.models import EMBEDDED_MODELS, embedded_tokenizer

    if importlib.util.find_spec(EMBEDDED_MODELS["embedded:gemma3-270m"].package) is None:
        pytest.skip("the Gemma package is missing: `make setup-gemma` (make test installs it)")
    return AutoTokenizer.from_pretrained(embedded_tokenizer("embedded:gemma3-270m"))


@pytest.fixture(scope="session")
def tiny_gemma_dir(tmp_path_factory, gemma_tokenizer) -> Path:
    return make_tiny_gemma(tmp_path_factory.mktemp("tiny-gemma") / "model", gemma_tokenizer)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, tokenizer) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny") / "model", tokenizer)


@pytest.fixture(scope="session")
def tiny_expert_dir(tmp_path_factory, tiny_dir) -> Path:
    return make_lora(tmp_path_factory.mktemp("tiny-expert") / "expert", tiny_dir, seed=1)


@pytest.fixture(scope="session")
def tiny_unlearned_dir(tmp_path_factory, tiny_dir) -> Path:
    return make_lora(tmp_path_factory.mktemp("tiny-unlearned") / "unlearned", tiny_dir, seed=2)


@pytest.fixture(scope="session")
def nf4_dirs(tmp_path_factory, tokenizer) -> tuple[Path, Path, Path]:
    """(a tiny model of width 64, an expert LoRA, an unlearned LoRA), made in fp32 for the 4-bit tests:
    every linear layer fits NF4's block size, so bitsandbytes' packed CPU path can run it too."""
    root = tmp_path_factory.mktemp("nf4")
    model = make_tiny_llama(root / "model", tokenizer, hidden=64)
    return model, make_lora(root / "expert", model, seed=1), make_lora(root / "unlearned", model, seed=2)


@pytest.fixture()
def tiny_wb(tiny_dir):
    from engine.models import ModelConfig, Workbench

    return Workbench.load(ModelConfig(str(tiny_dir)))


@pytest.fixture(scope="session")
def nf4_cpu_path() -> str:
    """Which NF4 path bitsandbytes takes on this CPU: "packed" (AVX512-BF16: a fused kernel, weights
    repacked at the first eval forward) or "plain". Tests cover both; the summary says which ran."""
    from bitsandbytes.functional import has_avx512bf16

    return "packed" if has_avx512bf16() else "plain"


@pytest.fixture(scope="session")
def embedded_wb():
    from engine.models import ModelConfig, Workbench

    return Workbench.load(ModelConfig())


@pytest.fixture(scope="session")
def demo_anchors():
    from engine.anchors import load_anchors

    path = ASSETS / "demo_anchors.json"
    if not path.exists():
        pytest.skip("assets/demo_anchors.json not written yet")
    return load_anchors(path)


def run_cli(*args: str, env: dict | None = None):
    """`python -m engine ...` in a subprocess, as a user runs it."""
    import subprocess

    return subprocess.run(
        [sys.executable, "-m", "engine", *args], cwd=ROOT, capture_output=True, text=True,
        env={**os.environ, **(env or {})}, timeout=600,
    )


def cli(*args: str, env: dict | None = None):
    """`engine.cli.main(args)` in this process (no interpreter start-up, no re-import: seconds per call):
    for tests of what a verb does, not of the process around it (those use run_cli)."""
    import contextlib
    import io
    import subprocess

    from engine.cli import main

    out, err = io.StringIO(), io.StringIO()
    saved = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as e:  # argparse's usage errors
                code = e.code if isinstance(e.code, int) else 2
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    return subprocess.CompletedProcess(["engine", *args], code or 0, out.getvalue(), err.getvalue())


def open_page(page: str, timeout: float = 60):
    """The workbench through app/main.py (sidebar and all), switched to pages/<page>.py, run once."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=timeout).run()
    at.switch_page(f"../pages/{page}.py").run()
    assert not at.exception, at.exception
    return at


@pytest.fixture()
def app_env(monkeypatch, tmp_path, tiny_dir, tmp_path_factory):
    """The workbench's environment for AppTests: the tiny model, a fresh OBLIVIATE_HOME (yielded), and
    the tests' temporary folders as a browser root (the owner's OBLIVIATE_BROWSER_ROOTS), where the
    session's adapters live; tests of the trust boundary remove it."""
    import streamlit as st

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("OBLIVIATE_MODEL", str(tiny_dir))
    monkeypatch.setenv("OBLIVIATE_HOME", str(home))
    monkeypatch.setenv("OBLIVIATE_BROWSER_ROOTS", str(tmp_path_factory.getbasetemp()))
    monkeypatch.delenv("OBLIVIATE_ANCHORS", raising=False)
    st.cache_resource.clear()  # the Workbench and inspections are process-wide: start each test clean
    st.cache_data.clear()
    yield home
    st.cache_resource.clear()


def pytest_terminal_summary(terminalreporter):
    """Say which NF4 path the 4-bit tests took on this CPU (it differs between machines)."""
    try:
        from bitsandbytes.functional import has_avx512bf16
    except ImportError:
        return
    path = "packed, AVX512-BF16" if has_avx512bf16() else "plain: no AVX512-BF16 on this CPU"
    terminalreporter.write_line(f"bitsandbytes NF4 on the CPU: {path}")


@pytest.fixture()
def home_with_a_run(app_env, tiny_unlearned_dir):
    """A fresh OBLIVIATE_HOME (app_env) holding one finished run r1 with an unlearned adapter and curves."""
    home = app_env
    run = home / "runs" / "r1"
    shutil.copytree(tiny_unlearned_dir, run / "adapters" / "unlearned")
    (run / "config.json").write_text(json.dumps({"method": "whp"}))
    (run / "status.json").write_text(json.dumps({"state": "finished", "kind": "run", "created": "2026-01-01T00:00:00"}))
    rows = [{"step": s, "phase": "unlearn", "loss": 1.0, "familiarity": 0.4 / (s + 1), "retain": 0.3,
             "probes": {"P(' Hermione' | …Ron and)": 0.5 / (s + 1), "P(' Doom' | …to Mount)": 0.3}} for s in (0, 10, 20)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return home
