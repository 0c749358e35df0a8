"""The Python side of novarpc's typed-service interop test: the `interop`
service (namespace `interop`, version 1.2) of
tests/tests/service_interop.rs, as an oslo.messaging server or client.

Uses only oslo.messaging's public API.
  server: prints {"event": "ready"}, then {"event": "record", ...} for each
          `record` cast; stops when stdin closes.
  client: calls the novarpc service and prints one JSON report.
"""
import argparse
import json
import sys

from oslo_config import cfg
import oslo_messaging as messaging

import interop_exceptions


def emit(**event):
    print(json.dumps(event), flush=True)


class InteropEndpoint:
    target = messaging.Target(namespace="interop", version="1.2")

    def __init__(self):
        self.events = []

    def get_instance(self, ctxt, instance_id):
        if instance_id != "i-1":
            raise interop_exceptions.InstanceNotFound(
                "Instance %s could not be found." % instance_id, instance_id=instance_id
            )
        return {"id": instance_id, "state": "active", "by": "python"}

    def ping(self, ctxt):
        return "pong from python for %s" % ctxt.get("user_id")

    def record(self, ctxt, event):
        self.events.append(event)
        emit(event="record", value=event)

    def recorded(self, ctxt):
        return list(self.events)

    def trace(self, ctxt):
        return ctxt.get("traceparent")

    def count(self, ctxt, to):
        # oslo servers answer once: a multicall gets this one element.
        return to


def outcome(fn):
    try:
        return {"ok": fn()}
    except interop_exceptions.InteropException as e:
        # oslo raises a subclass of the class it rebuilt (`X_Remote`).
        classes = [c for c in type(e).__mro__ if c.__module__ == "interop_exceptions"]
        return {
            "error": type(e).__name__,
            "class": classes[0].__name__,
            "module": classes[0].__module__,
            "kwargs": e.kwargs,
            "message": str(e),
        }
    except messaging.RemoteError as e:
        return {"error": "RemoteError", "exc_type": e.exc_type, "value": e.value}
    except Exception as e:  # noqa: BLE001 - report anything else too
        return {"error": type(e).__name__, "message": str(e)}


def transport_for(args):
    conf = cfg.CONF
    conf([], project="novarpc-interop")
    return messaging.get_rpc_transport(
        conf, url=args.url, allowed_remote_exmods=["interop_exceptions"]
    )


def serve(args):
    transport = transport_for(args)
    target = messaging.Target(exchange=args.exchange, topic=args.topic, server=args.server)
    server = messaging.get_rpc_server(
        transport, target, [InteropEndpoint()], executor="threading"
    )
    server.start()
    emit(event="ready")
    sys.stdin.read()
    server.stop()
    server.wait()
    transport.cleanup()


def call(args):
    transport = transport_for(args)
    target = messaging.Target(
        exchange=args.exchange, topic=args.topic, namespace="interop", version="1.0"
    )
    client = messaging.get_rpc_client(transport, target, timeout=10)
    ctxt = {"user_id": "u1", "request_id": "req-1"}
    results = {
        "get_instance": outcome(lambda: client.call(ctxt, "get_instance", instance_id="i-1")),
        "not_found": outcome(lambda: client.call(ctxt, "get_instance", instance_id="i-404")),
        "ping": outcome(lambda: client.prepare(version="1.1").call(ctxt, "ping")),
        "cast": outcome(lambda: client.cast(ctxt, "record", event="from-python")),
        "stream_as_call": outcome(
            lambda: client.prepare(version="1.2").call(ctxt, "count", to=3)
        ),
        "too_new": outcome(lambda: client.prepare(version="1.3").call(ctxt, "ping")),
        "bad_arguments": outcome(lambda: client.call(ctxt, "get_instance")),
    }
    # The cast is taken before this call (one server, in order).
    results["recorded"] = outcome(lambda: client.call(ctxt, "recorded"))
    print(json.dumps(results), flush=True)
    transport.cleanup()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["server", "client"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--exchange", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--server", required=True)
    args = parser.parse_args()
    if args.mode == "server":
        serve(args)
    else:
        call(args)


if __name__ == "__main__":
    main()
