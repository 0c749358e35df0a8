//! The envelope against messages captured from oslo.messaging 18.3.1 on RabbitMQ
//! (`fixtures/oslo-18.3.1-rabbit.json`): novarpc must read what oslo writes,
//! and write the same keys.

use novarpc::driver::envelope::{self, CallHeader, Request};
use novarpc::{Context, Error};
use serde_json::{json, Value};

fn captures() -> Vec<Value> {
    let text = include_str!("../fixtures/oslo-18.3.1-rabbit.json");
    serde_json::from_str(text).expect("captures parse")
}

fn inner(body: &[u8]) -> Value {
    let outer: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(outer["oslo.version"], "2.0");
    serde_json::from_str(outer["oslo.message"].as_str().unwrap()).unwrap()
}

#[test]
fn decodes_every_captured_request_and_reply() {
    let mut requests = 0;
    let mut replies = 0;
    for capture in captures() {
        let body = capture["body"].as_str().unwrap().as_bytes();
        let message = inner(body);
        if message.get("method").is_some() {
            let request = envelope::decode_request(body).unwrap();
            assert_eq!(request.method(), message["method"]);
            assert_eq!(
                serde_json::from_str::<Value>(request.args()).unwrap(),
                message["args"]
            );
            assert_eq!(request.context().get("user_id"), Some(&json!("u1")));
            assert_eq!(request.context().get("request_id"), Some(&json!("req-1")));
            assert_eq!(request.msg_id().is_some(), message.get("_msg_id").is_some());
            requests += 1;
        } else if message.get("_msg_id").is_some() {
            let reply = envelope::decode_reply(body).unwrap();
            assert!(reply.ending());
            if let Some(failure) = reply.failure() {
                let failure = envelope::decode_failure(failure).unwrap();
                assert_eq!(failure.class, "ValueError");
                assert_eq!(failure.module, "builtins");
                assert_eq!(failure.message, "boom");
                assert!(failure.traceback().contains("Traceback"));
            }
            replies += 1;
        }
    }
    assert!(
        requests >= 5 && replies >= 2,
        "{requests} requests, {replies} replies"
    );
}

#[test]
fn namespaced_versioned_call_keeps_both() {
    let capture = captures()
        .into_iter()
        .find(|c| c["body"].as_str().unwrap().contains("namespace"))
        .expect("a namespaced capture");
    let request = envelope::decode_request(capture["body"].as_str().unwrap().as_bytes()).unwrap();
    assert_eq!(request.namespace(), Some("ns1"));
    assert_eq!(request.version(), Some("1.2"));
}

#[test]
fn encodes_the_same_keys_as_oslo() {
    let captured_call = captures()
        .into_iter()
        .find(|c| c["body"].as_str().unwrap().contains("_reply_q"))
        .unwrap();
    let oslo = inner(captured_call["body"].as_str().unwrap().as_bytes());
    let mut context = Context::new();
    context.insert("user_id".into(), json!("u1"));
    context.insert("request_id".into(), json!("req-1"));
    let args = serde_json::value::to_raw_value(&oslo["args"]).unwrap();
    let body = envelope::encode_request(
        &Request {
            method: oslo["method"].as_str().unwrap(),
            args: &args,
            namespace: None,
            version: None,
            context: &context,
        },
        Some(CallHeader {
            msg_id: oslo["_msg_id"].as_str().unwrap(),
            reply_q: oslo["_reply_q"].as_str().unwrap(),
        }),
    );
    let ours = inner(&body);
    let keys = |v: &Value| {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(keys(&ours), keys(&oslo));
    for key in [
        "method",
        "args",
        "_msg_id",
        "_reply_q",
        "_timeout",
        "_context_user_id",
    ] {
        assert_eq!(ours[key], oslo[key], "{key}");
    }
}

#[test]
fn captured_notification_decodes() {
    let Some(capture) = captures()
        .into_iter()
        .find(|c| c["body"].as_str().unwrap().contains("event_type"))
    else {
        return;
    };
    let n = envelope::decode_notification(capture["body"].as_str().unwrap().as_bytes()).unwrap();
    assert!(!n.event_type.is_empty() && !n.publisher_id.is_empty());
}

#[test]
fn unknown_envelope_version_is_malformed() {
    let body = br#"{"oslo.version": "3.0", "oslo.message": "{}"}"#;
    assert!(matches!(
        envelope::decode_request(body),
        Err(Error::MalformedMessage(_))
    ));
}
