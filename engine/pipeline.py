"""An unlearning run: one config -> a run directory with adapters, metrics and a status.

    execute(cfg, out)   loads the base model once and runs the method's phases over a RunContext:
        reinforce   a fresh LoRA trained on the corpus (next token)      -> adapters/expert
        labels      the method's targets (WHP: generic labels, cached)   -> labels.json
        unlearn     a fresh LoRA trained with the method's loss           -> adapters/unlearned
                    (+ retain.weight x the method's retain term on the retain text)

RUN_DIR/ (engine/jobs.py owns the layout)
    config.json                 the validated config, paths made absolute
    status.json metrics.jsonl log.txt stderr.txt stop .obliviate-job
    adapters/expert/  adapters/unlearned/   PEFT LoRA (adapter_config.json + adapter_model.safetensors)
    checkpoints/<phase>.safetensors          LoRA + optimizer state of an unfinished phase (--resume)
    labels.json                 which cached label set the unlearn phase used, and its statistics
"""
from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import jobs
from .config import RunConfig
from .cost import Cost, device_name
from .errors import UserError
from .legacy import checkpoint_names, phase_name
from .io import atomic_write_json, read_text_file
from .methods import Method, TrainData, get
from .methods.base import Corpus, LabelInputs, Targets
from .models import Workbench, load_model
from .probes import run_probes


class PhaseProgress:
    """Overall step / total across phases and an ETA from the seconds per unit measured so far."""

    def __init__(self, job: jobs.JobWriter, totals: dict[str, int], done: dict[str, int]):
        self.job, self.totals, self.done = job, totals, dict(done)
        self.t0, self.units0 = time.time(), sum(done.values())
        self.last_write = 0.0

    def update(self, phase: str, step: int, force: bool = False, **extra):
        self.done[phase] = step
        total, units = sum(self.totals.values()), sum(self.done.values())
        rate = (time.time() - self.t0) / max(units - self.units0, 1)
        eta = rate * (total - units) if units > self.units0 else None
        if force or time.time() - self.last_write > 0.5 or step == self.totals[phase]:
            self.job.status(phase=phase, phase_step=step, phase_total=self.totals[phase], step=units,
                            total=total, eta_s=eta, **extra)
            self.last_write = time.time()


@dataclass
class RunContext:
    """What every phase of one run shares: one Workbench (the base model, no adapter between phases)
    for the whole run, the corpus tokenized once, and the labels phase's targets."""

    cfg: RunConfig
    out: Path
    job: jobs.JobWriter
    acc: object  # accelerate.Accelerator
    method: Method
    wb: Workbench
    corpus: Corpus
    probes: list[dict]
    progress: PhaseProgress
    done_phases: list[str]
    summary: dict = field(default_factory=dict)
    targets: Targets | None = None  # the labels phase's result
    cost: Cost | None = None  # wall time and tokens per phase (summary["cost"], the cost card)

    @property
    def main(self) -> bool:
        return self.acc.is_main_process

    @property
    def expert_dir(self) -> Path:
        given = getattr(self.cfg.options, "expert", None)
        return Path(given) if given else self.out / "adapters" / "expert"

    def label_inputs(self, progress: bool = True) -> LabelInputs:
        tick = (lambda done: self.progress.update("labels", done)) if progress and self.main else None
        return LabelInputs(self.wb, self.corpus, self.cfg.seed, self.expert_dir, tick, self.acc.process_index,
                           self.acc.num_processes, self.acc.wait_for_everyone)


def plan(cfg: RunConfig) -> list[str]:
    """The phases a config runs, in order: the method's, less reinforce when an expert is given."""
    phases = list(get(cfg.method).phases)
    if "reinforce" in phases and getattr(cfg.options, "expert", None):
        phases.remove("reinforce")
    return phases


def totals(cfg: RunConfig, n_blocks: int) -> dict[str, int]:
    units = {"reinforce": cfg.reinforce.steps, "unlearn": cfg.unlearn.steps,
             "labels": get(cfg.method).from_config(cfg).label_units(n_blocks)}
    return {p: units[p] for p in plan(cfg)}


