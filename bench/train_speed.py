"""Benchmark of the training side, each figure next to a reference measured in the same run.

    unlearn step     seconds per optimizer step (LoRA, generic labels) and peak memory,
                     next to a plain no-grad forward of the same batch and the weights' memory
    generic labels   tokens/s of engine.labels.generic_labels (translation + alignment + one
                     batched forward per group + labels for 3 alphas), next to the ceiling:
                     the same batched forwards (two sequences per block) with nothing else

    .venv/bin/python bench/train_speed.py [--model embedded] [--block 128] [--batch 4] [--steps 3]

On a GPU add --precision nf4 --gradient-checkpointing (targets of issue 4 for a Llama-2-7B shape,
batch 8 x 512: peak <= 16 GB, 120 steps <= 90 s, labels >= 80% of the forward ceiling).
The last line is JSON (`--json FILE`: also there; bench/gpu.sh reads it).
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from engine.anchors import load_anchors
from engine.config import ModelConfig
from engine.data import corpus_blocks, pad_blocks
from engine.io import ASSETS
from engine.labels import generic_labels
from engine.methods import METHODS, TrainData
from engine.methods.whp import WHP
from engine.models import Workbench, load_model
from engine.train import Hooks, TrainSpec, lora_model, memory_mib, save_adapter, train
from engine.translation import Translator


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def method_step(name: str, base, vocab: int, data: TrainData, args, device, forward_s: float):
    """Seconds per optimizer step of one method (KL retain term on a second batch where the method takes
    one; RMU its own), with soft targets where the method reads them, and the peak memory after it.
    Returns (figures, the base model again without the adapter)."""
    from engine.methods import METHODS

    method = METHODS[name]()
    extra = {}
    if name in ("whp", "elm"):  # soft targets: random ids and log-probs, the cost is the same
        k = 16
        ids = torch.randint(0, vocab, (*data.ids.shape, k), dtype=torch.int32)
        logp = torch.randn(*data.ids.shape, k).log_softmax(-1).half()
        extra = {"soft_ids": ids, "soft_logp": logp}
        if name == "whp":
            method.options = method.options.model_copy(update={"labels": "soft", "soft_top_k": k})
    forget = TrainData(data.ids, data.lengths, data.labels, extra)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model = lora_model(base, rank=8, gradient_checkpointing=args.gradient_checkpointing,
                       layers=method.lora_layers(int(base.config.num_hidden_layers), None))
    spec = lambda steps: TrainSpec("unlearn", method, forget, steps=steps, lr=1e-4, batch_size=args.batch,  # noqa: E731
                                   retain=data, retain_weight=1.0)
    train(model, spec(1))  # warm-up
    times: list[float] = []
    train(model, spec(args.steps), Hooks(on_step=lambda m: times.append(m["step_s"])))
    step_s = sum(times) / len(times)
    return {"step_s": round(step_s, 3), "step_over_forward": round(step_s / forward_s, 2),
            "peak_memory_mib": round(memory_mib(device), 1)}, model.unload()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--block", type=int, default=128)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--label-blocks", type=int, default=8)
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--methods", default="all", help="comma-separated registry names, 'all' (every unlearning "
                                                         "method) or 'none'")
    ap.add_argument("--json", type=Path, help="also write the result (the last line) to this file")
    args = ap.parse_args()
    os.environ.setdefault("OBLIVIATE_HOME", tempfile.mkdtemp(prefix="obliviate-bench-"))

    cfg = ModelConfig(args.model, args.precision, args.device)
    base, tok = load_model(cfg)
    device = next(base.parameters()).device
    text = (ASSETS / "demo_corpus.txt").read_text(encoding="utf-8")
    anchors = load_anchors(ASSETS / "demo_anchors.json")
    blocks = corpus_blocks(tok, text * 4, args.block)
    weights_mib = sum(p.numel() * p.element_size() for p in base.parameters()) / 2**20
    result: dict = {"model": args.model, "precision": base.obliviate_precision, "device": device.type,
                    "block": args.block, "batch": args.batch, "weights_mib": round(weights_mib, 1)}

    # -- unlearn step vs a plain forward of the same batch ---------------------------------------
    ids, lengths = pad_blocks(blocks[: max(args.batch, 1) * (args.steps + 1)], tok.pad_token_id or 0)
    labels = torch.roll(ids, -1, dims=1)  # any labels: the cost does not depend on their values
    x = ids[: args.batch].to(device)
    with torch.no_grad():
        base(input_ids=x)  # warm-up
        sync(device)
        t0 = time.perf_counter()
        for _ in range(args.steps):
            base(input_ids=x)
        sync(device)
    forward_s = (time.perf_counter() - t0) / args.steps
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model = lora_model(base, rank=8, gradient_checkpointing=args.gradient_checkpointing)
    data = TrainData(ids, lengths, labels)
    train(model, TrainSpec("unlearn", WHP(), data, steps=1, lr=1e-4, batch_size=args.batch))  # warm-up step
    times: list[float] = []
    train(model, TrainSpec("unlearn", WHP(), data, steps=args.steps, lr=1e-4, batch_size=args.batch),
          Hooks(on_step=lambda m: times.append(m["step_s"])))
    step_s = sum(times) / len(times)
    peak = memory_mib(device)
    expert_dir = save_adapter(model, Path(os.environ["OBLIVIATE_HOME"]) / "bench-expert")
    base = model.unload()
    # -- every method's step, same batch, same forward reference ----------------------------------
    names = [n for n, m in METHODS.items() if "unlearn" in m.phases] if args.methods == "all" else \
        [n for n in args.methods.split(",") if n and n != "none"]
    per_method = {}
    for name in names:
        per_method[name], base = method_step(name, base, int(base.config.vocab_size), data, args, device, forward_s)
        print(f"  {name:16s} {per_method[name]['step_s']:7.3f} s/step = x{per_method[name]['step_over_forward']:.2f} "
              f"the forward   peak {per_method[name]['peak_memory_mib']:.0f} MiB")
    result["methods"] = per_method

    wb = Workbench(base, tok, cfg)
    wb.add_adapter("expert", expert_dir)
    result.update(unlearn_step_s=round(step_s, 3), forward_s=round(forward_s, 3),
                  step_over_forward=round(step_s / forward_s, 2), peak_memory_mib=round(peak, 1),
                  peak_over_weights=round(peak / weights_mib, 2),
                  est_120_steps_s=round(120 * step_s, 1))
    print(f"unlearn step   {step_s:8.3f} s   (plain forward of the same batch {forward_s:.3f} s, x{step_s / forward_s:.2f})")
    print(f"peak memory    {peak:8.0f} MiB (weights {weights_mib:.0f} MiB)"
          + ("  [CPU: max RSS of the process]" if device.type != "cuda" else ""))

    # -- generic labels vs the forward ceiling ---------------------------------------------------
    lb = blocks[: args.label_blocks]
    n_tokens = sum(map(len, lb))
    translator = Translator(tok, anchors)
    seqs = []
    for i, b in enumerate(lb):
        seqs += [(translator.translate(b, f"0:{i}").translated_ids, None), (b, "expert")]
    wb.logits(seqs[: 2 * args.group])  # warm-up
    sync(device)
    t0 = time.perf_counter()
    for g in range(0, len(seqs), 2 * args.group):
        wb.logits(seqs[g: g + 2 * args.group])
    sync(device)
    ceiling_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    generic_labels(wb, "expert", anchors, lb, alphas=(2.5, 5, 10), seed=0, group=args.group, cache=False)
    sync(device)
    labels_s = time.perf_counter() - t0
    result.update(labels_tokens_per_s=round(n_tokens / labels_s, 1), ceiling_tokens_per_s=round(n_tokens / ceiling_s, 1),
                  labels_over_ceiling=round(ceiling_s / labels_s, 3), label_blocks=len(lb))
    print(f"generic labels {n_tokens / labels_s:8.1f} tok/s (ceiling: plain batched forwards, two per block, "
          f"{n_tokens / ceiling_s:.1f} tok/s; {100 * ceiling_s / labels_s:.0f}% of it)")
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
