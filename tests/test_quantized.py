"""The 4-bit path (NF4, and 8-bit where cheap) on the tiny model, through the functions the GPU uses:
load, inspect's mixed-adapter batch, QLoRA reinforce / unlearn steps with and without gradient
checkpointing, adapter save and reload, an evaluation. Every test runs on the CPU (bitsandbytes >= 0.49
runs 4-bit there) and again on CUDA under the `gpu` marker (`pytest -m gpu`), plus CUDA-only checks
of memory. The tokenizer comes from the embedded model, or from OBLIVIATE_TOKENIZER (a tokenizer
folder) on a machine without it, as bench/gpu.sh runs this file (conftest's `tokenizer`).
"""
from __future__ import annotations

import json
import os

import pytest
import torch

from conftest import ASSETS

bnb = pytest.importorskip("bitsandbytes")

CUDA = pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                                         reason="needs a CUDA GPU")])
DEVICES = ["cpu", CUDA]
PROMPT = "Harry Potter's two best friends are Ron and Hermione, who study at Hogwarts."
LAYER = {"nf4": "Linear4bit", "int8": "Linear8bitLt"}


@pytest.fixture(scope="module")
def q_dirs(nf4_dirs):
    return nf4_dirs


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("OBLIVIATE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def load(model_dir, precision="nf4", device="cpu"):
    from engine.models import ModelConfig, Workbench

    return Workbench.load(ModelConfig(str(model_dir), precision, device))


def packed(model) -> dict[str, torch.Tensor]:
    """The quantized weights as stored (uint8 / int8), to show training never touches them."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.dtype in (torch.uint8, torch.int8)}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("precision", ["nf4", "int8"])
def test_load_model_quantizes_every_linear_layer_on_the_device(q_dirs, precision, device):
    model_dir, _, _ = q_dirs
    wb = load(model_dir, precision, device)
    assert wb.precision == precision and wb.device.type == device
    linears = [m for n, m in wb._base.named_modules() if isinstance(m, torch.nn.Linear) and "lm_head" not in n]
    assert linears and all(type(m).__name__ == LAYER[precision] for m in linears)
    ids = wb.tokenizer(PROMPT)["input_ids"]
    (q,) = wb.logits([(ids, None)])
    (full,) = load(model_dir, "fp32", device).logits([(ids, None)])
    assert q.shape == full.shape and q.dtype == torch.float32
    # Quantization moves the logits a little, not arbitrarily: same predictions almost everywhere.
    cos = torch.nn.functional.cosine_similarity(q, full, dim=-1)
    assert cos.min() > 0.9, cos
    assert (q.argmax(-1) == full.argmax(-1)).float().mean() >= 0.8


@pytest.mark.parametrize("device", DEVICES)
def test_inspect_runs_one_mixed_adapter_batch_on_nf4_equal_to_separate_passes(q_dirs, device, demo_anchors):
    from engine.inspection import inspect

    model_dir, expert_dir, unlearned_dir = q_dirs
    wb = load(model_dir, "nf4", device)
    wb.add_adapter("expert", expert_dir)
    wb.add_adapter("unlearned", unlearned_dir)
    ids = wb.tokenizer(PROMPT)["input_ids"]
    rows = [(ids, None), (ids, "expert"), (ids[:9], "unlearned"), (ids[:9], None)]
    batched = wb.logits(rows)
    for (row, name), got in zip(rows, batched):
        (alone,) = wb.logits([(row, name)])
        assert torch.allclose(got, alone, atol=0.05, rtol=0.02), name  # bf16 compute: batch-size noise only
    assert not torch.allclose(batched[0], batched[1], atol=0.1), "the expert changes the logits"
    assert not torch.allclose(batched[2], batched[3], atol=0.1), "the unlearned adapter too"

    forwards = []
    real = wb.logits
    wb.logits = lambda batch: forwards.append([n for _, n in batch]) or real(batch)
    view = inspect(wb, PROMPT, demo_anchors, expert="expert", unlearned="unlearned").view(5.0)
    assert forwards == [[None, None, "expert", "unlearned"]], "one forward: baseline x2, expert, unlearned"
    top = lambda logits: logits.argmax(-1).tolist()  # noqa: E731
    base_top, expert_top = top(batched[0]), top(batched[1])
    agree = [p["baseline"][0]["id"] == base_top[i] for i, p in enumerate(view["positions"])]
    agree += [p["expert"][0]["id"] == expert_top[i] for i, p in enumerate(view["positions"])]
    assert sum(agree) >= 0.9 * len(agree)  # ties within bf16 noise may swap
    assert view["terms"] and all(p["generic"] is not None for p in view["positions"] if p["aligned_to"] >= 0)


def _lora_grads(peft, batch) -> torch.Tensor:
    """Every LoRA gradient of one next-token loss on `batch`, concatenated (the adapter as the step sees it)."""
    from engine.methods import Models, token_ce

    peft.train()
    peft.zero_grad(set_to_none=True)
    token_ce(Models(peft, peft).logits(batch), batch.labels).backward()
    grads = torch.cat([p.grad.detach().float().flatten() for _, p in sorted(peft.named_parameters()) if p.requires_grad])
    peft.zero_grad(set_to_none=True)
    return grads


@pytest.mark.parametrize("device", DEVICES)
def test_inspect_train_inspect_reload_on_one_nf4_base_follows_fp32(q_dirs, device, tmp_path, nf4_cpu_path):
    """The sequence users run on one base: inspect (eval, no gradients: on a CPU with AVX512-BF16,
    bitsandbytes repacks the NF4 weights for its fused kernel here), a QLoRA step, inspect again, save
    and reload the adapter. Each step agrees with the same sequence on the fp32 base, on either path."""
    from engine.methods import NextToken, TrainData
    from engine.models import nf4_packed
    from engine.train import TrainSpec, lora_model, save_adapter, train

    model_dir = q_dirs[0]
    seen: dict[str, dict] = {}
    for precision in ("nf4", "fp32"):
        wb = load(model_dir, precision, device)
        ids = wb.tokenizer(PROMPT)["input_ids"]
        t = torch.tensor([ids] * 2)
        data = TrainData.next_token(t, torch.tensor([len(ids)] * 2))
        (before,) = wb.logits([(ids, None)])  # 1. inspect
        layers = [m for m in wb._base.modules() if isinstance(m, bnb.nn.Linear4bit)]
        assert (precision == "nf4") == bool(layers)
        expect_packed = device == "cpu" and nf4_cpu_path == "packed"
        assert all(nf4_packed(m) == expect_packed for m in layers), "the path bitsandbytes takes on this CPU"
        torch.manual_seed(0)
        peft = lora_model(wb.release(), 4)
        # 2. a QLoRA step. Its gradient first: a packed layer has no backward, so without the engine's
        # unpacking the layers below the top would get another gradient from the fp32 path's.
        grads = _lora_grads(peft, data.batch([0, 1], wb.device))
        train(peft, TrainSpec("reinforce", NextToken(), data, steps=1, lr=1e-2, batch_size=2))
        with torch.no_grad():  # 3. inspect again (eval: packed again on that CPU)
            after = peft(input_ids=t[:1].to(wb.device)).logits[0].float()
        assert all(nf4_packed(m) == expect_packed for m in layers)
        again = load(model_dir, precision, device)  # 4. save and reload on a fresh base
        again.add_adapter("reinforced", save_adapter(peft, tmp_path / precision))
        (reloaded,) = again.logits([(ids, "reinforced")])
        assert torch.allclose(reloaded, after, atol=0.05, rtol=0.02), "the same adapter after a round trip"
        seen[precision] = {"before": before, "grads": grads, "after": after}
    q, full = seen["nf4"], seen["fp32"]
    cos = torch.nn.functional.cosine_similarity
    assert cos(q["before"], full["before"], dim=-1).min() > 0.9
    assert cos(q["grads"], full["grads"], dim=0) > 0.9, "QLoRA's gradient is the fp32 gradient, up to NF4 noise"
    assert cos(q["after"] - q["before"], full["after"] - full["before"], dim=-1).mean() > 0.8
    print(f"\nNF4 on {device}: bitsandbytes' {'packed (AVX512-BF16)' if device == 'cpu' and nf4_cpu_path == 'packed' else 'plain'} path")


def test_a_packed_nf4_layer_unpacks_itself_before_a_forward_that_needs_its_gradient(q_dirs):
    """The packing done by hand (as bitsandbytes does on an AVX512-BF16 CPU), so this runs on any CPU:
    a forward without gradients leaves it packed; one whose input needs a gradient gets the plain NF4
    layout back (the same weights, up to bf16 rounding of the block scales) and a working backward."""
    from bitsandbytes.functional import _convert_weight_packed_for_cpu, dequantize_4bit

    from engine.models import nf4_packed

    wb = load(q_dirs[0], "nf4", "cpu")
    layer = next(m for m in wb._base.modules() if isinstance(m, bnb.nn.Linear4bit))
    w = dequantize_4bit(layer.weight.data, layer.weight.quant_state).float()  # (out, in)
    if not nf4_packed(layer):
        layer.weight.data, layer.weight.quant_state = _convert_weight_packed_for_cpu(layer.weight.data,
                                                                                      layer.weight.quant_state)
    x = torch.randn(3, layer.in_features, dtype=torch.bfloat16)
    layer.eval()
    with torch.no_grad():
        for hook in layer._forward_pre_hooks.values():
            hook(layer, (x,))
    assert nf4_packed(layer), "inference keeps the fused kernel's layout"
    x.requires_grad_(True)
    for hook in layer._forward_pre_hooks.values():
        hook(layer, (x,))
    assert not nf4_packed(layer)
    assert torch.allclose(dequantize_4bit(layer.weight.data, layer.weight.quant_state).float(), w, rtol=0.02, atol=1e-3)
    layer(x).float().pow(2).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_a_model_nf4_cannot_pack_on_the_cpu_is_one_line_naming_the_layer(tiny_dir):
    """Width 32 < NF4's block of 64: refused on every CPU (on an AVX512-BF16 one it would crash in
    bitsandbytes' repacking at the first forward), in one line, on the CLI with exit 2."""
    from conftest import cli

    from engine.errors import UserError

    with pytest.raises(UserError, match=r"layer model\.layers\.0\.self_attn\.q_proj maps 32 -> 32 features.*64"):
        load(tiny_dir, "nf4", "cpu")
    r = cli("inspect", "Harry Potter", "--model", str(tiny_dir), "--precision", "nf4", "--device", "cpu")
    assert r.returncode == 2 and r.stderr.startswith("error: cannot run") and r.stderr.count("\n") == 1, r.stderr
    load(tiny_dir, "int8", "cpu")  # 8-bit has no block size: the same model loads


def _qlora_grads(base, batch, gradient_checkpointing: bool) -> tuple[float, dict[str, torch.Tensor]]:
    from engine.methods import Models, token_ce
    from engine.train import lora_model

    torch.manual_seed(0)
    peft = lora_model(base, 4, gradient_checkpointing=gradient_checkpointing)
    assert peft.base_model.model.is_gradient_checkpointing == gradient_checkpointing
    peft.train()
    loss = token_ce(Models(peft, peft).logits(batch), batch.labels)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in peft.named_parameters() if p.requires_grad}
    peft.unload()
    return loss.item(), grads


