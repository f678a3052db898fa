"""The tail-latency benchmark: every system under every condition, side by side, and its report.

Systems (one repository, one server): no redundancy, Equal-Resources, hedged requests on the
Equal-Resources model, and the ParM coded ensemble. Conditions: healthy; one slow member
(the same delay distribution on one instance of each system); CPU contention on one member's
core; one member killed mid-run (its stub process SIGKILLed); a coded member unloaded mid-run;
the slow member again at batch 2 and 4; and closed-loop saturation for maximum throughput.
The report (markdown, two plots) states the goals of the issue as ratios measured in this run.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from coded_serving.runtime.faults import FaultInjection
from coded_serving.deployment.launcher import PROJECT_ROOT
from coded_serving.benchmarks.report_sections import machine_description
from coded_serving.benchmarks.load import (
    CODED, EQUAL_RESOURCES, NO_REDUNDANCY, BenchmarkServer, Contention, Failure, Scenario, ScenarioResult,
    benchmark_repository_spec, run_scenario,
)

HEDGED = "hedged"
SYSTEMS = (NO_REDUNDANCY, EQUAL_RESOURCES, HEDGED, CODED)
HEALTHY = "healthy"
SLOW = "one slow member"
CONTENTION = "CPU contention on one member's core"
KILLED = "one member's process killed mid-run"
UNLOADED = "one member unloaded mid-run"
SATURATION = "closed loop (maximum throughput)"

#: ParM's headline (p99.9 - median gap reduced 3.5x vs Equal-Resources) and the issue's other goals
GOAL_P999_RATIO = 0.5
GOAL_GAP_REDUCTION = 3.5
GOAL_MEDIAN_TOLERANCE = 0.10


@dataclass(frozen=True)
class BenchmarkSettings:
    """What one benchmark run does; every field is on the command line."""

    rate_rps: float = 200.0
    users: int = 64
    protocol: str = "http"
    #: the one-slow-member runs that the goals compare; other runs take ``short_duration_s``
    duration_s: float = 40.0
    short_duration_s: float = 15.0
    saturation_duration_s: float = 10.0
    saturation_users: int = 32
    warmup_s: float = 2.0
    k: int = 2
    deadline_ms: float = 10.0
    #: the hedge waits as long as the coordinator waits for a late member
    hedge_ms: float = 10.0
    #: the straggler: a few executes of one instance delayed by many times the median, heavy-tailed
    slow: FaultInjection = field(default_factory=lambda: FaultInjection(
        delay_probability=0.02, delay_ms=20.0, delay_tail_ms=40.0, delay_tail="pareto", delay_tail_alpha=1.5,
        delay_max_ms=500.0, seed=1,
    ))
    #: every model execute waits this long: emulated accelerator time (0: LeNet-5 on the CPU as it is)
    service_ms: float = 0.0
    contention_processes: int = 1
    failure_at_s: float = 8.0
    batches: tuple[int, ...] = (2, 4)


SYSTEM_NAMES = {
    NO_REDUNDANCY: "no redundancy",
    EQUAL_RESOURCES: "Equal-Resources",
    HEDGED: "hedged",
    CODED: "ParM coded",
}


def system_descriptions(settings: BenchmarkSettings) -> dict[str, str]:
    k = settings.k
    return {
        NO_REDUNDANCY: f"`{NO_REDUNDANCY}`: the deployed model, {k} instances",
        EQUAL_RESOURCES: f"`{EQUAL_RESOURCES}`: the deployed model, {k + 1} instances, load-balanced by Triton",
        HEDGED: f"`{EQUAL_RESOURCES}` again; the client sends a second copy when no answer came after "
                f"{settings.hedge_ms:g} ms and keeps the first good answer",
        CODED: f"`{CODED}`: ParM coded ensemble, addition encoder, k={k}: {k} data members and 1 parity member "
               f"(1 instance each), deadline {settings.deadline_ms:g} ms; the C++ scheduler",
    }


def slow_member(system: str, faults: FaultInjection) -> tuple[str, FaultInjection]:
    """The model and faults that make one member of ``system`` slow: the same distribution everywhere."""
    if system == CODED:
        return f"{CODED}_member_0", faults
    return (EQUAL_RESOURCES if system == HEDGED else system), replace(faults, instances=(0,))


def member_instance(system: str) -> tuple[str, int]:
    """(model, instance index) of the member that contention and failures hit."""
    model, faults = slow_member(system, FaultInjection())
    return model, (faults.instances or (0,))[0]


def benchmark_scenarios(settings: BenchmarkSettings) -> list[Scenario]:
    s = settings

    def scenario(system: str, condition: str, duration_s: float, **extra) -> Scenario:
        model = EQUAL_RESOURCES if system == HEDGED else system
        extra.setdefault("hedge_ms", s.hedge_ms if system == HEDGED else 0.0)
        return Scenario(system, condition, model, s.rate_rps, duration_s, users=s.users, protocol=s.protocol,
                        warmup_s=s.warmup_s, **extra)

    def slow(system: str, duration_s: float, batch: int = 1) -> Scenario:
        faults = replace(s.slow, service_ms=s.service_ms)
        return scenario(system, SLOW, duration_s, batch=batch, faults=(slow_member(system, faults),))

    scenarios = [scenario(system, HEALTHY, s.short_duration_s) for system in (NO_REDUNDANCY, EQUAL_RESOURCES, CODED)]
    scenarios.append(slow(NO_REDUNDANCY, s.short_duration_s))
    scenarios += [slow(system, s.duration_s) for system in (EQUAL_RESOURCES, HEDGED, CODED)]
    for system in (EQUAL_RESOURCES, CODED):
        model, instance = member_instance(system)
        scenarios.append(scenario(system, CONTENTION, s.short_duration_s,
                                  contention=Contention(model, instance, processes=s.contention_processes)))
    for system in (EQUAL_RESOURCES, CODED):
        model, instance = member_instance(system)
        scenarios.append(scenario(system, KILLED, s.short_duration_s, failure=Failure("kill", model, s.failure_at_s, instance)))
    scenarios.append(scenario(CODED, UNLOADED, s.short_duration_s,
                              failure=Failure("unload", f"{CODED}_member_1", s.failure_at_s)))
    scenarios += [slow(system, s.short_duration_s, batch) for batch in s.batches for system in (EQUAL_RESOURCES, CODED)]
    scenarios += [replace(scenario(system, SATURATION, s.saturation_duration_s), rate_rps=0.0, users=s.saturation_users)
                  for system in (EQUAL_RESOURCES, CODED)]
    return scenarios


@dataclass(frozen=True)
class Goal:
    name: str
    measured: str
    target: str
    met: bool | None


def find(results: list[ScenarioResult], system: str, condition: str, batch: int = 1) -> ScenarioResult | None:
    for result in results:
        s = result.scenario
        if (s.system, s.condition, s.batch) == (system, condition, batch):
            return result
    return None


def goals(results: list[ScenarioResult]) -> list[Goal]:
    """The issue's goals as ratios of this run: one slow member, coded against Equal-Resources."""
    er, coded = find(results, EQUAL_RESOURCES, SLOW), find(results, CODED, SLOW)
    found = []
    if er and coded:
        ratio = coded.p999_ms / er.p999_ms
        found.append(Goal("coded p99.9 / Equal-Resources p99.9, one slow member", f"{ratio:.2f}",
                          f"<= {GOAL_P999_RATIO}", ratio <= GOAL_P999_RATIO))
        er_gap, coded_gap = er.p999_ms - er.median_ms, coded.p999_ms - coded.median_ms
        reduction = er_gap / coded_gap if coded_gap > 0 else float("inf")
        found.append(Goal("(p99.9 - median) gap reduction vs Equal-Resources, one slow member",
                          f"{reduction:.2f}x ({er_gap:.1f} ms -> {coded_gap:.1f} ms)",
                          f">= {GOAL_GAP_REDUCTION}x", reduction >= GOAL_GAP_REDUCTION))
        change = coded.median_ms / er.median_ms - 1
        found.append(Goal("coded median vs Equal-Resources median, one slow member",
                          f"{change:+.0%} ({er.median_ms:.2f} -> {coded.median_ms:.2f} ms)",
                          f"within {GOAL_MEDIAN_TOLERANCE:.0%}", abs(change) <= GOAL_MEDIAN_TOLERANCE))
    coded_runs = [r for r in results if r.scenario.system == CODED]
    lost = sum(r.errors for r in coded_runs)
    found.append(Goal("coded ensemble: requests without an answer, all scenarios",
                      f"{lost} of {sum(r.requests for r in coded_runs)}", "0", lost == 0))
    healthy_er, healthy_coded = find(results, EQUAL_RESOURCES, HEALTHY), find(results, CODED, HEALTHY)
    if healthy_er and healthy_coded:
        found.append(Goal(f"coordinator overhead under load (healthy, {healthy_coded.scenario.rate_rps:g} req/s): "
                          "coded median - Equal-Resources median",
                          f"{healthy_coded.median_ms - healthy_er.median_ms:+.2f} ms", "informative", None))
    return found


