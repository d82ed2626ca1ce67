"""Inspect of a 512-token prompt (baseline + expert + generic), against references measured in the same run.

    ours       engine.inspect: one batched PEFT mixed-adapter forward, generic and top-k on the device
    reference  the naive way: baseline and expert as separate forward passes, generic and top-k per
               position in Python on the CPU
    plain      one plain batched forward of the same sequences with no adapter (the floor)
    forward    the forward inspect cannot skip: the same sequences with the expert's LoRA on its row
               (PEFT's mixed batch); ours minus it is what inspect adds (statistics, generic, view)
    lens       inspect(lens=True): the same forward keeping every block's hidden states, and the cost of
               one click with the lens open (Inspection.lens at a new position: models x blocks rows
               through the final norm and the unembedding), beside the plain forward

CPU (default): the embedded SmolLM2-135M with a random r=16 expert adapter.
GPU (`--llama7b`, CUDA only): a random-initialised Llama-2-7B shape in NF4 with an r=16 expert.
Any saved model: `--model DIR --precision nf4 --device cuda` (bench/gpu.sh passes the 7B shape it
saved once).
Last line of output: JSON {"device", "ours_ms", "reference_ms", "ratio", "plain_forward_ms", ...};
`--json FILE` writes it there too.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from engine.anchors import load_anchors
from engine.config import ModelConfig
from engine.inspection import inspect
from engine.io import ASSETS
from engine.models import Workbench


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, repeat: int) -> float:
    """Median wall time in ms after one warm-up."""
    fn()
    times = []
    for _ in range(repeat):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def random_expert(wb: Workbench, path: Path, r: int = 16) -> Path:
    """A random r=16 LoRA adapter on every linear layer, made on the loaded base and saved; the base
    is left as it was (a second 4-bit copy of a 7B model would cost a load and 4 GB)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    base = wb.release()
    peft_model = get_peft_model(base, LoraConfig(r=r, lora_alpha=2 * r, target_modules="all-linear",
                                                 init_lora_weights=False))
    peft_model.save_pretrained(path)
    assert peft_model.unload() is base  # LoRA layers out, in place: the Workbench's model again
    return path


def llama7b(tmp: Path) -> Path:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from engine.models import embedded_path

    cfg = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=32, vocab_size=49152, max_position_embeddings=4096)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(tmp / "llama7b")
    AutoTokenizer.from_pretrained(embedded_path()).save_pretrained(tmp / "llama7b")
    del model
    torch.cuda.empty_cache()
    return tmp / "llama7b"


