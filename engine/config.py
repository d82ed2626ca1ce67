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
The CLI flags (engine/cli.py) and the Runs page form (`form_fields`) are derived from these fields;
fields that name files or folders say so in their type (`path_fields`). The leaf types (Section,
ModelConfig, the error line) live in engine/sections.py, so the method files build on them
without importing this module back.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator
from pydantic import BaseModel, Field, ValidationError, model_validator

from . import legacy
from .errors import UserError
from .io import short
from .methods import METHODS
from .methods.elm import ElmOptions
from .methods.npo import NpoOptions
from .methods.rmu import RmuOptions
from .methods.simnpo import SimNpoOptions
from .methods.undial import UndialOptions
from .methods.whp import WhpOptions
from .probes import probe_problems
from .sections import (ModelConfig, Section, TextFile, field_error, field_specs, get_path,  # noqa: F401
                       path_kind, resolve_path, set_path)  # ModelConfig and field_specs: re-exported for pages, the CLI and benches


class DataConfig(Section):
    block_size: int = Field(512, ge=8, le=1 << 20)
    """Tokens per training block (the paper: 512; 128-256 keeps a CPU run short)."""
    max_blocks: int | None = Field(None, ge=1)
    """Use only the first N blocks of the corpus (None: all)."""


def _layers(value):
    """lora.layers as written -> an int N (the top N blocks) or a sorted list of 0-based blocks."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        text = value.strip().removeprefix("top").strip()
        if text.lower() in ("", "all", "none"):
            return None
        if text.isdigit() and not value.strip().startswith("["):
            return int(text)  # "10", "top 10": the top N, as an int field read it
        out: set[int] = set()
        for part in text.strip("[]").replace(" ", "").split(","):
            lo, dash, hi = part.partition("-")
            if not (lo.isdigit() and (not dash or hi.isdigit())) or (dash and int(hi) < int(lo)):
                raise ValueError(f"{value!r} is not a block list: write the top N (10), a range (8-20) or "
                                 f"blocks (8, 12, 20), 0-based")
            out.update(range(int(lo), int(hi if dash else lo) + 1))
        return sorted(out)
    if isinstance(value, list):
        if not value or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
            raise ValueError("a block list holds 0-based block numbers, e.g. [8, 20]")
        return sorted(set(value))
    raise ValueError(f"{value!r} is not a block list: write the top N (10), a range (8-20) or blocks (8, 12, 20)")


def _top_n(value):
    if isinstance(value, int) and value < 1:
        raise ValueError("the top N blocks: N is at least 1")
    return value


class LoraSection(Section):
    rank: int = Field(8, ge=1, le=1024)
    """LoRA rank of every adapter a run trains (alpha = 2 x rank, no dropout)."""
    layers: Annotated[int | list[int] | None, BeforeValidator(_layers), AfterValidator(_top_n)] = Field(
        None, json_schema_extra={"kind": "text"})
    """Where the adapter sits: the top N blocks (10), a range (8-20) or a list of 0-based blocks
    ([8, 12, 20] or "8, 12, 20"); none: every block. The backward pass stops at the lowest one."""
    modules: Literal["all", "attention", "mlp"] = "all"
    """Which linear layers of each adapted block get LoRA: all of them, the attention projections only,
    or the MLP only."""


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
    text: TextFile | None = None
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


def _known_method(name: str) -> str:
    if name not in METHODS:
        raise ValueError(f"must be one of {', '.join(METHODS)}, got {short(name)}")
    return name


def _required(value: str) -> str:
    if not value:
        raise ValueError("required")
    return value


def _probes(value):
    if problems := probe_problems(value):
        raise ValueError("; ".join(p.removeprefix("probes: ") for p in problems))
    return value


class RunConfig(Section):
    """Everything a run needs. Paths are relative to the config file's folder.

    One section per method with options (a method without options has none); a test checks that
    these fields and engine/methods' registry name the same methods.
    """

    method: Annotated[str, AfterValidator(_known_method)] = "whp"
    """The unlearning method: whp (reinforce, generic labels, unlearn), gradient_ascent, reinforce_only, ...
    (engine/methods/)."""
    corpus: Annotated[TextFile, AfterValidator(_required)] = Field("", validate_default=True)
    """The target text to unlearn (a UTF-8 file)."""
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    lora: LoraSection = LoraSection()
    train: TrainConfig = TrainConfig()
    reinforce: ReinforceConfig = ReinforceConfig()
    unlearn: UnlearnConfig = UnlearnConfig()
    retain: RetainConfig = RetainConfig()
    goldfish: GoldfishConfig = GoldfishConfig()
    probes: Annotated[str | list | None, AfterValidator(_probes)] = Field(None, json_schema_extra={"path": "file"})
    """Tracked probabilities: a probes.json (its "probability" prompts are forget probes, its "retain"
    prompts retain probes) or a list of {prompt, target[, kind: forget|retain]}."""
    probe_every: int = Field(10, ge=1)
    """Optimizer steps between tracked-probability measurements."""
    seed: int = 0
    """Seeds adapter initialisation, data order and each block's translation (f"{seed}:{block}")."""
    whp: WhpOptions = WhpOptions()
    npo: NpoOptions = NpoOptions()
    simnpo: SimNpoOptions = SimNpoOptions()
    rmu: RmuOptions = RmuOptions()
    undial: UndialOptions = UndialOptions()
    elm: ElmOptions = ElmOptions()

    @model_validator(mode="after")
    def _method_requirements(self):
        """What no field type can say: the chosen method's needs of the whole config."""
        if problems := METHODS[self.method].requirements(self):
            raise ValueError("; ".join(problems))
        return self

    @property
    def options(self) -> Section | None:
        """The chosen method's own section (`whp:` for method whp), or None when it has none."""
        return getattr(self, self.method, None)

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")



