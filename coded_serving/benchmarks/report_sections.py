"""A markdown report that several benchmarks write into, each owning its sections.

A section sits between two HTML comments that name its key and its place. ``update_report`` replaces
the sections it is given and keeps every other one, so the ParM/Berrut/NeRCC benchmark and, say,
the Coded-InvNet benchmark each regenerate their own part of reports/accuracy.md without rerunning
(or erasing) the other's:

    update_report(path, [ReportSection("coded-invnet", 50, markdown)])

The text before the first section (the preamble: title, how to regenerate) is kept unless given.
"""

from __future__ import annotations

import os
import platform
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

_SECTION = re.compile(
    r"<!-- section (?P<key>[\w-]+) order (?P<order>-?\d+) -->\n(?P<body>.*?)<!-- end section (?P=key) -->\n", re.DOTALL
)


@dataclass(frozen=True)
class ReportSection:
    key: str
    #: sections are written in increasing order
    order: int
    markdown: str

    def render(self) -> str:
        begin, end = f"<!-- section {self.key} order {self.order} -->", f"<!-- end section {self.key} -->"
        return f"{begin}\n{self.markdown.rstrip()}\n{end}\n"


def read_sections(text: str) -> list[ReportSection]:
    return [ReportSection(m["key"], int(m["order"]), m["body"]) for m in _SECTION.finditer(text)]


def update_report(path: Path, sections: Iterable[ReportSection], preamble: str | None = None) -> None:
    """Write ``sections`` into the report at ``path``, keeping the sections of other keys already there."""
    path = Path(path)
    text = path.read_text() if path.exists() else ""
    first = _SECTION.search(text)
    if preamble is None:
        preamble = text[: first.start()] if first else text
    merged = {section.key: section for section in read_sections(text)}
    merged.update({section.key: section for section in sections})
    ordered = sorted(merged.values(), key=lambda section: (section.order, section.key))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([preamble.rstrip() + "\n", *(section.render() for section in ordered)]))


def machine_description() -> str:
    """The machine a benchmark ran on, for its report: host, CPU, cores, memory, OS, Python."""
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{platform.node()}: {cpu}, {os.cpu_count()} cores, {memory:.0f} GiB, {platform.system()} "
            f"{platform.release()}, Python {platform.python_version()}")
