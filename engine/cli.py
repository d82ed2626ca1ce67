"""`python -m engine <verb>`: each verb calls the same function the UI calls.

Bad input prints one line on stderr and exits with code 2.
"""
from __future__ import annotations

import argparse
import sys
import warnings

from .errors import OOM_HINT, UserError, is_oom
from .io import dumps, read_text_file
from .secrets import scrub


def _read_text(path: str, what: str = "file") -> str:
    return read_text_file(path, what)


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="embedded", help="'embedded' (default), a local path or a hub id")
    p.add_argument("--precision", default="auto", choices=["auto", "nf4", "bf16", "fp32"])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])


def _workbench(args):
    from .models import ModelConfig, Workbench

    return Workbench.load(ModelConfig(args.model, args.precision, args.device))


def cmd_inspect(args) -> int:
    from .anchors import load_anchors
    from .inspection import check_alpha, inspect

    check_alpha(args.alpha)  # before loading anything: nan, inf or a negative alpha is refused at once
    anchors = load_anchors(args.anchors).check() if args.anchors else None
    wb = _workbench(args)
    expert = wb.add_adapter("expert", args.expert) if args.expert else None
    unlearned = wb.add_adapter("unlearned", args.unlearned) if args.unlearned else None
    result = inspect(wb, args.prompt, anchors, expert, unlearned, top_k=args.top_k, track=args.track or ())
    view = result.view(args.alpha)
    if args.json:
        print(dumps(view))
        return 0
    for note in view["notes"]:
        print(f"note: {note}")
    models = [m for m in ("baseline", "expert", "generic", "unlearned") if any(p[m] for p in view["positions"])]
    print(f"model: {view['model']}   alpha: {args.alpha}")
    print(f"{'#':>3} {'token':<14}{'next':<14}" + "".join(f"{m:<22}" for m in models) + "KL(b||g)")
    for p in view["positions"]:
        cells = []
        for m in models:
            top = p[m]
            cells.append(f"{top[0]['token']!r} {top[0]['prob']:.2f}"[:21].ljust(22) if top else "-".ljust(22))
        kl = "-" if p["kl_baseline_generic"] is None else f"{p['kl_baseline_generic']:.3f}"
        mark = "*" if p["term"] else " "
        print(f"{p['index']:>3}{mark}{p['token']!r:<14}{(repr(p['next_token']) if p['next_token'] else '-'):<14}"
              + "".join(cells) + kl)
    return 0


def cmd_translate(args) -> int:
    from transformers import AutoTokenizer

    from .anchors import load_anchors
    from .models import resolve_model_path
    from .translation import Translator

    anchors = load_anchors(args.anchors).check()
    text = _read_text(args.text, "--text")
    try:
        tok = AutoTokenizer.from_pretrained(resolve_model_path(args.model))
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load the tokenizer of {args.model!r}: {str(e).splitlines()[0]}") from None
    tr = Translator(tok, anchors).translate_text(text, args.seed)
    out = {
        "translated_text": tok.decode(tr.translated_ids),
        "original_tokens": [tok.decode([i]) for i in tr.original_ids],
        "translated_tokens": [tok.decode([i]) for i in tr.translated_ids],
        "mapping": tr.mapping,
    }
    if args.coverage:  # the Anchors page's coverage lists
        from .coverage import coverage

        cov = coverage(anchors, text, tr)
        out["unused_terms"] = cov.unused_terms
        out["uncovered"] = [{"word": w, "count": c, "example": e} for w, c, e in cov.uncovered]
    if args.json:
        print(dumps(out))
        return 0
    print(out["translated_text"])
    print(f"\n{len(tr.occurrences)} anchored-term occurrences, {len(tr.dropped)} of {len(tr.mapping)} positions without a label")
    for o in tr.occurrences:
        print(f"  {o.term!r} -> {o.translation!r}  (tokens {o.start}..{o.end - 1})")
    if args.coverage:
        print(f"\nterms that never occur ({len(out['unused_terms'])}): {', '.join(out['unused_terms']) or '-'}")
        print(f"capitalised words with no entry ({len(out['uncovered'])}):")
        for u in out["uncovered"]:
            print(f"  {u['word']} x{u['count']}: {u['example']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine", description="Obliviate engine")
    sub = parser.add_subparsers(dest="verb", required=True)

    p = sub.add_parser("inspect", help="per-token baseline / expert / generic / unlearned predictions")
    p.add_argument("prompt")
    _model_args(p)
    p.add_argument("--expert", help="expert LoRA adapter directory (or a full checkpoint)")
    p.add_argument("--unlearned", help="unlearned LoRA adapter directory")
    p.add_argument("--anchors", help="anchor dictionary (.json or .csv)")
    p.add_argument("--alpha", type=float, default=5.0)
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--track", action="append", help="a token to follow along the prompt, e.g. ' Hermione'")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("translate", help="translate a text through the anchored terms, with its alignment")
    p.add_argument("--anchors", required=True)
    p.add_argument("--text", required=True, help="a UTF-8 text file")
    p.add_argument("--model", default="embedded", help="whose tokenizer to use")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--coverage", action="store_true",
                   help="also list enabled terms that never occur and capitalised words with no entry")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_translate)

    from .suggest import add_commands as add_anchors_commands  # anchors suggest / validate
    add_anchors_commands(sub)
    from .runs import add_commands as add_runs_commands  # run, runs, reinforce, labels, unlearn, gradient-ascent
    add_runs_commands(sub)
    from .evaluate import add_commands as add_eval_commands  # eval
    add_eval_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    warnings.simplefilter("default")
    try:
        return args.func(args)
    except UserError as e:
        print(f"error: {scrub(e, limit=2000)}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as e:
        if not is_oom(e):
            raise
        print(f"error: {OOM_HINT}", file=sys.stderr)
        return 2
