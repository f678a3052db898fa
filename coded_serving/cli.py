"""``coded-serving build``: any ONNX model to a coded model repository;
``coded-serving serve``: the real tritonserver on loopback, with the project's backends;
``coded-serving backends DIR``: lay out those backends for another server (the Docker image)."""

from __future__ import annotations

import argparse
import faulthandler
import os
import signal
import sys
from pathlib import Path

from coded_serving.deployment.backends import install_backends
from coded_serving.deployment.launcher import (
    ADMIN_HEADER, ADMIN_KEY_ENV, DEFAULT_REPOSITORY, GRPC_ADMIN_HEADER, ServerConfig, TritonServer, key_path,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="coded-serving", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve a model repository until Ctrl-C or SIGTERM")
    serve.add_argument("--model-repository", type=Path, default=DEFAULT_REPOSITORY)
    serve.add_argument("--host", default="127.0.0.1", help="HTTP and gRPC listen address (IPv4 or IPv6)")
    serve.add_argument("--admin-key", default=os.environ.get(ADMIN_KEY_ENV),
                       help=f"the key that model loading/unloading, configuration, shared-memory, trace and logging "
                            f"calls must carry, on loopback too (HTTP header '{ADMIN_HEADER}', gRPC metadata "
                            f"'{GRPC_ADMIN_HEADER}'); beyond loopback, statistics too. Default: "
                            f"${ADMIN_KEY_ENV}, else a fresh random key per start. Either way it is written to "
                            f"{key_path('<http-port>')} (mode 0600, $XDG_CACHE_HOME honoured, removed on stop), "
                            f"where the project's tools read it")
    serve.add_argument("--http-port", type=int, default=8000)
    serve.add_argument("--grpc-port", type=int, default=8001)
    serve.add_argument("--metrics-port", type=int, default=8002)
    serve.add_argument("--metrics-host", default="127.0.0.1",
                       help="metrics listen address (default: loopback, whatever --host says)")
    serve.add_argument("--log-file", type=Path, help="server log (default: none)")
    serve.add_argument("--log-verbose", type=int, default=0)
    backends = commands.add_parser("backends", help="lay out the project's backends (Python-based ones and the "
                                   "compiled scheduler) in a server's backend directory")
    backends.add_argument("directory", type=Path, help="e.g. /opt/tritonserver/backends")
    build = commands.add_parser(
        "build", help="write a coded repository for any ONNX model (training-free codes in seconds; ParM trains "
        "a parity model of the model's own architecture)",
        description="Coded-InvNet needs an invertible deployed model, not any model: it has its own training "
                    "command, export/train_invnet.py.")
    build.add_argument("model", type=Path, help="the deployed model: an ONNX file with one input and a batch axis")
    build.add_argument("--code", required=True, help="parm-addition, parm-concatenation, berrut or nercc")
    build.add_argument("--k", type=int, required=True, help="queries per coding group")
    build.add_argument("--stragglers", type=int, default=1,
                       help="Berrut/NeRCC: extra workers, i.e. missing results tolerated per group")
    build.add_argument("--images", type=Path, help=".npy of inputs shaped like the model's input batch: ParM trains "
                       "on them; every code measures its degraded-mode accuracy on held-out ones")
    build.add_argument("--labels", type=Path, help=".npy of class labels for --images (else accuracy is measured "
                       "against the deployed model's own predictions)")
    build.add_argument("--epochs", type=int, default=10, help="ParM training epochs")
    build.add_argument("--name", help="the deployed model's name in the repository (default: the file's stem)")
    build.add_argument("--deadline-ms", type=float, default=10.0)
    build.add_argument("--accelerator", choices=["tensorrt"], help="GPU: ONNX Runtime's TensorRT provider")
    build.add_argument("--repository", type=Path, required=True, help="where to write the model repository")
    args = parser.parse_args(argv)
    if args.command == "build":
        return build_command(args)
    if args.command == "backends":
        for backend in sorted(install_backends(args.directory).iterdir()):
            print(backend)
        return 0
    config = ServerConfig(args.model_repository, args.host, args.http_port, args.grpc_port, args.metrics_port,
                          args.log_verbose, metrics_host=args.metrics_host, admin_key=args.admin_key)
    return serve_forever(config, args.log_file)


def build_command(args: argparse.Namespace) -> int:
    from coded_serving.training.build import build_repository  # torch is loaded only for this command

    try:
        result = build_repository(args.model, args.code, args.k, args.repository, stragglers=args.stragglers,
                                  images=args.images, labels=args.labels, epochs=args.epochs, name=args.name,
                                  deadline_ms=args.deadline_ms, accelerator=args.accelerator)
    except (ValueError, FileNotFoundError) as error:
        print(f"coded-serving build: {error}", file=sys.stderr)
        return 2
    print(result.summary())
    return 0


def serve_forever(config: ServerConfig, log_file: Path | None) -> int:
    server = TritonServer(config, log_file)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    # "Ctrl-C to stop" also where the caller ignores SIGINT (a background job of a script does)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # a launcher that does not stop says where it is
    try:
        try:
            server.start()
        except (RuntimeError, TimeoutError, FileNotFoundError, ValueError) as error:
            print(f"coded-serving: {error}", file=sys.stderr)
            return 1
        print(f"serving {config.model_repository}\n"
              f"  HTTP    {config.http_url}\n  gRPC    {config.grpc_url}\n  metrics {config.metrics_url}\n"
              f"  admin key in {key_path(config.http_port)}\nCtrl-C to stop", flush=True)
        return server.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
