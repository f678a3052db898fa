"""Send Fashion-MNIST test images to a model and print what came back.

    python client/query.py --model lenet5_parm --count 8 [--protocol grpc] [--url 127.0.0.1:8001]
"""

from __future__ import annotations

import argparse
import sys


from coded_serving.client import ModelClient
from coded_serving.training.data import load_fashion_mnist

CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
DEFAULT_URLS = {"http": "127.0.0.1:8000", "grpc": "127.0.0.1:8001"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="lenet5_parm")
    parser.add_argument("--protocol", choices=("http", "grpc"), default="http")
    parser.add_argument("--url", help="host:port (default: the protocol's default port on 127.0.0.1)")
    parser.add_argument("--count", type=int, default=8, help="how many test images")
    parser.add_argument("--first", type=int, default=0, help="index of the first test image")
    parser.add_argument("--batch-size", type=int, default=1)
    args = parser.parse_args(argv)

    test = load_fashion_mnist().test
    images = test.images[args.first:args.first + args.count]
    labels = test.labels[args.first:args.first + args.count]
    correct = 0
    with ModelClient(args.url or DEFAULT_URLS[args.protocol], args.model, args.protocol) as client:
        print(f"{'image':>6}  {'label':<12} {'predicted':<12} {'latency':>9}  reconstructed")
        for start in range(0, len(images), args.batch_size):
            result = client.infer(images[start:start + args.batch_size])
            predicted = result.outputs.argmax(axis=1)
            flags = result.reconstructed if result.reconstructed is not None else [None] * len(predicted)
            for offset, (guess, flag) in enumerate(zip(predicted, flags)):
                index = args.first + start + offset
                label = labels[start + offset]
                correct += int(guess == label)
                shown = "n/a" if flag is None else ("yes" if flag else "no")
                print(f"{index:>6}  {CLASSES[label]:<12} {CLASSES[guess]:<12} {result.latency_ms:>7.2f}ms  {shown}")
    print(f"{correct}/{len(images)} correct ({args.model}, {args.protocol})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
