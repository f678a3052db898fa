"""Send Fashion-MNIST test images to a model and print what came back.

    python client/query.py --model lenet5_parm --count 8 [--protocol grpc] [--url 127.0.0.1:8001]
    python client/query.py --model lenet5_nercc --unload lenet5_nercc_coded_3   # one worker gone: degraded mode

For a coded ensemble of the shipped repository it first prints the code's measured figures from
reports/default_models.json (written by export/build_default.py): degraded-mode accuracy and overhead.
``--unload MEMBER`` unloads that member for the queries (model control: the server's admin key, which
this machine's launcher keeps) and loads it back afterwards, so the answers come from the decoder.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from coded_serving.client import ModelClient
from coded_serving.training.data import load_fashion_mnist

CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
DEFAULT_URLS = {"http": "127.0.0.1:8000", "grpc": "127.0.0.1:8001"}
FIGURES = Path(__file__).resolve().parents[1] / "reports" / "default_models.json"
CODE_NAMES = {"parm-addition": "ParM (addition)", "berrut": "Berrut", "nercc": "NeRCC", "coded-invnet": "Coded-InvNet"}


def describe(model: str, figures_path: Path = FIGURES) -> str | None:
    """One paragraph on a shipped coded ensemble's measured figures, None for other models."""
    if not figures_path.is_file():
        return None
    figures = json.loads(figures_path.read_text())
    entry = figures.get("codes", {}).get(model)
    if entry is None:
        return None
    code, test, overhead = entry["code"], entry["test"], entry["overhead"]
    deployed = entry.get("deployed", figures["deployed"])  # Coded-InvNet has its own deployed model
    return (
        f"{model}: {CODE_NAMES.get(code['kind'], code['kind'])}, k={code['k']}, {overhead['workers']} workers "
        f"(tolerates {entry['tolerates']}).\n"
        f"  measured on {test['test_images']} test images, one worker missing: degraded-mode accuracy "
        f"{test['degraded_accuracy']:.3f} (deployed model: {deployed['test_accuracy']:.3f}; recovery "
        f"{test['recovery_accuracy']:.3f}); none missing: {test['available_accuracy']:.3f}.\n"
        f"  overhead per query: {overhead['extra_workers_per_query']:.3f} extra workers, "
        f"{overhead['redundant_macs_per_query'] / 1e3:.0f}k redundant MACs "
        f"({overhead['redundant_macs_relative_to_deployed']:.2f}x one {deployed['arch']} call of "
        f"{deployed['macs_per_query'] / 1e3:.0f}k MACs)."
    )


class Unloaded:
    """A member unloaded for the duration of a ``with`` block (the server's admin key is needed)."""

    def __init__(self, http_url: str, member: str | None):
        self.http_url, self.member = http_url, member

    def __enter__(self) -> "Unloaded":
        if self.member:
            import tritonclient.http as http

            from coded_serving.deployment.launcher import with_admin_key

            self.admin = with_admin_key(http.InferenceServerClient(self.http_url), self.http_url)
            self.admin.unload_model(self.member)
            deadline = time.monotonic() + 30
            while self.admin.is_model_ready(self.member) and time.monotonic() < deadline:
                time.sleep(0.1)
            print(f"unloaded {self.member}: its results are missing, answers that needed it are decoded")
        return self

    def __exit__(self, *exc) -> None:
        if self.member:
            self.admin.load_model(self.member)
            self.admin.close()
            print(f"loaded {self.member} again")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="lenet5_parm")
    parser.add_argument("--protocol", choices=("http", "grpc"), default="http")
    parser.add_argument("--url", help="host:port (default: the protocol's default port on 127.0.0.1)")
    parser.add_argument("--count", type=int, default=8, help="how many test images")
    parser.add_argument("--first", type=int, default=0, help="index of the first test image")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--unload", metavar="MEMBER", help="unload this member during the queries (degraded mode)")
    parser.add_argument("--http-url", help="the server's HTTP host:port for --unload (default: --url over HTTP, "
                                           "else 127.0.0.1:8000)")
    parser.add_argument("--figures", type=Path, default=FIGURES, help="measured figures of the shipped codes")
    args = parser.parse_args(argv)

    url = args.url or DEFAULT_URLS[args.protocol]
    described = describe(args.model, args.figures)
    if described:
        print(described)
    test = load_fashion_mnist().test
    images = test.images[args.first:args.first + args.count]
    labels = test.labels[args.first:args.first + args.count]
    correct = decoded = 0
    http_url = args.http_url or (url if args.protocol == "http" else DEFAULT_URLS["http"])
    with Unloaded(http_url, args.unload), ModelClient(url, args.model, args.protocol) as client:
        print(f"{'image':>6}  {'label':<12} {'predicted':<12} {'latency':>9}  reconstructed")
        for start in range(0, len(images), args.batch_size):
            result = client.infer(images[start:start + args.batch_size])
            predicted = result.outputs.argmax(axis=1)
            flags = result.reconstructed if result.reconstructed is not None else [None] * len(predicted)
            for offset, (guess, flag) in enumerate(zip(predicted, flags)):
                index = args.first + start + offset
                label = labels[start + offset]
                correct += int(guess == label)
                decoded += int(bool(flag))
                shown = "n/a" if flag is None else ("yes" if flag else "no")
                print(f"{index:>6}  {CLASSES[label]:<12} {CLASSES[guess]:<12} {result.latency_ms:>7.2f}ms  {shown}")
    print(f"{correct}/{len(images)} correct, {decoded} reconstructed ({args.model}, {args.protocol}"
          + (f", {args.unload} unloaded)" if args.unload else ")"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
