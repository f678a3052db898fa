"""The coded ensemble's logic, without Triton: coding groups, fan-out, races, deadlines.

One call of ``Coordinator.infer`` takes the queries of a dynamic batch (several client
requests), lays them out in coding groups of k, sends worker ``w`` one batched request that
holds its query of every group, and answers each query with its original output or, once
its worker is missing (errored, gone, or past ``deadline_s``), with the code's reconstruction.

Member calls block (a Triton BLS ``exec``, a gRPC call) and run on a thread pool; the race
waits on their futures. In a Triton Python model this is cheaper than asyncio with
``async_exec``, which adds hops through an event loop and its executor.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .codes import Code

#: ``member(name, batch) -> outputs``: one blocking request to one member (a Triton model).
MemberCall = Callable[[str, np.ndarray], np.ndarray]
#: late members hold their threads until they answer; too few threads starve new requests
MEMBER_THREADS = 64


@dataclass(frozen=True)
class GroupLayout:
    """Queries laid out in coding groups: ``slots[g, i]`` is the query in slot i of group g.

    A partial last group is filled with copies of its own queries instead of waiting for more:
    beside full groups the copies ride along in the same batched member requests, so those
    queries sit on two workers; a group that is alone keeps its copies in reserve (Coordinator.plan).
    """

    slots: np.ndarray
    num_queries: int

    @classmethod
    def for_queries(cls, num_queries: int, k: int) -> "GroupLayout":
        if num_queries < 1:
            raise ValueError("a coding group needs at least one query")
        groups = -(-num_queries // k)
        slots = np.arange(groups * k).reshape(groups, k)
        tail = num_queries - (groups - 1) * k
        slots[-1] = (groups - 1) * k + np.arange(k) % tail
        return cls(slots, num_queries)

    def gather(self, queries: np.ndarray) -> np.ndarray:
        return queries[self.slots]

    @property
    def min_copies(self) -> int:
        """How many slots the least replicated query fills."""
        return int(np.bincount(self.slots.ravel()).min())


@dataclass
class Outcome:
    """One answer per query: an output (original or reconstructed) or an error message."""

    outputs: np.ndarray
    reconstructed: np.ndarray
    errors: dict[int, str] = field(default_factory=dict)
    #: workers that failed (error, unloaded, bad output), with why
    worker_errors: dict[int, str] = field(default_factory=dict)
    #: workers still without an answer when the race ended past their deadline
    late_workers: tuple[int, ...] = ()
    decode_s: float = 0.0
    groups: int = 0
    #: slots of partial groups filled with copies
    padded_slots: int = 0


#: SKIPPED: never called, it could not help (Coordinator.plan). RESERVED: called only if the others
#: leave a query without an answer (a lone query's copy, a suspended member).
PENDING, ANSWERED, FAILED, SKIPPED, RESERVED = 0, 1, 2, 3, 4


class GroupRace:
    """The state of one fan-out: which workers answered, and which queries can be answered.

    A query is answered by its original as soon as that arrives. Once its worker is missing
    (failed, or not answered by the deadline) it is reconstructed, as soon as every worker
    has answered, failed or passed the deadline and the code can decode what is there.
    With ``deadline_s = 0`` this is ParM's race: decode as soon as k of k+1 are in.
    Reserved workers are called once a query has lost its original and cannot be decoded
    without them; they get a fresh deadline.
    """

    def __init__(self, code: Code, layout: GroupLayout, deadline_s: float, timeout_s: float, start: float):
        self.code = code
        self.layout = layout
        self.deadline = start + deadline_s
        self.timeout = start + max(timeout_s, deadline_s)
        self.state = np.full(code.num_workers, PENDING)
        self.results: np.ndarray | None = None
        self.worker_errors: dict[int, str] = {}
        self._now = start
        self._has_original: np.ndarray | None = None

    def _set(self, workers: int | list[int], state: int) -> None:
        self.state[workers] = state
        self._has_original = None

    def on_result(self, worker: int, output: np.ndarray) -> None:
        groups = self.layout.slots.shape[0]
        output = np.asarray(output, dtype=np.float32)
        if output.shape[:1] != (groups,):
            return self.on_failure(worker, f"returned shape {list(output.shape)}, expected a batch of {groups}")
        if not np.isfinite(output).all():
            return self.on_failure(worker, "returned non-finite values")
        if self.results is None:
            self.results = np.zeros((groups, self.code.num_workers, *output.shape[1:]), np.float32)
        elif output.shape[1:] != self.results.shape[2:]:
            return self.on_failure(worker, f"returned shape {list(output.shape)}, others {list(self.results.shape[2:])}")
        self.results[:, worker] = output
        self._set(worker, ANSWERED)

    def skip(self, worker: int) -> None:
        self._set(worker, SKIPPED)

    def reserve(self, worker: int, reason: str | None = None) -> None:
        self._set(worker, RESERVED)
        if reason:
            self.worker_errors[worker] = reason

    def on_failure(self, worker: int, message: str) -> None:
        self._set(worker, FAILED)
        self.worker_errors[worker] = message

    def advance(self, now: float) -> None:
        self._now = now

    def wants_reserves(self) -> bool:
        if not (self.state == RESERVED).any() or self._query_has_original().all() or self._can_decode():
            return False
        return (self.state == FAILED).any() or self._now >= self.deadline or not (self.state == PENDING).any()

    def call_reserves(self, deadline_s: float) -> list[int]:
        """The reserved workers, now pending with a fresh deadline."""
        workers = np.flatnonzero(self.state == RESERVED).tolist()
        self._set(workers, PENDING)
        for worker in workers:
            self.worker_errors.pop(worker, None)
        self.deadline = self._now + deadline_s
        self.timeout = max(self.timeout, self.deadline)
        return workers

    @property
    def available(self) -> np.ndarray:
        return self.state == ANSWERED

    def _settled(self) -> np.ndarray:
        return (self.state != PENDING) | (self._now >= self.deadline)

    def _can_decode(self) -> bool:
        return bool(self._settled().all()) and self.code.decodable(self.available)

    def _original_slots(self) -> np.ndarray:
        """bool[k]: slot i holds its original output."""
        if not self.code.systematic:
            return np.zeros(self.code.k, bool)
        return self.available[: self.code.k]

    def _query_has_original(self) -> np.ndarray:
        """bool[num_queries], kept until the next change of state: the race asks often."""
        if self._has_original is None:
            self._has_original = np.zeros(self.layout.num_queries, bool)
            self._has_original[self.layout.slots[:, self._original_slots()].ravel()] = True
        return self._has_original

    def done(self) -> bool:
        if self._query_has_original().all() or self._can_decode():
            return True
        return self._now >= self.timeout or not (self.state == PENDING).any()

    def next_wakeup(self) -> float | None:
        """Seconds until the next timer that can change the outcome."""
        for instant in (self.deadline, self.timeout):
            if self._now < instant:
                return instant - self._now
        return None

    def needs_decode(self) -> bool:
        return not self._query_has_original().all() and self._can_decode()

    def outcome(self, estimates: np.ndarray | None = None) -> Outcome:
        """The answers; ``estimates`` [G, k, *out] is the decode, required when ``needs_decode()``."""
        num_queries = self.layout.num_queries
        out_shape = self.results.shape[2:] if self.results is not None else ()
        outputs = np.zeros((num_queries, *out_shape), np.float32)
        answered = self._query_has_original()
        reconstructed = np.zeros(num_queries, bool)
        if estimates is not None:
            outputs[self.layout.slots] = estimates
            reconstructed = ~answered
            answered = np.ones(num_queries, bool)
        originals = self._original_slots()
        for slot in np.flatnonzero(originals):
            outputs[self.layout.slots[:, slot]] = self.results[:, slot]
        errors = {int(q): self._failure_message() for q in np.flatnonzero(~answered)}
        late = tuple(np.flatnonzero(self.state == PENDING).tolist()) if self._now >= self.deadline else ()
        return Outcome(outputs, reconstructed, errors, dict(self.worker_errors), late,
                       groups=self.layout.slots.shape[0], padded_slots=self.layout.slots.size - num_queries)

    def _failure_message(self) -> str:
        missing = [w for w in range(self.code.num_workers) if self.state[w] not in (ANSWERED, SKIPPED)]
        reasons = "; ".join(
            f"worker {w}: {self.worker_errors.get(w, 'no answer in time')}" for w in missing
        )
        return f"no answer and no reconstruction possible ({reasons})"


class InProcessCodec:
    """Encode and decode with the library, in the coordinator's own process."""

    def __init__(self, code: Code):
        self.code = code

    def encode(self, grouped: np.ndarray) -> np.ndarray:
        return self.code.encode(grouped)

    def decode(self, results: np.ndarray, available: np.ndarray) -> np.ndarray:
        return self.code.decode(results, available)


