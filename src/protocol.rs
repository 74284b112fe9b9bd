//! The y-websocket wire protocol, sans IO: decoding one inbound binary frame into a typed
//! message, encoding outbound messages, and the close codes this server uses.
//!
//! The encodings come from `yrs::sync` (the y-protocols messages); this module only decides
//! which frames are acceptable. It does no IO and holds no state, so it is unit-tested and
//! fuzzed on bytes. Called by `session` (decode) and `document` (encode).

use bytes::Bytes;
use yrs::encoding::read::{Cursor, Read};
use yrs::sync::protocol::{MSG_AUTH, MSG_AWARENESS, MSG_QUERY_AWARENESS, MSG_SYNC};
use yrs::sync::{AwarenessUpdate, Message, SyncMessage};
use yrs::updates::decoder::{Decode, DecoderV1};
use yrs::updates::encoder::Encode;
use yrs::{StateVector, Update};

use crate::validate::{inspect_update_v1, Hostile, Limits, Summary};

/// WebSocket close codes (RFC 6455 §7.4.1 plus the application range SPEC §4/§8 uses).
pub mod close {
    /// Server shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// A text frame on a Yjs connection.
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// A binary frame that is not a valid y-protocols message.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// Refused by policy (hostile update, rate limit, identity).
    pub const POLICY_VIOLATION: u16 = 1008;
    /// Message larger than `message_bytes_max`.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// The server failed (a commit failed, a document crashed).
    pub const INTERNAL_ERROR: u16 = 1011;
    /// The connection's outbound queue overflowed: a consumer too slow to keep up.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// The token expired during the connection. The stock client stops retrying on
    /// 4400-4499 (a fresh token is needed).
    pub const TOKEN_EXPIRED: u16 = 4401;
    /// No grant for the document.
    pub const FORBIDDEN: u16 = 4403;
    /// No message or pong within the idle timeout.
    pub const IDLE_TIMEOUT: u16 = 4408;
}

/// A close code with a short, stable reason sent to the client and logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseReason {
    pub code: u16,
    pub reason: &'static str,
}

impl CloseReason {
    pub const fn new(code: u16, reason: &'static str) -> Self {
        CloseReason { code, reason }
    }
}

/// One decoded inbound message.
#[derive(Debug)]
pub enum Inbound {
    SyncStep1(StateVector),
    /// SyncStep2 and Update carry the same thing: an update to merge, validated.
    SyncStep2(Checked),
    Update(Checked),
    Awareness(AwarenessUpdate),
    QueryAwareness,
    /// y-protocols auth messages are server → client only; a client sending one is ignored.
    Auth,
    /// A message type this server does not know; ignored as SPEC §2 says.
    Unknown(u64),
}

/// An update that passed `validate` and then decoded in yrs, with the validator's summary.
#[derive(Debug)]
pub struct Checked {
    pub update: Update,
    pub summary: Summary,
    /// Encoded size, for bounding what is held back.
    pub bytes: usize,
}

impl std::ops::Deref for Checked {
    type Target = Update;

