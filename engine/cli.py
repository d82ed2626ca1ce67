"""`python -m engine <verb>`: every parser, verb and printer. Each verb calls the same engine function
the UI calls; no engine module imports this one.

    inspect, translate                    a prompt or a text through the models / the dictionary
    corpus generate                       a forget corpus sampled from what the model knows
    anchors suggest | validate            draft and check dictionaries
    run, reinforce, labels, unlearn, gradient-ascent    unlearning runs (engine/pipeline.py)
    runs list | cancel | delete           run directories (engine/jobs.py)
    eval                                  measure forgetting (engine/evaluation/)

Flags of the run verbs and of eval are derived from the typed config fields (engine/config.py,
engine/evaluation/settings.py): their types, choices and help come from there.
Bad input prints one line on stderr and exits with code 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

from .errors import UserError, as_user_error
from .sections import DEVICES, PRECISIONS
from .io import check_out_dir, check_out_file, dumps, read_text_file
from .secrets import scrub


# -- flags derived from config fields --------------------------------------------------------------
def _spec_index(section) -> dict:
    from .config import field_specs

    return {s["path"]: s for s in field_specs(section)}


def _model_flags(p: argparse.ArgumentParser, default: str | None = "embedded") -> None:
    from .sections import ModelConfig

    spec = _spec_index(ModelConfig)
    p.add_argument("--model", default=default, help="'embedded' (default), a local path or a hub id")
    p.add_argument("--precision", default=None if default is None else "auto", choices=PRECISIONS,
                   help=spec["precision"]["help"])
    p.add_argument("--device", default=None if default is None else "auto", choices=DEVICES, help=spec["device"]["help"])


def _model_config(args):
    from .sections import ModelConfig

    return ModelConfig(args.model or "embedded", args.precision or "auto", args.device or "auto")


# -- inspect, translate ----------------------------------------------------------------------------
def cmd_inspect(args) -> int:
    from .anchors import load_anchors
    from .inspection import check_alpha, check_scale, inspect, lens_split
    from .models import Workbench

    check_alpha(args.alpha)  # before loading anything: nan, inf or a negative alpha is refused at once
    check_scale(args.scale)
    anchors = load_anchors(args.anchors).check() if args.anchors else None
    wb = Workbench.load(_model_config(args))
    expert = wb.add_adapter("expert", args.expert) if args.expert else None
    unlearned = wb.add_adapter("unlearned", args.unlearned) if args.unlearned else None
    elm = None
    if args.target == "elm":  # the ELM-style target as the generic row: eta takes alpha's place in the view
        from .methods.elm import ElmOptions

        elm = ElmOptions.make(**({"concept": args.concept} if args.concept is not None else {}))
    result = inspect(wb, args.prompt, anchors, expert, unlearned, top_k=args.top_k, track=args.track or (),
                     elm=elm, lens=args.lens, scale=args.scale)
    view = result.view(args.alpha, lens=args.lens and args.json)
    if args.json:
        print(dumps(view))
        return 0
    if args.lens:  # the last position's lens, per block: each model's top token and the pinned tokens
        last = result.lens(len(result.ids) - 1, args.alpha)
        shown = list(last)
        print(f"logit lens after {view['positions'][-1]['token']!r} (the last position), block by block:")
        print(f"{'block':>5}  " + "".join(f"{m:<24}" for m in shown))
        for b in range(result.num_layers):
            cells = []
            for m in shown:
                e = last[m][b]
                pinned = " ".join(f"{e['tracked'][t]:.2f}" for t in e["tracked"])
                cells.append(f"{e['top'][0]['token']!r} {e['top'][0]['prob']:.2f} {pinned}"[:23].ljust(24))
            print(f"{b + 1:>5}  " + "".join(cells))
        for t in result.tracked_ids:
            split = lens_split(last, t)
            if split and split["split"]:
                follows = "" if split["split"] == split["first"] else \
                    f"follows the baseline up to block {split['split'] - 1} and "
                print(f"{t!r}: the unlearned model {follows}suppresses it from block {split['split']} on "
                      f"(the baseline holds it from block {split['first']})")
        print()
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
    from .coverage import coverage
    from .errors import first_line
    from .models import resolve_model_path
    from .translation import Occurrence, Translation, Translator

    anchors = load_anchors(args.anchors).check()
    text = read_text_file(args.text, "--text")
    try:
        tok = AutoTokenizer.from_pretrained(resolve_model_path(args.model))
    except Exception as e:  # noqa: BLE001 - whatever transformers raises for a bad tokenizer
        raise UserError(f"cannot load the tokenizer of {args.model!r}: {first_line(e)}") from None
    # A piece at a time (translation.CHUNK_CHARS): a whole book never sits in the tokenizer at once.
    translator = Translator(tok, anchors)
    original: list[int] = []
    translated: list[int] = []
    mapping: list[int] = []
    occurrences: list[tuple] = []  # (term, translation, start, end, translated_start, translated_end)
    matched: set[str] = set()
    dropped = positions = 0
    for start, t_start, tr in translator.translate_chunks(text, args.seed):
        if tr.unlabel_before and mapping and mapping[-1] >= 0:
            mapping[-1] = -1
            dropped += 1
        dropped += sum(j < 0 for j in tr.mapping)
        positions += len(tr.mapping)
        matched.update(o.term for o in tr.occurrences)
        occurrences += [(o.term, o.translation, start + o.start, start + o.end, t_start + o.translated_start,
                         t_start + o.translated_end) for o in tr.occurrences]
        if args.json:
            original += tr.original_ids
            mapping += [j + t_start if j >= 0 else -1 for j in tr.mapping]
        else:
            mapping = tr.mapping[-1:]  # only the last position can still change (unlabel_before)
        translated += tr.translated_ids
    out = {"translated_text": tok.decode(translated)}
    if args.json:  # per-token strings only when asked for: for a whole book they are most of the memory
        out.update(original_tokens=tok.batch_decode([[i] for i in original]),
                   translated_tokens=tok.batch_decode([[i] for i in translated]), mapping=mapping)
    del original, translated
    if args.coverage:  # the Anchors page's coverage lists
        cov = coverage(anchors, text, Translation([], [], [], [Occurrence(t, "", 0, 0, 0, 0) for t in matched]))
        out["unused_terms"] = cov.unused_terms
        out["uncovered"] = [{"word": w, "count": c, "example": e} for w, c, e in cov.uncovered]
    if args.json:
        out["terms"] = [dict(zip(("term", "translation", "start", "end", "translated_start", "translated_end"), o))
                        for o in occurrences]
        json.dump(out, sys.stdout, ensure_ascii=False)  # streamed: no second copy of a book-sized string
        print()
        return 0
    print(out["translated_text"])
    print(f"\n{len(occurrences)} anchored-term occurrences, {dropped} of {positions} positions without a label")
    for term, translation, start, end, _, _ in occurrences:
        print(f"  {term!r} -> {translation!r}  (tokens {start}..{end - 1})")
    if args.coverage:
        print(f"\nterms that never occur ({len(out['unused_terms'])}): {', '.join(out['unused_terms']) or '-'}")
        print(f"capitalised words with no entry ({len(out['uncovered'])}):")
        for u in out["uncovered"]:
            print(f"  {u['word']} x{u['count']}: {u['example']}")
    return 0


# -- anchors suggest / validate ---------------------------------------------------------------------
def _progress_printer(args):
    if args.json:
        return None

    def show(done: int, total: int) -> None:
        if done:
            print(f"{done}/{total} done", file=sys.stderr, flush=True)
    return show


def quick_expert(corpus: str, model, steps: int) -> str:
    """A quick expert for the offline route: a reinforce_only run (LoRA, next-token loss on the corpus)
    under OBLIVIATE_HOME/runs/suggest-reinforce-*, through the ordinary pipeline."""
    import tempfile

    from .config import run_config
    from .jobs import runs_root
    from .pipeline import execute

    cfg = run_config({"corpus": str(Path(corpus).resolve()), "method": "reinforce_only",
                      "reinforce": {"steps": steps}, "model": model.model_dump(),
                      "data": {"block_size": 256}, "train": {"batch_size": 4}})
    runs_root().mkdir(parents=True, exist_ok=True)
    out = Path(tempfile.mkdtemp(prefix="suggest-reinforce-", dir=runs_root()))
    print(f"reinforcing an expert for {steps} steps in {out}", file=sys.stderr)
    status = execute(cfg, out, queue=False)
    if status.state != "finished":
        raise UserError(f"the reinforcement did not finish ({status.state}): see {out}/log.txt")
    return str(out / "adapters" / "expert")


def cmd_suggest(args) -> int:
    from .anchors import save_anchors
    from .suggest import LLMConfig, accept_rows, suggest_llm, suggest_offline

    corpus = read_text_file(args.corpus, "--corpus")
    if args.out:  # before any paid request: a bad --out must not lose every answer afterwards
        check_out_file(args.out)
    if args.offline:
        from .models import Workbench

        model = _model_config(argparse.Namespace(model=args.llm_model, precision=args.precision, device=args.device))
        expert_path = args.expert
        if args.reinforce_steps:
            if args.expert:
                raise UserError("give --expert or --reinforce-steps, not both")
            expert_path = quick_expert(args.corpus, model, args.reinforce_steps)
        wb = Workbench.load(model)
        expert = wb.add_adapter("expert", expert_path) if expert_path else None
        result = suggest_offline(wb, corpus, expert=expert, top_k=args.top_k, min_count=args.min_count,
                                 progress=_progress_printer(args))
    else:
        if not args.base_url or not args.llm_model:
            raise UserError("give --base-url and --model for the LLM route, or --offline")
        config = LLMConfig(args.base_url, args.llm_model, chunk_words=args.chunk_words,
                           concurrency=args.concurrency, timeout=args.timeout)
        result = suggest_llm(corpus, config, progress=_progress_printer(args))
    # What was paid for is printed first: a full disk at --out must not lose it.
    if args.json:
        print(dumps(result.to_json()), flush=True)
    else:
        for s in result.items:
            cands = " | ".join(s.candidates) or "(no suggestion: fill in)"
            print(f"{s.score:9.2f} {s.count:5d}  {s.term!r} -> {cands}")
        for line in result.report:
            print(f"consolidation: {line}")
        sys.stdout.flush()
    for line in result.failures:
        print(f"failed: {line}", file=sys.stderr)
    if args.out:  # only now, after every chunk succeeded or was reported: no partial dictionary
        anchors, skipped = accept_rows(result.rows())
        save_anchors(anchors, args.out)
        print(f"wrote {len(anchors)} terms to {args.out}" + (f" ({len(skipped)} rows without a translation left out)"
                                                            if skipped else ""), file=sys.stderr if args.json else sys.stdout)
    return 0


def cmd_validate(args) -> int:
    from .anchors import load_anchors

    anchors = load_anchors(args.file)
    problems = anchors.validate()
    if not anchors.entries:
        problems.append("the dictionary has no anchored terms: nothing would be translated")
    _, report = anchors.consolidate()
    for p in problems:
        print(f"problem: {p}")
    for line in report:
        print(f"consolidation would drop: {line}")
    print(f"{len(anchors)} terms, {len(anchors.disabled)} disabled, {len(problems)} problems")
    return 2 if problems else 0


# -- runs -------------------------------------------------------------------------------------------
def _print_run(status) -> None:
    """One short JSON on stdout (rank 0 only): state, dir, familiarity before/after, error."""
    from .pipeline import phase_changes

    if os.environ.get("RANK", "0") != "0":
        return
    brief = {"state": status.state, "dir": status.dir, "error": status.error, **phase_changes(status.summary)}
    if "elapsed_s" in status.summary:
        brief["elapsed_s"] = round(status.summary["elapsed_s"], 1)
    print(dumps(brief, indent=2))


def cmd_run(args) -> int:
    from . import jobs
    from .config import load_config
    from .pipeline import execute

    out = Path(args.out) if args.out else None
    if args.check:
        return _check_run(args)
    if args.resume:
        if out is None:
            raise UserError("--resume needs --out RUN_DIR")
        check_out_dir(out)
        cfg = load_config(args.config) if args.config else load_config(out / "config.json")
    else:
        if not args.config:
            raise UserError("run needs a CONFIG file (YAML or JSON)")
        cfg = load_config(args.config)
        if out is None:
            out = jobs.runs_root() / f"{time.strftime('%Y%m%d-%H%M%S')}-{cfg.method}"
        check_out_dir(out)
        if jobs.read_status(out).state not in (None, "queued"):
            raise UserError(f"{out} already holds a run: use --resume, or another --out")
    status = execute(cfg, out, resume=args.resume, queue=not args.no_queue)
    _print_run(status)
    return 0 if status.state == "finished" else 1


def _check_run(args) -> int:
    """`run CONFIG --check`: the validated config's method, phases and steps per phase, without a model."""
    from .config import load_config
    from .data import corpus_blocks
    from .io import read_text_file
    from .models import resolve_model_path
    from .pipeline import plan, totals

    if not args.config:
        raise UserError("run --check needs a CONFIG file")
    cfg = load_config(args.config)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model_path(cfg.model.name))
    blocks = corpus_blocks(tok, read_text_file(cfg.corpus, "corpus"), cfg.data.block_size, cfg.data.max_blocks)
    steps = totals(cfg, len(blocks))
    out = {"method": cfg.method, "phases": plan(cfg), "steps": steps, "total_steps": sum(steps.values()),
           "blocks": len(blocks), "tokens": sum(map(len, blocks)), "options": cfg.options.model_dump()
           if cfg.options is not None else None}
    anchors_file = getattr(cfg.options, "anchors", None)
    cov = None
    if anchors_file:  # the dictionary against the corpus it will translate: the gate below
        from .anchors import load_anchors
        from .coverage import coverage
        from .translation import Occurrence, Translation, Translator

        anchors = load_anchors(anchors_file)
        text = read_text_file(cfg.corpus, "corpus")
        found = [o for _, _, tr in Translator(tok, anchors).translate_chunks(text, cfg.seed) for o in tr.occurrences]
        cov = coverage(anchors, text, Translation([], [], [], found))
        out["coverage"] = {"share": cov.share, "occurrences": cov.matched, "uncovered_occurrences": cov.missed,
                           "unused_terms": cov.unused_terms[:20],
                           "uncovered": [{"word": w, "count": c} for w, c, _ in cov.uncovered[:20]]}
    print(dumps(out, indent=2))
    if args.min_coverage is not None:
        if cov is None:
            raise UserError("--min-coverage needs a method with a dictionary (whp.anchors)")
        if cov.share is None or cov.share < args.min_coverage:
            top = ", ".join(f"{w} ({c})" for w, c, _ in cov.uncovered[:5])
            raise UserError(f"the dictionary covers {0 if cov.share is None else cov.share:.0%} of the corpus's name "
                            f"occurrences, under --min-coverage {args.min_coverage:.0%}; most frequent without an "
                            f"entry: {top or 'none'}")
    return 0


