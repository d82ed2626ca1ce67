"""Unlearning runs: one config -> a run directory with adapters, metrics and a status.

    whp              reinforce -> expert adapter; generic labels (cached); unlearn -> unlearned adapter
    gradient_ascent  negated next-token loss on the corpus (+ optional retain term) -> unlearned adapter
    reinforce_only   reinforce -> expert adapter (with goldfish: a goldfish-loss fine-tune)

RUN_DIR/
    config.json                 the validated config, paths made absolute
    status.json metrics.jsonl log.txt stderr.txt stop     (see engine/jobs.py)
    adapters/expert/            PEFT LoRA (adapter_config.json + adapter_model.safetensors)
    adapters/unlearned/
    checkpoints/<phase>.safetensors  LoRA + optimizer state of an unfinished phase (--resume); no pickle
    labels.json                 which cached label set the unlearn phase used, and its statistics

`python -m engine run CONFIG --out RUN_DIR` runs `execute`; the per-step verbs (reinforce, labels,
unlearn, gradient-ascent) build the same config from flags and run a one-method pipeline.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from . import jobs
from .errors import UserError, is_oom, oom_error
from .io import (MAX_JSON_BYTES, atomic_write_json, check_out_dir, check_text_file, parse_json, parse_yaml,
                 read_text_file, short)

MAX_CONFIG_BYTES = 1 << 20
METHODS = ("whp", "gradient_ascent", "reinforce_only")


@dataclass
class RunConfig:
    """Everything a run needs. Paths are relative to the config file's directory."""

    corpus: str = ""
    """The target text to unlearn (UTF-8 file)."""
    method: str = "whp"
    """whp (reinforce, generic labels, unlearn), gradient_ascent or reinforce_only."""
    anchors: str | None = None
    """Anchored-terms dictionary (.json or .csv); needed by whp."""
    expert: str | None = None
    """An existing expert (LoRA adapter dir or full checkpoint): whp then skips reinforce."""
    retain: str | None = None
    """A retain text: the unlearning phase (whp or gradient_ascent) adds retain_weight x a retain term on it."""
    retain_weight: float = 1.0
    retain_loss: str = "kl"
    """kl: KL(baseline || model) on the retain text (keeps what the baseline said there);
    ce: next-token cross-entropy on it (gradient difference)."""
    labels: str = "hard"
    """hard: argmax of the generic logits (the paper); soft: cross-entropy to the top soft_top_k tokens
    of the generic distribution (the reference's suggested improvement: no sharpening where nothing changes)."""
    soft_top_k: int = 32
    model: str = "embedded"
    """'embedded' (SmolLM2-135M-Instruct), a local path or a hub id."""
    precision: str = "auto"
    """auto (NF4 on CUDA above 1B parameters, bf16 on CUDA, fp32 on CPU), nf4, bf16 or fp32."""
    device: str = "auto"
    steps: int = 120
    """Optimizer steps of the unlearning phase (unlearn or gradient ascent); the paper's curves run to 120."""
    reinforce_steps: int = 60
    """Optimizer steps of the reinforce phase (the expert)."""
    lr: float = 1e-4
    """Learning rate of the unlearning phase."""
    reinforce_lr: float | None = None
    """Learning rate of the reinforce phase (default: lr)."""
    alpha: float = 5.0
    """The alpha of the generic labels used to unlearn."""
    alphas: list = field(default_factory=lambda: [2.5, 5.0, 10.0])
    """Alphas computed (and cached) at once, so another alpha needs no new forward passes."""
    lora_rank: int = 8
    lora_layers: int | None = None
    """Adapt only the top N transformer layers (None: all). Fewer layers = a shorter backward pass."""
    batch_size: int = 8
    """Blocks per optimizer step (split across processes under accelerate)."""
    grad_accum: int = 1
    block_size: int = 512
    """Tokens per block (the paper: 512; 128-256 keeps a CPU run short)."""
    max_blocks: int | None = None
    """Use only the first N blocks of the corpus (None: all)."""
    seed: int = 0
    warmup: int = 0
    """Linear learning-rate warmup steps."""
    goldfish: dict = field(default_factory=lambda: {"kind": "none", "k": 4, "h": 13})
    """Goldfish loss for next-token phases: {kind: none|static|hash, k, h}."""
    probes: list | str | None = None
    """Tracked probabilities: a list of {prompt, target[, kind: forget|retain]} or a probes.json
    path (its "probability" prompts are forget probes, its "retain" prompts retain probes)."""
    probe_every: int = 10
    checkpoint_every: int = 20
    gradient_checkpointing: bool = False
    label_batch: int = 4
    """Blocks per batched forward when building generic labels (2 sequences each)."""

    def __post_init__(self):
        problems = self.problems()
        if problems:
            raise UserError("invalid config: " + "; ".join(problems))

    # -- validation -----------------------------------------------------------------------------
    def problems(self) -> list[str]:
        """Every bad field at once (the run never starts on a half-valid config)."""
        from .models import PRECISIONS
        from .train import Goldfish

        p: list[str] = []

        def num(name, kind, lo=None, hi=None, optional=False, lo_open=False):
            v = getattr(self, name)
            if v is None and optional:
                return
            ok_type = isinstance(v, int) if kind is int else isinstance(v, (int, float))
            if isinstance(v, bool) or not ok_type or (kind is float and not math.isfinite(v)):
                p.append(f"{name}: expected {'an integer' if kind is int else 'a number'}, got {short(v)}")
            elif lo is not None and (v <= lo if lo_open else v < lo):
                p.append(f"{name}: must be {'>' if lo_open else '>='} {lo}, got {short(v)}")
            elif hi is not None and v > hi:
                p.append(f"{name}: must be <= {hi}, got {short(v)}")

        def path(name, required=False, directory=False):
            v = getattr(self, name)
            if v in (None, ""):
                if required:
                    p.append(f"{name}: required for method {short(self.method)}")
                return
            if not isinstance(v, str):
                p.append(f"{name}: expected a path, got {short(v)}")
            elif directory:
                if not Path(v).is_dir():
                    p.append(f"{name}: not a directory: {short(v, 200)}")
            elif (problem := check_text_file(v, name)):
                p.append(problem)  # missing, a directory, not UTF-8: said now, not after an hour of training

        if self.method not in METHODS:
            p.append(f"method: must be one of {', '.join(METHODS)}, got {short(self.method)}")
        path("corpus", required=True)
        path("anchors", required=self.method == "whp")
        path("expert", directory=True)
        path("retain")
        if not isinstance(self.model, str) or not self.model.strip():
            p.append("model: expected 'embedded', a local path or a hub id")
        if self.precision not in PRECISIONS:
            p.append(f"precision: must be one of {', '.join(PRECISIONS)}, got {short(self.precision)}")
        if self.device not in ("auto", "cpu", "cuda"):
            p.append(f"device: must be auto, cpu or cuda, got {short(self.device)}")
        num("steps", int, 1, 100_000)
        num("reinforce_steps", int, 0 if self.expert or self.method == "gradient_ascent" else 1, 100_000)
        num("lr", float, 0, 1, lo_open=True)
        num("reinforce_lr", float, 0, 1, optional=True, lo_open=True)
        num("alpha", float, 0, 1000)
        num("retain_weight", float, 0)
        num("soft_top_k", int, 1, 1024)
        if self.retain_loss not in ("kl", "ce"):
            p.append(f"retain_loss: must be kl or ce, got {short(self.retain_loss)}")
        if self.labels not in ("hard", "soft"):
            p.append(f"labels: must be hard or soft, got {short(self.labels)}")
        num("lora_rank", int, 1, 1024)
        num("lora_layers", int, 1, optional=True)
        num("batch_size", int, 1, 4096)
        num("grad_accum", int, 1, 4096)
        num("block_size", int, 8, 1 << 20)
        num("max_blocks", int, 1, optional=True)
        num("seed", int)
        num("warmup", int, 0)
        num("probe_every", int, 1)
        num("checkpoint_every", int, 1)
        num("label_batch", int, 1, 1024)
        if not isinstance(self.gradient_checkpointing, bool):
            p.append(f"gradient_checkpointing: expected true or false, got {short(self.gradient_checkpointing)}")
        if not isinstance(self.alphas, list) or not self.alphas or len(self.alphas) > 16 or any(
                isinstance(a, bool) or not isinstance(a, (int, float)) or not math.isfinite(a) or not 0 <= a <= 1000
                for a in self.alphas):
            p.append(f"alphas: expected a list of 1 to 16 numbers from 0 to 1000, got {short(self.alphas)}")
        if not isinstance(self.goldfish, dict):
            p.append(f"goldfish: expected {{kind, k, h}}, got {short(self.goldfish)}")
        else:
            extra = set(self.goldfish) - {"kind", "k", "h"}
            if extra:
                p.append(f"goldfish: unknown keys {sorted(extra)}")
            else:
                p += Goldfish(**{"kind": "none", "k": 4, "h": 13, **self.goldfish}).problems()
        p += self._probe_problems()
        return p

    def _probe_problems(self) -> list[str]:
        if self.probes is None:
            return []
        if isinstance(self.probes, str):
            try:
                load_probes(self.probes)
            except UserError as e:
                return [f"probes: {e}"]
            return []
        if not isinstance(self.probes, list):
            return [f"probes: expected a list of {{prompt, target}} or a probes.json path, got {short(self.probes)}"]
        return [f"probes[{i}]: {m}" for i, pr in enumerate(self.probes) if (m := _probe_problem(pr))]

    def label_top_k(self) -> int:
        """Soft-label width the generic labels are built with (0: hard labels only)."""
        return self.soft_top_k if self.labels == "soft" else 0

    def goldfish_spec(self):
        from .train import Goldfish

        return Goldfish(**{"kind": "none", "k": 4, "h": 13, **self.goldfish})

    def probe_list(self) -> list[dict]:
        if self.probes is None:
            return []
        if isinstance(self.probes, str):
            return load_probes(self.probes)
        return [{"kind": "forget", **p} for p in self.probes]

    def model_config(self):
        from .models import ModelConfig

        return ModelConfig(self.model, self.precision, self.device)

    @classmethod
    def from_dict(cls, data: dict, base_dir: str | os.PathLike | None = None) -> "RunConfig":
        """Validate a parsed config; relative paths resolve against base_dir (the config's folder)."""
        if not isinstance(data, dict):
            raise UserError("invalid config: expected a mapping of field: value")
        names = {f.name for f in fields(cls)}
        problems = [f"{short(k, 40)}: unknown field" for k in data if k not in names]
        data = {k: v for k, v in data.items() if k in names}
        base = Path(base_dir) if base_dir else Path.cwd()
        for k in ("corpus", "anchors", "expert", "retain"):
            if isinstance(data.get(k), str) and data[k]:
                data[k] = str((base / os.path.expanduser(data[k])).resolve())
        if isinstance(data.get("probes"), str):
            data["probes"] = str((base / os.path.expanduser(data["probes"])).resolve())
        m = data.get("model")
        if isinstance(m, str) and m.startswith((".", "~")):
            data["model"] = str((base / os.path.expanduser(m)).resolve())
        if isinstance(data.get("alphas"), (list, tuple)):
            data["alphas"] = list(data["alphas"])
        if isinstance(data.get("goldfish"), dict):
            data["goldfish"] = {"kind": "none", "k": 4, "h": 13, **data["goldfish"]}
        try:
            cfg = cls(**data)
        except UserError as e:
            problems += str(e).removeprefix("invalid config: ").split("; ")
            cfg = None
        except TypeError as e:
            problems.append(str(e))
            cfg = None
        if problems:
            raise UserError("invalid config: " + "; ".join(problems))
        return cfg

    def to_dict(self) -> dict:
        return asdict(self)