def git_revision() -> str:
    try:
        revision = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=PROJECT_ROOT, capture_output=True,
                                  text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=PROJECT_ROOT, capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return revision + (" (with uncommitted changes)" if dirty else "")


@dataclass(frozen=True)
class RunInfo:
    command: str
    started: str
    minutes: float
    machine: str
    server: str
    revision: str
    load_average: tuple[float, float, float]


def results_table(results: list[ScenarioResult]) -> str:
    header = ("| condition | system | batch | load req/s | requests | errors | median ms | p99 ms | p99.9 ms "
              "| p99.9 - median ms | worst 1 s median ms | throughput req/s | reconstructed | hedged "
              "| server CPU ms/query | client send lag p99 ms | load avg |")
    rows = [header, "|" + "---|" * (header.count("|") - 1)]
    for r in results:
        s = r.scenario
        rows.append(
            f"| {s.condition} | {SYSTEM_NAMES[s.system]} | {s.batch} | {'closed loop' if not s.rate_rps else f'{s.rate_rps:g}'} "
            f"| {r.requests} | {r.errors} | {r.median_ms:.2f} | {r.p99_ms:.2f} | {r.p999_ms:.2f} "
            f"| {r.p999_ms - r.median_ms:.2f} | {r.worst_second_median_ms:.2f} | {r.throughput_rps:.0f} "
            f"| {'-' if r.reconstructed_fraction is None else f'{r.reconstructed_fraction:.1%}'} "
            f"| {f'{r.hedged_fraction:.1%}' if s.hedge_ms else '-'} | {r.cpu_ms_per_query:.2f} "
            f"| {r.send_lag_p99_ms:.2f} | {r.load_average:.2f} |"
        )
    return "\n".join(rows)