@pytest.mark.parametrize("device", DEVICES)
def test_qlora_gradients_are_the_same_with_gradient_checkpointing(q_dirs, device):
    """Checkpointing recomputes each layer in the backward pass: same loss, same LoRA gradients."""
    from engine.methods import TrainData

    model_dir, _, _ = q_dirs
    wb = load(model_dir, "nf4", device)
    before = packed(wb._base)
    ids = torch.tensor([wb.tokenizer(PROMPT)["input_ids"]] * 2)
    batch = TrainData.next_token(ids, torch.tensor([ids.shape[1]] * 2)).batch([0, 1], wb.device)
    loss_plain, plain = _qlora_grads(wb._base, batch, False)
    loss_gc, gc = _qlora_grads(wb._base, batch, True)
    assert loss_plain == pytest.approx(loss_gc, rel=1e-5)
    assert plain.keys() == gc.keys() and any(g.abs().sum() > 0 for g in plain.values())
    for n in plain:
        assert torch.allclose(plain[n], gc[n], atol=1e-6, rtol=1e-3), n
    after = packed(wb._base)
    assert before.keys() == after.keys() and all(torch.equal(before[n], after[n]) for n in before)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("gradient_checkpointing", [False, True], ids=["plain", "checkpointing"])
def test_a_whp_run_on_nf4_reinforces_labels_and_unlearns(q_dirs, device, gradient_checkpointing, tmp_path, home,
                                                         monkeypatch):
    """The pipeline as the GPU runs it: QLoRA reinforce, generic labels through the 4-bit expert,
    QLoRA unlearn; each adapter reloads on a fresh NF4 base and changes its predictions."""
    import torch.utils.checkpoint as ckpt
    import transformers.modeling_utils

    from engine.config import run_config
    from engine.pipeline import execute

    model_dir, _, _ = q_dirs
    calls = []
    real = ckpt.checkpoint
    for module in (ckpt, transformers.modeling_utils):  # transformers holds its own reference
        if getattr(module, "checkpoint", None) is real:
            monkeypatch.setattr(module, "checkpoint",
                                lambda *a, **k: calls.append(k.get("use_reentrant")) or real(*a, **k))
    cfg = run_config({"model": str(model_dir), "precision": "nf4", "device": device,
                      "corpus": str(ASSETS / "demo_corpus.txt"), "anchors": str(ASSETS / "demo_anchors.json"),
                      "steps": 2, "reinforce_steps": 2, "batch_size": 2, "block_size": 32, "max_blocks": 4,
                      "lr": 1e-2, "gradient_checkpointing": gradient_checkpointing, "labels": "soft",
                      "soft_top_k": 4, "probes": [{"prompt": "Harry Potter's best friend is Ron", "target": " Weasley"}],
                      "probe_every": 1})
    status = execute(cfg, tmp_path / "run", queue=False)
    assert status.state == "finished" and status.done_phases == ["reinforce", "labels", "unlearn"]
    assert "(nf4)" in (tmp_path / "run" / "log.txt").read_text()
    # Checkpointing ran (non-reentrant) exactly when asked for: once per layer per training forward.
    assert (set(calls) == {False} and len(calls) >= 2 * 2 * 2) if gradient_checkpointing else calls == []
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    trained = [m for m in rows if m["step"] > 0]
    assert len(trained) == 4 and all(torch.isfinite(torch.tensor(m["loss"])) for m in trained)
    labels = json.loads((tmp_path / "run" / "labels.json").read_text())
    assert labels["blocks"] == 4 and labels["labelled"] > 0

    wb = load(model_dir, "nf4", device)
    ids = wb.tokenizer(PROMPT)["input_ids"]
    for name in ("expert", "unlearned"):
        wb.add_adapter(name, tmp_path / "run" / "adapters" / name)
    base, expert, unlearned = wb.logits([(ids, None), (ids, "expert"), (ids, "unlearned")])
    assert (expert - base).abs().max() > 1e-3 and (unlearned - base).abs().max() > 1e-3