def _probe_problem(pr) -> str | None:
    if not isinstance(pr, dict) or not isinstance(pr.get("prompt"), str) or not isinstance(pr.get("target"), str):
        return "expected {prompt: text, target: text}"
    if not pr["prompt"].strip() or not pr["target"].strip():
        return "prompt and target must not be empty"
    if pr.get("kind", "forget") not in ("forget", "retain"):
        return "kind must be forget or retain"
    return None


def load_probes(path: str | os.PathLike) -> list[dict]:
    """Probes from a probes.json: "probability" entries track forgetting, "retain" entries the rest."""
    data = parse_json(read_text_file(path, "probes", MAX_JSON_BYTES), f"probes {path}")
    if isinstance(data, list):
        data = {"probability": data}
    if not isinstance(data, dict):
        raise UserError(f"probes {path}: expected a JSON object or list")
    out = []
    for key, kind in (("probability", "forget"), ("retain", "retain")):
        items = data.get(key, [])
        if not isinstance(items, list):
            raise UserError(f"probes {path}: {key} must be a list")
        for i, p in enumerate(items):
            if (m := _probe_problem(p)):
                raise UserError(f"probes {path}: {key}[{i}]: {m}")
            out.append({"kind": kind, **p})
    return out


def load_config(path: str | os.PathLike) -> RunConfig:
    """A YAML or JSON config file, validated; paths in it are relative to its folder."""
    path = Path(path)
    text = read_text_file(path, "config", MAX_CONFIG_BYTES)
    data = parse_yaml(text, str(path)) if path.suffix in (".yaml", ".yml") else parse_json(text, str(path))
    return RunConfig.from_dict(data or {}, path.parent)