# -- phases -----------------------------------------------------------------------------------------
def _probe(run: RunContext):
    from .probes import encode, first_token_probabilities, score

    if not run.probes:
        return None
    tok = run.wb.tokenizer
    items = [(p, t, None) for p, t in encode(tok, run.probes)]

    def probe(model) -> dict:
        """P(first target token | prompt) of every tracked probe on the model being trained."""
        from .data import pad

        def forward(rows):
            ids, mask = pad([r[0] for r in rows], tok.pad_token_id)
            logits = model(input_ids=ids.to(run.acc.device), attention_mask=mask.to(run.acc.device)).logits
            return [logits[j, : len(r[0])] for j, r in enumerate(rows)]

        was_training = model.training
        model.eval()
        probs = first_token_probabilities(score(forward, items))
        model.train(was_training)
        forget = [q for q, p in zip(probs, run.probes) if p["kind"] == "forget"]
        retain = [q for q, p in zip(probs, run.probes) if p["kind"] == "retain"]
        return {"probes": {p["name"]: q for p, q in zip(run.probes, probs)},
                "familiarity": sum(forget) / len(forget) if forget else None,
                "retain": sum(retain) / len(retain) if retain else None}
    return probe


def _hooks(run: RunContext, phase: str):
    from .train import Hooks

    total = run.progress.totals[phase]

    def on_step(m: dict):
        pr = m.pop("probes", None)
        if pr is not None:
            m.update(pr)
            if m["step"] == 0:
                run.summary.setdefault(f"{phase}_before", pr)
            else:
                run.summary[f"{phase}_after"] = pr
        run.job.metric(m)
        run.progress.update(phase, m["step"], force=m["step"] == 0, memory_mib=m.get("memory_mib"),
                            tokens_per_s=m.get("tokens_per_s"), loss=m.get("loss"))
        if m["step"]:
            fam = f" familiarity {m['familiarity']:.4f}" if m.get("familiarity") is not None else ""
            run.job.log(f"{phase} step {m['step']}/{total} loss {m['loss']:.4f} {m['tokens_per_s']:.0f} tok/s{fam}")

    return Hooks(on_step=on_step, should_stop=run.job.should_stop, probe=_probe(run), probe_every=run.cfg.probe_every,
                 checkpoint=run.out / "checkpoints" / f"{phase}.safetensors", legacy_checkpoints=checkpoint_names(phase),
                 checkpoint_every=run.cfg.train.checkpoint_every, log=run.job.log)


def _placement(peft_model) -> str:
    """Where an adapter sits, for the log: "blocks 20-29, all linears" / "blocks 0-29, mlp"."""
    cfg = next(iter(peft_model.peft_config.values()))
    n = peft_model.base_model.model.config.num_hidden_layers
    layers = cfg.layers_to_transform if cfg.layers_to_transform is not None else list(range(n))
    layers = [layers] if isinstance(layers, int) else sorted(layers)
    span = f"{layers[0]}-{layers[-1]}" if layers == list(range(layers[0], layers[-1] + 1)) else ", ".join(map(str, layers))
    targets = cfg.target_modules
    kinds = "all linears" if isinstance(targets, str) else ", ".join(sorted(targets))
    return f"blocks {span}, {kinds}"


def fit(run: RunContext, phase: str, method: Method, data: TrainData, steps: int, lr: float, adapter_dir: Path,
        retain: TrainData | None = None) -> None:
    """Train a fresh LoRA adapter with `method` on `data`, save it to adapter_dir, unload it."""
    from .train import Stopped, TrainSpec, lora_model, save_adapter, train

    cfg = run.cfg
    from .train import blocks

    requested = blocks(cfg.lora.layers, run.wb.num_layers)
    peft_model = lora_model(run.wb.release(), cfg.lora.rank, cfg.train.gradient_checkpointing,
                            layers=method.lora_layers(run.wb.num_layers, requested), modules=cfg.lora.modules)
    run.job.log(f"{phase}: {steps} steps, lr {lr}, batch {cfg.train.batch_size} x {cfg.train.grad_accum}, "
                f"LoRA rank {cfg.lora.rank} on {_placement(peft_model)}")
    spec = TrainSpec(phase, method, data, steps, lr, cfg.train.batch_size, cfg.train.grad_accum, seed=cfg.seed,
                     warmup=cfg.train.warmup, retain=retain, retain_weight=cfg.retain.weight,
                     sam_rho=cfg.unlearn.sam_rho if phase == "unlearn" else None)
    try:
        result = train(peft_model, spec, _hooks(run, phase), run.acc)
    except Stopped as e:
        if run.main:  # status writes are throttled: say exactly where the checkpoint stands
            run.progress.update(phase, e.step, force=True)
        run.job.log(f"{phase}: stopped at step {e.step}; checkpoint saved")
        peft_model.unload()
        raise jobs.Cancelled() from None
    if run.cost is not None:
        run.cost.add_tokens(phase, result["tokens"])
    if run.main:
        save_adapter(peft_model, adapter_dir)
        for name in (f"{phase}.safetensors", f"{phase}.pt", *_hooks(run, phase).legacy_checkpoints):
            (run.out / "checkpoints" / name).unlink(missing_ok=True)
    run.acc.wait_for_everyone()
    peft_model.unload()  # LoRA layers removed (not merged): the Workbench's base model as it was
    run.job.log(f"{phase}: adapter saved to {adapter_dir}")


