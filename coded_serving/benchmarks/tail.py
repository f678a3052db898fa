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
        f"for the others, {s.saturation_duration_s:g} s for saturation; the first {s.warmup_s:g} s of each run and "
        "the answers that came after locust began stopping its users (a pause of the load generator) are left out "
        "of percentiles and throughput, never out of the error count.",
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


# --- The load sweep: where coding wins against replication and hedging -------------------------------------------

from coded_serving.benchmarks.load import (  # noqa: E402
    CODED_EVERY_WORKER, pooled, sweep_repository_spec,
)

CODED_DEDICATED = CODED
SWEEP_SYSTEMS = (NO_REDUNDANCY, EQUAL_RESOURCES, HEDGED, CODED_DEDICATED, CODED_EVERY_WORKER)
SWEEP_NAMES = {**SYSTEM_NAMES, CODED_DEDICATED: "coded, dedicated parity", CODED_EVERY_WORKER: "coded, every worker"}
CODED_SYSTEMS = (CODED_DEDICATED, CODED_EVERY_WORKER)
INTERMITTENT = "intermittently slow worker"
PERSISTENT = "persistently slow worker"
KILLED_WORKER = "killed worker"
SWEEP_CONDITIONS = (INTERMITTENT, PERSISTENT, KILLED_WORKER)
#: every worker healthy, at the goals' load: the floor this machine puts under every p99.9 of the sweep
NO_FAULT = "no fault"
CAPACITY = "capacity (closed loop, healthy)"
HEDGE_TUNING = "hedge delay tuning"
#: accuracy of lenet5_parm on the Fashion-MNIST test set (reports/default_models.json): available, degraded
DEFAULT_MODELS_JSON = PROJECT_ROOT / "reports" / "default_models.json"

#: the issue "Beat hedged requests": at 60 % load, and the medians
SWEEP_GOAL_LOAD = 0.6
SWEEP_GOAL_VS_HEDGED = 0.8
SWEEP_GOAL_VS_ER = 0.4
#: the 60% load median goal by k: more data queries per parity, less extra work
SWEEP_GOAL_MEDIAN = {2: 1.25, 4: 1.10}
SWEEP_GOAL_LOW_LOAD = 0.2
SWEEP_GOAL_LOW_MEDIAN = 1.10
#: the loads the goals judge: there the systems compared run longer, in rounds that take turns
SWEEP_GOAL_LOADS = (SWEEP_GOAL_LOW_LOAD, SWEEP_GOAL_LOAD)


@dataclass(frozen=True)
class SweepSettings:
    k: int = 2
    batch: int = 1
    service_ms: float = 5.0
    deadline_ms: float = 10.0
    deadline_min_ms: float = 3.0
    #: fractions of Equal-Resources' capacity measured in the same run
    loads: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8)
    conditions: tuple[str, ...] = SWEEP_CONDITIONS
    systems: tuple[str, ...] = SWEEP_SYSTEMS
    hedge_delays_ms: tuple[float, ...] = (8.0, 12.0, 20.0)
    hedge_tuning_load: float = 0.6
    duration_s: float = 6.0
    #: runs at the loads the goals judge (the hedge tuning included) last longer, so that the p99.9 the goals
    #: compare rests on more than the slowest handful of requests
    goal_duration_s: float = 18.0
    #: there the systems compared take turns in this many rounds of goal_duration_s / goal_rounds, pooled: a
    #: noisy stretch of the shared machine then falls on every system alike, not on whichever ran in it
    goal_rounds: int = 3
    warmup_s: float = 1.0
    capacity_duration_s: float = 5.0
    #: closed-loop users of the capacity run: outstanding requests (the load generator shares the 2 cores)
    capacity_users: int = 16
    users: int = 96
    protocol: str = "http"
    failure_at_s: float = 3.0
    intermittent: FaultInjection = field(default_factory=lambda: BenchmarkSettings().slow)
    #: a persistently slow worker: every execute of that worker takes this much longer (instead of CPU
    #: contention, which on a 2-core machine shared with other work slows everything, not one worker)
    persistent_extra_ms: float = 10.0

    def __post_init__(self) -> None:
        if self.goal_rounds < 1 or self.goal_duration_s / self.goal_rounds <= max(self.warmup_s, self.failure_at_s):
            raise ValueError(f"goal_duration_s / goal_rounds = {self.goal_duration_s:g} / {self.goal_rounds} s must be "
                             f"longer than the warm-up ({self.warmup_s:g} s) and the failure time ({self.failure_at_s:g} s)")