def probe_name(p: dict) -> str:
    words = p["prompt"].split()
    tail = " ".join(words[-5:])
    return f"P({p['target']!r} | …{tail})"


# -- the pipeline -------------------------------------------------------------------------------
def phases(cfg: RunConfig) -> list[str]:
    if cfg.method == "gradient_ascent":
        return ["gradient_ascent"]
    if cfg.method == "reinforce_only":
        return ["reinforce"]
    return (["reinforce"] if not cfg.expert else []) + ["labels", "unlearn"]


class _Progress:
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


def execute(cfg: RunConfig, out: str | os.PathLike, resume: bool = False, queue: bool = True) -> dict:
    """Run the config's pipeline into `out`; returns the final status. Cancellation -> state cancelled."""
    import torch
    from accelerate import Accelerator

    out = Path(out).resolve()
    acc = Accelerator(cpu=cfg.device == "cpu" or not torch.cuda.is_available())
    main = acc.is_main_process
    job = jobs.JobWriter(out, "run", enabled=main)
    status = jobs._read(out)
    if resume:
        if not (out / "config.json").exists():
            raise UserError(f"nothing to resume in {out} (no config.json)")
        if status.get("state") == "finished":
            raise UserError(f"{out} already finished")
        if status.get("state") == "running" and status.get("pid") != os.getpid() and jobs.pid_alive(status.get("pid")):
            raise UserError(f"{out} is still running")
    else:
        if main and (out / "status.json").exists() and status.get("state") not in (None, "queued"):
            raise UserError(f"{out} already holds a run: use --resume, or another --out")
        if main:
            atomic_write_json(out / "config.json", cfg.to_dict())
    done_phases = list(status.get("done_phases", [])) if resume else []
    if main and not resume:
        for name in ("metrics.jsonl", "log.txt"):
            (out / name).unlink(missing_ok=True)
    try:
        with jobs.queue_slot(job) if queue else _nullcontext():
            job.start(method=cfg.method, done_phases=done_phases, phases=phases(cfg), world_size=acc.num_processes)
            job.log(f"{'resuming' if resume else 'starting'} {cfg.method} run in {out}")
            result = _pipeline(cfg, out, job, acc, done_phases)
    except jobs.Cancelled:
        job.log("cancelled")
        job.cancelled(done_phases=done_phases)
        return jobs.read_status(out) if main else {"state": "cancelled", "dir": str(out)}
    except KeyboardInterrupt:  # Ctrl-C in a terminal: like a cancel, from the last periodic checkpoint
        job.log("interrupted (Ctrl-C): --resume continues from the last checkpoint")
        job.cancelled(done_phases=done_phases)
        raise
    except UserError as e:
        job.log(f"error: {e}")
        job.fail(str(e))
        raise
    except BaseException as e:  # noqa: BLE001 - recorded, then re-raised with its traceback
        if is_oom(e):  # the CPU allocator's RuntimeError reads like CUDA's OOM: one line, exit 2
            err = oom_error(f"the {jobs._read(out).get('phase') or 'run'} phase")
            job.log(f"error: {err}")
            job.fail(str(err))
            raise err from None
        job.log(f"failed: {type(e).__name__}: {e}")
        job.fail(f"{type(e).__name__}: {e}")
        raise
    job.log("finished")
    job.finish(summary=result, done_phases=done_phases)
    if not main:  # other ranks: their part is done; rank 0 owns the run directory
        return {"state": "finished", "dir": str(out), "rank": acc.process_index}
    return jobs.read_status(out)


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def _pipeline(cfg: RunConfig, out: Path, job: jobs.JobWriter, acc, done_phases: list[str]) -> dict:
    from .anchors import load_anchors
    from .labels import generic_labels
    from .models import Workbench, load_model
    from .train import (Hooks, Stopped, TrainSpec, apply_goldfish, corpus_blocks, lora_model,
                        next_token_labels, pad_blocks, probe_probabilities, save_adapter, train)

    t_start = time.time()
    main = acc.is_main_process
    model, tok = load_model(cfg.model_config())
    if acc.num_processes > 1 and model.device.type == "cuda":
        model.to(acc.device)
    text = read_text_file(cfg.corpus, "corpus")
    blocks = corpus_blocks(tok, text, cfg.block_size, cfg.max_blocks)
    if max(len(b) for b in blocks) > int(getattr(model.config, "max_position_embeddings", 1 << 30)):
        raise UserError(f"block_size {cfg.block_size} is longer than the model's context")
    job.log(f"model {cfg.model} ({getattr(model, 'obliviate_precision', '?')}), corpus {sum(map(len, blocks))} tokens "
            f"in {len(blocks)} blocks of <= {cfg.block_size}")
    anchors = load_anchors(cfg.anchors).check() if cfg.anchors else None
    probes = cfg.probe_list()
    names = [probe_name(p) for p in probes]
    plan = phases(cfg)
    n_groups = math.ceil(len(blocks) / cfg.label_batch)
    totals = {"reinforce": cfg.reinforce_steps, "labels": n_groups, "unlearn": cfg.steps,
              "gradient_ascent": cfg.steps}
    totals = {p: totals[p] for p in plan}
    progress = _Progress(job, totals, {p: totals[p] for p in done_phases})
    pad = tok.pad_token_id or 0
    ids, lengths = pad_blocks(blocks, pad)
    summary: dict = {"probe_names": names}
    prev = jobs._read(out).get("summary") or {}
    summary.update({k: v for k, v in prev.items() if k not in summary})

    def probe(m) -> dict:
        probs = probe_probabilities(m, tok, probes, acc.device)
        row = dict(zip(names, probs))
        forget = [q for q, p in zip(probs, probes) if p["kind"] == "forget"]
        retain = [q for q, p in zip(probs, probes) if p["kind"] == "retain"]
        return {"probes": row, "familiarity": sum(forget) / len(forget) if forget else None,
                "retain": sum(retain) / len(retain) if retain else None}

    def hooks(phase: str) -> Hooks:
        def on_step(m: dict):
            pr = m.pop("probes", None)
            if pr is not None:
                m.update(pr)
                summary.setdefault(f"{phase}_before", pr) if m["step"] == 0 else summary.__setitem__(f"{phase}_after", pr)
            job.metric(m)
            progress.update(phase, m["step"], force=m["step"] == 0, memory_mib=m.get("memory_mib"),
                            tokens_per_s=m.get("tokens_per_s"), loss=m.get("loss"))
            if m["step"]:
                job.log(f"{phase} step {m['step']}/{totals[phase]} loss {m['loss']:.4f} "
                        f"{m['tokens_per_s']:.0f} tok/s" + (f" familiarity {m['familiarity']:.4f}"
                                                          if m.get("familiarity") is not None else ""))
        return Hooks(on_step=on_step, should_stop=job.should_stop, probe=probe if probes else None,
                     probe_every=cfg.probe_every, checkpoint=out / "checkpoints" / f"{phase}.safetensors",
                     checkpoint_every=cfg.checkpoint_every, log=job.log)

    def fit(phase: str, spec: TrainSpec, adapter_dir: Path):
        nonlocal model
        peft_model = lora_model(model, cfg.lora_rank, cfg.gradient_checkpointing, cfg.lora_layers)
        job.log(f"{phase}: {spec.steps} steps, lr {spec.lr}, batch {spec.batch_size} x {spec.grad_accum}, "
                f"LoRA rank {cfg.lora_rank}")
        try:
            train(peft_model, spec, hooks(phase), acc)
        except Stopped as e:
            if main:  # status writes are throttled: say exactly where the checkpoint stands
                progress.update(phase, e.step, force=True)
            job.log(f"{phase}: stopped at step {e.step}; checkpoint saved")
            model = peft_model.unload()
            raise jobs.Cancelled() from None
        if main:
            save_adapter(peft_model, adapter_dir)
            for suffix in (".safetensors", ".pt"):
                (out / "checkpoints" / f"{phase}{suffix}").unlink(missing_ok=True)
        acc.wait_for_everyone()
        model = peft_model.unload()  # the base again, LoRA layers removed (not merged)
        done_phases.append(phase)
        job.status(done_phases=done_phases, summary=summary)
        job.log(f"{phase}: adapter saved to {adapter_dir}")

    next_labels = apply_goldfish(next_token_labels(ids, lengths), cfg.goldfish_spec())
    top_k = cfg.label_top_k()

    def retain_term() -> dict:
        """TrainSpec fields of the retain term (none without a retain text)."""
        if not cfg.retain:
            return {}
        text = read_text_file(cfg.retain, "retain")
        if not text.strip():
            raise UserError(f"retain: {cfg.retain} is empty")
        r_blocks = corpus_blocks(tok, text, cfg.block_size)
        r_ids, r_len = pad_blocks(r_blocks, pad)
        return {"retain_ids": r_ids, "retain_lengths": r_len, "retain_weight": cfg.retain_weight,
                "retain_loss": cfg.retain_loss,
                "retain_labels": apply_goldfish(next_token_labels(r_ids, r_len), cfg.goldfish_spec())}
    expert_dir = Path(cfg.expert) if cfg.expert else out / "adapters" / "expert"
    labels = None
    for phase in plan:
        if phase in done_phases:
            continue
        if phase == "reinforce":
            fit(phase, TrainSpec("reinforce", ids, lengths, next_labels, cfg.reinforce_steps,
                                 cfg.reinforce_lr or cfg.lr, cfg.batch_size, cfg.grad_accum, seed=cfg.seed,
                                 warmup=cfg.warmup), out / "adapters" / "expert")
        elif phase == "labels":
            progress.update("labels", 0, force=True)
            wb = Workbench(model, tok, cfg.model_config())
            wb.add_adapter("expert", expert_dir)
            alphas = sorted({float(a) for a in cfg.alphas} | {float(cfg.alpha)})
            t0 = time.time()
            # Rank 0 builds (or reads) the cache; the other ranks then read it.
            if main:
                labels = generic_labels(wb, "expert", anchors, blocks, alphas, cfg.seed, cfg.label_batch, top_k=top_k,
                                        on_progress=lambda d, n: progress.update(
                                            "labels", math.ceil(d / cfg.label_batch)))
            acc.wait_for_everyone()
            if not main:
                labels = generic_labels(wb, "expert", anchors, blocks, alphas, cfg.seed, cfg.label_batch, top_k=top_k)
            model = wb.model.unload()
            info = {"key": labels.key, "path": str(labels.path), "cached": labels.cached,
                    "seconds": time.time() - t0, "alpha": cfg.alpha, **labels.stats}
            if main:
                atomic_write_json(out / "labels.json", info)
            job.log(f"labels: {'cache hit' if labels.cached else 'built'} {labels.key} in {info['seconds']:.1f}s; "
                    f"{labels.stats['labelled']} labelled positions, changed at alpha {cfg.alpha}: "
                    f"{labels.stats['changed'].get(str(float(cfg.alpha)), float('nan')):.3%}")
            if job.should_stop():
                raise jobs.Cancelled()
            done_phases.append("labels")
            job.status(done_phases=done_phases)
            summary["labels"] = {k: info[k] for k in ("key", "cached", "seconds", "labelled", "changed")}
        elif phase == "unlearn":
            if labels is None:  # resumed after the labels phase: read them back from the cache
                wb = Workbench(model, tok, cfg.model_config())
                wb.add_adapter("expert", expert_dir)
                alphas = sorted({float(a) for a in cfg.alphas} | {float(cfg.alpha)})
                labels = generic_labels(wb, "expert", anchors, blocks, alphas, cfg.seed, cfg.label_batch, top_k=top_k)
                model = wb.model.unload()
            soft_ids, soft_logp = labels.soft_for_alpha(cfg.alpha) if cfg.labels == "soft" else (None, None)
            fit(phase, TrainSpec("unlearn", labels.ids, labels.lengths, labels.for_alpha(cfg.alpha), cfg.steps,
                                 cfg.lr, cfg.batch_size, cfg.grad_accum, soft_ids=soft_ids, soft_logp=soft_logp,
                                 seed=cfg.seed, warmup=cfg.warmup, **retain_term()),
                out / "adapters" / "unlearned")
        elif phase == "gradient_ascent":
            fit(phase, TrainSpec("gradient_ascent", ids, lengths, next_token_labels(ids, lengths), cfg.steps,
                                 cfg.lr, cfg.batch_size, cfg.grad_accum, sign=-1.0, seed=cfg.seed, warmup=cfg.warmup,
                                 **retain_term()), out / "adapters" / "unlearned")
    acc.wait_for_everyone()
    summary["elapsed_s"] = time.time() - t_start + float(prev.get("elapsed_s", 0) if done_phases else 0)
    return summary


