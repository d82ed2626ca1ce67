"""The labels phase on a corpus slice: tokens/s and memory, next to the batched-forward ceiling
measured in the same run, and what that means for a whole book (1M tokens).

    labels      engine.labels.generic_labels as a run calls it: translation, alignment, one batched
                forward per group (baseline(translated) + expert(original) per block), hard and soft
                (top-k) labels for 3 alphas, shards written to the cache as they are built
    ceiling     the same batched forwards with nothing else (no translation, labels or writes)
    memory      resident memory sampled every 20 ms: before the phase (model loaded) and its peak
                during the phase, for the whole slice and for its first half; streaming means the
                peak does not grow with the corpus

CPU (default): the embedded SmolLM2-135M with a random r=16 expert adapter.

    .venv/bin/python bench/labels_speed.py [--tokens 20000] [--block 512] [--group 4] [--top-k 32]

The last line is JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path

import torch

from engine.anchors import load_anchors
from engine.config import ModelConfig
from engine.data import corpus_blocks
from engine.io import ASSETS
from engine.labels import DEFAULT_ALPHAS, generic_labels
from engine.models import Workbench
from engine.translation import Translator


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakRSS:
    """Peak resident memory while the block runs (sampled; CUDA: the allocator's own peak)."""

    def __enter__(self):
        self.before = self.peak = rss_mib()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss_mib())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mib())


def random_expert(wb: Workbench, path: Path, r: int = 16) -> Path:
    """A random LoRA on every linear layer (speed does not depend on its values), made in place."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    base = wb.release()
    peft_model = get_peft_model(base, LoraConfig(r=r, lora_alpha=2 * r, target_modules="all-linear",
                                                 init_lora_weights=False))
    peft_model.save_pretrained(path)
    assert peft_model.unload() is base
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--tokens", type=int, default=20_000, help="corpus slice (the demo corpus repeated)")
    ap.add_argument("--block", type=int, default=512)
    ap.add_argument("--group", type=int, default=4, help="blocks per batched forward (whp.label_batch)")
    ap.add_argument("--top-k", type=int, default=32, help="soft-label width (0: hard labels only)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="obliviate-labels-bench-"))
    os.environ["OBLIVIATE_HOME"] = str(home)  # a fresh label cache: every shard is built

    wb = Workbench.load(ModelConfig(args.model, args.precision, args.device))
    wb.add_adapter("expert", random_expert(wb, home / "expert"))
    anchors = load_anchors(ASSETS / "demo_anchors.json")
    text = (ASSETS / "demo_corpus.txt").read_text(encoding="utf-8")
    per_copy = len(wb.tokenizer(text)["input_ids"])
    blocks = corpus_blocks(wb.tokenizer, text * (args.tokens // per_copy + 1), args.block)
    blocks = blocks[: max(1, args.tokens // args.block)]
    n_tokens = sum(map(len, blocks))
    half = blocks[: len(blocks) // 2]

    def build(bs, seed):
        return generic_labels(wb, "expert", anchors, bs, DEFAULT_ALPHAS, seed=seed, group=args.group,
                              top_k=args.top_k)

    build(blocks[:1], seed="warm-up")
    with PeakRSS() as mem_half:
        build(half, seed="half")
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        ls = build(blocks, seed=0)
        labels_s = time.perf_counter() - t0

    translator = Translator(wb.tokenizer, anchors)
    seqs = []
    for i, b in enumerate(blocks):
        seqs += [(translator.translate(b, f"0:{i}").translated_ids, None), (b, "expert")]
    t0 = time.perf_counter()
    for g in range(0, len(seqs), 2 * args.group):
        wb.logits(seqs[g: g + 2 * args.group])
    ceiling_s = time.perf_counter() - t0

    disk = sum(f.stat().st_size for f in Path(ls.path).glob("shard-*.safetensors"))
    # What a run holds while it trains on one alpha: ids, hard labels of every alpha, soft of one.
    alphas = len(ls.labels)
    train_bytes_per_token = (8 + 8 * alphas + args.top_k * (4 + 2)) * ls.ids.numel() / n_tokens
    tok_s, ceiling_tok_s = n_tokens / labels_s, n_tokens / ceiling_s
    result = {
        "model": wb.name, "precision": wb.precision, "device": wb.device.type, "threads": torch.get_num_threads(),
        "tokens": n_tokens, "blocks": len(blocks), "block": args.block, "group": args.group, "top_k": args.top_k,
        "alphas": alphas, "shards": ls.stats["shards"],
        "labels_s": round(labels_s, 1), "labels_tokens_per_s": round(tok_s, 1),
        "ceiling_tokens_per_s": round(ceiling_tok_s, 1), "labels_over_ceiling": round(ceiling_s / labels_s, 3),
        "rss_before_mib": round(mem.before, 1), "rss_peak_mib": round(mem.peak, 1),
        "phase_peak_mib": round(mem.peak - mem.before, 1),
        "half_slice_phase_peak_mib": round(mem_half.peak - mem_half.before, 1),
        "disk_bytes_per_token": round(disk / n_tokens, 1),
        "est_1m_tokens_h": round(1e6 / tok_s / 3600, 2), "est_1m_disk_mib": round(disk / n_tokens * 1e6 / 2**20),
        "est_1m_train_memory_mib": round(train_bytes_per_token * 1e6 / 2**20),
    }
    print(f"model            {wb.name} ({wb.precision}, {wb.device.type}, {torch.get_num_threads()} threads)")
    print(f"slice            {n_tokens} tokens, {len(blocks)} blocks of {args.block}, {ls.stats['shards']} shard(s), "
          f"top-k {args.top_k}, {alphas} alphas")
    print(f"labels           {tok_s:8.1f} tok/s ({labels_s:.1f} s)")
    print(f"ceiling          {ceiling_tok_s:8.1f} tok/s (the same batched forwards alone): labels at "
          f"{100 * ceiling_s / labels_s:.0f}% of it")
    print(f"memory           {mem.before:.0f} MiB before the phase; peak +{mem.peak - mem.before:.0f} MiB "
          f"(first half of the slice: +{mem_half.peak - mem_half.before:.0f} MiB)")
    print(f"1M tokens        ~{1e6 / tok_s / 3600:.1f} h here; {disk / n_tokens * 1e6 / 2**20:.0f} MiB of shards; "
          f"~{train_bytes_per_token * 1e6 / 2**20:.0f} MiB held while training on one alpha")
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