# -- the run verbs: `run` with the config from flags ------------------------------------------------
# One generator: every field a method uses (engine.config.form_fields, and the model) is a flag named
# after its dotted path (--unlearn-steps, --whp-anchors, --lora-rank), with short aliases: the leaf
# name for the method's own options and its training phase (--beta, --steps, --sam-rho), else the
# flat key of earlier configs (engine.legacy: --anchors, --retain, --lora-rank, --precision).
RUN_VERBS = {  # verb: (method, help); every other registered method gets a verb of its own name
    "reinforce": ("reinforce_only", "LoRA fine-tune on the corpus -> RUN_DIR/adapters/expert"),
    "labels": ("whp", "build (or find cached) generic labels of a corpus"),
    "unlearn": ("whp", "fine-tune on generic labels -> RUN_DIR/adapters/unlearned"),
    "gradient-ascent": ("gradient_ascent", "baseline: negated next-token loss (+ retain) -> RUN_DIR/adapters/unlearned"),
}
LABELS_ONLY = ("corpus", "model.", "data.", "whp.", "seed")  # what `labels` reads: no training


def run_verbs() -> dict[str, tuple[str, str]]:
    from .methods import METHODS

    verbs = dict(RUN_VERBS)
    for name, m in METHODS.items():
        if name not in {method for method, _ in RUN_VERBS.values()}:
            doc = (sys.modules[m.__module__].__doc__ or "").strip().splitlines()
            verbs[name.replace("_", "-")] = (name, f"{doc[0] if doc else m.label} -> RUN_DIR/adapters/unlearned")
    return verbs