# -- UI / CLI entry points ------------------------------------------------------------------------
def launch_run(config: dict | RunConfig, out: str | os.PathLike | None = None) -> dict:
    """Validate, write RUN_DIR/config.json and start `python -m engine run` detached (queued)."""
    cfg = config if isinstance(config, RunConfig) else RunConfig.from_dict(config)
    out = Path(out) if out else jobs.runs_root() / f"{time.strftime('%Y%m%d-%H%M%S')}-{cfg.method}"
    check_out_dir(out, "run directory")
    if (out / "status.json").exists():
        raise UserError(f"{out} already holds a run")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "config.json", cfg.to_dict())
    return jobs.launch(["run", str(out / "config.json")], out, kind="run")


def resume_run(out: str | os.PathLike) -> dict:
    status = jobs.read_status(out)
    if status.get("state") in jobs.ACTIVE:
        raise UserError(f"{out} is still {status['state']}")
    if status.get("state") == "finished":
        raise UserError(f"{out} already finished")
    return jobs.launch(["run", "--resume"], out, kind="run")


def list_runs(root: str | os.PathLike | None = None) -> list[dict]:
    return jobs.list_jobs(root, kind="run")


def _cmd_run(args) -> int:
    out = Path(args.out) if args.out else None
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
        if out.exists() and (out / "status.json").exists() and jobs._read(out).get("state") not in (None, "queued"):
            raise UserError(f"{out} already holds a run: use --resume, or another --out")
    status = execute(cfg, out, resume=args.resume, queue=not args.no_queue)
    _print_result(status)
    return 0 if status.get("state") == "finished" else 1