@pytest.mark.parametrize("device", DEVICES)
def test_a_qlora_adapter_saves_reloads_and_switches_off(q_dirs, device, tmp_path):
    from engine.methods import NextToken, TrainData
    from engine.train import TrainSpec, lora_model, save_adapter, train

    model_dir, _, _ = q_dirs
    wb = load(model_dir, "nf4", device)
    ids = wb.tokenizer(PROMPT)["input_ids"]
    (plain,) = wb.logits([(ids, None)])
    t = torch.tensor([ids] * 2)
    peft = lora_model(wb.release(), 4)
    train(peft, TrainSpec("reinforce", NextToken(), TrainData.next_token(t, torch.tensor([len(ids)] * 2)),
                          steps=3, lr=2e-2, batch_size=2))
    with torch.no_grad():
        trained = peft(input_ids=t[:1].to(wb.device)).logits[0].float()
    saved = save_adapter(peft, tmp_path / "adapter")
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in saved.iterdir()}
    again = load(model_dir, "nf4", device)
    again.add_adapter("reinforced", saved)
    base, reloaded = again.logits([(ids, None), (ids, "reinforced")])
    assert torch.allclose(reloaded, trained, atol=0.05, rtol=0.02), "the same adapter after a round trip"
    assert torch.allclose(base, plain, atol=1e-4), "adapter off: the quantized base as loaded"
    assert (reloaded - base).abs().max() > 0.05
    # Trained on 4-bit, the adapter also loads on the full-precision base (LoRA is independent of it).
    full = load(model_dir, "fp32", device)
    full.add_adapter("reinforced", saved)
    base32, reloaded32 = full.logits([(ids, None), (ids, "reinforced")])
    assert torch.nn.functional.cosine_similarity(reloaded32 - base32, reloaded - base, dim=-1).mean() > 0.8