def naive(wb: Workbench, translation, alpha: float, k: int) -> list:
    """Separate passes; generic and top-k row by row on the CPU, the way a first prototype does it."""
    base_o = wb.logits([(translation.original_ids, None)])[0].cpu()
    base_t = wb.logits([(translation.translated_ids, None)])[0].cpu()
    expert_o = wb.logits([(translation.original_ids, "expert")])[0].cpu()
    rows = []
    for i, j in enumerate(translation.mapping):
        row = {"baseline": base_o[i].softmax(-1).topk(k), "expert": expert_o[i].softmax(-1).topk(k)}
        if j >= 0:
            g = base_t[j] - alpha * torch.relu(expert_o[i] - base_t[j])
            row["generic"] = g.softmax(-1).topk(k)
        rows.append({m: [(int(t), float(p)) for p, t in zip(*v)] for m, v in row.items()})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--llama7b", action="store_true", help="GPU: random Llama-2-7B shape in NF4")
    ap.add_argument("--model", default="embedded", help="a model directory (or `embedded`)")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", type=Path, help="also write the result (the last line) to this file")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cfg = ModelConfig(str(llama7b(tmp)), precision="nf4", device="cuda") if args.llama7b else \
            ModelConfig(args.model, args.precision, args.device)
        t = time.perf_counter()
        wb = Workbench.load(cfg)
        load_s = time.perf_counter() - t

        anchors = load_anchors(ASSETS / "demo_anchors.json")
        text = (ASSETS / "demo_corpus.txt").read_text()
        ids = wb.tokenizer(text)["input_ids"][: args.tokens]
        prompt = wb.tokenizer.decode(ids)
        tr = inspect(wb, prompt, anchors).translation
        with torch.no_grad():  # the floor: one plain batched forward, no adapter loaded yet
            plain_ms = timed(lambda: wb.logits([(tr.original_ids, None), (tr.translated_ids, None),
                                                (tr.original_ids, None)]), args.repeat)
        wb.add_adapter("expert", random_expert(wb, tmp / "expert"))
        result = inspect(wb, prompt, anchors, expert="expert")

        def ours():
            inspect(wb, prompt, anchors, expert="expert").view(5.0)

        lensed = inspect(wb, prompt, anchors, expert="expert", lens=True)
        positions = iter(range(10**9))

        def lens_click():  # a position not seen before (the lens caches per position)
            lensed._lens.clear()
            lensed.lens(next(positions) % len(lensed.ids), 5.0)

        with torch.no_grad():
            ours_ms = timed(ours, args.repeat)
            mixed_ms = timed(lambda: wb.logits([(tr.original_ids, None), (tr.translated_ids, None),
                                                (tr.original_ids, "expert")]), args.repeat)
            ref_ms = timed(lambda: naive(wb, tr, 5.0, 5), args.repeat)
            alpha_ms = timed(lambda: result.generic_stats(time.perf_counter() % 500), args.repeat)
            lens_ms = timed(lambda: inspect(wb, prompt, anchors, expert="expert", lens=True).view(5.0), args.repeat)
            click_ms = timed(lens_click, args.repeat)

    device = torch.cuda.get_device_name(wb.device) if wb.device.type == "cuda" else "cpu"
    print(f"device                 {device}  ({wb.name}, {wb.precision})")
    print(f"tokens                 {len(tr.original_ids)} original, {len(tr.translated_ids)} translated, "
          f"{len(tr.occurrences)} anchored terms")
    print(f"model load             {load_s:.2f} s")
    print(f"plain batched forward  {plain_ms:8.1f} ms  (3 sequences, no adapter)")
    print(f"forward with the LoRA  {mixed_ms:8.1f} ms  = {mixed_ms / plain_ms:.2f} x plain forward (the expert's r=16 update)")
    print(f"ours (inspect + view)  {ours_ms:8.1f} ms  = {ours_ms / plain_ms:.2f} x plain forward, "
          f"{ours_ms / mixed_ms:.2f} x the forward with the LoRA")
    print(f"naive reference        {ref_ms:8.1f} ms  = {ref_ms / ours_ms:.2f} x ours")
    print(f"new alpha (no model)   {alpha_ms:8.1f} ms")
    print(f"ours with the lens     {lens_ms:8.1f} ms  = {lens_ms / ours_ms:.2f} x ours, {lens_ms / plain_ms:.2f} x plain")
    print(f"a lens click           {click_ms:8.1f} ms  = {click_ms / plain_ms:.2f} x plain forward "
          f"({len(lensed.lens(0, 5.0))} models x {wb.num_layers} blocks, one position)")
    result = {"device": device, "model": wb.name, "precision": wb.precision, "tokens": len(tr.original_ids),
              "ours_ms": round(ours_ms, 1), "reference_ms": round(ref_ms, 1), "ratio": round(ours_ms / ref_ms, 3),
              "plain_forward_ms": round(plain_ms, 1), "ours_vs_plain": round(ours_ms / plain_ms, 3),
              "lora_forward_ms": round(mixed_ms, 1), "ours_vs_lora_forward": round(ours_ms / mixed_ms, 3),
              "alpha_view_ms": round(alpha_ms, 1), "load_s": round(load_s, 2),
              "lens_ms": round(lens_ms, 1), "lens_vs_ours": round(lens_ms / ours_ms, 3),
              "lens_click_ms": round(click_ms, 1), "lens_click_vs_plain": round(click_ms / plain_ms, 3)}
    if wb.device.type == "cuda":
        result["cuda_peak_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