def _print_result(status: dict) -> None:
    """One short JSON on stdout (rank 0 only): state, dir, familiarity before/after, error."""
    if "rank" in status:
        return
    summ = status.get("summary") or {}
    brief = {k: status.get(k) for k in ("state", "dir", "error")}
    for key, val in summ.items():
        if isinstance(val, dict) and "familiarity" in val:
            brief[key] = {"familiarity": val["familiarity"], "retain": val.get("retain"),
                          **{n: p for n, p in (val.get("probes") or {}).items() if "Hermione" in n}}
    if "elapsed_s" in summ:
        brief["elapsed_s"] = round(summ["elapsed_s"], 1)
    print(json.dumps(brief, indent=2, ensure_ascii=False))


def _step_config(args, method: str) -> RunConfig:
    data: dict = {}
    if args.config:
        data = json.loads(json.dumps(load_config(args.config).to_dict()))
    flags = {"corpus": args.corpus, "anchors": getattr(args, "anchors", None), "expert": getattr(args, "expert", None),
             "retain": getattr(args, "retain", None), "retain_loss": getattr(args, "retain_loss", None),
             "retain_weight": getattr(args, "retain_weight", None), "labels": getattr(args, "labels", None), "model": args.model, "precision": args.precision,
             "device": args.device, "steps": args.steps, "lr": args.lr, "alpha": getattr(args, "alpha", None),
             "lora_rank": args.lora_rank, "batch_size": args.batch_size, "block_size": args.block_size,
             "max_blocks": args.max_blocks, "seed": args.seed, "probes": args.probes}
    data.update({k: v for k, v in flags.items() if v is not None})
    if args.goldfish:
        kind, *rest = args.goldfish.split(":")
        gf = {"kind": kind}
        try:
            gf.update(zip(("k", "h"), map(int, rest)))
        except ValueError:
            raise UserError("--goldfish is KIND[:K[:H]], e.g. hash:4:13") from None
        data["goldfish"] = gf
    data["method"] = method
    if method == "reinforce_only" and args.steps is not None:
        data["reinforce_steps"] = args.steps
    return RunConfig.from_dict(data)