def reinforce(run: RunContext) -> None:
    """The expert: the baseline trained further on the corpus (next-token loss, goldfish masks)."""
    from .methods import NextToken

    method = NextToken(goldfish=run.cfg.goldfish)
    fit(run, "reinforce", method, method.forget_data(run.corpus), run.cfg.reinforce.steps,
        run.cfg.reinforce.lr or run.cfg.unlearn.lr, run.out / "adapters" / "expert")


def labels(run: RunContext) -> None:
    """The method's training targets (WHP: generic labels for several alphas, cached on disk)."""
    run.progress.update("labels", 0, force=True)
    t0 = time.time()
    run.targets = run.method.make_labels(run.label_inputs())
    info = {**run.targets.info(), "seconds": time.time() - t0}
    if run.main:
        atomic_write_json(run.out / "labels.json", info)
    alpha = info.get("alpha")
    changed = (info.get("changed") or {}).get(str(float(alpha))) if alpha is not None else None
    run.job.log(f"labels: {'cache hit' if info.get('cached') else 'built'} {info.get('key')} in {info['seconds']:.1f}s; "
                f"{info.get('labelled')} labelled positions"
                + (f", changed at alpha {alpha}: {changed:.3%}" if changed is not None else ""))
    if run.job.should_stop():
        raise jobs.Cancelled()
    run.summary["labels"] = {k: info[k] for k in ("key", "cached", "seconds", "labelled", "changed") if k in info}


def unlearn(run: RunContext) -> None:
    """A fresh LoRA trained with the method's forget loss (+ its retain term on the retain text)."""
    if "labels" in run.method.phases and run.targets is None:  # resumed after the labels phase: from the cache
        run.targets = run.method.make_labels(run.label_inputs(progress=False))
    fit(run, "unlearn", run.method, run.method.forget_data(run.corpus, run.targets), run.cfg.unlearn.steps,
        run.cfg.unlearn.lr, run.out / "adapters" / "unlearned", retain_data(run))


PHASES = {"reinforce": reinforce, "labels": labels, "unlearn": unlearn}


def retain_data(run: RunContext) -> TrainData | None:
    """The retain text in blocks with next-token labels (goldfish masks applied), or None."""
    from .data import apply_goldfish, corpus_blocks, pad_blocks

    if not run.cfg.retain.text:
        return None
    text = read_text_file(run.cfg.retain.text, "retain")
    if not text.strip():
        raise UserError(f"retain: {run.cfg.retain.text} is empty")
    tok = run.wb.tokenizer
    ids, lengths = pad_blocks(corpus_blocks(tok, text, run.cfg.data.block_size), tok.pad_token_id)
    data = TrainData.next_token(ids, lengths)
    data.labels = apply_goldfish(data.labels, run.cfg.goldfish)
    return data


# -- the run ----------------------------------------------------------------------------------------
def _context(cfg: RunConfig, out: Path, job: jobs.JobWriter, acc, done_phases: list[str]) -> RunContext:
    from .data import corpus_blocks, pad_blocks

    model, tok = load_model(cfg.model)
    if acc.num_processes > 1 and model.device.type == "cuda":
        model.to(acc.device)
    blocks = corpus_blocks(tok, read_text_file(cfg.corpus, "corpus"), cfg.data.block_size, cfg.data.max_blocks)
    if max(len(b) for b in blocks) > int(getattr(model.config, "max_position_embeddings", 1 << 30)):
        raise UserError(f"block_size {cfg.data.block_size} is longer than the model's context")
    job.log(f"model {cfg.model.name} ({getattr(model, 'obliviate_precision', '?')}), corpus "
            f"{sum(map(len, blocks))} tokens in {len(blocks)} blocks of <= {cfg.data.block_size}")
    probes = run_probes(cfg.probes)
    steps = totals(cfg, len(blocks))
    summary = {"probe_names": [p["name"] for p in probes]}
    prev = jobs.read_status(out).summary
    summary.update({k: v for k, v in prev.items() if k not in summary})
    wb = Workbench(model, tok, cfg.model)
    cost = Cost.resumed(device_name(wb.device), prev.get("cost"), done_phases)
    return RunContext(cfg, out, job, acc, get(cfg.method).from_config(cfg), wb,
                      Corpus(blocks, *pad_blocks(blocks, tok.pad_token_id)), probes,
                      PhaseProgress(job, steps, {p: steps[p] for p in done_phases if p in steps}), done_phases, summary,
                      cost=cost)


