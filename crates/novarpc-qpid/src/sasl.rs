//! Asks a broker which SASL mechanisms it offers, so that a mechanism
//! mismatch can be reported by name (fe2o3-amqp only says "not implemented").

use std::time::Duration;

use fe2o3_amqp::types::sasl::SaslMechanisms;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The AMQP 1.0 SASL protocol header.
const SASL_HEADER: [u8; 8] = *b"AMQP\x03\x01\x00\x00";

/// The mechanisms the broker at `host:port` offers, or `None` if it cannot
/// be asked (over TLS, or it does not answer with a SASL header and frame).
pub(crate) async fn offered_mechanisms(host: &str, port: u16, tls: bool) -> Option<Vec<String>> {
    if tls {
        return None;
    }
    tokio::time::timeout(Duration::from_secs(2), probe(host, port))
        .await
        .ok()
        .flatten()
}

async fn probe(host: &str, port: u16) -> Option<Vec<String>> {
    let mut stream = TcpStream::connect((host, port)).await.ok()?;
    stream.write_all(&SASL_HEADER).await.ok()?;
    let mut header = [0u8; 8];
    stream.read_exact(&mut header).await.ok()?;
    if header != SASL_HEADER {
        return None;
    }
    let mut size = [0u8; 4];
    stream.read_exact(&mut size).await.ok()?;
    let size = u32::from_be_bytes(size) as usize;
    if !(8..=65_536).contains(&size) {
        return None;
    }
    let mut frame = vec![0u8; size - 4];
    stream.read_exact(&mut frame).await.ok()?;
    // doff (in 4-byte words) says where the body starts; type 1 is SASL.
    let body_start = usize::from(frame[0]) * 4 - 4;
    if frame[1] != 1 || body_start > frame.len() {
        return None;
    }
    let mechanisms: SaslMechanisms = serde_amqp::from_slice(&frame[body_start..]).ok()?;
    Some(
        mechanisms
            .sasl_server_mechanisms
            .0
            .iter()
            .map(|m| m.as_str().to_owned())
            .collect(),
    )
}