def sweep_faults(system: str, condition: str, s: SweepSettings) -> tuple[tuple[str, FaultInjection], ...]:
    """One worker of ``system`` slowed: instance 0 of an uncoded model, data member 0 of the dedicated
    ensemble, both models of worker 0 of the every-worker ensemble; the service time stays on."""
    if condition == INTERMITTENT:
        faults = replace(s.intermittent, service_ms=s.service_ms)
    elif condition == PERSISTENT:
        faults = FaultInjection(service_ms=s.service_ms, delay_ms=s.persistent_extra_ms, delay_probability=1.0)
    else:
        return ()
    if system == CODED_DEDICATED:
        return ((f"{CODED_DEDICATED}_member_0", faults),)
    if system == CODED_EVERY_WORKER:
        worker = f"{CODED_EVERY_WORKER}_worker_0"
        return ((worker, faults), (f"{worker}_parity", replace(faults, seed=faults.seed + 1)))
    model = EQUAL_RESOURCES if system == HEDGED else system
    return ((model, replace(faults, instances=(0,))),)


def sweep_failure(system: str, s: SweepSettings) -> Failure:
    """The same crash for every system: the stub process of one worker's instance is SIGKILLed (an orderly
    unload would also pause the whole server while Triton tears the model down)."""
    if system == CODED_DEDICATED:
        return Failure("kill", f"{CODED_DEDICATED}_member_0", s.failure_at_s)
    if system == CODED_EVERY_WORKER:
        worker = f"{CODED_EVERY_WORKER}_worker_0"
        return Failure("kill", worker, s.failure_at_s, also=(f"{worker}_parity",))
    return Failure("kill", EQUAL_RESOURCES if system == HEDGED else system, s.failure_at_s, 0)


def sweep_scenario(system: str, condition: str, rate_rps: float, s: SweepSettings, hedge_ms: float = 0.0) -> Scenario:
    model = EQUAL_RESOURCES if system == HEDGED else system
    return Scenario(system, condition, model, rate_rps, s.duration_s, batch=s.batch, users=s.users,
                    protocol=s.protocol, hedge_ms=hedge_ms if system == HEDGED else 0.0,
                    faults=sweep_faults(system, condition, s),
                    failure=sweep_failure(system, s) if condition == KILLED_WORKER else None, warmup_s=s.warmup_s)


def capacity_scenario(s: SweepSettings) -> Scenario:
    return Scenario(EQUAL_RESOURCES, CAPACITY, EQUAL_RESOURCES, 0.0, s.capacity_duration_s, batch=s.batch,
                    users=s.capacity_users, protocol=s.protocol, warmup_s=s.warmup_s)


def load_of(result: ScenarioResult, capacity_rps: float) -> float:
    return round(result.scenario.rate_rps / capacity_rps, 2)


def same_load(a: float, b: float) -> bool:
    """Loads as fractions of capacity, equal to the percent (a measured rate rounds)."""
    return abs(a - b) < 0.011


def parm_accuracies(k: int, path: Path = DEFAULT_MODELS_JSON) -> tuple[float, float] | None:
    """(available, degraded) test accuracy of lenet5_parm from the training report, if it has this k."""
    import json
    entry = json.loads(Path(path).read_text())["codes"]["lenet5_parm"]
    if entry["code"]["k"] != k:
        return None
    return float(entry["test"]["available_accuracy"]), float(entry["test"]["degraded_accuracy"])


