"""oslo.messaging on RabbitMQ, measured the way `novarpc bench` measures
novarpc: calls with N in flight (N client threads, as oslo's blocking API
needs), or casts with N in flight, both for a fixed duration with a 200-byte
payload; the server runs in this process with oslo's threading executor.
Prints one JSON object. Uses only oslo.messaging's public API.

    python oslo_bench.py --url rabbit://guest:guest@127.0.0.1:5672/ --mode call --concurrency 16
"""
import argparse
import json
import threading
import time
import uuid

from oslo_config import cfg
import oslo_messaging as messaging


class Endpoint:
    def __init__(self):
        self.casts = 0
        self.lock = threading.Lock()

    def echo(self, ctxt, payload):
        return payload

    def sink(self, ctxt, payload):
        with self.lock:
            self.casts += 1


def percentile(sorted_us, q):
    if not sorted_us:
        return 0
    return sorted_us[min(len(sorted_us) - 1, int(q * len(sorted_us)))]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--mode", choices=["call", "cast"], default="call")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--payload", type=int, default=200)
    args = parser.parse_args()

    conf = cfg.CONF
    conf([], project="novarpc-peers")
    transport = messaging.get_rpc_transport(conf, url=args.url)
    topic = "novarpc_peer_oslo_" + uuid.uuid4().hex[:12]
    target = messaging.Target(topic=topic, server="bench")
    endpoint = Endpoint()
    server = messaging.get_rpc_server(
        transport, target, [endpoint], executor="threading"
    )
    server.start()
    client = messaging.get_rpc_client(
        transport, messaging.Target(topic=topic), timeout=30
    )
    payload = "x" * args.payload
    # The first call declares the reply queue and waits for the server.
    client.call({}, "echo", payload=payload)

    stop = threading.Event()
    latencies = [[] for _ in range(args.concurrency)]
    errors = [0] * args.concurrency

    def worker(i):
        while not stop.is_set():
            t = time.monotonic()
            try:
                if args.mode == "call":
                    client.call({}, "echo", payload=payload)
                else:
                    client.cast({}, "sink", payload=payload)
                latencies[i].append(int((time.monotonic() - t) * 1e6))
            except Exception:  # noqa: BLE001 - counted, as novarpc bench does
                errors[i] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(args.concurrency)]
    started = time.monotonic()
    for t in threads:
        t.start()
    time.sleep(args.duration)
    stop.set()
    for t in threads:
        t.join()
    seconds = time.monotonic() - started
    received_by = endpoint.casts
    # Casts still queued are not counted: delivered/s is what the server took.
    all_us = sorted(us for per in latencies for us in per)
    report = {
        "peer": "oslo.messaging",
        "mode": args.mode,
        "concurrency": args.concurrency,
        "operations": len(all_us),
        "errors": sum(errors),
        "seconds": seconds,
        "rate": len(all_us) / seconds,
        "delivered_rate": (received_by / seconds) if args.mode == "cast" else None,
        "p50_us": percentile(all_us, 0.5),
        "p99_us": percentile(all_us, 0.99),
        "p999_us": percentile(all_us, 0.999),
    }
    server.stop()
    server.wait()
    transport.cleanup()
    print(json.dumps(report))


if __name__ == "__main__":
    main()