def _cuda_peak(device) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def _pipeline(cfg: RunConfig, out: Path, job: jobs.JobWriter, acc, done_phases: list[str]) -> dict:
    t_start = time.time()
    load = Cost("")
    with load.part("load"):
        run = _context(cfg, out, job, acc, done_phases)
    run.cost.parts["load"] = load.parts["load"]  # this process's load (a resumed run loads again)
    for phase in plan(cfg):
        if phase in done_phases:
            continue
        with run.cost.part(phase):
            PHASES[phase](run)
        done_phases.append(phase)
        run.summary["cost"] = run.cost.card(_cuda_peak(run.wb.device))
        job.status(done_phases=done_phases, summary=run.summary)
    acc.wait_for_everyone()
    prev = jobs.read_status(out).summary
    run.summary["elapsed_s"] = time.time() - t_start + float(prev.get("elapsed_s", 0) if done_phases else 0)
    return run.summary


def execute(cfg: RunConfig, out: str | os.PathLike, resume: bool = False, queue: bool = True) -> dict:
    """Run the config's pipeline into `out`; returns the final status. Cancellation -> state cancelled."""
    import torch
    from accelerate import Accelerator

    out = Path(out).resolve()
    acc = Accelerator(cpu=cfg.model.device == "cpu" or not torch.cuda.is_available())
    main = acc.is_main_process
    job = jobs.JobWriter(out, "run", enabled=main)
    status = jobs.read_status(out)
    if resume:
        if not (out / "config.json").exists():
            raise UserError(f"nothing to resume in {out} (no config.json)")
        if status.state == "finished":
            raise UserError(f"{out} already finished")
        if status.state == "running" and status.pid != os.getpid() and jobs.pid_alive(status.pid):
            raise UserError(f"{out} is still running")
    else:
        if main and status.state not in (None, "queued"):
            raise UserError(f"{out} already holds a run: use --resume, or another --out")
        if main:
            atomic_write_json(out / "config.json", cfg.to_dict())
    done_phases = [phase_name(p) for p in status.done_phases] if resume else []
    if main and not resume:
        for name in ("metrics.jsonl", "log.txt"):
            (out / name).unlink(missing_ok=True)
    doing = lambda: f"the {jobs.read_status(out).phase or 'run'} phase"  # noqa: E731 - what ran out of memory
    try:
        with jobs.queue_slot(job) if queue else contextlib.nullcontext(), jobs.failures(job, doing):
            job.start(method=cfg.method, done_phases=done_phases, phases=plan(cfg), world_size=acc.num_processes)
            job.log(f"{'resuming' if resume else 'starting'} {cfg.method} run in {out}")
            result = _pipeline(cfg, out, job, acc, done_phases)
    except jobs.Cancelled:
        job.log("cancelled")
        job.cancelled(done_phases=done_phases)
        return jobs.read_status(out) if main else jobs.Status(dir=str(out), state="cancelled")
    except KeyboardInterrupt:  # Ctrl-C in a terminal: like a cancel, from the last periodic checkpoint
        job.log("interrupted (Ctrl-C): --resume continues from the last checkpoint")
        job.cancelled(done_phases=done_phases)
        raise
    job.log("finished")
    job.finish(summary=result, done_phases=done_phases)
    if not main:  # other ranks: their part is done; rank 0 owns the run directory
        return jobs.Status(dir=str(out), state="finished", world_size=-acc.process_index)
    return jobs.read_status(out)


def phase_changes(summary: dict) -> dict:
    """familiarity, retain and the first tracked probe before -> after, per trained phase (the CLI's
    one-line result): the first probe of a probes file is its headline (see docs/runs.md, the demo run)."""
    names = summary.get("probe_names") or []
    out = {}
    for key, val in summary.items():
        if isinstance(val, dict) and "familiarity" in val:
            out[key] = {"familiarity": val["familiarity"], "retain": val.get("retain"),
                        **{n: (val.get("probes") or {}).get(n) for n in names[:1]}}
    return out