def verb_fields(verb: str, method: str) -> list[dict]:
    """The field specs a run verb takes as flags, in --help order."""
    from .config import RunConfig, field_specs, form_fields

    specs = [s for s in field_specs(RunConfig) if s["path"].startswith("model.")] + form_fields(method)
    if verb == "labels":
        specs = [s for s in specs if s["path"].startswith(LABELS_ONLY)]
    return specs


def _flags(method: str, specs: list[dict]) -> dict[str, list[str]]:
    """{dotted path: [--primary, --aliases...]}; an alias two fields would share goes to neither."""
    from .legacy import LEGACY, LEGACY_STRINGS
    from .methods import get

    phase = "unlearn" if "unlearn" in get(method).phases else "reinforce"
    earlier = {v: k for k, v in {**LEGACY, **LEGACY_STRINGS}.items()}
    names = {}
    for s in specs:
        section, _, leaf = s["path"].rpartition(".")
        alias = leaf if section in (method, phase) else earlier.get(s["path"])
        names[s["path"]] = [s["path"].replace(".", "-").replace("_", "-")] + ([alias.replace("_", "-")] if alias else [])
    taken: dict[str, int] = {}
    for flags in names.values():
        for f in flags:
            taken[f] = taken.get(f, 0) + 1
    return {path: [f"--{f}" for i, f in enumerate(flags) if i == 0 or taken[f] == 1] for path, flags in names.items()}


