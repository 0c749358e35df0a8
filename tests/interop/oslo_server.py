"""An oslo.messaging RPC server for novarpc's interop tests.

Uses only oslo.messaging's public API. Prints one JSON object per line on
stdout: {"event": "ready"} once serving, then {"event": "record", ...} for
every `record` call or cast it handles. Stops when stdin closes.
"""
import argparse
import json
import sys
import time

from oslo_config import cfg
import oslo_messaging as messaging


def emit(**event):
    print(json.dumps(event), flush=True)


class ComputeEndpoint:
    def __init__(self, server):
        self.server = server

    def echo(self, ctxt, value):
        return value

    def whoami(self, ctxt):
        return self.server

    def context(self, ctxt):
        return ctxt

    def fail(self, ctxt, message):
        raise ValueError(message)

    def record(self, ctxt, value):
        emit(event="record", server=self.server, value=value, context=ctxt)

    def slow(self, ctxt, seconds):
        time.sleep(seconds)
        return "done"


class VersionedEndpoint:
    target = messaging.Target(namespace="ns1", version="1.3")

    def versioned(self, ctxt):
        return "ns1-1.3"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--exchange", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--server", required=True)
    parser.add_argument(
        "--rabbit-option",
        action="append",
        default=[],
        help="KEY=VALUE for [oslo_messaging_rabbit] (true/false/integers parsed)",
    )
    args = parser.parse_args()

    # oslo.messaging registers its options on the global config object.
    conf = cfg.CONF
    conf([], project="novarpc-interop")
    transport = messaging.get_rpc_transport(conf, url=args.url)
    for option in args.rabbit_option:
        key, value = option.split("=", 1)
        if value in ("true", "false"):
            value = value == "true"
        elif value.isdigit():
            value = int(value)
        conf.set_override(key, value, group="oslo_messaging_rabbit")
    target = messaging.Target(exchange=args.exchange, topic=args.topic, server=args.server)
    server = messaging.get_rpc_server(
        transport,
        target,
        [ComputeEndpoint(args.server), VersionedEndpoint()],
        executor="threading",
    )
    server.start()
    emit(event="ready")
    sys.stdin.read()
    server.stop()
    server.wait()
    transport.cleanup()


if __name__ == "__main__":
    main()
