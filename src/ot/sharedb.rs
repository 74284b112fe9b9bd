//! The ShareDB wire protocol (the subset yserve speaks at `/api/ot`): JSON text frames, one
//! message each, parsed into `Request`s and encoded from the sequencer's results. Pure: no
//! IO, no documents. Follows sharedb 7's `lib/agent.js` (server) and `lib/client/` (client):
//!
//! - `hs` handshake: the reply carries the client id (`src` of its ops) and the *default* type
//!   `http://sharejs.org/types/JSONv0`, which the client checks; each snapshot then names its
//!   own type, rich-text.
//! - `f`/`s` without a version reply with the snapshot; with one, every op since that version
//!   is sent first as an `op` message, then an empty reply. `bf`/`bs`/`bu` (what the client
//!   sends after a reconnect) are answered as the single-document actions, which the client
//!   handles identically.
//! - `op`: the reply (ack) is `{a:'op', c, d, src, seq, v}` after every op the submitter had
//!   not seen; errors echo the request with `error: {code, message}`.
//!
//! Collection = document name, id = root text name.

use serde_json::{json, Map, Value};

use crate::ot::delta::Delta;
use crate::ot::error::OtError;
use crate::ot::sequencer::LoggedOp;

pub const RICH_TEXT_URI: &str = "http://sharejs.org/types/rich-text/v1";
/// The client refuses a server whose default type is not its own default (json0).
pub const DEFAULT_TYPE_URI: &str = "http://sharejs.org/types/JSONv0";
pub const PROTOCOL_MAJOR: u64 = 1;
pub const PROTOCOL_MINOR: u64 = 2;

#[derive(Debug, Clone, PartialEq)]
pub enum OpBody {
    Edit(Value),
    Create,
    Delete,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Handshake {
        id: Option<String>,
    },
    Fetch {
        c: String,
        d: String,
        v: Option<u64>,
    },
    Subscribe {
        c: String,
        d: String,
        v: Option<u64>,
    },
    Unsubscribe {
        c: String,
        d: String,
    },
    Op {
        c: String,
        d: String,
        v: Option<u64>,
        src: Option<String>,
        seq: u64,
        body: OpBody,
    },
    Ping,
    /// `ps`/`pu`: (un)subscribe to a presence channel; `seq` is echoed in the reply.
    PresenceSubscribe {
        ch: String,
        seq: u64,
    },
    PresenceUnsubscribe {
        ch: String,
        seq: u64,
    },
    /// `pr`: ask the channel's other subscribers to send their presence again.
    PresenceRequest {
        ch: String,
    },
    /// `p`: one local presence's value (`p`, null to withdraw) at presence version `pv`.
    Presence(Presence),
}

/// A presence message as a client sends it (see `ot::presence`). `c`/`d`/`v`/`t` are set by
/// `DocPresence` (the channel is then `c.d`); other fields are not relayed.
#[derive(Debug, Clone, PartialEq)]
pub struct Presence {
    pub ch: String,
    pub id: String,
    pub p: Value,
    pub pv: u64,
    pub c: Option<String>,
    pub d: Option<String>,
    pub v: Option<u64>,
    pub t: Option<String>,
}

/// Longest presence id accepted (the stock client uses 32 hex digits).
pub const PRESENCE_ID_BYTES_MAX: usize = 256;
/// Longest presence channel name accepted (a document name, a dot and a text name).
pub const CHANNEL_BYTES_MAX: usize = 2048;

/// A parsed message and the request object to echo in an error reply.
#[derive(Debug)]
pub struct Parsed {
    pub requests: Vec<Request>,
    pub echo: Value,
}