@dataclass
class SweepRun:
    settings: SweepSettings
    capacity: ScenarioResult
    hedge_tuning: list[ScenarioResult]
    hedge_ms: float
    results: list[ScenarioResult]
    no_fault: list[ScenarioResult] = field(default_factory=list)

    @property
    def capacity_rps(self) -> float:
        return self.capacity.throughput_rps * self.settings.batch


def best_hedge(tuning: list[ScenarioResult]) -> float:
    """The hedge delay with the lowest p99.9 (ties: the later hedge, less extra work)."""
    return min(tuning, key=lambda r: (r.p999_ms, -r.scenario.hedge_ms)).scenario.hedge_ms


def run_sweep(s: SweepSettings, deployed_onnx: Path, parity_onnx: Path, locustfile: Path, workdir: Path,
              progress=print) -> SweepRun:
    spec = sweep_repository_spec(deployed_onnx, parity_onnx, s.k, s.deadline_ms, s.deadline_min_ms, s.service_ms)
    runs = workdir / "runs"
    with BenchmarkServer(spec, workdir) as bench:
        def run(scenario: Scenario, label: str, out_dir: Path = runs) -> ScenarioResult:
            restarts = bench.restarts
            result = run_scenario(bench, scenario, locustfile, out_dir)
            if bench.restarts > restarts:
                progress(f"{label}: tritonserver had died after the previous run and was started afresh")
            extra = "-" if result.extra_work is None else f"{result.extra_work:+.0%}"
            progress(f"{label}: {scenario.condition}, {SWEEP_NAMES[scenario.system]}, {scenario.rate_rps:g} req/s"
                     f"{f', hedge {scenario.hedge_ms:g} ms' if scenario.hedge_ms else ''}: median "
                     f"{result.median_ms:.2f} ms, p99.9 {result.p999_ms:.2f} ms, {result.throughput_rps:.0f} req/s, "
                     f"extra work {extra}, {result.errors} errors")
            return result

        def side_by_side(scenarios: list[Scenario], load: float, label: str) -> list[ScenarioResult]:
            """Runs scenarios compared with each other; at a load the goals judge in rounds, taking turns, pooled."""
            if not any(same_load(load, goal_load) for goal_load in SWEEP_GOAL_LOADS):
                return [run(scenario, label) for scenario in scenarios]
            rounds = s.goal_rounds
            shorter = [replace(scenario, duration_s=s.goal_duration_s / rounds) for scenario in scenarios]
            if rounds == 1:
                return [run(scenario, label) for scenario in shorter]
            done = [[run(scenario, f"{label}, round {n}/{rounds}", runs / f"round_{n}") for scenario in shorter]
                    for n in range(1, rounds + 1)]
            return [pooled(list(results)) for results in zip(*done)]

        capacity = run(capacity_scenario(s), "capacity")
        capacity_rps = capacity.throughput_rps  # requests/s
        rate = lambda load: round(load * capacity_rps, 1)  # noqa: E731
        tuning = side_by_side([replace(sweep_scenario(HEDGED, INTERMITTENT, rate(s.hedge_tuning_load), s, hedge),
                                       condition=HEDGE_TUNING, hedge_ms=hedge) for hedge in s.hedge_delays_ms],
                              s.hedge_tuning_load, "hedge tuning") if HEDGED in s.systems else []
        hedge_ms = best_hedge(tuning) if tuning else 0.0
        results = [result for condition in s.conditions for load in s.loads
                   for result in side_by_side([sweep_scenario(system, condition, rate(load), s, hedge_ms)
                                               for system in s.systems], load, f"{load:.0%} load")]
        no_fault = side_by_side([sweep_scenario(system, NO_FAULT, rate(SWEEP_GOAL_LOAD), s, hedge_ms)
                                 for system in s.systems], SWEEP_GOAL_LOAD, NO_FAULT)
    return SweepRun(s, capacity, tuning, hedge_ms, results, no_fault)