def _dest(path: str) -> str:
    return "field__" + path.replace(".", "__")


def add_field_flags(p: argparse.ArgumentParser, specs: list[dict], names: dict[str, list[str]]) -> None:
    """The one flag generator: a flag per field spec (names[path] = [--primary, aliases...]), its type,
    choices and help from the field; a list takes comma-separated values and repeats; a bool is
    --x / --no-x. field_values() reads them back."""
    for spec in specs:
        kw: dict = {"dest": _dest(spec["path"]), "default": None, "help": spec["help"] or None}
        if spec["kind"] == "choice":
            kw["choices"] = spec["choices"]
        elif spec["kind"] in ("int", "float"):
            kw["type"] = int if spec["kind"] == "int" else float
        elif spec["kind"] == "bool":
            kw["action"] = argparse.BooleanOptionalAction
        elif spec["kind"] == "list":
            kw["action"] = "append"
            kw["help"] = (kw["help"] or "") + " Comma-separated; repeatable."
        if spec["kind"] not in ("choice", "bool"):
            kw["metavar"] = spec["path"].rpartition(".")[2].upper() + (",..." if spec["kind"] == "list" else "")
        p.add_argument(*names[spec["path"]], **kw)


def field_values(args, specs: list[dict]) -> dict:
    """{dotted path: value} of the field flags given on the command line (add_field_flags)."""
    kinds = {"int": int, "float": float, "str": str}
    out = {}
    for spec in specs:
        value = getattr(args, _dest(spec["path"]))
        if value is not None and spec["kind"] == "list":
            value = _list_value(names_of(spec), value, kinds.get(spec["item"], str))  # the field validates the items
        if value is not None:
            out[spec["path"]] = value
    return out


