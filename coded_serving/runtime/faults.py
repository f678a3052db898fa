"""Straggler and failure injection for members served by the project's ONNX Runtime backend.

Switched on per model through config parameters (a test or load test reloads the member with
a config override), so the member stays a real Triton model. The NGC image's native backend
ignores these parameters: there, stragglers come from outside (contention, network).

``service_ms`` is waited on every execute: an emulated accelerator's run time (the CPU stays free,
as while a GPU runs the model), so a benchmark can show how the coordinator's fixed cost weighs
against a model slower than LeNet-5 on a CPU. A delay (a straggler) comes on top of it:
``delay_ms`` plus a random tail, applied to a ``delay_probability`` fraction of
``execute`` calls: an exponential tail (mean ``delay_tail_ms``), or a heavy Pareto tail
(Lomax: scale ``delay_tail_ms``, shape ``delay_tail_alpha``; alpha <= 2 has infinite variance),
capped at ``delay_max_ms`` so one draw cannot stall a whole benchmark. ``instances`` limits the
faults to some instances of a multi-instance model, so an Equal-Resources baseline can have
exactly one slow instance, like a coded ensemble with one slow member.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

TAILS = ("exponential", "pareto")


@dataclass(frozen=True)
class FaultInjection:
    service_ms: float = 0.0
    delay_ms: float = 0.0
    delay_tail_ms: float = 0.0
    delay_probability: float = 1.0
    delay_tail: str = "exponential"
    delay_tail_alpha: float = 2.0
    #: 0 = no cap
    delay_max_ms: float = 0.0
    error_probability: float = 0.0
    #: instance indices that misbehave (the last field of Triton's ``<model>_<group>_<index>``); () = all
    instances: tuple[int, ...] = ()
    seed: int = 0

    PARAMETERS = ("service_ms", "delay_ms", "delay_tail_ms", "delay_probability", "delay_tail", "delay_tail_alpha",
                  "delay_max_ms", "error_probability", "instances", "seed")

    def __post_init__(self) -> None:
        if self.delay_tail not in TAILS:
            raise ValueError(f"delay_tail must be one of {TAILS}, got {self.delay_tail!r}")
        if self.delay_tail == "pareto" and self.delay_tail_alpha <= 0:
            raise ValueError(f"a Pareto tail needs delay_tail_alpha > 0, got {self.delay_tail_alpha}")

    @classmethod
    def from_parameters(cls, parameters: dict[str, str]) -> "FaultInjection":
        values = {name: parameters[f"inject_{name}"] for name in cls.PARAMETERS if f"inject_{name}" in parameters}
        parsed = {}
        for name, value in values.items():
            if name == "delay_tail":
                parsed[name] = value
            elif name == "instances":
                parsed[name] = tuple(int(index) for index in value.split(",") if index.strip())
            elif name == "seed":
                parsed[name] = int(float(value))
            else:
                parsed[name] = float(value)
        return cls(**parsed)

    def to_parameters(self) -> dict[str, str]:
        values = {name: getattr(self, name) for name in self.PARAMETERS}
        values["instances"] = ",".join(str(index) for index in self.instances)
        return {f"inject_{name}": str(value) for name, value in values.items()}

    def applies_to(self, instance_name: str) -> bool:
        """Whether Triton's instance ``<model>_<group>_<index>`` is one of ``instances``."""
        return not self.instances or int(instance_name.rsplit("_", 1)[1]) in self.instances

    def for_instance(self, instance_name: str) -> "FaultInjection":
        """What one instance does: the service time everywhere, stragglers and errors where they apply."""
        return self if self.applies_to(instance_name) else FaultInjection(service_ms=self.service_ms)

    def delay_quantile_ms(self, q: float) -> float:
        """The q-quantile of one injected delay, given that the execute is delayed (closed form)."""
        if self.delay_tail_ms <= 0:
            tail = 0.0
        elif self.delay_tail == "exponential":
            tail = -self.delay_tail_ms * math.log1p(-q)
        else:
            tail = self.delay_tail_ms * ((1 - q) ** (-1 / self.delay_tail_alpha) - 1)
        return self._capped(self.delay_ms + tail)

    def _capped(self, delay_ms: float) -> float:
        return min(delay_ms, self.delay_max_ms) if self.delay_max_ms > 0 else delay_ms

    def describe(self) -> str:
        """One line for reports: what fraction is delayed, by how much."""
        parts = [f"every execute takes {self.service_ms:g} ms of emulated accelerator time"] if self.service_ms else []
        if self.delay_ms or self.delay_tail_ms:
            tail = (f"exponential tail (mean {self.delay_tail_ms:g} ms)" if self.delay_tail == "exponential"
                    else f"Pareto tail (scale {self.delay_tail_ms:g} ms, alpha {self.delay_tail_alpha:g})")
            cap = f", capped at {self.delay_max_ms:g} ms" if self.delay_max_ms > 0 else ""
            parts.append(f"{self.delay_probability:.1%} of executes delayed by {self.delay_ms:g} ms + {tail}{cap} "
                         f"(delay median {self.delay_quantile_ms(0.5):.1f} ms, p99 {self.delay_quantile_ms(0.99):.1f} ms)")
        if self.error_probability:
            parts.append(f"{self.error_probability:.1%} of executes fail")
        if self.instances:
            parts.append(f"instances {list(self.instances)} only")
        return "; ".join(parts) or "none"


class FaultInjector:
    def __init__(self, faults: FaultInjection):
        self.faults = faults
        self._random = random.Random(faults.seed)

    def next_delay_s(self) -> float:
        """Service time plus, for a ``delay_probability`` fraction of executes, a straggler's delay."""
        f = self.faults
        if not (f.delay_ms or f.delay_tail_ms) or self._random.random() >= f.delay_probability:
            return f.service_ms / 1000.0
        tail = 0.0
        if f.delay_tail_ms and f.delay_tail == "exponential":
            tail = self._random.expovariate(1.0 / f.delay_tail_ms)
        elif f.delay_tail_ms:
            tail = f.delay_tail_ms * (self._random.paretovariate(f.delay_tail_alpha) - 1)
        return (f.service_ms + f._capped(f.delay_ms + tail)) / 1000.0

    def next_error(self) -> bool:
        return self._random.random() < self.faults.error_probability
