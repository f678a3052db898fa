"""Switch a straggler or a failure on for a load test by hand, on a running tritonserver
(``coded-serving serve``; delays and errors need the project's ``onnxruntime`` backend).

    python loadtest/inject.py faults lenet5_parm_member_0 --probability 0.02 --delay-ms 20 --tail-ms 40 --tail pareto
    python loadtest/inject.py faults lenet5 --delay-ms 50 --instances 0     # one instance of a multi-instance model
    python loadtest/inject.py kill lenet5_parm_member_0 --after 8           # SIGKILL its stub process in 8 s
    python loadtest/inject.py unload lenet5_parm_member_0 --after 8
    python loadtest/inject.py contention lenet5_parm_member_0 --core 1 --seconds 30
    python loadtest/inject.py reset lenet5_parm_member_0                    # as the repository says, restarted

Run it beside ``locust -f loadtest/locustfile.py ...``; ``loadtest/benchmark.py`` does all of this itself.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time

import tritonclient.http as http
from tritonclient.utils import InferenceServerException

from coded_serving.runtime.faults import TAILS, FaultInjection
from coded_serving.benchmarks.load import Contention, CpuContention, server_pid, stub_process, with_faults
from coded_serving.deployment.launcher import with_admin_key


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="127.0.0.1:8000",
                        help="the server's HTTP endpoint; its admin key is read from the file its launcher wrote "
                             "(a server on this machine), else from $CODED_SERVING_ADMIN_KEY")
    commands = parser.add_subparsers(dest="command", required=True)
    faults = commands.add_parser("faults", help="reload the model with delays and/or errors switched on")
    faults.add_argument("--service-ms", type=float, default=0.0,
                        help="waited on every execute: emulated accelerator time, the CPU stays free")
    faults.add_argument("--probability", type=float, default=1.0, help="fraction of executes delayed")
    faults.add_argument("--delay-ms", type=float, default=0.0, help="fixed part of a delay")
    faults.add_argument("--tail-ms", type=float, default=0.0, help="exponential mean, or Pareto scale")
    faults.add_argument("--tail", choices=TAILS, default="exponential")
    faults.add_argument("--alpha", type=float, default=2.0, help="Pareto shape")
    faults.add_argument("--max-ms", type=float, default=0.0, help="cap on one delay (0: none)")
    faults.add_argument("--error-probability", type=float, default=0.0)
    faults.add_argument("--instances", type=int, nargs="*", default=[], help="instance indices (default: all)")
    faults.add_argument("--seed", type=int, default=0)
    for name, text in (("kill", "SIGKILL one instance's stub process"), ("unload", "unload the model")):
        command = commands.add_parser(name, help=text)
        command.add_argument("--after", type=float, default=0.0, help="seconds to wait first")
    contention = commands.add_parser("contention", help="busy loops on one core, with one instance's stub pinned there")
    contention.add_argument("--core", type=int, default=1)
    contention.add_argument("--processes", type=int, default=1)
    contention.add_argument("--seconds", type=float, default=30.0)
    commands.add_parser("reset", help="unload and load the model as its repository says")
    for name in ("kill", "contention"):
        commands.choices[name].add_argument("--instance", type=int, default=0)
    for command in commands.choices.values():
        command.add_argument("model")
    args = parser.parse_args(argv)

    admin = with_admin_key(http.InferenceServerClient(args.url, network_timeout=120), args.url)
    try:
        if args.command == "faults":
            injected = FaultInjection(
                service_ms=args.service_ms, delay_ms=args.delay_ms, delay_tail_ms=args.tail_ms,
                delay_probability=args.probability, delay_tail=args.tail, delay_tail_alpha=args.alpha,
                delay_max_ms=args.max_ms, error_probability=args.error_probability, instances=tuple(args.instances),
                seed=args.seed,
            )
            config = with_faults(admin.get_model_config(args.model), injected)
            admin.load_model(args.model, config=json.dumps(config))
            print(f"{args.model}: {injected.describe()}")
        elif args.command in ("kill", "unload"):
            time.sleep(args.after)
            if args.command == "kill":
                stub_process(server_pid(_port(args.url)), args.model, args.instance).send_signal(signal.SIGKILL)
            else:
                admin.unload_model(args.model)
            print(f"{args.model}: {args.command}ed")
        elif args.command == "contention":
            stub = stub_process(server_pid(_port(args.url)), args.model, args.instance)
            with CpuContention(Contention(args.model, args.instance, args.core, args.processes), stub):
                print(f"{args.model} instance {args.instance}: contention on core {args.core} for {args.seconds:g} s",
                      flush=True)
                time.sleep(args.seconds)
        else:
            _reset(admin, args.model)
            print(f"{args.model}: reset")
    except (InferenceServerException, LookupError) as error:
        print(f"inject: {error}", file=sys.stderr)
        return 1
    finally:
        admin.close()
    return 0


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _reset(admin: http.InferenceServerClient, model: str) -> None:
    """The repository's own config (a service time it sets included). Unload first: a reload with
    an unchanged config would keep a killed stub."""
    admin.unload_model(model)
    admin.load_model(model)


if __name__ == "__main__":
    sys.exit(main())