    fn deref(&self) -> &Update {
        &self.update
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("empty frame")]
    Empty,
    #[error("hostile update: {0}")]
    Hostile(Hostile),
    #[error("malformed {what}: {source}")]
    Malformed { what: &'static str, source: yrs::encoding::read::Error },
    #[error("unknown sync message type {0}")]
    UnknownSyncType(u64),
    #[error("invalid update: {0}")]
    Invalid(Hostile),
    #[error("awareness message declares {count} clients, more than the {max} one message may hold")]
    AwarenessTooManyClients { count: u64, max: usize },
}

impl DecodeError {
    pub fn close_reason(&self) -> CloseReason {
        match self {
            DecodeError::Hostile(h) => CloseReason::new(close::POLICY_VIOLATION, h.reason()),
            // The same reason as the other awareness caps.
            DecodeError::AwarenessTooManyClients { .. } => {
                CloseReason::new(close::POLICY_VIOLATION, "awareness too large")
            }
            _ => CloseReason::new(close::INVALID_PAYLOAD, "malformed message"),
        }
    }
}

fn malformed(what: &'static str) -> impl FnOnce(yrs::encoding::read::Error) -> DecodeError {
    move |source| DecodeError::Malformed { what, source }
}

/// What one inbound frame may hold.
#[derive(Debug, Clone)]
pub struct FrameLimits {
    pub update: Limits,
    /// Entries one awareness message may hold. Not the per-connection cap: the stock client
    /// re-sends its peers' states too, a whole room's at once when it joins (the document
    /// counts only the states that are news against that cap).
    pub awareness_clients_max: usize,
}

/// `decode_frame_with` limits for frames a client reads from the server: the default update
/// limits, and any number of awareness clients (the server sends everyone's states at once).
pub fn decode_frame(frame: &[u8]) -> Result<Inbound, DecodeError> {
    decode_frame_with(frame, &FrameLimits { update: Limits::default(), awareness_clients_max: usize::MAX })
}

/// Decodes one frame. The stock client sends exactly one message per frame; as the
/// y-websocket server does, anything after the first message is ignored. Updates are
/// validated by `validate` before yrs decodes them.
pub fn decode_frame_with(frame: &[u8], limits: &FrameLimits) -> Result<Inbound, DecodeError> {
    if frame.is_empty() {
        return Err(DecodeError::Empty);
    }
    let mut decoder = DecoderV1::new(Cursor::new(frame));
    let tag: u64 = decoder.read_var().map_err(malformed("message type"))?;
    // The tag is read here rather than by `Message::decode` so that an unknown type with
    // an arbitrary body is ignored instead of failing to parse as a length-prefixed buffer.
    match tag {
        t if t == MSG_SYNC as u64 => {
            let sub: u64 = decoder.read_var().map_err(malformed("sync message type"))?;
            match sub {
                0 => {
                    let buf = decoder.read_buf().map_err(malformed("state vector"))?;
                    declared_count_fits(buf, STATE_VECTOR_ENTRY_BYTES_MIN).map_err(malformed("state vector"))?;
                    let sv = StateVector::decode_v1(buf).map_err(malformed("state vector"))?;
                    Ok(Inbound::SyncStep1(sv))
                }
                1 | 2 => {
                    let buf = decoder.read_buf().map_err(malformed("update"))?;
                    let checked = check_update(buf, &limits.update)?;
                    Ok(if sub == 1 { Inbound::SyncStep2(checked) } else { Inbound::Update(checked) })
                }
                other => Err(DecodeError::UnknownSyncType(other)),
            }
        }
        t if t == MSG_AWARENESS as u64 => {
            let buf = decoder.read_buf().map_err(malformed("awareness"))?;
            // The entry count comes first. A message naming more clients than one message may
            // hold is refused without decoding it: decoded, a 16 MiB message of tiny entries
            // takes ~18 times its size in maps and strings.
            let count: u64 = DecoderV1::new(Cursor::new(buf)).read_var().map_err(malformed("awareness"))?;
            if count > limits.awareness_clients_max as u64 {
                return Err(DecodeError::AwarenessTooManyClients { count, max: limits.awareness_clients_max });
            }
            declared_count_fits(buf, AWARENESS_ENTRY_BYTES_MIN).map_err(malformed("awareness"))?;
            let update = AwarenessUpdate::decode_v1(buf).map_err(malformed("awareness"))?;
            Ok(Inbound::Awareness(update))
        }
        t if t == MSG_AUTH as u64 => Ok(Inbound::Auth),
        t if t == MSG_QUERY_AWARENESS as u64 => Ok(Inbound::QueryAwareness),
        other => Ok(Inbound::Unknown(other)),
    }
}

/// Least bytes of one state vector entry (client and clock, a varint each).
pub const STATE_VECTOR_ENTRY_BYTES_MIN: usize = 2;
/// Least bytes of one awareness entry (client, clock, and the state's length).
pub const AWARENESS_ENTRY_BYTES_MIN: usize = 3;

/// Refuses a state vector or awareness update whose leading entry count the bytes after it
/// cannot hold. yrs 0.28.1 reserves room for the declared count before reading any entry
/// (`try_reserve` in `StateVector::decode` and `AwarenessUpdate::decode`), so a few bytes
/// could make it reserve gigabytes (found by the `protocol`, `awareness` and `rest` fuzz
/// targets). Such a message would fail
/// to decode anyway, for lack of entries; it is refused here, before yrs sees it, with the
/// same kind of error. A count that does not even read as a varint is left to yrs.
pub fn declared_count_fits(buf: &[u8], entry_bytes_min: usize) -> Result<(), yrs::encoding::read::Error> {
    let mut cursor = Cursor::new(buf);
    let Ok(count) = cursor.read_var::<u64>() else { return Ok(()) };
    let room = (buf.len() - cursor.next) / entry_bytes_min;
    if count > room as u64 {
        let needed = usize::try_from(count).unwrap_or(usize::MAX).saturating_mul(entry_bytes_min);
        return Err(yrs::encoding::read::Error::EndOfBuffer(needed));
    }
    Ok(())
}

/// Validates, then decodes, one v1 update.
pub fn check_update(bytes: &[u8], limits: &Limits) -> Result<Checked, DecodeError> {
    let summary = inspect_update_v1(bytes, limits).map_err(|h| match h {
        // Refused as an attack (1008); the rest is plain garbage (1007).
        Hostile::TooDeep { .. }
        | Hostile::CountTooLarge { .. }
        | Hostile::ClockOverflow
        | Hostile::ClientIdOutOfRange(_)
        | Hostile::LegacyJsonContent
        | Hostile::Subdocument => DecodeError::Hostile(h),
        other => DecodeError::Invalid(other),
    })?;
    let update = Update::decode_v1(bytes).map_err(malformed("update"))?;
    Ok(Checked { update, summary, bytes: bytes.len() })
}

pub fn encode_sync_step1(sv: &StateVector) -> Bytes {
    Message::Sync(SyncMessage::SyncStep1(sv.clone())).encode_v1().into()
}

pub fn encode_sync_step2(update: Vec<u8>) -> Bytes {
    Message::Sync(SyncMessage::SyncStep2(update)).encode_v1().into()
}

pub fn encode_update(update: Vec<u8>) -> Bytes {
    Message::Sync(SyncMessage::Update(update)).encode_v1().into()
}

pub fn encode_awareness(update: AwarenessUpdate) -> Bytes {
    Message::Awareness(update).encode_v1().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::{Doc, GetString, Text, Transact};

    fn text_update(s: &str) -> Vec<u8> {
        let doc = Doc::new();
        let text = doc.get_or_insert_text("t");
        let mut txn = doc.transact_mut();
        text.insert(&mut txn, 0, s);
        txn.encode_update_v1()
    }

    #[test]
    fn update_round_trips() {
        let frame = encode_update(text_update("hi"));
        let Inbound::Update(update) = decode_frame(&frame).unwrap() else { panic!("not an update") };
        let doc = Doc::new();
        let text = doc.get_or_insert_text("t");
        doc.transact_mut().apply_update(update.update).unwrap();
        assert_eq!(text.get_string(&doc.transact()), "hi");
    }

    #[test]
    fn sync_step1_round_trips() {
        let sv = StateVector::default();
        assert!(matches!(decode_frame(&encode_sync_step1(&sv)).unwrap(), Inbound::SyncStep1(s) if s == sv));
    }

    #[test]
    fn unknown_message_type_is_ignored_whatever_its_body() {
        assert!(matches!(decode_frame(&[7, 0xff, 0xff]).unwrap(), Inbound::Unknown(7)));
        assert!(matches!(decode_frame(&[100]).unwrap(), Inbound::Unknown(100)));
    }

    #[test]
    fn truncated_update_is_malformed() {
        let frame = encode_update(text_update("hello world"));
        for cut in 1..frame.len() {
            assert!(decode_frame(&frame[..cut]).is_err(), "prefix of {cut} bytes decoded");
        }
    }

    #[test]
    fn awareness_naming_too_many_clients_is_refused_by_its_count() {
        let entries = |n: u64| AwarenessUpdate {
            clients: (1..=n)
                .map(|i| {
                    (yrs::ClientID::new(i), yrs::sync::awareness::AwarenessUpdateEntry { clock: 1, json: "{}".into() })
                })
                .collect(),
        };
        let limits = FrameLimits { update: Limits::default(), awareness_clients_max: 3 };
        assert!(
            matches!(decode_frame_with(&encode_awareness(entries(3)), &limits), Ok(Inbound::Awareness(u)) if u.clients.len() == 3)
        );
        let refused = decode_frame_with(&encode_awareness(entries(4)), &limits).unwrap_err();
        assert!(matches!(refused, DecodeError::AwarenessTooManyClients { count: 4, max: 3 }));
        assert_eq!(refused.close_reason(), CloseReason::new(close::POLICY_VIOLATION, "awareness too large"));
        // A count alone, with no entries behind it, is refused the same way.
        assert!(matches!(
            decode_frame_with(&[1, 5, 0xff, 0xff, 0xff, 0xff, 0x0f], &limits),
            Err(DecodeError::AwarenessTooManyClients { .. })
        ));
    }

    #[test]
    fn a_count_the_bytes_cannot_hold_is_refused_before_yrs_reserves_it() {
        // Found by the fuzz targets: SyncStep1 with a state vector of u32::MAX entries, and an
        // awareness update of 2^35 entries, each in a few bytes.
        let sv = [0, 0, 6, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x01];
        assert!(matches!(decode_frame(&sv), Err(DecodeError::Malformed { what: "state vector", .. })));
        let awareness = [1, 6, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01];
        assert!(matches!(decode_frame(&awareness), Err(DecodeError::Malformed { what: "awareness", .. })));
        // Exactly as many entries as the bytes hold still decode.
        let mut two = StateVector::default();
        two.set_max(yrs::ClientID::new(1), 1);
        two.set_max(yrs::ClientID::new(2), 1);
        assert!(matches!(decode_frame(&encode_sync_step1(&two)).unwrap(), Inbound::SyncStep1(s) if s == two));
        assert_eq!(declared_count_fits(&[2, 1, 1, 2, 1], STATE_VECTOR_ENTRY_BYTES_MIN).ok(), Some(()));
        assert!(declared_count_fits(&[3, 1, 1, 2, 1], STATE_VECTOR_ENTRY_BYTES_MIN).is_err());
    }

    #[test]
    fn empty_frame_and_unknown_sync_type_are_malformed() {
        assert!(matches!(decode_frame(&[]), Err(DecodeError::Empty)));
        assert!(matches!(decode_frame(&[0, 9, 0]), Err(DecodeError::UnknownSyncType(9))));
    }
}
