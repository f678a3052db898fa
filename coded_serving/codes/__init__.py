"""The codes the coded ensemble serves; ``make_code`` builds one from its spec."""

from pathlib import Path

from .base import Code, CodeSpec
from .interpolation import Berrut, NeRCC
from .invnet import CodedInvNet
from .parm import ParMAddition, ParMConcatenation

CODES: dict[str, type[Code]] = {
    "parm-addition": ParMAddition,
    "parm-concatenation": ParMConcatenation,
    "berrut": Berrut,
    "nercc": NeRCC,
    "coded-invnet": CodedInvNet,
}


def make_code(spec: CodeSpec, resource_dir: Path | None = None) -> Code:
    """``resource_dir`` holds the files a code's params name (e.g. a head's weights), if any."""
    try:
        code_class = CODES[spec.kind]
    except KeyError:
        raise ValueError(f"unknown code {spec.kind!r}; known: {sorted(CODES)}") from None
    params = dict(spec.params)
    if getattr(code_class, "uses_files", False):
        params["resource_dir"] = resource_dir
    return code_class(spec.k, **params)


__all__ = ["Berrut", "CODES", "Code", "CodeSpec", "CodedInvNet", "NeRCC", "ParMAddition", "ParMConcatenation", "make_code"]
