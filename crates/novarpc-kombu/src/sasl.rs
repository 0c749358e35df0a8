//! Asks a RabbitMQ which SASL mechanisms it offers (the `mechanisms` of its
//! `connection.start`), so that a login method it does not offer is
//! reported by name: the broker itself only answers `COMMAND_INVALID`.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The AMQP 0-9-1 protocol header.
const HEADER: [u8; 8] = *b"AMQP\x00\x00\x09\x01";

/// The mechanisms the broker at `host:port` offers, or `None` if it cannot
/// be asked (it does not answer with a `connection.start` in time).
pub(crate) async fn offered_mechanisms(host: &str, port: u16) -> Option<Vec<String>> {
    tokio::time::timeout(Duration::from_secs(2), probe(host, port))
        .await
        .ok()
        .flatten()
}

async fn probe(host: &str, port: u16) -> Option<Vec<String>> {
    let mut stream = TcpStream::connect((host, port)).await.ok()?;
    stream.write_all(&HEADER).await.ok()?;
    // A method frame: type 1, channel 0, payload size, payload, 0xCE.
    let mut head = [0u8; 7];
    stream.read_exact(&mut head).await.ok()?;
    let size = u32::from_be_bytes([head[3], head[4], head[5], head[6]]) as usize;
    if head[0] != 1 || size > 1 << 20 {
        return None;
    }
    let mut payload = vec![0u8; size];
    stream.read_exact(&mut payload).await.ok()?;
    parse_start(&payload)
}

/// The mechanisms of a `connection.start` payload: class 10, method 10,
/// version (2 octets), server properties (a table), mechanisms (a long
/// string of names separated by spaces).
fn parse_start(payload: &[u8]) -> Option<Vec<String>> {
    let long = |at: usize| -> Option<usize> {
        Some(u32::from_be_bytes(payload.get(at..at + 4)?.try_into().ok()?) as usize)
    };
    if payload.get(0..4)? != [0, 10, 0, 10] {
        return None;
    }
    let table_len = long(6)?;
    let mechanisms_at = 10 + table_len;
    let len = long(mechanisms_at)?;
    let text = payload.get(mechanisms_at + 4..mechanisms_at + 4 + len)?;
    Some(
        String::from_utf8_lossy(text)
            .split_whitespace()
            .map(str::to_owned)
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_mechanisms_of_connection_start() {
        let mut payload = vec![0, 10, 0, 10, 0, 9];
        let table = b"\x07product\x53\x00\x00\x00\x08RabbitMQ";
        payload.extend((table.len() as u32).to_be_bytes());
        payload.extend(table);
        let mechanisms = b"AMQPLAIN PLAIN";
        payload.extend((mechanisms.len() as u32).to_be_bytes());
        payload.extend(mechanisms);
        assert_eq!(
            parse_start(&payload),
            Some(vec!["AMQPLAIN".to_owned(), "PLAIN".to_owned()])
        );
        assert_eq!(parse_start(&[0, 10, 0, 11]), None);
    }
}
