"""Unlearning methods, one file each; this registry is the only list of them.

Adding a method: a new file with a `Method` subclass (its name, Options section, phases, loss),
plus one line below. The run config gains its options section, the CLI and the Runs page its
fields, and run directories, curves and evaluation labels follow from the registry.
"""
from .base import Batch, Method, Models, TrainData, retain_ce, retain_kl, token_ce  # noqa: F401
from .elm import ELM
from .gradient_ascent import GradientAscent
from .next_token import NextToken
from .npo import NPO
from .rmu import RMU
from .simnpo import SimNPO
from .undial import UNDIAL
from .whp import WHP

METHODS: dict[str, type[Method]] = {m.name: m for m in (
    WHP,
    GradientAscent,
    NPO,
    SimNPO,
    RMU,
    UNDIAL,
    ELM,
    NextToken,
)}


def get(name: str) -> type[Method]:
    from ..errors import UserError

    if name not in METHODS:
        raise UserError(f"unknown method {name!r}: one of {', '.join(METHODS)}")
    return METHODS[name]
