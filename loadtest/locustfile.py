"""Locust load test of a Triton model: Poisson arrivals, HTTP or gRPC, exact latencies.

    locust -f loadtest/locustfile.py --headless -u 64 -r 64 -t 30s --host 127.0.0.1:8000 \\
        --model lenet5_parm --rate 200 --batch 1 --csv out/run --html out/run.html --samples out/run.csv

``--protocol grpc`` with the server's gRPC port as ``--host``; ``--rate 0`` for closed loop;
``--hedge-ms`` for hedged requests. The user logic lives in ``coded_serving.locust_users``.
"""

from coded_serving.benchmarks.locust_users import TritonUser

__all__ = ["TritonUser"]
