"""Straggler and failure injection for members served by the project's ONNX Runtime backend.

Switched on per model through config parameters (a test or load test reloads the member with
a config override), so the member stays a real Triton model. The NGC image's native backend
ignores these parameters: there, stragglers come from outside (contention, network).
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class FaultInjection:
    #: every affected execute sleeps this long, plus an exponential tail of this mean
    delay_ms: float = 0.0
    delay_tail_ms: float = 0.0
    delay_probability: float = 1.0
    error_probability: float = 0.0
    seed: int = 0

    PARAMETERS = ("delay_ms", "delay_tail_ms", "delay_probability", "error_probability", "seed")

    @classmethod
    def from_parameters(cls, parameters: dict[str, str]) -> "FaultInjection":
        values = {name: float(parameters[f"inject_{name}"]) for name in cls.PARAMETERS if f"inject_{name}" in parameters}
        if "seed" in values:
            values["seed"] = int(values["seed"])
        return cls(**values)

    def to_parameters(self) -> dict[str, str]:
        return {f"inject_{name}": str(getattr(self, name)) for name in self.PARAMETERS}

    @property
    def active(self) -> bool:
        return self.delay_ms > 0 or self.delay_tail_ms > 0 or self.error_probability > 0


class FaultInjector:
    def __init__(self, faults: FaultInjection):
        self.faults = faults
        self._random = random.Random(faults.seed)

    def next_delay_s(self) -> float:
        f = self.faults
        if not (f.delay_ms or f.delay_tail_ms) or self._random.random() >= f.delay_probability:
            return 0.0
        tail = self._random.expovariate(1.0 / f.delay_tail_ms) if f.delay_tail_ms else 0.0
        return (f.delay_ms + tail) / 1000.0

    def next_error(self) -> bool:
        return self._random.random() < self.faults.error_probability