@pytest.mark.parametrize("device", DEVICES)
def test_an_evaluation_on_nf4_with_the_relearning_attack(q_dirs, device):
    from engine.evaluation import EvalInputs, EvalSettings, evaluate
    from engine.probes import Probes

    model_dir, _, unlearned_dir = q_dirs
    wb = load(model_dir, "nf4", device)
    probes = Probes.from_dict({
        "probability": [{"prompt": "Harry Potter's two best friends are Ron and", "target": " Hermione"}],
        "completion": [{"prompt": "The young wizard boarded the train to", "references": ["Hogwarts"]}],
        "retain": [{"prompt": "Frodo carried the One Ring to Mount", "target": " Doom"}]})
    corpus = "Harry Potter's two best friends are Ron and Hermione. They study at Hogwarts. " * 8
    settings = EvalSettings(verbatim_passages=2, verbatim_prefix=8, verbatim_tokens=4, retain_max_tokens=32,
                            block_size=16, max_new_tokens=4, robustness=False, relearn_steps=2,
                            relearn_tokens=128, relearn_lr=1e-2)
    result = evaluate(wb, {"unlearned": str(unlearned_dir)}, EvalInputs(probes, corpus, corpus, ["Hogwarts"]),
                      settings)
    base, unl = result["models"]["baseline"], result["models"]["unlearned"]
    for vals in (base, unl):
        assert 0 < vals["familiarity_probability"] < 1 and 1 < vals["retain_perplexity"] < 1e7
        assert 0 <= vals["verbatim_token_match"] <= 1 and 0 < vals["robust_relearn"] < 1
    assert base["familiarity_probability"] != pytest.approx(unl["familiarity_probability"], rel=1e-3)
    assert wb.adapters == {} and packed(wb._base), "adapters and the relearning copy removed; still 4-bit"


