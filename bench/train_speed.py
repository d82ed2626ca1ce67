"""Benchmark of the training side, each figure next to a reference measured in the same run.

    unlearn step     seconds per optimizer step (LoRA, generic labels) and peak memory,
                     next to a plain no-grad forward of the same batch and the weights' memory
    generic labels   tokens/s of engine.labels.generic_labels (translation + alignment + one
                     batched forward per group + labels for 3 alphas), next to the ceiling:
                     the same batched forwards (two sequences per block) with nothing else

    .venv/bin/python bench/train_speed.py [--model embedded] [--block 128] [--batch 4] [--steps 3]
        [--methods whp,gradient_ascent | all] [--rank 8] [--json FILE]

On a GPU add --precision nf4 --gradient-checkpointing (targets of issue 4 for a Llama-2-7B shape,
batch 8 x 512: peak <= 16 GB, 120 steps <= 90 s, labels >= 80% of the forward ceiling; bench/gpu.sh
runs it so). The unlearn step is timed for each method named (default: whp); the top-level figures
are the first method's, `methods` holds each. The last line is JSON (`--json FILE`: also there).
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
from engine.models import Workbench, load_model
from engine.train import Hooks, TrainSpec, lora_model, memory_mib, save_adapter, train
from engine.translation import Translator


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


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
    ap.add_argument("--methods", default="whp", help="comma-separated registry names, or `all`")
    ap.add_argument("--rank", type=int, default=8, help="LoRA rank")
    ap.add_argument("--json", type=Path, help="also write the result (the last line) to this file")
    args = ap.parse_args()
    names = list(METHODS) if args.methods == "all" else [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in names if m not in METHODS]
    if unknown or not names:
        ap.error(f"--methods: unknown {unknown}; one or more of {', '.join(METHODS)} (or all)")
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
    data = TrainData(ids, lengths, labels)
    result["methods"] = {}
    expert_dir = Path(os.environ["OBLIVIATE_HOME"]) / "bench-expert"
    for name in names:
        method = METHODS[name]()  # default options: WHP with hard labels
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        model = lora_model(base, rank=args.rank, gradient_checkpointing=args.gradient_checkpointing)
        train(model, TrainSpec("unlearn", method, data, steps=1, lr=1e-4, batch_size=args.batch))  # warm-up step
        times: list[float] = []
        train(model, TrainSpec("unlearn", method, data, steps=args.steps, lr=1e-4, batch_size=args.batch),
              Hooks(on_step=lambda m: times.append(m["step_s"])))
        step_s = sum(times) / len(times)
        peak = memory_mib(device)
        row = dict(unlearn_step_s=round(step_s, 3), forward_s=round(forward_s, 3),
                   step_over_forward=round(step_s / forward_s, 2), peak_memory_mib=round(peak, 1),
                   peak_over_weights=round(peak / weights_mib, 2), est_120_steps_s=round(120 * step_s, 1))
        result["methods"][name] = row
        if name == names[0]:
            result.update(row)
            save_adapter(model, expert_dir)  # the expert of the labels benchmark below
        base = model.unload()
        print(f"{name:<16} unlearn step {step_s:8.3f} s   (plain forward of the same batch {forward_s:.3f} s, "
              f"x{step_s / forward_s:.2f}); 120 steps {120 * step_s:.0f} s")
        print(f"{'':<16} peak memory  {peak:8.0f} MiB (weights {weights_mib:.0f} MiB)"
              + ("  [CPU: max RSS of the process]" if device.type != "cuda" else ""))
    wb = Workbench(base, tok, cfg)
    wb.add_adapter("expert", expert_dir)

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