def names_of(spec: dict) -> str:
    return spec["path"].rpartition(".")[2].replace("_", "-")


def _run_verb_parser(sub, verb: str, method: str, help_: str) -> None:
    p = sub.add_parser(verb, help=help_)
    p.add_argument("--config", help="a config file whose fields the flags override")
    specs = verb_fields(verb, method)
    add_field_flags(p, specs, _flags(method, specs))
    if any(s["path"].startswith("goldfish.") for s in specs):
        p.add_argument("--goldfish", help="goldfish loss KIND[:K[:H]] (static or hash), e.g. hash:4:13")
    if verb != "labels":
        p.add_argument("--out", required=True, help="run directory")
        p.add_argument("--no-queue", action="store_true", help="do not wait for other jobs (one job at a time)")
    p.set_defaults(func=cmd_step, verb=verb, method=method, specs=specs)


def _step_config(args):
    from .config import load_config, run_config, set_path

    data: dict = load_config(args.config).to_dict() if args.config else {}
    for path, value in field_values(args, args.specs).items():
        set_path(data, path, value)
    if getattr(args, "goldfish", None):
        kind, *rest = args.goldfish.split(":")
        try:
            data["goldfish"] = {"kind": kind, **dict(zip(("k", "h"), map(int, rest)))}
        except ValueError:
            raise UserError("--goldfish is KIND[:K[:H]], e.g. hash:4:13") from None
    data["method"] = args.method
    return run_config(data)


def cmd_step(args) -> int:
    from .pipeline import execute

    cfg = _step_config(args)
    if args.verb == "unlearn" and not cfg.whp.expert:
        raise UserError("unlearn needs --expert (an expert adapter from `reinforce`); `run` does the whole pipeline")
    if args.verb == "labels":
        return _cmd_labels(cfg)
    check_out_dir(args.out)
    status = execute(cfg, Path(args.out), queue=not args.no_queue)
    _print_run(status)
    return 0 if status.state == "finished" else 1


def _cmd_labels(cfg) -> int:
    from .anchors import load_anchors
    from .data import corpus_blocks
    from .labels import generic_labels
    from .methods import get
    from .models import Workbench

    method = get("whp").from_config(cfg)
    wb = Workbench.load(cfg.model)
    expert = wb.add_adapter("expert", cfg.whp.expert) if cfg.whp.expert else None
    blocks = corpus_blocks(wb.tokenizer, read_text_file(cfg.corpus, "corpus"), cfg.data.block_size, cfg.data.max_blocks)
    ls = generic_labels(wb, expert, load_anchors(cfg.whp.anchors).check(), blocks, method.alphas(), cfg.seed,
                        cfg.whp.label_batch, top_k=method.top_k())
    print(dumps(ls.info(), indent=2))
    return 0


def peak_of(card: dict) -> float | None:
    """The job's own peak memory on its card: the GPU's allocator peak on a GPU, else the process's."""
    return card["cuda_peak_mib"] if card["cuda_peak_mib"] is not None else card["peak_memory_mib"]