/// Parses one text frame. Bulk actions expand into one request per id. `Err` carries the
/// error reply to send (the connection stays open, as ShareDB's does).
pub fn parse(frame: &str) -> Result<Parsed, String> {
    let value: Value = serde_json::from_str(frame)
        .map_err(|e| error_reply(json!({}), &OtError::BadMessage(format!("not JSON: {e}"))))?;
    let Value::Object(msg) = &value else {
        return Err(error_reply(json!({}), &OtError::BadMessage("not an object".into())));
    };
    let bad = |why: &str| error_reply(value.clone(), &OtError::BadMessage(why.to_string()));
    let action = msg.get("a").and_then(Value::as_str).ok_or_else(|| bad("missing action"))?;
    let c = || name(msg, "c").ok_or_else(|| bad("invalid collection"));
    let d = || name(msg, "d").ok_or_else(|| bad("invalid id"));
    let v = || version(msg.get("v")).map_err(|_| bad("invalid version"));
    let requests = match action {
        "hs" => vec![Request::Handshake { id: msg.get("id").and_then(Value::as_str).map(str::to_owned) }],
        "f" => vec![Request::Fetch { c: c()?, d: d()?, v: v()? }],
        "s" => vec![Request::Subscribe { c: c()?, d: d()?, v: v()? }],
        "u" => vec![Request::Unsubscribe { c: c()?, d: d()? }],
        "bf" | "bs" | "bu" => {
            let c = c()?;
            let items: Vec<(String, Option<u64>)> = match msg.get("b") {
                Some(Value::Array(ids)) => ids
                    .iter()
                    .map(|id| id.as_str().map(|s| (s.to_owned(), None)))
                    .collect::<Option<_>>()
                    .ok_or_else(|| bad("invalid bulk ids"))?,
                Some(Value::Object(versions)) => versions
                    .iter()
                    .map(|(id, v)| version(Some(v)).ok().flatten().map(|v| (id.clone(), Some(v))))
                    .collect::<Option<_>>()
                    .ok_or_else(|| bad("invalid bulk versions"))?,
                _ => return Err(bad("invalid bulk")),
            };
            items
                .into_iter()
                .map(|(d, v)| match action {
                    "bf" => Request::Fetch { c: c.clone(), d, v },
                    "bs" => Request::Subscribe { c: c.clone(), d, v },
                    _ => Request::Unsubscribe { c: c.clone(), d },
                })
                .collect()
        }
        "op" => {
            let seq = msg.get("seq").and_then(Value::as_u64).ok_or_else(|| bad("invalid seq"))?;
            let src = match msg.get("src") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) if valid_src(s) => Some(s.clone()),
                Some(_) => return Err(bad("invalid src")),
            };
            let body = if let Some(op) = msg.get("op") {
                OpBody::Edit(op.clone())
            } else if msg.get("create").is_some() {
                OpBody::Create
            } else if msg.get("del").is_some() {
                OpBody::Delete
            } else {
                return Err(bad("invalid op message"));
            };
            vec![Request::Op { c: c()?, d: d()?, v: v()?, src, seq, body }]
        }
        "pp" => vec![Request::Ping],
        "ps" | "pu" | "pr" | "p" => {
            let ch = msg
                .get("ch")
                .and_then(Value::as_str)
                .filter(|ch| !ch.is_empty() && ch.len() <= CHANNEL_BYTES_MAX)
                .ok_or_else(|| bad("invalid presence channel"))?
                .to_owned();
            let seq = || msg.get("seq").and_then(Value::as_u64).ok_or_else(|| bad("invalid seq"));
            match action {
                "ps" => vec![Request::PresenceSubscribe { ch, seq: seq()? }],
                "pu" => vec![Request::PresenceUnsubscribe { ch, seq: seq()? }],
                "pr" => vec![Request::PresenceRequest { ch }],
                _ => {
                    let id = msg
                        .get("id")
                        .and_then(Value::as_str)
                        .filter(|id| !id.is_empty() && id.len() <= PRESENCE_ID_BYTES_MAX)
                        .ok_or_else(|| bad("invalid presence id"))?
                        .to_owned();
                    let pv = msg.get("pv").and_then(Value::as_u64).ok_or_else(|| bad("invalid presence version"))?;
                    let optional = |key: &str| match msg.get(key) {
                        None | Some(Value::Null) => Ok(None),
                        Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
                        Some(_) => Err(bad(&format!("invalid {key}"))),
                    };
                    vec![Request::Presence(Presence {
                        ch,
                        id,
                        p: msg.get("p").cloned().unwrap_or(Value::Null),
                        pv,
                        c: optional("c")?,
                        d: optional("d")?,
                        v: v()?,
                        t: optional("t")?,
                    })]
                }
            }
        }
        other => {
            return Err(bad(&format!("unsupported action '{other}' (queries and snapshot requests are not served)")))
        }
    };
    Ok(Parsed { requests, echo: value })
}

