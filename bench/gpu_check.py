"""The Python half of bench/gpu.sh: the model it measures, and the summary it ends with.

    python bench/gpu_check.py model DIR [--tokenizer TOK] [--dry-run]
        a random-initialised Llama-2-7B shape (hidden 4096, intermediate 11008, 32 layers, 32 heads)
        saved once as bf16 safetensors with a tokenizer; kept when DIR already holds it. The
        vocabulary is the tokenizer's (SmolLM2's 49152, not Llama-2's 32000: no Llama tokenizer
        travels). Speed and memory do not depend on weight values. --dry-run: a 2-layer width-64
        model of the same family, on the CPU, for the CPU dry run of the whole script.
    python bench/gpu_check.py summary OUTDIR
        OUTDIR/inspect.json + OUTDIR/train.json + the pytest result -> OUTDIR/summary.md and
        summary.json: every figure next to its reference from the same run and the issue's target.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

LLAMA7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=32, max_position_embeddings=4096)
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=1024)
# The targets (issue 14): (figure, how it is read, limit).
TARGETS = {
    "inspect_vs_plain": ("inspect (baseline + expert + generic, 512 tokens) / one plain NF4 forward", "<=", 1.3),
    "peak_gib": ("QLoRA WHP unlearn step 8 x 512, gradient checkpointing: peak GPU memory (GiB)", "<=", 16.0),
    "whp_120_steps_s": ("120 WHP unlearn steps (s)", "<=", 90.0),
    "labels_of_ceiling": ("generic labels throughput / batched-forward ceiling", ">=", 0.8),
}


def save_model(out: Path, tokenizer: str | None, dry_run: bool) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from engine.models import embedded_path

    if (out / "config.json").exists() and (out / "tokenizer.json").exists():
        print(f"model: reusing {out}")
        return out
    tok = AutoTokenizer.from_pretrained(tokenizer or embedded_path())
    cfg = LlamaConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      **(TINY if dry_run else LLAMA7B))
    device = "cpu" if dry_run or not torch.cuda.is_available() else "cuda"
    t0 = time.perf_counter()
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM._from_config(cfg, dtype=torch.bfloat16)  # built in bf16: 13.5 GB, not 27
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(out)
    n = sum(p.numel() for p in model.parameters())
    print(f"model: {n / 1e9:.2f} B parameters, bf16, saved to {out} in {time.perf_counter() - t0:.0f} s")
    return out


def _read(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def summary(out: Path) -> dict:
    inspect, train = _read(out / "inspect.json"), _read(out / "train.json")
    tests = (out / "pytest.log").read_text().strip().splitlines()[-1:] if (out / "pytest.log").exists() else []
    # train.json: the top-level step is WHP's (hard labels); `methods` has a row per registered method.
    methods = train.get("methods", {})
    figures = {
        "inspect_vs_plain": inspect.get("ours_vs_plain"),
        "peak_gib": train.get("peak_memory_mib") and round(train["peak_memory_mib"] / 1024, 2),
        "whp_120_steps_s": train.get("est_120_steps_s"),
        "labels_of_ceiling": train.get("labels_over_ceiling"),
    }
    steps = (out / "steps.txt").read_text().split("\n") if (out / "steps.txt").exists() else []
    steps = [line for line in steps if line.strip()]
    lines = [f"# bench/gpu.sh {time.strftime('%Y-%m-%d %H:%M')}", "", "steps: " + "; ".join(steps), "",
             f"device {inspect.get('device') or train.get('device')}, model {inspect.get('model')} "
             f"({inspect.get('precision')}), pytest: {tests[0] if tests else 'no result'}", "",
             "| figure | value | reference in the same run | target | met |", "|---|---|---|---|---|"]
    refs = {
        "inspect_vs_plain": f"ours {inspect.get('ours_ms')} ms, plain forward {inspect.get('plain_forward_ms')} ms, "
                            f"naive two-pass {inspect.get('reference_ms')} ms",
        "peak_gib": f"weights {train.get('weights_mib')} MiB",
        "whp_120_steps_s": f"step {train.get('unlearn_step_s')} s vs plain forward {train.get('forward_s')} s",
        "labels_of_ceiling": f"{train.get('labels_tokens_per_s')} tok/s vs ceiling {train.get('ceiling_tokens_per_s')} tok/s",
    }
    met = {}
    for key, (label, how, limit) in TARGETS.items():
        v = figures[key]
        met[key] = None if v is None else (v <= limit if how == "<=" else v >= limit)
        lines.append(f"| {label} | {v} | {refs[key]} | {how} {limit} | "
                     f"{'-' if met[key] is None else 'yes' if met[key] else 'NO'} |")
    lines += ["", "| method | step (s) | 120 steps (s) | peak (MiB) | step / plain forward |", "|---|---|---|---|---|"]
    for name, row in methods.items():
        lines.append(f"| {name} | {row['step_s']} | {round(120 * row['step_s'], 1)} | {row['peak_memory_mib']} | "
                     f"{row['step_over_forward']} |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    result = {"figures": figures, "met": met, "steps": steps, "inspect": inspect, "train": train,
              "pytest": tests[0] if tests else None}
    (out / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
    print("\n".join(lines))
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="verb", required=True)
    m = sub.add_parser("model", help="save the random model once")
    m.add_argument("dir", type=Path)
    m.add_argument("--tokenizer", help="a tokenizer folder (default: the embedded model's)")
    m.add_argument("--dry-run", action="store_true")
    s = sub.add_parser("summary", help="OUTDIR/*.json -> OUTDIR/summary.md")
    s.add_argument("outdir", type=Path)
    args = ap.parse_args()
    if args.verb == "model":
        save_model(args.dir, args.tokenizer, args.dry_run)
    else:
        summary(args.outdir)


if __name__ == "__main__":
    main()