class MemberHealth:
    """A circuit breaker per member: after ``suspend_after`` consecutive misses (errors or late
    answers) a member is not called at all, and counts as missing at once, except for one probe
    call every ``probe_interval_s``; an answer in time ends the suspension.

    Without it, calls to a dead or crawling member pile up (a killed Python stub fails each call
    only after about a second) and hold the coordinator's threads; with it, that member's
    queries are simply decoded from the others until it is back.
    """

    def __init__(self, num_workers: int, suspend_after: int, probe_interval_s: float):
        self.suspend_after = suspend_after
        self.probe_interval_s = probe_interval_s
        self.misses = np.zeros(num_workers, int)
        self.next_probe = np.zeros(num_workers)

    def callable(self, worker: int, now: float) -> bool:
        if self.suspend_after <= 0 or self.misses[worker] < self.suspend_after:
            return True
        if now >= self.next_probe[worker]:
            self.next_probe[worker] = now + self.probe_interval_s
            return True
        return False

    def record(self, race: GroupRace, now: float) -> None:
        late = race.state == PENDING if now >= race.deadline else np.zeros_like(race.available)
        missed = (race.state == FAILED) | late
        self.misses[race.available] = 0
        self.misses[missed] += 1
        newly = missed & (self.misses == self.suspend_after)
        self.next_probe[newly] = now + self.probe_interval_s