def sweep_find(run: SweepRun, system: str, condition: str, load: float) -> ScenarioResult | None:
    for r in run.results:
        if (r.scenario.system, r.scenario.condition) == (system, condition) and \
                same_load(load_of(r, run.capacity.throughput_rps), load):
            return r
    return None


def best_hedged(run: SweepRun, condition: str, load: float) -> ScenarioResult | None:
    """The hedged run with the lowest p99.9 at that point: the sweep's own, and where the hedge delay was
    tuned (the same condition and load) every tuned delay too, so a coded system is held to the best
    hedged configuration this run measured, not to one noisy run of it."""
    found = [sweep_find(run, HEDGED, condition, load)]
    if condition == INTERMITTENT and same_load(run.settings.hedge_tuning_load, load):
        found += run.hedge_tuning
    return min((r for r in found if r), key=lambda r: r.p999_ms, default=None)


def sweep_goals(run: SweepRun) -> list[Goal]:
    """The issue's goals, for each coded topology, from this run's own numbers."""
    found = []
    for coded in CODED_SYSTEMS:
        name = SWEEP_NAMES[coded]
        for condition in run.settings.conditions:
            c, er = (sweep_find(run, system, condition, SWEEP_GOAL_LOAD) for system in (coded, EQUAL_RESOURCES))
            hedged = best_hedged(run, condition, SWEEP_GOAL_LOAD)
            if c and hedged:
                ratio = c.p999_ms / hedged.p999_ms
                found.append(Goal(f"{name}, {condition}, {SWEEP_GOAL_LOAD:.0%} load: p99.9 / best hedged p99.9",
                                  f"{ratio:.2f} ({c.p999_ms:.1f} / {hedged.p999_ms:.1f} ms{_round_spread(c, hedged)})",
                                  f"<= {SWEEP_GOAL_VS_HEDGED}", ratio <= SWEEP_GOAL_VS_HEDGED))
            if c and er:
                ratio = c.p999_ms / er.p999_ms
                found.append(Goal(f"{name}, {condition}, {SWEEP_GOAL_LOAD:.0%} load: p99.9 / Equal-Resources p99.9",
                                  f"{ratio:.2f} ({c.p999_ms:.1f} / {er.p999_ms:.1f} ms{_round_spread(c, er)})",
                                  f"<= {SWEEP_GOAL_VS_ER}", ratio <= SWEEP_GOAL_VS_ER))
        median_goals = ((SWEEP_GOAL_LOAD, SWEEP_GOAL_MEDIAN.get(run.settings.k)),
                        (SWEEP_GOAL_LOW_LOAD, SWEEP_GOAL_LOW_MEDIAN))
        for load, target in [(load, target) for load, target in median_goals if target]:
            # the median goals: under the intermittent straggler, the condition closest to a healthy server
            c, er = (sweep_find(run, system, INTERMITTENT, load) for system in (coded, EQUAL_RESOURCES))
            if c and er:
                ratio = c.median_ms / er.median_ms
                found.append(Goal(f"{name}, {INTERMITTENT}, {load:.0%} load: median / Equal-Resources median",
                                  f"{ratio:.2f} ({c.median_ms:.2f} / {er.median_ms:.2f} ms)", f"<= {target}",
                                  ratio <= target))
        coded_runs = [r for r in run.results if r.scenario.system == coded]
        lost = sum(r.errors for r in coded_runs)
        found.append(Goal(f"{name}: lost requests, every run of the sweep",
                          f"{lost} of {sum(r.requests for r in coded_runs)}", "0", lost == 0))
    return found


def _spread(result: ScenarioResult) -> str:
    return f"{min(result.round_p999_ms):.0f}-{max(result.round_p999_ms):.0f}"