def path_fields(section: type[BaseModel] | None = None, prefix: str = "") -> dict[str, str]:
    """{dotted field: 'file' | 'dir'} of every field that names a path on this machine (corpus,
    retain.text, probes, whp.anchors, whp.expert, any method's own): resolved against a config
    file's folder, validated, and checked by the browser's path rule."""
    out = {}
    for name, f in (section or RunConfig).model_fields.items():
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out.update(path_fields(ann, f"{prefix}{name}."))
        elif kind := path_kind(f):
            out[f"{prefix}{name}"] = kind
    return out


# -- reading a config --------------------------------------------------------------------------------
def _resolve_paths(data: dict, base: Path, gate=None) -> None:
    for dotted in path_fields():
        v = get_path(data, dotted)
        if isinstance(v, str) and v:
            set_path(data, dotted, str(gate(resolve_path(v, base), dotted)) if gate else resolve_path(v, base))
    name = get_path(data, "model.name")
    if isinstance(name, str) and name.startswith((".", "~")):
        set_path(data, "model.name", resolve_path(name, base))


def _requirements_beside(nested: dict, bad: set) -> list[str]:
    """The method's requirements of a config with field errors: its valid fields as given, the bad
    ones at their defaults, so that one message says everything."""
    fields, good = RunConfig.model_fields, {}
    for k, v in nested.items():
        if k in fields and k not in bad:
            ann = fields[k].annotation
            good[k] = ann.model_validate(v) if isinstance(ann, type) and issubclass(ann, BaseModel) else v
    cfg = RunConfig.model_construct(**good)
    return METHODS[cfg.method].requirements(cfg)


def run_config(data, base_dir: str | os.PathLike | None = None, gate=None) -> RunConfig:
    """Validate a parsed config (nested, or the flat keys of earlier configs); relative paths resolve
    against base_dir (the config's folder). Every problem is reported at once, in one UserError.
    gate(path, field) -> path: a rule every path passes first (a page's: engine.boundary.browser_path)."""
    if not isinstance(data, dict):
        raise UserError("invalid config: expected a mapping of field: value")
    nested, written = legacy.migrate(data)
    _resolve_paths(nested, Path(base_dir) if base_dir else Path.cwd(), gate)
    try:
        return RunConfig.model_validate(nested)
    except ValidationError as e:
        errors = e.errors()
    problems = [field_error(err, written) for err in errors]
    bad = {err["loc"][0] for err in errors if err["loc"]}
    if all(err["loc"] for err in errors) and "method" not in bad:
        problems += _requirements_beside(nested, bad)  # pydantic stops before them on a field error
    raise UserError("invalid config: " + "; ".join(problems))


def load_config(path: str | os.PathLike) -> RunConfig:
    """A YAML or JSON config file, validated; paths in it are relative to its folder."""
    from .io import parse_json, parse_yaml, read_text_file

    path = Path(path)
    text = read_text_file(path, "config", 1 << 20)
    data = parse_yaml(text, str(path)) if path.suffix in (".yaml", ".yml") else parse_json(text, str(path))
    return run_config(data or {}, path.parent)


def with_overrides(cfg: RunConfig, overrides: dict[str, Any]) -> RunConfig:
    """A copy of cfg with dotted fields set ({"unlearn.steps": 10}), validated again."""
    data = cfg.to_dict()
    for dotted, value in overrides.items():
        set_path(data, dotted, value)
    return run_config(data)


# -- fields, for the CLI and the Runs page -------------------------------------------------------------
MAIN_FIELDS = ("corpus", "probes", "unlearn.steps", "reinforce.steps", "unlearn.lr", "lora.rank", "train.batch_size",
               "data.block_size", "data.max_blocks")  # and each method's main_options: what a form shows first


def form_fields(method: str) -> list[dict]:
    """The fields a run of `method` uses, as field_specs, in form order: the inputs, the method's own
    options, the phases it runs, then LoRA, batching and tracking; `main` marks those a form shows
    first. The model comes from the sidebar."""
    from .methods import get

    m = get(method)
    sections = ["data", "lora", "train"]
    if "reinforce" in m.phases:
        sections.insert(0, "reinforce")
    if "unlearn" in m.phases:
        sections[:0] = ["unlearn", "retain"]
    if "reinforce" in m.phases or "unlearn" in m.phases:
        sections.append("goldfish")
    specs = field_specs(RunConfig)
    pick = [s for s in specs if s["path"] == "corpus"]
    pick += [s for s in specs if s["path"].startswith(f"{method}.")]
    for section in sections:
        pick += [s for s in specs if s["path"].startswith(f"{section}.")]
    pick += [s for s in specs if s["path"] in ("probes", "probe_every", "seed")]
    main = {*MAIN_FIELDS, *(f"{method}.{o}" for o in m.main_options)}
    return [{**s, "main": s["path"] in main} for s in pick]


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
    """The run config's fields as a Markdown table (docs/runs.md includes it; a test keeps it current)."""
    rows = ["| field | default | meaning |", "|---|---|---|"]
    for s in field_specs(RunConfig):
        default = s["default"]
        shown = "(required)" if s["path"] == "corpus" else "none" if default is None else f"`{default}`"
        rows.append(f"| `{s['path']}` | {shown} | {s['help'].replace('|', '/')} |")
    return "\n".join(rows)
