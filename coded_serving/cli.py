"""``coded-serving serve``: the real tritonserver on loopback, with the project's backends;
``coded-serving backends DIR``: lay out those backends for another server (the Docker image)."""

from __future__ import annotations

import argparse
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
    args = parser.parse_args(argv)
    if args.command == "backends":
        for backend in sorted(install_backends(args.directory).iterdir()):
            print(backend)
        return 0
    config = ServerConfig(args.model_repository, args.host, args.http_port, args.grpc_port, args.metrics_port,
                          args.log_verbose, metrics_host=args.metrics_host, admin_key=args.admin_key)
    return serve_forever(config, args.log_file)


def serve_forever(config: ServerConfig, log_file: Path | None) -> int:
    server = TritonServer(config, log_file)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
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