def _round_spread(*results: ScenarioResult) -> str:
    """The p99.9 range over the rounds of each result, when pooled from rounds: the noise a ratio sits in."""
    if not all(r.round_p999_ms for r in results):
        return ""
    return "; rounds " + " / ".join(_spread(r) for r in results)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def sweep_table(run: SweepRun, accuracy: tuple[float, float] | None) -> str:
    header = ("| condition | load | req/s | system | requests | median ms | p99 ms | p99.9 ms | server CPU ms/query "
              "| extra work | reconstructed | accuracy impact (est.) | lost | hedged | send lag p99 ms |")
    rows = [header, "|" + "---|" * (header.count("|") - 1)]
    for r in run.results:
        s = r.scenario
        impact = None if r.reconstructed_fraction is None or accuracy is None else \
            r.reconstructed_fraction * (accuracy[0] - accuracy[1])
        rows.append(
            f"| {s.condition} | {load_of(r, run.capacity.throughput_rps):.0%} | {s.rate_rps:g} | {SWEEP_NAMES[s.system]} "
            f"| {r.requests} | {r.median_ms:.2f} | {r.p99_ms:.2f} | {r.p999_ms:.2f} | {r.cpu_ms_per_query:.2f} "
            f"| {'-' if r.extra_work is None else f'{r.extra_work:+.1%}'} | {_pct(r.reconstructed_fraction)} "
            f"| {'-' if impact is None else f'-{impact:.2%}'} | {r.errors} "
            f"| {_pct(r.hedged_fraction) if s.hedge_ms else '-'} | {r.send_lag_p99_ms:.1f} |")
    return "\n".join(rows)


def no_fault_section(run: SweepRun) -> list[str]:
    """Every system with no fault at the goals' load, and the p99.9 goals this floor puts out of reach."""
    if not run.no_fault:
        return []
    rounds = all(r.round_p999_ms for r in run.no_fault)
    rows = ["| system | median ms | p99 ms | p99.9 ms | extra work |" + (" p99.9 ms by round |" if rounds else ""),
            "|---|---|---|---|---|" + ("---|" if rounds else "")]
    rows += [f"| {SWEEP_NAMES[r.scenario.system]} | {r.median_ms:.2f} | {r.p99_ms:.2f} | {r.p999_ms:.2f} "
             f"| {'-' if r.extra_work is None else f'{r.extra_work:+.1%}'} |"
             + (f" {', '.join(f'{p:.1f}' for p in r.round_p999_ms)} |" if rounds else "") for r in run.no_fault]
    floor = min(r.p999_ms for r in run.no_fault)
    lines = ["## No fault (the floor)", "",
             f"Every worker healthy, {SWEEP_GOAL_LOAD:.0%} load, {run.settings.goal_duration_s:g} s per system: what "
             f"this machine puts under every p99.9 above (lowest here {floor:.1f} ms). A p99.9 target below it is out "
             "of any system's reach on this machine."
             + (" How far one system's p99.9 moves from round to round, with nothing changed, is the noise every "
                "p99.9 ratio of this report sits in." if rounds else ""), "", *rows]
    for condition in run.settings.conditions:
        er = sweep_find(run, EQUAL_RESOURCES, condition, SWEEP_GOAL_LOAD)
        if er and SWEEP_GOAL_VS_ER * er.p999_ms < floor:
            lines += ["", f"- {condition}: p99.9 <= {SWEEP_GOAL_VS_ER} x Equal-Resources' {er.p999_ms:.1f} ms asks for "
                          f"{SWEEP_GOAL_VS_ER * er.p999_ms:.1f} ms, below the floor."]
    return lines + [""]


def _colours(plt) -> dict[str, str]:
    return dict(zip(SWEEP_SYSTEMS, plt.rcParams["axes.prop_cycle"].by_key()["color"]))


