"""The codes the coded ensemble serves; ``make_code`` builds one from its spec."""

from .base import Code, CodeSpec
from .interpolation import Berrut, NeRCC
from .parm import ParMAddition, ParMConcatenation

CODES: dict[str, type[Code]] = {
    "parm-addition": ParMAddition,
    "parm-concatenation": ParMConcatenation,
    "berrut": Berrut,
    "nercc": NeRCC,
}


def make_code(spec: CodeSpec) -> Code:
    try:
        code_class = CODES[spec.kind]
    except KeyError:
        raise ValueError(f"unknown code {spec.kind!r}; known: {sorted(CODES)}") from None
    return code_class(spec.k, **spec.params)


__all__ = ["Berrut", "CODES", "Code", "CodeSpec", "NeRCC", "ParMAddition", "ParMConcatenation", "make_code"]
