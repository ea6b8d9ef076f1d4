"""How moto's SQS ReceiveMessage cost grows with queue depth: stock moto against local/moto_server.py.

Starts each server on a free loopback port, fills one queue to each depth, and
times receives of 10 (made visible again at once, so the depth stays put).

    python -m bench.sqs_depth [--depths 0,1000,10000]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import boto3

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(module: str, port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-m", module, "-H", "127.0.0.1", "-p", str(port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(300):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=1)
            return process
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"{module} did not start")


def measure(module: str, depths: list[int], samples: int) -> dict[int, tuple[float, float]]:
    port = free_port()
    process = start(module, port)
    try:
        sqs = boto3.client(
            "sqs",
            endpoint_url=f"http://127.0.0.1:{port}",
            region_name="us-east-1",
            aws_access_key_id="x",
            aws_secret_access_key="x",
        )
        url = sqs.create_queue(QueueName="depth")["QueueUrl"]
        queued = 0
        out = {}
        for depth in depths:
            while queued < depth:
                batch = min(10, depth - queued)
                sqs.send_message_batch(
                    QueueUrl=url, Entries=[{"Id": str(i), "MessageBody": "{}"} for i in range(batch)]
                )
                queued += batch
            receive_ms, send_ms = [], []
            for _ in range(samples):
                began = time.perf_counter()
                sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=0)
                receive_ms.append(1000 * (time.perf_counter() - began))
                began = time.perf_counter()
                sqs.send_message(QueueUrl=url, MessageBody="{}")
                send_ms.append(1000 * (time.perf_counter() - began))
                queued += 1
            out[depth] = (statistics.median(receive_ms), statistics.median(send_ms))
        return out
    finally:
        process.terminate()
        process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depths", default="0,1000,2000,10000")
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument(
        "--stock-max-depth", type=int, default=2000, help="skip stock moto above this depth (it takes minutes)"
    )
    args = parser.parse_args()
    depths = [int(d) for d in args.depths.split(",")]
    os.environ.pop("AWS_ENDPOINT_URL", None)
    stock = measure("moto.server", [d for d in depths if d <= args.stock_max_depth], args.samples)
    fixed = measure("local.moto_server", depths, args.samples)
    print("| queued messages | stock moto: receive 10 / send (ms) | patched moto: receive 10 / send (ms) |")
    print("|---:|---:|---:|")
    for depth in depths:
        before = f"{stock[depth][0]:.1f} / {stock[depth][1]:.1f}" if depth in stock else "not run (too slow)"
        print(f"| {depth:,} | {before} | {fixed[depth][0]:.1f} / {fixed[depth][1]:.1f} |")


if __name__ == "__main__":
    main()
