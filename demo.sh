#!/usr/bin/env bash
# Serve the shipped model repository on loopback and answer sample queries over HTTP and gRPC.
#   ./demo.sh          keep serving afterwards, until Ctrl-C
#   ./demo.sh --once   stop after the sample queries
set -euo pipefail
cd "$(dirname "$0")"
source scripts/setup.sh

HTTP_PORT=${HTTP_PORT:-8000} GRPC_PORT=${GRPC_PORT:-8001} METRICS_PORT=${METRICS_PORT:-8002}
mkdir -p build
if curl -s "http://127.0.0.1:$HTTP_PORT/v2/health/live" >/dev/null; then
  echo "port $HTTP_PORT already answers: stop that server or set HTTP_PORT/GRPC_PORT/METRICS_PORT" >&2
  exit 1
fi
.venv/bin/coded-serving serve --http-port "$HTTP_PORT" --grpc-port "$GRPC_PORT" --metrics-port "$METRICS_PORT" \
  --log-file build/tritonserver.log &
server=$!
trap 'kill -TERM $server 2>/dev/null; wait $server' EXIT

for _ in $(seq 300); do
  curl -sf "http://127.0.0.1:$HTTP_PORT/v2/health/ready" >/dev/null && break
  kill -0 $server 2>/dev/null || { echo "server failed to start; see build/tritonserver.log" >&2; exit 1; }
  sleep 0.5
done
curl -sf "http://127.0.0.1:$HTTP_PORT/v2/health/ready" >/dev/null || {
  echo "server not ready after 150 s; see build/tritonserver.log" >&2; exit 1; }
query() { .venv/bin/python client/query.py "$@"; echo; }
# first calls start each member's ONNX session: warm every ensemble up so the shown latencies are steady
for model in lenet5_parm lenet5_nercc iresnet_invnet; do
  query --model "$model" --url "127.0.0.1:$HTTP_PORT" --count 16 --batch-size 8 >/dev/null
done
echo "== the deployed model, direct"
query --model lenet5 --protocol http --url "127.0.0.1:$HTTP_PORT" --count 4
echo "== every coded ensemble with its measured figures (reports/default_models.json, export/build_default.py)"
query --model lenet5_parm --protocol http --url "127.0.0.1:$HTTP_PORT" --count 8
query --model lenet5_parm --protocol grpc --url "127.0.0.1:$GRPC_PORT" --count 8 --first 8 --batch-size 4
query --model lenet5_nercc --protocol http --url "127.0.0.1:$HTTP_PORT" --count 8 --batch-size 8
query --model iresnet_invnet --protocol http --url "127.0.0.1:$HTTP_PORT" --count 8 --batch-size 4
echo "== degraded mode: one member unloaded, its queries answered by the decoder"
query --model lenet5_parm --protocol grpc --url "127.0.0.1:$GRPC_PORT" --http-url "127.0.0.1:$HTTP_PORT" \
  --count 8 --batch-size 2 --unload lenet5_parm_member_0
query --model lenet5_nercc --protocol http --url "127.0.0.1:$HTTP_PORT" --count 8 --batch-size 8 \
  --unload lenet5_nercc_coded_3
query --model iresnet_invnet --protocol http --url "127.0.0.1:$HTTP_PORT" --count 8 --batch-size 4 \
  --unload iresnet_invnet_member_1

if [ "${1:-}" != "--once" ]; then
  echo "still serving lenet5, lenet5_parm, lenet5_nercc and iresnet_invnet on 127.0.0.1:$HTTP_PORT (HTTP) and :$GRPC_PORT (gRPC); Ctrl-C to stop"
  wait $server
fi