def cmd_corpus(args) -> int:
    from .corpus import run_generate

    out = check_out_dir(args.out, "--out")
    if (out / "corpus.txt").exists():
        raise UserError(f"{out} already holds a corpus: pick another --out")
    info = run_generate(args.anchors, _model_config(args), args.expert, out,
                        {"n_prompts": args.prompts, "samples": args.samples, "max_new_tokens": args.tokens,
                         "temperature": args.temperature, "min_rise": args.min_rise, "max_chars": args.max_chars,
                         "seed": args.seed})
    print(f"kept {info['kept']} of {info['samples']} samples ({info['chars']:,} characters; {info['duplicates']} "
          f"duplicates, {info['generic']} not specific) -> {out / 'corpus.txt'}")
    return 0


def cmd_runs(args) -> int:
    from . import jobs

    if args.runs_verb == "list":
        runs = jobs.list_jobs(args.root, kind="run") if args.root else jobs.list_runs()
        if args.json:
            print(dumps([r.to_dict() for r in runs], indent=2))
            return 0
        for r in runs:
            card = jobs.cost_card(r.summary.get("cost"))
            cost = f"{card['wall_s']:>7.0f} s {peak_of(card):>7,.0f} MiB" if card and card["wall_s"] is not None \
                and peak_of(card) is not None else f"{'-':>9} {'-':>11}"
            print(f"{r.state or '?':<20} {r.phase:<16} {f'{r.step}/{r.total}':>9} {cost}  {r.created}  {r.dir}")
        if not runs:
            print(f"no runs under {args.root or jobs.runs_root()}")
        return 0
    if args.runs_verb == "cancel":
        jobs.cancel(args.run_dir)
        print(f"asked {args.run_dir} to stop")
        return 0
    jobs.delete(args.run_dir, confirmed=args.yes)
    print(f"deleted {args.run_dir}")
    return 0


# -- eval -------------------------------------------------------------------------------------------
# eval's fields are flags named after their leaf (--max-new-tokens, --relearn-curve); these kept the
# names eval gave them before
EVAL_ALIASES = {"settings.verbatim_passages": "passages", "settings.verbatim_prefix": "prefix-tokens",
                "settings.verbatim_tokens": "continuation-tokens", "settings.retain_max_tokens": "retain-tokens",
                "settings.relearn_sources": "relearn-source", "related": "related-text", "unrelated": "unrelated-text",
                "settings.linear_probe": "probe"}


def eval_fields() -> list[dict]:
    """The EvalRequest fields eval takes as flags: all but the model, the adapters (--model, --adapter)
    and the benchmarks (a bare --benchmarks means all seven)."""
    from .evaluation import EvalRequest
    from .sections import field_specs

    return [s for s in field_specs(EvalRequest)
            if not s["path"].startswith("model.") and s["path"] not in ("adapters", "settings.benchmarks")]


def _parse_adapter(spec: str) -> tuple[str, str]:
    """NAME=PATH, or a bare PATH named after its directory (…/adapters/unlearned -> unlearned)."""
    name, sep, path = spec.partition("=")
    if not sep:
        path, name = spec, Path(spec.rstrip("/")).name
    if not name or not path:
        raise UserError(f"--adapter wants NAME=PATH or PATH, not {spec!r}")
    return name, path


def eval_request(args):
    """The EvalRequest of an `eval` command line (or of --request FILE, which the flags override)."""
    from pydantic import ValidationError

    from .sections import field_error
    from .evaluation import EvalRequest
    from .io import parse_json

    data = parse_json(read_text_file(args.request, "--request"), args.request) if args.request else {}
    if not isinstance(data, dict):
        raise UserError("--request: expected a JSON object")
    settings = data.setdefault("settings", {})
    if args.model is not None:
        data["model"] = {"name": args.model, "precision": args.precision or "auto", "device": args.device or "auto"}
    adapters = dict(data.get("adapters") or {})
    for spec in args.adapter or []:
        name, path = _parse_adapter(spec)
        if name in adapters:
            raise UserError(f"two adapters are called {name!r}: name them with NAME=PATH")
        if not Path(path).expanduser().exists():
            raise UserError(f"adapter path does not exist: {path}")
        adapters[name] = path
    data["adapters"] = adapters
    for path, value in field_values(args, eval_fields()).items():
        (settings if path.startswith("settings.") else data)[path.removeprefix("settings.")] = value
    if args.benchmarks is not None:
        settings["benchmarks"] = args.benchmarks or True  # a bare --benchmarks: all seven tasks
    try:
        return EvalRequest.model_validate(data)
    except ValidationError as e:
        raise UserError("invalid evaluation: " + "; ".join(field_error(err) for err in e.errors())) from None


