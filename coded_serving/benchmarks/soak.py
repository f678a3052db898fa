"""Soak under member churn: clients send without pause while members are unloaded and loaded
back, one at a time; every request must be answered, and memory must stay flat."""

from __future__ import annotations

import os
import random
import threading
import time
from dataclasses import dataclass

import numpy as np
import tritonclient.http as http

from coded_serving.client import ModelClient
from coded_serving.deployment.launcher import with_admin_key


@dataclass(frozen=True)
class SoakResult:
    seconds: float
    requests: int
    queries: int
    reconstructed: int
    errors: list[str]
    churn_events: int
    rss_before_mb: float
    rss_after_mb: float


def session_rss_mb(leader_pid: int) -> float:
    """Resident memory of a server and its backend stubs (its process session)."""
    total_kb = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.getpgid(int(entry)) != leader_pid:
                continue
            with open(f"/proc/{entry}/status") as status:
                total_kb += next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            continue
    return total_kb / 1024


def run_soak(http_url: str, server_pid: int, ensemble: str, members: list[str], images: np.ndarray,
             seconds: float, clients: int = 4, churn_every_s: float = 1.0, batch_size: int = 2,
             seed: int = 0) -> SoakResult:
    stop = threading.Event()
    answers: list[np.ndarray] = []
    errors: list[str] = []
    churn_events = 0

    def client_loop(offset: int) -> None:
        with ModelClient(http_url, ensemble) as client:
            i = offset
            while not stop.is_set():
                start = i % (len(images) - batch_size)
                try:
                    answers.append(client.infer(images[start:start + batch_size]).reconstructed)
                except Exception as error:  # a lost request: the soak reports every one
                    errors.append(f"{type(error).__name__}: {error}")
                i += clients * batch_size

    def churn() -> None:
        nonlocal churn_events
        chooser = random.Random(seed)
        admin = with_admin_key(http.InferenceServerClient(http_url), http_url)
        try:
            while not stop.wait(churn_every_s / 2):
                member = chooser.choice(members)
                admin.unload_model(member)
                stop.wait(churn_every_s / 2)
                admin.load_model(member)
                churn_events += 1
        finally:
            admin.close()

    warm = ModelClient(http_url, ensemble)
    for i in range(50):
        warm.infer(images[i:i + batch_size])
    warm.close()
    rss_before = session_rss_mb(server_pid)
    threads = [threading.Thread(target=client_loop, args=(n * batch_size,)) for n in range(clients)]
    threads.append(threading.Thread(target=churn))
    start = time.monotonic()
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - start
    flags = np.concatenate(answers) if answers else np.zeros(0, bool)
    return SoakResult(elapsed, len(answers) + len(errors), len(flags), int(flags.sum()), errors, churn_events,
                      rss_before, session_rss_mb(server_pid))