@dataclass
class Coordinator:
    code: Code
    members: tuple[str, ...]
    deadline_s: float
    timeout_s: float
    codec: InProcessCodec | None = None
    clock: Callable[[], float] = time.monotonic
    suspend_after: int = 3
    probe_interval_s: float = 1.0
    executor: Executor = field(default_factory=lambda: ThreadPoolExecutor(MEMBER_THREADS))

    def __post_init__(self) -> None:
        if len(self.members) != self.code.num_workers:
            raise ValueError(f"{self.code.num_workers} members needed, got {len(self.members)}")
        self.codec = self.codec or InProcessCodec(self.code)
        self.health = MemberHealth(self.code.num_workers, self.suspend_after, self.probe_interval_s)
        self._turn = 0
        self._in_flight = [0] * self.code.num_workers
        self._in_flight_lock = threading.Lock()

    def infer(self, queries: np.ndarray, call: MemberCall) -> Outcome:
        """Answer every query of ``queries`` [n, *in]."""
        start = self.clock()
        layout = GroupLayout.for_queries(len(queries), self.code.k)
        grouped = layout.gather(queries)
        called, reserved = self.plan(layout)
        worker_inputs = [grouped[:, i] for i in range(self.code.k)] if self.code.systematic else []
        if any(worker >= len(worker_inputs) for worker in called + reserved):
            coded = self.codec.encode(grouped)
            worker_inputs += [coded[:, j] for j in range(self.code.num_coded)]
        inputs = [np.ascontiguousarray(batch) for batch in worker_inputs]
        race = GroupRace(self.code, layout, self.deadline_s, self.timeout_s, start)
        for worker in set(range(self.code.num_workers)) - set(called) - set(reserved):
            race.skip(worker)
        for worker in [w for w in called if not self.health.callable(w, start)]:
            called.remove(worker)
            race.reserve(worker, f"{self.members[worker]} suspended after {self.suspend_after} consecutive misses")
            stand_in = next((w for w in reserved if layout.slots[0, w] == layout.slots[0, worker]
                             and self.health.callable(w, start)), None)
            if stand_in is not None:  # a copy of the same query, on a member in good health
                reserved.remove(stand_in)
                called.append(stand_in)
        for worker in reserved:
            race.reserve(worker)
        self._race(race, call, inputs, called)
        self.health.record(race, self.clock())
        decode_start = self.clock()
        estimates = self.codec.decode(race.results, race.available) if race.needs_decode() else None
        outcome = race.outcome(estimates)
        outcome.decode_s = self.clock() - decode_start if estimates is not None else 0.0
        if len(outcome.errors) < len(outcome.outputs):  # with no result at all there is nothing to finish
            outcome.outputs = self.code.postprocess(outcome.outputs)
        return outcome

    def plan(self, layout: GroupLayout) -> tuple[list[int], list[int]]:
        """(workers to call, workers held in reserve). Every worker, unless each query already fills
        ``num_coded + 1`` slots (a lone query padded with its copies) in a systematic code: then
        one data worker per query is called, its copies are held in reserve (a hedge after the
        deadline, or at once on an error), and the coded workers are not called, because losing
        every copy of a query is more than the code can decode anyway. The called worker is the one
        with the fewest calls in flight (a straggler still holds its last one), taking turns among equals."""
        if not (self.code.systematic and layout.min_copies > self.code.num_coded):
            return list(range(self.code.num_workers)), []
        self._turn += 1
        slots, called = layout.slots[0].tolist(), []
        for query in range(layout.num_queries):
            holders = [slot for slot, held in enumerate(slots) if held == query]
            turn = self._turn % len(holders)
            called.append(min(holders[turn:] + holders[:turn], key=self._in_flight.__getitem__))
        return called, [w for w in range(self.code.k) if w not in called]

    def _submit(self, call: MemberCall, worker: int, batch: np.ndarray) -> Future:
        with self._in_flight_lock:
            self._in_flight[worker] += 1
        return self.executor.submit(self._counted_call, call, worker, batch)

    def _counted_call(self, call: MemberCall, worker: int, batch: np.ndarray) -> np.ndarray:
        try:
            return call(self.members[worker], batch)
        finally:  # before the race hears of the answer, so the next plan sees the member free
            with self._in_flight_lock:
                self._in_flight[worker] -= 1

    def _race(self, race: GroupRace, call: MemberCall, inputs: list[np.ndarray], workers: list[int]) -> None:
        """Call ``workers`` and drive ``race`` until it is done, calling its reserves when it wants
        them; calls still running at the end are left to finish unawaited."""
        pending, to_call = {}, list(workers)
        race.advance(self.clock())
        while True:
            if race.wants_reserves():
                to_call += race.call_reserves(self.deadline_s)
            if race.done():
                return
            timeout = race.next_wakeup()
            # submitted just before the wait releases the GIL, so the member threads start at once
            pending.update({self._submit(call, w, inputs[w]): w for w in to_call})
            to_call = []
            done, _ = wait(pending, timeout=timeout, return_when=FIRST_COMPLETED)
            for future in done:
                worker = pending.pop(future)
                try:
                    race.on_result(worker, future.result())
                except Exception as error:  # any member failure is a missing result, never a lost request
                    race.on_failure(worker, str(error) or type(error).__name__)
            race.advance(self.clock())


def invalid_query_reason(query: np.ndarray) -> str | None:
    """Why a client's input cannot be served, or None; names, shapes, dtypes and batch sizes
    (empty ones too) are checked by Triton before the coordinator sees them."""
    if not np.isfinite(query).all():
        return "input contains NaN or infinite values"
    return None