def _list_value(flag: str, values: list[str], kind) -> list:
    """--flag a,b --flag c -> [a, b, c] of `kind`; a bad item is one UserError."""
    items = [x.strip() for v in values for x in v.split(",") if x.strip()]
    try:
        return [kind(x) for x in items]
    except ValueError:
        raise UserError(f"--{flag} wants comma-separated {kind.__name__} values, not {','.join(values)!r}") from None


def cmd_eval(args) -> int:
    from . import jobs
    from .evaluation import format_table, run_request

    request = eval_request(args)
    if args.out:
        check_out_dir(args.out)
        held = jobs.read_status(args.out).state  # "queued": the job a page launched into it, this very process
        if held == "running":
            raise UserError(f"{args.out} holds an evaluation that is still running")
        if not args.force and (held not in (None, "queued") or (held is None and (Path(args.out) / "eval.json").exists())):
            raise UserError(f"{args.out} already holds an evaluation ({held or 'eval.json'}): pass --force to "
                            "replace it, or choose another --out")
    try:
        result = run_request(request, args.out)
    except jobs.Cancelled:
        print("error: evaluation cancelled", file=sys.stderr)
        return 1
    print(dumps(result) if args.json else format_table(result))
    return 0


def _eval_parser(sub) -> None:
    from .evaluation import EvalRequest
    from .sections import field_specs

    bench_help = next(s["help"] for s in field_specs(EvalRequest) if s["path"] == "settings.benchmarks")
    p = sub.add_parser("eval", help="familiarity, verbatim memorisation, utility and robustness of the baseline and adapters")
    _model_flags(p, default=None)
    p.add_argument("--adapter", action="append", metavar="NAME=PATH",
                   help="a LoRA adapter (or full checkpoint) to evaluate next to the baseline; repeatable")
    from .evaluation.settings import PAPER_TASKS

    specs = eval_fields()
    add_field_flags(p, specs, {s["path"]: [f"--{names_of(s)}"] + ([f"--{EVAL_ALIASES[s['path']]}"]
                                                                   if s["path"] in EVAL_ALIASES else []) for s in specs})
    p.add_argument("--benchmarks", nargs="*", choices=PAPER_TASKS, metavar="TASK",
                   help=bench_help + f" Bare: all of {', '.join(PAPER_TASKS)}.")
    p.add_argument("--request", help="an evaluation request (JSON, as an evaluation job's request.json); flags override it")
    p.add_argument("--json", action="store_true")
    p.add_argument("--out", help="job directory: status.json progress and eval.json")
    p.add_argument("--force", action="store_true", help="replace the evaluation already in --out")
    p.set_defaults(func=cmd_eval)