def goals_table(found: list[Goal]) -> str:
    rows = ["| goal | measured | target | met |", "|---|---|---|---|"]
    verdict = {True: "yes", False: "**no**", None: "-"}
    rows += [f"| {g.name} | {g.measured} | {g.target} | {verdict[g.met]} |" for g in found]
    return "\n".join(rows)


def plot_latency_cdf(results: list[ScenarioResult], path: Path) -> None:
    """Complementary CDF on log axes: the tail, where the systems differ, gets the room."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conditions = [c for c in (HEALTHY, SLOW, CONTENTION, KILLED) if any(r.scenario.condition == c for r in results)]
    figure, axes = plt.subplots(1, len(conditions), figsize=(4.2 * len(conditions), 4.2), sharey=True, squeeze=False)
    colours = dict(zip(SYSTEMS, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for axis, condition in zip(axes[0], conditions):
        for r in results:
            if r.scenario.condition != condition or r.scenario.batch != 1:
                continue
            latencies = np.sort(r.latencies_ms)
            survival = 1 - np.arange(len(latencies)) / len(latencies)
            axis.step(latencies, survival, where="post", color=colours[r.scenario.system])
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_ylim(1e-4, 1)
        axis.axhline(1e-3, color="grey", linewidth=0.6, linestyle=":")
        axis.set_title(condition, fontsize=9)
        axis.set_xlabel("latency ms (log)")
        axis.grid(True, which="both", linewidth=0.3)
    axes[0][0].set_ylabel("fraction of requests slower (log)")
    shown = [system for system in SYSTEMS if any(r.scenario.system == system for r in results)]
    handles = [plt.Line2D([], [], color=colours[system]) for system in shown]
    figure.legend(handles, [SYSTEM_NAMES[system] for system in shown], loc="lower center", ncol=len(shown), fontsize=9)
    figure.tight_layout(rect=(0, 0.07, 1, 1))
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_percentiles(results: list[ScenarioResult], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r.scenario.condition}{'' if r.scenario.batch == 1 else f', batch {r.scenario.batch}'}: "
              f"{SYSTEM_NAMES[r.scenario.system]}" for r in results]
    positions = np.arange(len(results))
    figure, axis = plt.subplots(figsize=(10, 0.32 * len(results) + 1.2))
    for offset, (name, values) in zip((-0.27, 0, 0.27), (
        ("median", [r.median_ms for r in results]),
        ("p99", [r.p99_ms for r in results]),
        ("p99.9", [r.p999_ms for r in results]),
    )):
        axis.barh(positions + offset, values, height=0.27, label=name)
    axis.set_yticks(positions, labels, fontsize=7)
    axis.invert_yaxis()
    axis.set_xscale("log")
    axis.set_xlabel("latency ms (log)")
    axis.grid(True, axis="x", which="both", linewidth=0.3)
    axis.legend(fontsize=8)
    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)


def _shown(path: Path) -> Path:
    """A path relative to the project where it lies inside it."""
    path = Path(path).resolve()
    return path.relative_to(PROJECT_ROOT) if path.is_relative_to(PROJECT_ROOT) else path


def write_report(path: Path, info: RunInfo, settings: BenchmarkSettings, results: list[ScenarioResult],
                 runs_dir: Path) -> None:
    path = Path(path)
    cdf, bars = path.with_name(f"{path.stem}_cdf.png"), path.with_name(f"{path.stem}_percentiles.png")
    plot_latency_cdf(results, cdf)
    plot_percentiles(results, bars)
    s = settings
    descriptions = system_descriptions(settings)
    lines = [
        "# Tail latency under stragglers and failures",
        "",
        f"Regenerate: `{info.command}` (this run took {info.minutes:.1f} minutes; it rewrites this file and its plots).",
        "",
        f"Run {info.started} on {info.machine}; {info.server}, CPU only, every system in one server; "
        f"revision {info.revision}; load average before the run {info.load_average[0]:.2f} / "
        f"{info.load_average[1]:.2f} / {info.load_average[2]:.2f} (1/5/15 min, the machine's other work included).",
        "",
        "## Settings",
        "",
        f"- Load: locust, {s.users} users, Poisson arrivals at {s.rate_rps:g} requests/s in total, {s.protocol.upper()} "
        f"(tritonclient), Fashion-MNIST test images; batch 1 unless the row says otherwise (batch 2 and 4 at the same "
        f"request rate). Saturation: {s.saturation_users} closed-loop users.",
        f"- Durations: {s.duration_s:g} s for the one-slow-member runs at batch 1 (the goals), {s.short_duration_s:g} s "
        f"for the others, {s.saturation_duration_s:g} s for saturation; the first {s.warmup_s:g} s of each run are "
        "left out of percentiles and throughput, never out of the error count.",
        "- Systems:",
        *[f"  - {SYSTEM_NAMES[system]}: {descriptions[system]}" for system in SYSTEMS],
        f"- One slow member: {s.slow.describe()}; on instance 0 of the uncoded models, on data member 0 of the "
        "coded ensemble (delay injected in the member's backend, so the slowdown comes from outside the model). "
        "The draw is per execute: the coded data member executes for every coding group, one instance of an "
        "uncoded model for a share of the requests, so the coded member is slowed more often in wall-clock terms.",
        *([f"- Service time: every execute of every model (each instance, each member) waits {s.service_ms:g} ms "
           "before running, an emulated accelerator's run time (the CPU stays free), on top of any straggler delay."]
          if s.service_ms else []),
        f"- CPU contention: {s.contention_processes} busy-loop process(es) pinned to core 1 with every thread of "
        "that member's stub process.",
        f"- Failures: {s.failure_at_s:g} s after locust starts, that member's stub process is SIGKILLed, or a coded "
        "data member is unloaded. (Triton 2.51 keeps scheduling a dead Python instance; each execute there fails "
        "after about 1 s.)",
        "",
        "## Goals (ratios measured in this run)",
        "",
        goals_table(goals(results)),
        "",
        "## Results",
        "",
        results_table(results),
        "",
        "Latency is measured at the client from each request's scheduled Poisson arrival to its answer (no coordinated "
        "omission); percentiles are over the successful requests after the warm-up, errors over the whole run. "
        "`reconstructed`: fraction of queries answered by ParM's decoder (approximate answers). `server CPU ms/query`: "
        "CPU time of tritonserver and its stub processes over the run, per query (the load generator excluded; "
        "contention processes excluded). `worst 1 s median`: the highest median latency of any one-second window "
        "(a stall of the whole path shows here; scattered stragglers do not). `client send lag`: how late locust "
        "sent requests beyond their scheduled arrival and the user's previous answer (a load generator starved of "
        "CPU shows here; that much of the latency is the client's). `load avg`: 1-minute load average when the run started.",
        "",
        f"![latency CDF]({cdf.name})",
        "",
        f"![percentiles per scenario]({bars.name})",
        "",
        f"Locust's own CSV and HTML reports, each run's exact samples and logs: `{_shown(runs_dir)}` (not in git).",
    ]
    errors = [(r, e) for r in results for e in r.error_examples]
    if errors:
        lines += ["", "## Errors seen", ""]
        lines += [f"- {r.scenario.condition}, {SYSTEM_NAMES[r.scenario.system]}: `{e}`" for r, e in errors]
    path.write_text("\n".join(lines) + "\n")


def run_benchmark(settings: BenchmarkSettings, deployed_onnx: Path, parity_onnx: Path, locustfile: Path,
                  workdir: Path, report: Path, command: str, progress=print) -> list[ScenarioResult]:
    started = time.monotonic()
    info_start = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load_average = os.getloadavg()
    spec = benchmark_repository_spec(deployed_onnx, parity_onnx, settings.k, settings.deadline_ms, settings.service_ms)
    scenarios = benchmark_scenarios(settings)
    results = []
    with BenchmarkServer(spec, workdir) as bench:
        server = f"tritonserver {bench.admin.get_server_metadata()['version']} (nvidia-pytriton wheel)"
        for number, scenario in enumerate(scenarios, 1):
            result = run_scenario(bench, scenario, locustfile, workdir / "runs")
            progress(f"[{number}/{len(scenarios)}] {scenario.condition}, {SYSTEM_NAMES[scenario.system]}, "
                     f"batch {scenario.batch}: median {result.median_ms:.2f} ms, p99 {result.p99_ms:.2f} ms, "
                     f"p99.9 {result.p999_ms:.2f} ms, {result.throughput_rps:.0f} req/s, {result.errors} errors")
            results.append(result)
    info = RunInfo(command, info_start, (time.monotonic() - started) / 60, machine_description(), server,
                   git_revision(), load_average)
    write_report(report, info, settings, results, workdir / "runs")
    return results
