"""An oslo.messaging RPC client for novarpc's interop tests.

Uses only oslo.messaging's public API. Runs a fixed scenario against the
server named on the command line and prints one JSON object with what each
step returned or raised.
"""
import argparse
import json
import time

from oslo_config import cfg
import oslo_messaging as messaging


def outcome(fn):
    try:
        return {"ok": fn()}
    except messaging.MessagingTimeout as e:
        return {"error": "MessagingTimeout", "message": str(e)}
    except messaging.RemoteError as e:
        return {"error": "RemoteError", "exc_type": e.exc_type, "value": e.value}
    except Exception as e:  # noqa: BLE001 - report anything else too
        return {"error": type(e).__name__, "message": str(e)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--exchange", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--server", required=True)
    args = parser.parse_args()

    # oslo.messaging registers its options on the global config object.
    conf = cfg.CONF
    conf([], project="novarpc-interop")
    transport = messaging.get_rpc_transport(conf, url=args.url)
    target = messaging.Target(exchange=args.exchange, topic=args.topic)
    client = messaging.get_rpc_client(transport, target, timeout=10)
    ctxt = {"user_id": "u1", "request_id": "req-1"}

    results = {
        "echo": outcome(lambda: client.call(ctxt, "echo", value={"x": 1, "s": "Grüße"})),
        "context": outcome(lambda: client.call(ctxt, "context")),
        "whoami": outcome(lambda: client.prepare(server=args.server).call(ctxt, "whoami")),
        "fail": outcome(lambda: client.call(ctxt, "fail", message="boom")),
        "missing": outcome(lambda: client.call(ctxt, "missing")),
        "versioned": outcome(
            lambda: client.prepare(namespace="ns1", version="1.2").call(ctxt, "versioned")
        ),
        "too_new": outcome(
            lambda: client.prepare(namespace="ns1", version="1.9").call(ctxt, "versioned")
        ),
        "cast": outcome(lambda: client.cast(ctxt, "record", value="c1")),
        "cast_to_server": outcome(
            lambda: client.prepare(server=args.server).cast(ctxt, "record", value="c2")
        ),
        "fanout": outcome(lambda: client.prepare(fanout=True).cast(ctxt, "record", value="c3")),
    }
    started = time.monotonic()
    results["timeout"] = outcome(
        lambda: client.prepare(topic=args.topic + "_nobody", timeout=1).call(ctxt, "echo", value=1)
    )
    results["timeout"]["elapsed"] = time.monotonic() - started
    print(json.dumps(results), flush=True)
    transport.cleanup()


if __name__ == "__main__":
    main()