def _cmd_step(method: str):
    def run(args) -> int:
        if method == "whp" and not args.expert:
            raise UserError("unlearn needs --expert (an expert adapter from `reinforce`); `run` does the whole pipeline")
        cfg = _step_config(args, method)
        check_out_dir(args.out)
        status = execute(cfg, Path(args.out), queue=not args.no_queue)
        _print_result(status)
        return 0 if status.get("state") == "finished" else 1
    return run


def _cmd_labels(args) -> int:
    from .anchors import load_anchors
    from .labels import generic_labels
    from .models import Workbench
    from .train import corpus_blocks

    cfg = _step_config(args, "whp")
    wb = Workbench.load(cfg.model_config())
    expert = wb.add_adapter("expert", cfg.expert) if cfg.expert else None
    blocks = corpus_blocks(wb.tokenizer, read_text_file(cfg.corpus, "corpus"), cfg.block_size, cfg.max_blocks)
    alphas = sorted({float(a) for a in cfg.alphas} | {float(cfg.alpha)})
    ls = generic_labels(wb, expert, load_anchors(cfg.anchors).check(), blocks, alphas, cfg.seed, cfg.label_batch,
                        top_k=cfg.label_top_k())
    print(json.dumps({"key": ls.key, "path": str(ls.path), "cached": ls.cached, **ls.stats}, indent=2))
    return 0