def plot_p999_against_load(run: SweepRun, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conditions = run.settings.conditions
    figure, axes = plt.subplots(1, len(conditions), figsize=(4.6 * len(conditions), 4.2), sharey=True, squeeze=False)
    colours = _colours(plt)
    for axis, condition in zip(axes[0], conditions):
        for system in run.settings.systems:
            points = sorted((load_of(r, run.capacity.throughput_rps), r.p999_ms) for r in run.results
                            if (r.scenario.system, r.scenario.condition) == (system, condition))
            if points:
                axis.plot(*zip(*points), marker="o", color=colours[system], label=SWEEP_NAMES[system])
        axis.set_yscale("log")
        axis.set_title(condition, fontsize=9)
        axis.set_xlabel("load (fraction of Equal-Resources capacity)")
        axis.grid(True, which="both", linewidth=0.3)
    axes[0][0].set_ylabel("p99.9 latency ms (log)")
    axes[0][0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_p999_against_extra_work(run: SweepRun, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = _colours(plt)
    markers = dict(zip(SWEEP_CONDITIONS, ("o", "s", "x")))
    figure, axis = plt.subplots(figsize=(7, 4.6))
    for r in run.results:
        if r.extra_work is None:
            continue
        axis.scatter(100 * r.extra_work, r.p999_ms, color=colours[r.scenario.system],
                     marker=markers.get(r.scenario.condition, "o"), s=18 + 60 * load_of(r, run.capacity.throughput_rps))
    axis.set_yscale("log")
    axis.set_xlabel("extra work: member calls beyond one per query (%)")
    axis.set_ylabel("p99.9 latency ms (log)")
    axis.grid(True, which="both", linewidth=0.3)
    handles = [plt.Line2D([], [], color=colours[s], marker="o", linestyle="") for s in run.settings.systems]
    handles += [plt.Line2D([], [], color="grey", marker=markers[c], linestyle="") for c in run.settings.conditions]
    axis.legend(handles, [SWEEP_NAMES[s] for s in run.settings.systems] + list(run.settings.conditions), fontsize=7)
    axis.set_title("every run of the sweep (marker size: load)", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def sweep_findings(run: SweepRun) -> list[str]:
    """Per condition and load: which system has the lowest p99.9, and how the coded ones compare, from the numbers."""
    lines = []
    capacity = run.capacity.throughput_rps
    for condition in run.settings.conditions:
        for load in run.settings.loads:
            rows = [r for r in run.results
                    if r.scenario.condition == condition and same_load(load_of(r, capacity), load)]
            if not rows:
                continue
            best = min(rows, key=lambda r: r.p999_ms)
            fastest_median = min(rows, key=lambda r: r.median_ms)
            by = {r.scenario.system: r for r in rows}
            coded = [by[c] for c in CODED_SYSTEMS if c in by]
            baselines = [by[b] for b in (EQUAL_RESOURCES, HEDGED) if b in by]
            verdict = "coding wins" if best.scenario.system in CODED_SYSTEMS else (
                "hedging wins" if best.scenario.system == HEDGED else f"{SWEEP_NAMES[best.scenario.system]} wins")
            compare = ""
            if coded and baselines:
                c = min(coded, key=lambda r: r.p999_ms)
                b = min(baselines, key=lambda r: r.p999_ms)
                compare = (f"; best coded ({SWEEP_NAMES[c.scenario.system]}) p99.9 {c.p999_ms:.1f} ms vs best uncoded "
                           f"redundancy ({SWEEP_NAMES[b.scenario.system]}) {b.p999_ms:.1f} ms = "
                           f"{c.p999_ms / b.p999_ms:.2f}x")
            lost = [f"{SWEEP_NAMES[r.scenario.system]} {r.errors}" for r in rows if r.errors]
            lines.append(f"- {condition}, {load:.0%} load: {verdict} on p99.9 ({SWEEP_NAMES[best.scenario.system]}, "
                         f"{best.p999_ms:.1f} ms){compare}; lowest median {SWEEP_NAMES[fastest_median.scenario.system]} "
                         f"{fastest_median.median_ms:.2f} ms" + (f"; lost: {', '.join(lost)}" if lost else "") + ".")
    return lines


def write_sweep_report(path: Path, info: RunInfo, run: SweepRun, runs_dir: Path,
                       accuracy: tuple[float, float] | None = None) -> None:
    path = Path(path)
    accuracy = accuracy or parm_accuracies(run.settings.k)
    by_load, by_work = path.with_name(f"{path.stem}_p999_vs_load.png"), path.with_name(f"{path.stem}_p999_vs_extra_work.png")
    plot_p999_against_load(run, by_load)
    plot_p999_against_extra_work(run, by_work)
    s = run.settings
    capacity = run.capacity.throughput_rps
    tuning = ["| hedge delay ms | median ms | p99.9 ms | hedged | extra work |", "|---|---|---|---|---|"]
    tuning += [f"| {r.scenario.hedge_ms:g} | {r.median_ms:.2f} | {r.p999_ms:.2f} | {_pct(r.hedged_fraction)} "
               f"| {'-' if r.extra_work is None else f'{r.extra_work:+.1%}'} |" for r in run.hedge_tuning]
    if accuracy:
        impact = (f"`accuracy impact (est.)` = reconstructed x (available - degraded accuracy) = reconstructed x "
                  f"({accuracy[0]:.4f} - {accuracy[1]:.4f}) from reports/default_models.json (lenet5_parm, test set): "
                  "an estimate, not measured on these queries.")
    else:
        impact = (f"`accuracy impact (est.)`: `-`, since the shipped parity model is for another k; at k = {s.k} the "
                  "k = 2 parity model's graph stands in (with emulated service time, latency does not depend on its "
                  "weights).")
    lines = [
        "# Load sweep: where coding wins against replication and hedging",
        "",
        f"Regenerate: `{info.command}` (this run took {info.minutes:.1f} minutes; it rewrites this file and its plots).",
        "",
        f"Run {info.started} on {info.machine}; {info.server}, CPU only, every system in one server; "
        f"revision {info.revision}; load average before the run {info.load_average[0]:.2f} / "
        f"{info.load_average[1]:.2f} / {info.load_average[2]:.2f} (1/5/15 min; the machine's 2 cores are shared with "
        "other work, the load generator included).",
        "",
        "## Settings",
        "",
        f"- Every model execute waits {s.service_ms:g} ms of emulated accelerator time (`FaultInjection.service_ms`, the "
        "CPU stays free), so the model, not the scheduler, dominates; LeNet-5 on Fashion-MNIST, "
        f"k = {s.k}, batch {s.batch}.",
        "- Systems:",
        f"  - no redundancy: the deployed model, {s.k} instances",
        f"  - Equal-Resources: the deployed model, {s.k + 1} instances, load-balanced by Triton",
        f"  - hedged: Equal-Resources, the client sends a second copy after {run.hedge_ms:g} ms without an answer "
        f"(the best p99.9 of {', '.join(f'{h:g}' for h in s.hedge_delays_ms)} ms, tuned below) and keeps the first "
        "good answer; the loser is not cancelled",
        f"  - coded, dedicated parity: ParM (addition encoder, k={s.k}), {s.k} data members and 1 parity member, "
        "one instance each",
        f"  - coded, every worker: ParM, {s.k + 1} workers each hosting the deployed and the parity model, one "
        "execute at a time per worker (the scheduler sends a worker its next call when the last returned); roles rotate "
        "per group",
        f"  - both coded ensembles: adaptive deadline (`deadline_min_ms={s.deadline_min_ms:g}`, "
        f"`deadline_ms={s.deadline_ms:g}`) and `copy_when_idle=True`; the C++ scheduler",
        f"- Load: locust, {s.users} users, Poisson arrivals at {', '.join(f'{l:.0%}' for l in s.loads)} of "
        f"Equal-Resources' capacity, measured first in this run: {capacity:.0f} requests/s ({s.capacity_users} "
        f"closed-loop users, {s.capacity_duration_s:g} s, healthy; Triton's dynamic batcher packs several requests "
        f"into one {s.service_ms:g} ms execute, so this is above {s.k + 1} instances x 1/{s.service_ms:g} ms; the "
        f"load generator runs on the same cores). {s.protocol.upper()}.",
        f"- Runs of {s.duration_s:g} s each; at the loads the goals judge "
        f"({' and '.join(f'{l:.0%}' for l in SWEEP_GOAL_LOADS)}; hedge tuning and no fault included), "
        f"{s.goal_duration_s:g} s per system"
        + (f" in {s.goal_rounds} rounds of {s.goal_duration_s / s.goal_rounds:g} s, the systems compared taking turns, "
           "pooled: a noisy stretch of the shared machine falls on all of them, not on whichever ran in it"
           if s.goal_rounds > 1 else "")
        + f". In every run the first {s.warmup_s:g} s and the answers that came after locust began "
        "stopping its users (a pause of the load generator, not of the server) left out of percentiles (never out of "
        "lost requests); the load generator freezes its heap once its users are up, so that its garbage collections "
        "stay short. Short runs: at the lowest load the p99.9 rests on a handful of requests, so it is the slowest few; "
        "read the tail figures as indicative, not precise.",
        "- Conditions (on one worker: instance 0 of an uncoded model, data member 0 of the dedicated ensemble, both "
        "models of worker 0 of the every-worker ensemble):",
        f"  - {INTERMITTENT}: {s.intermittent.describe()} (the existing heavy-tailed straggler), on top of the service time",
        f"  - {PERSISTENT}: every execute of that worker takes {s.persistent_extra_ms:g} ms more "
        f"({s.service_ms + s.persistent_extra_ms:g} ms instead of {s.service_ms:g} ms). A constant extra delay, not "
        "CPU contention: on 2 shared cores busy loops slow the whole server and the load generator, not one worker.",
        f"  - {KILLED_WORKER}: {s.failure_at_s:g} s into the run, the worker's Python stub processes are SIGKILLed "
        "(instance 0 of an uncoded model, the dedicated data member 0, both models of worker 0 of the every-worker "
        "ensemble). Triton 2.51 keeps scheduling a dead instance, each execute there failing after about 1 s: "
        "those are the uncoded systems' lost requests; a coded ensemble decodes or retries them. (An orderly "
        "unload instead would also pause the whole server for about 0.1 s per model while Triton tears it down.)",
        "- Columns: `extra work` = queries run beyond one per query sent: Triton's inference_count of an uncoded "
        "model; for a coded ensemble, the rows its member calls answered (parity and copies included, its own "
        "`coded_member_rows_total`, which outlives a lost member's statistics). "
        f"`reconstructed` = share of queries answered by ParM's decoder. {impact} "
        "`server CPU ms/query`: tritonserver and its stubs. `lost`: requests without an answer.",
        "",
        "## Hedge delay tuning",
        "",
        f"Hedged requests under the {INTERMITTENT} at {s.hedge_tuning_load:.0%} load; the delay with the lowest p99.9 "
        f"({run.hedge_ms:g} ms) is used in the sweep.",
        "",
        "\n".join(tuning),
        "",
        "## Goals (issue \"Beat hedged requests\"; ratios from this run)",
        "",
        goals_table(sweep_goals(run)),
        "",
        *no_fault_section(run),
        "## Where coding wins (from the figures below)",
        "",
        *sweep_findings(run),
        "",
        f"![p99.9 against load]({by_load.name})",
        "",
        f"![p99.9 against extra work]({by_work.name})",
        "",
        "## Results",
        "",
        sweep_table(run, accuracy),
        "",
        f"Locust's CSV and HTML reports, each run's samples and logs: `{_shown(runs_dir)}` (not in git).",
    ]
    errors = [(r, e) for r in run.results for e in r.error_examples]
    if errors:
        lines += ["", "## Errors seen", ""]
        lines += [f"- {r.scenario.condition}, {load_of(r, capacity):.0%}, {SWEEP_NAMES[r.scenario.system]}: `{e}`"
                  for r, e in errors]
    path.write_text("\n".join(lines) + "\n")
