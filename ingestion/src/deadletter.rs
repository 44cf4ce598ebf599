//! Quarantine: events that cannot be read go to a dead-letter object, one JSON line each,
//! with the source, the position, the reason and the raw bytes (base64), so nothing that
//! was received is lost and an operator can see why. The pipeline goes on.

use base64::Engine;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// One quarantined event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub source: String,
    pub position: String,
    pub reason: String,
    pub received_us: i64,
    /// The event exactly as received, base64.
    pub raw_b64: String,
    /// Its message key, base64, if it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_b64: Option<String>,
}

impl DeadLetter {
    pub fn new(
        source: &str,
        position: &str,
        reason: String,
        raw: &[u8],
        key: Option<&[u8]>,
        received_us: i64,
    ) -> Self {
        let b64 = base64::engine::general_purpose::STANDARD;
        DeadLetter {
            source: source.to_owned(),
            position: position.to_owned(),
            reason,
            received_us,
            raw_b64: b64.encode(raw),
            key_b64: key.map(|k| b64.encode(k)),
        }
    }

    /// The raw bytes back.
    pub fn raw(&self) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD
            .decode(&self.raw_b64)
            .unwrap_or_default()
    }
}

/// Encodes a batch's dead letters as one JSONL object.
pub fn encode(letters: &[DeadLetter]) -> Bytes {
    let mut out = Vec::new();
    for l in letters {
        serde_json::to_writer(&mut out, l).expect("dead letter serializes");
        out.push(b'\n');
    }
    Bytes::from(out)
}

/// Parses a dead-letter object.
pub fn decode(bytes: &[u8]) -> serde_json::Result<Vec<DeadLetter>> {
    bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(serde_json::from_slice)
        .collect()
}

/// Reads every dead letter in the store, in batch order.
pub async fn list_all(store: &dyn overseer_dal::ObjectStore) -> crate::Result<Vec<DeadLetter>> {
    let mut out = Vec::new();
    for key in overseer_dal::store::list_all(store, "deadletter/").await? {
        if let Some(bytes) = store.get(&key).await? {
            out.extend(decode(&bytes).map_err(|e| {
                crate::Error::Storage(overseer_dal::Error::Corrupt {
                    what: key.clone(),
                    message: e.to_string(),
                })
            })?);
        }
    }
    Ok(out)
}