fn name(msg: &Map<String, Value>, key: &str) -> Option<String> {
    msg.get(key).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned)
}

/// `null`/absent is "no version"; otherwise a non-negative integer.
fn version(v: Option<&Value>) -> Result<Option<u64>, ()> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or(()),
    }
}

/// Client ids are ours (hex) or a previous one the client hands back; keep them short and
/// printable, and never `yjs` (the src of ops made by Yjs clients).
pub fn valid_src(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s != crate::ot::sequencer::YJS_SRC && s.bytes().all(|b| b.is_ascii_graphic())
}

pub fn handshake(id: &str) -> String {
    json!({"a": "hs", "protocol": PROTOCOL_MAJOR, "protocolMinor": PROTOCOL_MINOR, "id": id, "type": DEFAULT_TYPE_URI})
        .to_string()
}

/// The reply to `ps`/`pu`: the channel and the client's sequence number.
pub fn presence_subscription_reply(action: &str, ch: &str, seq: u64) -> String {
    json!({"a": action, "ch": ch, "seq": seq}).to_string()
}

/// `pr`: asks a client to send its presence on `ch` again.
pub fn presence_request(ch: &str) -> String {
    json!({"a": "pr", "ch": ch}).to_string()
}

/// A presence as relayed to the channel (and echoed to its sender as the acknowledgement),
/// with the sender's client id as `src`.
pub fn presence(msg: &Presence, src: &str) -> String {
    let mut out = json!({"a": "p", "ch": msg.ch, "src": src, "id": msg.id, "p": msg.p, "pv": msg.pv});
    for (key, value) in [("c", &msg.c), ("d", &msg.d), ("t", &msg.t)] {
        if let Some(value) = value {
            out[key] = json!(value);
        }
    }
    if let Some(v) = msg.v {
        out["v"] = json!(v);
    }
    out.to_string()
}

pub fn pong() -> String {
    json!({"a": "pp"}).to_string()
}

/// A fetch or subscribe reply carrying the snapshot.
pub fn snapshot_reply(action: &str, c: &str, d: &str, v: u64, data: &Delta) -> String {
    json!({"a": action, "c": c, "d": d, "data": {"v": v, "type": RICH_TEXT_URI, "data": {"ops": data.to_json()}}})
        .to_string()
}

/// A reply with no data: after ops were sent (versioned fetch/subscribe), or to unsubscribe.
pub fn empty_reply(action: &str, c: &str, d: &str) -> String {
    json!({"a": action, "c": c, "d": d}).to_string()
}

pub fn op(c: &str, d: &str, logged: &LoggedOp) -> String {
    json!({"a": "op", "c": c, "d": d, "v": logged.v, "src": &*logged.src, "seq": logged.seq, "op": logged.op.to_json()})
        .to_string()
}

pub fn ack(c: &str, d: &str, src: &str, seq: u64, v: u64) -> String {
    json!({"a": "op", "c": c, "d": d, "src": src, "seq": seq, "v": v}).to_string()
}