# -- the parser -------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine", description="Obliviate engine")
    sub = parser.add_subparsers(dest="verb", required=True)

    p = sub.add_parser("inspect", help="per-token baseline / expert / generic / unlearned predictions")
    p.add_argument("prompt")
    _model_flags(p)
    p.add_argument("--expert", help="expert LoRA adapter directory (or a full checkpoint)")
    p.add_argument("--unlearned", help="unlearned LoRA adapter directory")
    p.add_argument("--anchors", help="anchor dictionary (.json or .csv)")
    p.add_argument("--alpha", type=float, default=5.0, help="alpha (with --target elm: eta)")
    p.add_argument("--target", choices=("whp", "elm"), default="whp",
                   help="the generic row: WHP's (expert + dictionary) or the ELM-style target (baseline personas)")
    p.add_argument("--concept", help="with --target elm: what is erased, as the persona prompts name it (e.g. the books' title)")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--track", action="append", help="a token to follow along the prompt, e.g. ' Paris'")
    p.add_argument("--lens", action="store_true",
                   help="the logit lens: every model's prediction after each block (with --json: lens[model] "
                        "per position, one entry per block)")
    p.add_argument("--scale", type=float, default=1.0,
                   help="scale the unlearned adapter's LoRA update (0 = the baseline, 1 = as trained, up to 1.5)")
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

    anchors = sub.add_parser("anchors", help="draft and check anchor dictionaries")
    verbs = anchors.add_subparsers(dest="anchors_verb", required=True)
    p = verbs.add_parser("suggest", help="suggest anchored terms and generic translations (LLM or offline)",
                         description="The API key is read from OPENAI_API_KEY only (never a flag: it would land in "
                                     "shell history), sent only to the endpoint OPENAI_BASE_URL names (default: the "
                                     "official one), and never written anywhere.")
    p.add_argument("--corpus", required=True, help="the text to unlearn (UTF-8)")
    route = p.add_mutually_exclusive_group(required=True)
    route.add_argument("--base-url", help="OpenAI-compatible endpoint, e.g. https://api.openai.com/v1")
    route.add_argument("--offline", action="store_true", help="no API: use the baseline (and expert) model")
    p.add_argument("--model", dest="llm_model", help="LLM route: the chat model's name; offline: the baseline "
                                                     "('embedded', a path or a hub id)")
    p.add_argument("--chunk-words", type=int, default=800)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    p.add_argument("--expert", help="offline: expert LoRA adapter directory")
    p.add_argument("--reinforce-steps", type=int, default=0,
                   help="offline, no --expert: first reinforce an expert on the corpus for N LoRA steps "
                        "(a reinforce_only run under OBLIVIATE_HOME/runs), then rank by its rise")
    p.add_argument("--top-k", type=int, default=60, help="offline: how many terms to suggest")
    p.add_argument("--min-count", type=int, default=2, help="offline: occurrences a term needs")
    p.add_argument("--precision", default="auto", choices=PRECISIONS)
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument("--out", help="write the suggested dictionary here (.json or .csv), only on success")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_suggest)
    p = verbs.add_parser("validate", help="check a dictionary: problems, and what consolidation would drop")
    p.add_argument("file")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("run", help="run a whole pipeline from a YAML/JSON config into a run directory")
    p.add_argument("config", nargs="?", help="config file (YAML or JSON); with --resume, default RUN_DIR/config.json")
    p.add_argument("--out", help="run directory (default OBLIVIATE_HOME/runs/<time>-<method>)")
    p.add_argument("--resume", action="store_true", help="continue a cancelled / interrupted run from its checkpoint")
    p.add_argument("--no-queue", action="store_true", help="do not wait for other jobs (one job at a time)")
    p.add_argument("--check", action="store_true", help="validate the config and print its phases and steps; run nothing")
    p.add_argument("--min-coverage", type=float, help="with --check: fail (exit 2) when the dictionary covers less "
                   "than this share (0-1) of the corpus's name occurrences (anchored terms + capitalised names without "
                   "an entry, engine/coverage.py)")
    p.set_defaults(func=cmd_run)
    for verb, (method, help_) in run_verbs().items():
        _run_verb_parser(sub, verb, method, help_)

    p = sub.add_parser("runs", help="list, cancel or delete runs")
    rs = p.add_subparsers(dest="runs_verb", required=True)
    q = rs.add_parser("list")
    q.add_argument("--root", help="default OBLIVIATE_HOME/runs")
    q.add_argument("--json", action="store_true")
    q = rs.add_parser("cancel")
    q.add_argument("run_dir")
    q = rs.add_parser("delete")
    q.add_argument("run_dir")
    q.add_argument("--yes", action="store_true", help="confirm deleting a job directory outside the job roots")
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("corpus", help="make a forget corpus from what the model knows")
    cverbs = p.add_subparsers(dest="corpus_verb", required=True)
    q = cverbs.add_parser("generate", help="sample the baseline (and the expert) on prompts about every anchored "
                                           "term; keep what is specific to the target (engine/corpus.py)")
    q.add_argument("--anchors", required=True, help="the dictionary whose terms the prompts are about")
    _model_flags(q)
    q.add_argument("--expert", help="an expert LoRA adapter: it samples too, and its rise over the baseline keeps a sample")
    q.add_argument("--prompts", type=int, default=240, help="prompts (every term in every template, seeded order)")
    q.add_argument("--samples", type=int, default=2, help="samples per prompt and model")
    q.add_argument("--tokens", type=int, default=64, help="new tokens per sample")
    q.add_argument("--temperature", type=float, default=0.8)
    q.add_argument("--min-rise", type=float, default=0.3,
                   help="nats per token the expert must favour a sample that names no other term")
    q.add_argument("--max-chars", type=int, default=200_000, help="the corpus's size limit")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--out", required=True, help="job directory: OUT/corpus.txt, OUT/corpus.json")
    q.set_defaults(func=cmd_corpus)

    _eval_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The one exit path: a UserError, an out-of-memory or a file-system refusal (full disk, no
    permission, read-only) is one `error:` line and exit 2; anything else is a bug's traceback."""
    parser = build_parser()
    for a in sys.argv[1:] if argv is None else argv:
        try:
            a.encode("utf-8")
        except UnicodeEncodeError:  # the shell passed bytes that are not UTF-8 (Python keeps them as surrogates)
            print(f"error: an argument is not UTF-8 text: {a.encode('utf-8', 'replace')[:60]!r}", file=sys.stderr)
            return 2
    args = parser.parse_args(argv)
    warnings.simplefilter("default")
    try:
        return args.func(args)
    except (UserError, MemoryError, RuntimeError, OSError) as e:
        err = as_user_error(e, "this command")
        if err is None:
            raise
        print(f"error: {scrub(err, limit=2000)}", file=sys.stderr)
        return 2