def _cmd_runs(args) -> int:
    if args.runs_verb == "list":
        runs = list_runs(args.root)
        if args.json:
            print(json.dumps(runs, indent=2))
            return 0
        for r in runs:
            step = f"{r.get('step', 0)}/{r.get('total', 0)}"
            print(f"{r.get('state', '?'):<20} {r.get('phase', ''):<16} {step:>9}  {r.get('created', '')}  {r['dir']}")
        if not runs:
            print(f"no runs under {args.root or jobs.runs_root()}")
        return 0
    if args.runs_verb == "cancel":
        jobs.cancel(args.run_dir)
        print(f"asked {args.run_dir} to stop")
        return 0
    if args.runs_verb == "delete":
        jobs.delete(args.run_dir, confirmed=args.yes)
        print(f"deleted {args.run_dir}")
        return 0
    return 2


def add_commands(sub) -> None:
    """Add run, runs, reinforce, labels, unlearn and gradient-ascent to the engine CLI."""
    p = sub.add_parser("run", help="run a whole pipeline from a YAML/JSON config into a run directory")
    p.add_argument("config", nargs="?", help="config file (YAML or JSON); with --resume, default RUN_DIR/config.json")
    p.add_argument("--out", help="run directory (default OBLIVIATE_HOME/runs/<time>-<method>)")
    p.add_argument("--resume", action="store_true", help="continue a cancelled / interrupted run from its checkpoint")
    p.add_argument("--no-queue", action="store_true", help="do not wait for other jobs (one job at a time)")
    p.set_defaults(func=_cmd_run)

    def step_args(p, anchors=False, expert=False, retain=False, alpha=False, out=True):
        p.add_argument("--config", help="a config file whose fields the flags override")
        p.add_argument("--corpus", help="the target text (UTF-8)")
        if anchors:
            p.add_argument("--anchors", help="anchored-terms dictionary (.json/.csv)")
        if expert:
            p.add_argument("--expert", help="expert adapter directory")
        if retain:
            p.add_argument("--retain", help="retain text for the retain term")
            p.add_argument("--retain-loss", choices=["kl", "ce"], help="kl: KL to the baseline (default); ce: next-token loss")
            p.add_argument("--retain-weight", type=float)
        if alpha:
            p.add_argument("--alpha", type=float)
        p.add_argument("--model", default=None)
        p.add_argument("--precision", default=None, choices=["auto", "nf4", "bf16", "fp32"])
        p.add_argument("--device", default=None, choices=["auto", "cpu", "cuda"])
        p.add_argument("--steps", type=int)
        p.add_argument("--lr", type=float)
        p.add_argument("--lora-rank", type=int)
        p.add_argument("--batch-size", type=int)
        p.add_argument("--block-size", type=int)
        p.add_argument("--max-blocks", type=int)
        p.add_argument("--seed", type=int)
        p.add_argument("--probes", help="probes.json to track")
        p.add_argument("--goldfish", help="goldfish loss KIND[:K[:H]] (static or hash), e.g. hash:4:13")
        if out:
            p.add_argument("--out", required=True, help="run directory")
            p.add_argument("--no-queue", action="store_true")

    p = sub.add_parser("reinforce", help="LoRA fine-tune on the corpus -> RUN_DIR/adapters/expert")
    step_args(p)
    p.set_defaults(func=_cmd_step("reinforce_only"))
    p = sub.add_parser("labels", help="build (or find cached) generic labels of a corpus")
    step_args(p, anchors=True, expert=True, alpha=True, out=False)
    p.add_argument("--labels", choices=["hard", "soft"], help="soft: also keep the top-k generic distribution")
    p.set_defaults(func=_cmd_labels)
    p = sub.add_parser("unlearn", help="fine-tune on generic labels -> RUN_DIR/adapters/unlearned")
    step_args(p, anchors=True, expert=True, alpha=True, retain=True)
    p.add_argument("--labels", choices=["hard", "soft"], help="hard: argmax (the paper, default); soft: top-k distribution")
    p.set_defaults(func=_cmd_step("whp"))
    p = sub.add_parser("gradient-ascent", help="baseline: negated next-token loss (+ retain) -> RUN_DIR/adapters/unlearned")
    step_args(p, retain=True)
    p.set_defaults(func=_cmd_step("gradient_ascent"))

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
    p.set_defaults(func=_cmd_runs)