/// ShareDB's error reply: the request, echoed, with `error: {code, message}`.
pub fn error_reply(mut echo: Value, error: &OtError) -> String {
    if !echo.is_object() {
        echo = json!({});
    }
    echo["error"] = json!({"code": error.code(), "message": error.to_string()});
    echo.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bulk_subscribe_with_versions_expands_into_single_requests() {
        let p = parse(r#"{"a":"bs","c":"notes","b":{"t1":3,"t2":5}}"#).unwrap();
        assert_eq!(
            p.requests,
            vec![
                Request::Subscribe { c: "notes".into(), d: "t1".into(), v: Some(3) },
                Request::Subscribe { c: "notes".into(), d: "t2".into(), v: Some(5) },
            ]
        );
        let p = parse(r#"{"a":"bf","c":"notes","b":["t1"]}"#).unwrap();
        assert_eq!(p.requests, vec![Request::Fetch { c: "notes".into(), d: "t1".into(), v: None }]);
    }

    #[test]
    fn an_op_message_keeps_its_src_seq_and_body() {
        let p = parse(r#"{"a":"op","c":"n","d":"t","v":4,"seq":2,"src":"ab12","op":[{"insert":"x"}],"x":{}}"#).unwrap();
        assert_eq!(
            p.requests,
            vec![Request::Op {
                c: "n".into(),
                d: "t".into(),
                v: Some(4),
                src: Some("ab12".into()),
                seq: 2,
                body: OpBody::Edit(json!([{"insert": "x"}]))
            }]
        );
    }

    #[test]
    fn badly_formed_messages_get_an_error_reply_echoing_the_request() {
        for (frame, want) in [
            ("not json", "not JSON"),
            ("[1]", "not an object"),
            (r#"{"c":"n"}"#, "missing action"),
            (r#"{"a":"f","c":"","d":"t"}"#, "invalid collection"),
            (r#"{"a":"f","c":"n","d":"t","v":-1}"#, "invalid version"),
            (r#"{"a":"op","c":"n","d":"t","v":1,"seq":"x","op":[]}"#, "invalid seq"),
            (r#"{"a":"op","c":"n","d":"t","v":1,"seq":1,"src":"yjs","op":[]}"#, "invalid src"),
            (r#"{"a":"op","c":"n","d":"t","v":1,"seq":1}"#, "invalid op message"),
            (r#"{"a":"qf","id":1,"c":"n","q":{}}"#, "unsupported action 'qf'"),
            (r#"{"a":"bs","c":"n","b":{"t":"x"}}"#, "invalid bulk versions"),
        ] {
            let reply: Value = serde_json::from_str(&parse(frame).unwrap_err()).unwrap();
            assert_eq!(reply["error"]["code"], "ERR_MESSAGE_BADLY_FORMED", "{frame}");
            let message = reply["error"]["message"].as_str().unwrap();
            assert!(message.contains(want), "{frame}: {message}");
        }
    }

    #[test]
    fn presence_messages_parse_and_bad_ones_are_refused() {
        let p =
            parse(r#"{"a":"p","ch":"n.t","id":"x1","p":{"index":2,"length":0},"pv":3,"c":"n","d":"t","v":7,"t":"u"}"#)
                .unwrap();
        let Request::Presence(msg) = &p.requests[0] else { panic!("{:?}", p.requests) };
        assert_eq!((msg.ch.as_str(), msg.id.as_str(), msg.pv, msg.v), ("n.t", "x1", 3, Some(7)));
        let relayed: Value = serde_json::from_str(&presence(msg, "src1")).unwrap();
        assert_eq!(
            relayed,
            json!({"a":"p","ch":"n.t","src":"src1","id":"x1","p":{"index":2,"length":0},"pv":3,"c":"n","d":"t","v":7,"t":"u"})
        );
        let p = parse(r#"{"a":"ps","ch":"n.t","seq":4}"#).unwrap();
        assert_eq!(p.requests, vec![Request::PresenceSubscribe { ch: "n.t".into(), seq: 4 }]);
        let long_channel = format!(r#"{{"a":"pr","ch":"{}"}}"#, "x".repeat(CHANNEL_BYTES_MAX + 1));
        for (frame, want) in [
            (r#"{"a":"ps","seq":1}"#, "invalid presence channel"),
            (r#"{"a":"ps","ch":"","seq":1}"#, "invalid presence channel"),
            (long_channel.as_str(), "invalid presence channel"),
            (r#"{"a":"pu","ch":"n.t"}"#, "invalid seq"),
            (r#"{"a":"p","ch":"n.t","pv":1}"#, "invalid presence id"),
            (r#"{"a":"p","ch":"n.t","id":"x","pv":-1}"#, "invalid presence version"),
            (r#"{"a":"p","ch":"n.t","id":"x","pv":1,"c":5}"#, "invalid c"),
            (r#"{"a":"p","ch":"n.t","id":"x","pv":1,"v":"2"}"#, "invalid version"),
        ] {
            let reply: Value = serde_json::from_str(&parse(frame).unwrap_err()).unwrap();
            assert_eq!(reply["error"]["code"], "ERR_MESSAGE_BADLY_FORMED", "{frame}");
            let message = reply["error"]["message"].as_str().unwrap();
            assert!(message.contains(want), "{frame}: {message}");
        }
    }

    #[test]
    fn the_handshake_names_the_clients_default_type() {
        let hs: Value = serde_json::from_str(&handshake("abc")).unwrap();
        assert_eq!(hs["type"], DEFAULT_TYPE_URI);
        assert_eq!(hs["protocol"], 1);
        assert_eq!(hs["id"], "abc");
    }
}
