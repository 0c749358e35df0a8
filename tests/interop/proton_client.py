"""An independent AMQP 1.0 RPC client (python-qpid-proton) for novarpc's interop tests.

Speaks novarpc's AMQP 1.0 mapping (profile `rabbitmq3`) by hand, with no novarpc or
oslo code, so a misunderstanding shared by both sides cannot hide. Runs one call or
cast and prints one JSON object on stdout.

Exit codes: 0 success, 1 remote failure, 2 usage (argparse), 3 transport error
(connection, refused link, message not accepted), 5 no reply within --timeout.
"""
import argparse
import json
import sys
import time
import uuid

from proton import Delivery, Handler, LinkException, Message, Timeout
from proton.utils import BlockingConnection


class CallTimeout(Exception):
    pass


class _Detached(Handler):
    # RabbitMQ 3.10 answers detach(closed=true) with a plain detach (closed=false),
    # which proton reports as a remote *detach*, never a remote close, so
    # BlockingLink.close() would wait out its whole timeout.
    def __init__(self):
        super().__init__()
        self.done = False

    def on_link_remote_detach(self, event):
        self.done = True

    on_link_remote_close = on_link_remote_detach


def close_link(conn, blocking_link, timeout):
    waiter = _Detached()
    blocking_link.link.handler = waiter
    blocking_link.link.close()  # detach with closed=true
    try:
        conn.wait(lambda: waiter.done, timeout=timeout, msg="detaching " + blocking_link.link.name)
    except Timeout:
        pass  # best effort: the outcome is already known and the connection closes next


def session_ended(conn, event):
    # RabbitMQ refuses some attaches (e.g. /queue/X when X exists with another
    # durability) by ending the whole session; proton's blocking API would only
    # notice that as a timeout, without the broker's reason.
    if not conn.closing:
        raise LinkException("broker ended the session: %s" % event.session.remote_condition)


def node(args):
    base = args.exchange + "." + args.topic
    if args.command == "cast" and args.fanout:
        return "/topic/" + base + ".fanout"
    return "/queue/" + base + ("." + args.server if args.server else "")


def request(args, inner, message_id, reply_to=None):
    inner.update({"_context_" + k: v for k, v in args.context.items()})
    envelope = {"oslo.version": "2.0", "oslo.message": json.dumps(inner)}
    # bytes + inferred=True is what makes proton write a Data section; a str body,
    # or inferred=False, would go out as an amqp-value, which the mapping forbids.
    return Message(
        body=json.dumps(envelope).encode("utf-8"),
        inferred=True,
        id=message_id,
        reply_to=reply_to,
        content_type="application/json",
        subject=args.method,
        durable=True,
    )


def inner_request(args):
    return {
        "method": args.method,
        "args": args.args,
        "namespace": args.namespace,
        "version": args.version,
        "_unique_id": uuid.uuid4().hex,
    }


def decode(msg):
    body = msg.body
    if isinstance(body, memoryview):
        body = body.tobytes()
    if isinstance(body, bytes):
        body = body.decode("utf-8")
    return json.loads(json.loads(body)["oslo.message"])


def send(conn, address, msg, timeout):
    sender = conn.create_sender(address)
    try:
        # The link is unsettled (proton's default), so send() returns only once the
        # broker has settled the delivery; anything but accepted was not delivered.
        delivery = sender.send(msg, timeout=timeout)
        if delivery.remote_state != Delivery.ACCEPTED:
            raise RuntimeError("broker did not accept the message: %s" % delivery.remote_state)
    finally:
        close_link(conn, sender, timeout)


def do_cast(conn, args):
    inner = inner_request(args)
    send(conn, node(args), request(args, inner, inner["_unique_id"]), args.timeout)
    return {"sent": True}, 0


def do_call(conn, args):
    msg_id = uuid.uuid4().hex
    reply_address = "/topic/reply_" + uuid.uuid4().hex
    deadline = time.monotonic() + args.timeout
    # RabbitMQ declares and binds the queue behind this receiver before it answers
    # the attach, so attaching first means even an instant reply has somewhere to go.
    receiver = conn.create_receiver(reply_address, credit=16)
    try:
        inner = inner_request(args)
        inner.update({"_msg_id": msg_id, "_reply_q": reply_address, "_timeout": None})
        send(conn, node(args), request(args, inner, msg_id, reply_address), args.timeout)
        result, failure = None, None
        while True:
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0:
                    raise Timeout()
                msg = receiver.receive(timeout=remaining)
            except Timeout:
                raise CallTimeout("no reply to %s within %ss" % (msg_id, args.timeout)) from None
            receiver.accept()
            reply = decode(msg)
            # The reply queue is ours alone, but a stray reply must still never be
            # taken for the answer.
            if reply.get("_msg_id", msg.correlation_id) != msg_id:
                continue
            if reply.get("failure") is not None:
                failure = json.loads(reply["failure"])
            if reply.get("result") is not None:
                result = reply["result"]
            # ending=false without a result is an oslo call-monitor heartbeat: wait on.
            if reply.get("ending"):
                break
    finally:
        # RabbitMQ 3.10.8 keeps the amq.gen-* queue even after this (its detach only
        # cancels the consumer), but a closing detach is all a 1.0 client can offer.
        close_link(conn, receiver, args.timeout)
    if failure is not None:
        return {"failure": failure}, 1
    return {"result": result}, 0


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--exchange", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--server")
    parser.add_argument("--namespace")
    parser.add_argument("--version")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("call", "cast"):
        p = sub.add_parser(name)
        p.add_argument("method")
        p.add_argument("--args", type=json.loads, default={})
        p.add_argument("--context", type=json.loads, default={})
        p.add_argument("--timeout", type=float, default=10.0)
        if name == "cast":
            p.add_argument("--fanout", action="store_true")
    args = parser.parse_args()

    conn = None
    try:
        # Without credentials proton picks ANONYMOUS, which RabbitMQ's plugin accepts
        # (as its default user); pinning PLAIN makes a URL missing them fail instead.
        conn = BlockingConnection(args.url, timeout=args.timeout, allowed_mechs="PLAIN")
        conn.on_session_remote_close = lambda event: session_ended(conn, event)
        out, code = (do_call if args.command == "call" else do_cast)(conn, args)
    except CallTimeout as e:
        out, code = {"error": "MessagingTimeout", "message": str(e)}, 5
    except Exception as e:  # noqa: BLE001 - report anything else as a transport error
        out, code = {"error": type(e).__name__, "message": str(e)}, 3
    finally:
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - the outcome is already decided
                pass
    print(json.dumps(out), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