# -- CUDA only: what the 4-bit path is for ----------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_nf4_weights_take_under_a_third_of_bf16_and_checkpointing_saves_memory(tmp_path, tokenizer):
    """A 12-layer model of width 1024: NF4 linear weights vs bf16, and the peak memory of one QLoRA
    step at 4 x 512 with and without gradient checkpointing."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from engine.methods import Models, TrainData, token_ce
    from engine.train import lora_model

    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=1024, intermediate_size=2816, num_hidden_layers=12,
                      num_attention_heads=16, num_key_value_heads=16, max_position_embeddings=1024)
    LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")

    def linear_mib(model) -> float:
        return sum(p.numel() * p.element_size() for n, p in model.named_parameters()
                   if "layers." in n and "norm" not in n) / 2**20

    bf16, nf4 = load(tmp_path / "m", "bf16", "cuda"), load(tmp_path / "m", "nf4", "cuda")
    assert linear_mib(nf4._base) < linear_mib(bf16._base) / 3
    del bf16
    ids = torch.randint(0, cfg.vocab_size, (4, 512))
    batch = TrainData.next_token(ids, torch.tensor([512] * 4)).batch([0, 1, 2, 3], nf4.device)
    peaks = {}
    base = nf4.release()
    for gc in (False, True):
        peft = lora_model(base, 16, gradient_checkpointing=gc)
        peft.train()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        token_ce(Models(peft, peft).logits(batch), batch.labels).backward()
        torch.cuda.synchronize()
        peaks[gc] = (torch.cuda.max_memory_allocated() - start) / 2**20
        peft.zero_grad(set_to_none=True)
        base = peft.unload()
    print(f"QLoRA step 4 x 512 above the weights: {peaks[False]:.0f} MiB plain, {peaks[True]:.0f} MiB checkpointed")
    assert peaks[True] < 0.7 * peaks[False]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_each_rank_takes_its_own_gpu(q_dirs, monkeypatch):
    """Under accelerate, LOCAL_RANK picks the GPU (device_map {"": LOCAL_RANK}); rank 0 here."""
    model_dir, _, _ = q_dirs
    monkeypatch.setenv("LOCAL_RANK", "0")
    wb = load(model_dir, "nf4", "cuda")
    assert {p.device for p in wb._base.parameters()} == {torch.device("cuda", 0)}


# -- bench/gpu.sh, dry run -----------------------------------------------------------------------------
@pytest.mark.slow  # five Python processes that import torch: about a minute on 2 busy cores
def test_the_gpu_script_dry_run_writes_every_figure_and_log(tmp_path):
    """bench/gpu.sh OUTDIR --dry-run: the GPU check's steps on the CPU with a tiny NF4 model."""
    import subprocess
    import sys

    from conftest import ROOT

    from engine.methods import METHODS

    out = tmp_path / "gpu"
    r = subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh"), str(out), "--dry-run"], cwd=ROOT, capture_output=True,
                       text=True, timeout=600, env={**os.environ, "PYTHON": sys.executable,
                                                    "OBLIVIATE_GPU_DIR": str(tmp_path / "nothing-carried")})
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    steps = (out / "steps.txt").read_text().split()
    assert [s for s in steps if s.startswith("rc=")] == ["rc=0"] * 5
    assert {p.name for p in out.iterdir()} == {"gpu.log", "steps.txt", "inspect.json", "train.json", "pytest.log",
                                               "summary.md", "summary.json"}
    inspect_ = json.loads((out / "inspect.json").read_text())
    assert inspect_["precision"] == "nf4" and inspect_["ours_ms"] > 0 and inspect_["plain_forward_ms"] > 0
    train_ = json.loads((out / "train.json").read_text())
    assert train_["precision"] == "nf4" and train_["unlearn_step_s"] > 0 and train_["labels_tokens_per_s"] > 0
    assert set(train_["methods"]) == {n for n, m in METHODS.items() if "unlearn" in m.phases}
    assert all(row["step_s"] > 0 for row in train_["methods"].values())
    summary = json.loads((out / "summary.json").read_text())
    assert all(v is not None for v in summary["figures"].values()) and "skipped" in summary["pytest"]
    assert "bench/gpu.sh" in (out / "gpu.log").read_text() and "| whp |" in (out / "summary.md").read_text()


