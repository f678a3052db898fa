"""Locust users that query a Triton model over HTTP or gRPC with Poisson arrivals.

Import this from a locustfile (``loadtest/locustfile.py``); it registers the command-line
options below and patches gRPC for gevent, so it is for locust processes only.

Arrivals are open-loop: every user draws exponential gaps at ``rate / users`` requests/s, so
the users together form one Poisson process at ``--rate``. A request's latency is measured from
its scheduled arrival, not from when the user got round to sending it, so a user held up by a
slow answer cannot hide the queueing that a real client would see (no coordinated omission).
``--rate 0`` makes users closed-loop instead (send, wait, send): the maximum-throughput mode.

Every request is written to ``--samples`` (CSV) with its exact latency and its send lag: how late
the user sent it beyond its scheduled arrival and its previous answer, so a load generator starved
of CPU shows there and not only as latency. Locust's own statistics round latencies to whole
milliseconds, too coarse for a 2 ms service. Two pauses of the load generator itself would land in
the latencies of every request in flight: Python's full garbage collections (the heap is frozen
once the users are up, so they stay short) and locust stopping its users (answers that came after
it began are flagged ``during_stop``).
"""

from __future__ import annotations

import csv
import functools
import gc
import itertools
import random
import time

import gevent
import numpy as np
from grpc.experimental import gevent as grpc_gevent
from locust import User, constant, events, task
from locust.env import Environment

from coded_serving.client import ModelClient
from coded_serving.training.data import DEFAULT_ROOT, read_idx

grpc_gevent.init_gevent()

SAMPLE_FIELDS = ("arrival_s", "latency_ms", "send_lag_ms", "queries", "reconstructed", "hedged", "during_stop",
                 "error")
#: distinct test images the users draw their batches from
IMAGES = 512

_samples: list[tuple] = []
_stopping = False


@events.init_command_line_parser.add_listener
def _options(parser) -> None:
    parser.add_argument("--model", default="lenet5_parm", help="model to query")
    parser.add_argument("--protocol", choices=("http", "grpc"), default="http",
                        help="tritonclient protocol; --host is that endpoint (host:port)")
    parser.add_argument("--rate", type=float, default=100.0,
                        help="total Poisson arrival rate, requests/s (0: closed loop, as fast as answers come)")
    parser.add_argument("--batch", type=int, default=1, help="queries per request")
    parser.add_argument("--hedge-ms", type=float, default=0.0,
                        help="send a second copy when no answer came after this long (0: never)")
    parser.add_argument("--samples", default="", help="CSV file that receives every request")
    parser.add_argument("--seed", type=int, default=0)


@events.spawning_complete.add_listener
def _freeze_heap(**_) -> None:
    """Full collections walk the whole heap (modules, clients, images): tens of ms that would stall
    every request in flight. Frozen objects are left out of them."""
    gc.collect()
    gc.freeze()


@events.test_stopping.add_listener
def _stop_begins(**_) -> None:
    global _stopping
    _stopping = True


@events.quitting.add_listener
def _write_samples(environment: Environment, **_) -> None:
    path = environment.parsed_options.samples if environment.parsed_options else ""
    if path:
        with open(path, "w", newline="") as stream:
            writer = csv.writer(stream)
            writer.writerow(SAMPLE_FIELDS)
            writer.writerows(_samples)


@functools.cache
def query_images() -> np.ndarray:
    """Fashion-MNIST test images as the deployed model expects them (read once: users share them)."""
    images = read_idx(DEFAULT_ROOT / "t10k-images-idx3-ubyte.gz")[:IMAGES]
    return images.astype(np.float32)[:, None] / np.float32(255.0)


class TritonUser(User):
    """One client of the model over ``--protocol`` (tritonclient's HTTP or gRPC client)."""

    wait_time = constant(0)
    _numbers = itertools.count()

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.model = options.model
        self.protocol = options.protocol
        self.batch = options.batch
        self.hedge_s = options.hedge_ms / 1000
        users = max(self.environment.runner.target_user_count, 1)
        self.mean_gap_s = users / options.rate if options.rate > 0 else 0.0
        self.random = random.Random(options.seed * 100_003 + next(self._numbers))
        self.images = query_images()
        copies = 2 if self.hedge_s > 0 else 1  # a hedge must not queue behind its own primary
        self.clients = [ModelClient(self.host, self.model, self.protocol) for _ in range(copies)]
        self.next_arrival = time.perf_counter() + self._gap()
        self.free_at = 0.0

    def on_stop(self) -> None:
        for client in self.clients:
            client.close()

    def _gap(self) -> float:
        return self.random.expovariate(1 / self.mean_gap_s) if self.mean_gap_s else 0.0

    @task
    def query(self) -> None:
        if self.mean_gap_s:
            arrival = self.next_arrival
            self.next_arrival += self._gap()
            gevent.sleep(max(0.0, arrival - time.perf_counter()))
        else:
            arrival = time.perf_counter()
        start = self.random.randrange(len(self.images) - self.batch)
        batch = self.images[start:start + self.batch]
        sent = time.perf_counter()
        arrival_wall = time.time() - (sent - arrival)
        lag_ms = (sent - max(arrival, self.free_at)) * 1000  # not the wait for this user's previous answer
        result, error, hedged = self._infer(batch)
        self.free_at = time.perf_counter()
        latency_ms = (self.free_at - arrival) * 1000
        reconstructed = 0 if result is None or result.reconstructed is None else int(result.reconstructed.sum())
        _samples.append((f"{arrival_wall:.6f}", f"{latency_ms:.4f}", f"{lag_ms:.4f}", len(batch), reconstructed,
                         int(hedged), int(_stopping), "" if error is None else str(error).replace("\n", " ")[:200]))
        self.environment.events.request.fire(
            request_type=self.protocol.upper(), name=self.model, response_time=latency_ms,
            response_length=len(batch), exception=error, context={},
        )

    def _infer(self, batch: np.ndarray):
        """(result, error, hedged): the primary's answer, or the first good one of primary and hedge."""
        primary = gevent.spawn(self.clients[0].infer, batch)
        primary.join(self.hedge_s if self.hedge_s > 0 else None)
        if primary.ready():
            return primary.value, primary.exception, False
        hedge = gevent.spawn(self.clients[1].infer, batch)
        (first,) = gevent.wait([primary, hedge], count=1)
        if not first.successful():
            other = hedge if first is primary else primary
            other.join()
            first = other if other.successful() else first
        return first.value, first.exception, True
