//! The Hocuspocus wire protocol, sans IO: one frame is `varString(address) · varUint(type) ·
//! body` in lib0 encoding (`@hocuspocus/provider` `OutgoingMessage`, `@hocuspocus/server`
//! `IncomingMessage`). The address is the document name, or `name\0session` when the v4
//! provider's `sessionAwareness` is on; replies carry the address they answer.
//!
//! Types 0 (Sync), 1 (Awareness) and 3 (QueryAwareness) carry the y-protocols bytes the
//! y-websocket protocol carries under the same tags, so their bodies are decoded (and their
//! updates validated) by `protocol`, and the document actor's y-websocket frames become
//! Hocuspocus frames by prefixing the address alone. The rest is decoded here: Auth (2, with
//! the `@hocuspocus/common` subtypes Token, PermissionDenied, Authenticated), SyncReply (4),
//! Stateless (5), BroadcastStateless (6), Close (7), SyncStatus (8), and the v4 provider's
//! connection-level Ping (9) / Pong (10), which are one byte with no address.
//!
//! No IO, no state; called by `session::hocuspocus`. Unit-tested here on bytes.

use std::borrow::Cow;

use bytes::Bytes;
use yrs::encoding::write::Write;

use crate::docname::{DocName, DocNameError};

/// Message types (`@hocuspocus/server` `types.ts` `MessageType`).
pub mod kind {
    pub const SYNC: u64 = 0;
    pub const AWARENESS: u64 = 1;
    pub const AUTH: u64 = 2;
    pub const QUERY_AWARENESS: u64 = 3;
    /// As Sync, "but won't trigger another SyncStep1" (the server never sends it to providers).
    pub const SYNC_REPLY: u64 = 4;
    pub const STATELESS: u64 = 5;
    /// Server-internal (Redis fan-out); a client sending it is closed with 4205.
    pub const BROADCAST_STATELESS: u64 = 6;
    pub const CLOSE: u64 = 7;
    pub const SYNC_STATUS: u64 = 8;
    pub const PING: u64 = 9;
    pub const PONG: u64 = 10;
}

/// Auth subtypes (`@hocuspocus/common` `auth.ts` `AuthMessageType`).
pub mod auth {
    pub const TOKEN: u64 = 0;
    pub const PERMISSION_DENIED: u64 = 1;
    pub const AUTHENTICATED: u64 = 2;
}

/// `@hocuspocus/common` `ResetConnection`: the server closes a client that sent what it must
/// not (BroadcastStateless, too much before authenticating).
pub const RESET_CONNECTION: u16 = 4205;

/// Longest address: a document name (`DOC_NAME_BYTES_MAX`) and a v4 session id after `\0`.
pub const ADDRESS_BYTES_MAX: usize = 1024;

/// The connection-level Ping the server sends to a v4 provider (it answers with Pong).
pub const PING: [u8; 1] = [kind::PING as u8];

/// SyncStatus bodies (`writeSyncStatus`): 1 the update is saved, 0 it was not applied.
pub const SYNC_STATUS_SAVED: [u8; 2] = [kind::SYNC_STATUS as u8, 1];
pub const SYNC_STATUS_REFUSED: [u8; 2] = [kind::SYNC_STATUS as u8, 0];

/// Where a frame goes: the raw address and the document it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    /// As the provider sent it (replies must carry it back unchanged).
    pub raw: String,
    /// The part before a `\0` session suffix.
    pub doc: DocName,
}

impl Address {
    pub fn parse(raw: &str) -> Result<Address, DecodeError> {
        let name = raw.split_once('\0').map_or(raw, |(name, _)| name);
        let doc = DocName::new(name).map_err(DecodeError::DocName)?;
        Ok(Address { raw: raw.to_owned(), doc })
    }

    /// `varString(raw)`: what every frame for this address starts with.
    pub fn prefix(&self) -> Bytes {
        let mut out = Vec::with_capacity(self.raw.len() + 3);
        out.write_string(&self.raw);
        out.into()
    }
}