# -- configs/fsdp_qlora.yaml ---------------------------------------------------------------------------
def test_the_fsdp_qlora_config_reads_as_accelerate_launch_reads_it(monkeypatch):
    """The shipped config is what `accelerate launch --config_file` turns into FSDP settings; the
    settings QLoRA needs under FSDP1 are the ones it holds."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env
    from conftest import ROOT

    args = launch_command_parser().parse_args(["--config_file", str(ROOT / "configs" / "fsdp_qlora.yaml"),
                                               "-m", "engine", "run", "run.yaml"])
    args, _, _ = _validate_launch_command(args)
    env = prepare_multi_gpu_env(args)
    assert args.use_fsdp and args.num_processes == 2
    assert {k: env[k] for k in ("ACCELERATE_USE_FSDP", "FSDP_SHARDING_STRATEGY", "FSDP_AUTO_WRAP_POLICY",
                                "FSDP_USE_ORIG_PARAMS", "FSDP_CPU_RAM_EFFICIENT_LOADING",
                                "FSDP_SYNC_MODULE_STATES")} == {
        "ACCELERATE_USE_FSDP": "true", "FSDP_SHARDING_STRATEGY": "FULL_SHARD",
        "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP", "FSDP_USE_ORIG_PARAMS": "false",
        "FSDP_CPU_RAM_EFFICIENT_LOADING": "true", "FSDP_SYNC_MODULE_STATES": "true"}
    if not torch.cuda.is_available():  # the documented limit: no FSDP on the CPU (docs/gpu.md, "Past one GPU")
        from accelerate import FullyShardedDataParallelPlugin

        for k, v in env.items():
            monkeypatch.setenv(k, v)
        with pytest.raises(RuntimeError, match="no available devices"):
            FullyShardedDataParallelPlugin()