/// One decoded inbound frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A v4 provider's connection-level Pong (or Ping): liveness only.
    Pong,
    Ping,
    Doc {
        address: Address,
        message: Message<'a>,
    },
}

/// A message for one document.
#[derive(Debug, PartialEq, Eq)]
pub enum Message<'a> {
    /// A y-protocols frame (Sync, Awareness, QueryAwareness, and SyncReply retagged as Sync),
    /// for `protocol::decode_frame_with`.
    Yjs(Cow<'a, [u8]>),
    /// Auth Token: the JWT, and the provider's version (v4 appends it; v2 and v3 do not).
    Token {
        token: &'a str,
        version: Option<&'a str>,
    },
    /// Auth subtypes only the server sends; ignored.
    OtherAuth(u64),
    Stateless(&'a str),
    BroadcastStateless,
    Close,
    /// Types the server ignores (SyncStatus, unknown ones).
    Ignored(u64),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("empty frame")]
    Empty,
    #[error("truncated {what}")]
    Truncated { what: &'static str },
    #[error("{what} declares {len} bytes, more than the {max} it may have")]
    TooLong { what: &'static str, len: u64, max: usize },
    #[error("{what} is not UTF-8")]
    NotUtf8 { what: &'static str },
    #[error("invalid document name: {0}")]
    DocName(DocNameError),
}

/// A cursor over one frame; every read is bounded by the bytes left.
struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn var_uint(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        let mut value: u64 = 0;
        for shift in (0..64).step_by(7) {
            let byte = *self.buf.get(self.at).ok_or(DecodeError::Truncated { what })?;
            self.at += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        // lib0 never writes more than ten bytes for a number; more is garbage.
        Err(DecodeError::TooLong { what, len: u64::MAX, max: 10 })
    }

    /// A varString of at most `max` bytes. The declared length is checked against `max` and
    /// the bytes left before anything is sliced or allocated.
    fn string(&mut self, what: &'static str, max: usize) -> Result<&'a str, DecodeError> {
        let len = self.var_uint(what)?;
        if len > max as u64 {
            return Err(DecodeError::TooLong { what, len, max });
        }
        let len = len as usize;
        let bytes = self.buf.get(self.at..self.at + len).ok_or(DecodeError::Truncated { what })?;
        self.at += len;
        std::str::from_utf8(bytes).map_err(|_| DecodeError::NotUtf8 { what })
    }

    fn has_more(&self) -> bool {
        self.at < self.buf.len()
    }

    fn rest(&self) -> &'a [u8] {
        &self.buf[self.at..]
    }
}

/// Decodes one inbound frame. Bodies of the y-protocols types are handed on undecoded (and
/// unvalidated: `protocol` does that); tokens and stateless payloads are bounded by the
/// frame, which is already within `message_bytes_max`.
pub fn decode(frame: &[u8]) -> Result<Frame<'_>, DecodeError> {
    // The v4 provider's Pong is the type alone, without an address. A one-byte frame can be
    // nothing else: an address of length 9 or 10 would need the bytes behind it.
    match frame {
        [] => return Err(DecodeError::Empty),
        [b] if u64::from(*b) == kind::PONG => return Ok(Frame::Pong),
        [b] if u64::from(*b) == kind::PING => return Ok(Frame::Ping),
        _ => {}
    }
    let mut r = Reader { buf: frame, at: 0 };
    let address = Address::parse(r.string("address", ADDRESS_BYTES_MAX)?)?;
    let type_at = r.at;
    let message = match r.var_uint("message type")? {
        kind::SYNC | kind::AWARENESS | kind::QUERY_AWARENESS => Message::Yjs(Cow::Borrowed(&frame[type_at..])),
        kind::SYNC_REPLY => {
            let mut retagged = Vec::with_capacity(1 + r.rest().len());
            retagged.push(kind::SYNC as u8);
            retagged.extend_from_slice(r.rest());
            Message::Yjs(Cow::Owned(retagged))
        }
        kind::AUTH => match r.var_uint("auth type")? {
            auth::TOKEN => {
                let token = r.string("token", frame.len())?;
                let version = if r.has_more() { Some(r.string("provider version", frame.len())?) } else { None };
                Message::Token { token, version }
            }
            other => Message::OtherAuth(other),
        },
        kind::STATELESS => Message::Stateless(r.string("stateless payload", frame.len())?),
        kind::BROADCAST_STATELESS => Message::BroadcastStateless,
        kind::CLOSE => Message::Close,
        other => Message::Ignored(other),
    };
    Ok(Frame::Doc { address, message })
}

/// Auth Authenticated with the scope the provider records (`authorizedScope`).
pub fn encode_authenticated(address: &Address, read_only: bool) -> Bytes {
    let scope = if read_only { "readonly" } else { "read-write" };
    auth_frame(address, auth::AUTHENTICATED, Some(scope))
}

/// Auth PermissionDenied: the v3/v4 provider emits `authenticationFailed` and keeps the
/// socket for its other documents; v2 disconnects that provider.
pub fn encode_permission_denied(address: &Address, reason: &str) -> Bytes {
    auth_frame(address, auth::PERMISSION_DENIED, Some(reason))
}

fn auth_frame(address: &Address, sub: u64, text: Option<&str>) -> Bytes {
    let mut out = Vec::with_capacity(address.raw.len() + 16 + text.map_or(0, str::len));
    out.write_string(&address.raw);
    out.write_var(kind::AUTH);
    out.write_var(sub);
    if let Some(text) = text {
        out.write_string(text);
    }
    out.into()
}

/// A Stateless body (`varUint(5) · varString(payload)`), for the address prefix to go before.
pub fn encode_stateless_body(payload: &str) -> Bytes {
    let mut out = Vec::with_capacity(payload.len() + 6);
    out.write_var(kind::STATELESS);
    out.write_string(payload);
    out.into()
}

/// A whole frame: the address prefix and a body.
pub fn frame(address: &Address, body: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(address.raw.len() + 3 + body.len());
    out.write_string(&address.raw);
    out.write_all(body);
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(raw: &str) -> Address {
        Address::parse(raw).unwrap()
    }

    fn token_frame(name: &str, token: &str, version: Option<&str>) -> Vec<u8> {
        let mut out = Vec::new();
        out.write_string(name);
        out.write_var(kind::AUTH);
        out.write_var(auth::TOKEN);
        out.write_string(token);
        if let Some(v) = version {
            out.write_string(v);
        }
        out
    }

    #[test]
    fn a_v4_token_carries_the_provider_version_and_a_v3_one_does_not() {
        let v4 = token_frame("notes", "jwt", Some("4.5.0"));
        let Frame::Doc { address, message } = decode(&v4).unwrap() else { panic!("not a doc frame") };
        assert_eq!(address.doc.as_str(), "notes");
        assert_eq!(message, Message::Token { token: "jwt", version: Some("4.5.0") });
        let v3 = token_frame("notes", "", None);
        assert!(matches!(
            decode(&v3).unwrap(),
            Frame::Doc { message: Message::Token { token: "", version: None }, .. }
        ));
    }

    #[test]
    fn sync_awareness_and_query_are_handed_on_as_y_protocols_frames() {
        let mut f = frame(&addr("a/b"), &[0, 0, 1, 0]).to_vec();
        let Frame::Doc { message: Message::Yjs(body), .. } = decode(&f).unwrap() else { panic!() };
        assert_eq!(&*body, &[0, 0, 1, 0]);
        // SyncReply is retagged as Sync.
        f = frame(&addr("a/b"), &[4, 2, 1, 0]).to_vec();
        let Frame::Doc { message: Message::Yjs(body), .. } = decode(&f).unwrap() else { panic!() };
        assert_eq!(&*body, &[0, 2, 1, 0]);
        f = frame(&addr("x"), &[3]).to_vec();
        assert!(matches!(decode(&f).unwrap(), Frame::Doc { message: Message::Yjs(b), .. } if *b == [3]));
    }

    #[test]
    fn a_session_address_names_the_document_before_its_nul() {
        let a = addr("notes\0session-1");
        assert_eq!((a.doc.as_str(), a.raw.as_str()), ("notes", "notes\0session-1"));
        let f = frame(&a, &SYNC_STATUS_SAVED);
        assert_eq!(&f[..], b"\x0fnotes\0session-1\x08\x01");
    }

    #[test]
    fn replies_encode_as_the_provider_reads_them() {
        let a = addr("d");
        assert_eq!(&encode_authenticated(&a, true)[..], b"\x01d\x02\x02\x08readonly");
        assert_eq!(&encode_authenticated(&a, false)[..], b"\x01d\x02\x02\x0aread-write");
        assert_eq!(&encode_permission_denied(&a, "no")[..], b"\x01d\x02\x01\x02no");
        assert_eq!(&encode_stateless_body("hi")[..], b"\x05\x02hi");
        let stateless = frame(&a, &encode_stateless_body("hi"));
        assert_eq!(decode(&stateless).unwrap(), Frame::Doc { address: a, message: Message::Stateless("hi") });
    }

    #[test]
    fn the_connection_level_ping_and_pong_have_no_address() {
        assert_eq!(decode(&[10]).unwrap(), Frame::Pong);
        assert_eq!(decode(&PING).unwrap(), Frame::Ping);
        // A one-byte address followed by a type is a document frame.
        assert!(matches!(decode(b"\x01a\x07").unwrap(), Frame::Doc { message: Message::Close, .. }));
        assert!(matches!(decode(b"\x01a\x06\x00").unwrap(), Frame::Doc { message: Message::BroadcastStateless, .. }));
        assert!(matches!(decode(b"\x01a\x08\x01").unwrap(), Frame::Doc { message: Message::Ignored(8), .. }));
    }

    #[test]
    fn every_truncation_of_a_frame_is_refused_or_a_shorter_message() {
        let full = token_frame("doc", "token-bytes", Some("4.0.0"));
        for cut in 0..full.len() {
            match decode(&full[..cut]) {
                Err(_) => {}
                // Cut right after the token: a token without a version (v3's form).
                Ok(Frame::Doc { message: Message::Token { token: "token-bytes", version: None }, .. }) => {}
                other => panic!("prefix of {cut} bytes decoded as {other:?}"),
            }
        }
    }

    #[test]
    fn huge_declared_lengths_are_refused_before_anything_is_sliced() {
        // An address declaring 2^63 bytes.
        let huge = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 0x00];
        assert!(matches!(decode(&huge), Err(DecodeError::TooLong { what: "address", .. })));
        // An address within the cap but longer than the frame.
        assert!(matches!(decode(&[0x80, 0x04, b'a']), Err(DecodeError::Truncated { what: "address" })));
        // A token declaring more than the frame holds.
        let mut f = frame(&addr("d"), &[2, 0]).to_vec();
        f.extend([0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert!(matches!(decode(&f), Err(DecodeError::TooLong { what: "token", .. })));
        // A number longer than lib0 ever writes.
        let mut f = frame(&addr("d"), &[]).to_vec();
        f.extend([0x80; 11]);
        assert!(matches!(decode(&f), Err(DecodeError::TooLong { what: "message type", .. })));
        // Addresses that are no document name.
        assert!(matches!(decode(b"\x00\x00"), Err(DecodeError::DocName(DocNameError::Empty))));
        assert!(matches!(decode(b"\x02\xff\xfe\x00"), Err(DecodeError::NotUtf8 { what: "address" })));
        assert!(matches!(decode(b"\x02a\x01\x00"), Err(DecodeError::DocName(DocNameError::ControlCharacter))));
    }
}
