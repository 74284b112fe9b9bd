//! Who is connecting and what they may do (SPEC §4): JWT verification and document grants.
//! Time is passed in (`now`, Unix seconds); no IO after the key is loaded. Called by `http`
//! at the upgrade and by `main` for `yserve token`.
//!
//! Only the configured key's algorithm is accepted (HS256 for a secret; RS256, ES256 or
//! EdDSA by the public key's type): the `alg` of a token's header is never trusted beyond it.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// Clock skew tolerated on `exp`.
const LEEWAY_SECS: u64 = 5;

/// A secret whose `Debug` never shows it.
#[derive(Clone)]
pub struct Secret(String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_owned()))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    Read,
    Write,
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default)]
    docs: HashMap<String, Access>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    aud: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iss: Option<String>,
}

/// An authenticated user (or the anonymous developer) and their grants.
#[derive(Debug, Clone)]
pub struct Identity {
    pub user: Arc<str>,
    grants: Vec<(String, Access)>,
    /// Unix seconds after which the connection must end (4401); `None` when anonymous.
    pub expires_at: Option<u64>,
}

impl Identity {
    pub fn anonymous() -> Identity {
        Identity { user: "anonymous".into(), grants: vec![("*".into(), Access::Write)], expires_at: None }
    }

    /// The access of the longest pattern matching `doc`: an exact name, or a prefix ending
    /// in `*`. No match, no access.
    pub fn access(&self, doc: &str) -> Option<Access> {
        self.grants
            .iter()
            .filter(|(pattern, _)| match pattern.strip_suffix('*') {
                Some(prefix) => doc.starts_with(prefix),
                None => doc == pattern,
            })
            .max_by_key(|(pattern, _)| pattern.len())
            .map(|(_, access)| *access)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing token")]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("token expired")]
    Expired,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read {path}: {message}")]
    Read { path: String, message: String },
    #[error("{0} is not an RSA, EC (P-256) or Ed25519 public key in PEM form")]
    UnknownKey(String),
    #[error("both --jwt-secret and --jwt-public-key are set; choose one")]
    Both,
}

pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

/// How connections are authenticated.
pub enum Auth {
    /// No key configured: everyone may read and write everything (development mode).
    Anonymous,
    Jwt(Box<Verifier>),
}

pub struct AuthSettings<'a> {
    pub secret: Option<&'a Secret>,
    pub public_key_pem: Option<(&'a str, Vec<u8>)>,
    pub audience: Option<&'a str>,
    pub issuer: Option<&'a str>,
}

impl Auth {
    pub fn new(settings: AuthSettings<'_>) -> Result<Auth, KeyError> {
        let (key, algorithm) = match (settings.secret, settings.public_key_pem) {
            (None, None) => return Ok(Auth::Anonymous),
            (Some(_), Some(_)) => return Err(KeyError::Both),
            (Some(secret), None) => (DecodingKey::from_secret(secret.0.as_bytes()), Algorithm::HS256),
            (None, Some((path, pem))) => {
                if let Ok(k) = DecodingKey::from_rsa_pem(&pem) {
                    (k, Algorithm::RS256)
                } else if let Ok(k) = DecodingKey::from_ec_pem(&pem) {
                    (k, Algorithm::ES256)
                } else if let Ok(k) = DecodingKey::from_ed_pem(&pem) {
                    (k, Algorithm::EdDSA)
                } else {
                    return Err(KeyError::UnknownKey(path.to_owned()));
                }
            }
        };
        let mut validation = Validation::new(algorithm);
        // `exp` is checked against the `now` passed in, so tests control time.
        validation.validate_exp = false;
        // A configured audience or issuer must be present, not just right when present.
        let mut required = vec!["exp", "sub"];
        required.extend(settings.audience.map(|_| "aud"));
        required.extend(settings.issuer.map(|_| "iss"));
        validation.set_required_spec_claims(&required);
        validation.validate_aud = settings.audience.is_some();
        if let Some(aud) = settings.audience {
            validation.set_audience(&[aud]);
        }
        if let Some(iss) = settings.issuer {
            validation.set_issuer(&[iss]);
        }
        Ok(Auth::Jwt(Box::new(Verifier { key, validation })))
    }

    pub fn is_anonymous(&self) -> bool {
        matches!(self, Auth::Anonymous)
    }

    pub fn authenticate(&self, token: Option<&str>, now: u64) -> Result<Identity, AuthError> {
        let Auth::Jwt(verifier) = self else { return Ok(Identity::anonymous()) };
        let token = token.filter(|t| !t.is_empty()).ok_or(AuthError::Missing)?;
        let data = jsonwebtoken::decode::<Claims>(token, &verifier.key, &verifier.validation)
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        let claims = data.claims;
        if claims.exp.saturating_add(LEEWAY_SECS) <= now {
            return Err(AuthError::Expired);
        }
        if claims.sub.is_empty() {
            return Err(AuthError::Invalid("empty sub".into()));
        }
        Ok(Identity {
            user: claims.sub.into(),
            grants: claims.docs.into_iter().collect(),
            expires_at: Some(claims.exp.saturating_add(LEEWAY_SECS)),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("--doc must be PATTERN=read or PATTERN=write, got {0:?}")]
    BadGrant(String),
    #[error("signing failed: {0}")]
    Sign(String),
}

/// Parses `notes/*=write`.
pub fn parse_grant(s: &str) -> Result<(String, Access), IssueError> {
    let (pattern, access) = s.rsplit_once('=').ok_or_else(|| IssueError::BadGrant(s.into()))?;
    let access = match access {
        "read" => Access::Read,
        "write" => Access::Write,
        _ => return Err(IssueError::BadGrant(s.into())),
    };
    Ok((pattern.to_owned(), access))
}

/// Signs an HS256 token (`yserve token`, tests).
pub fn issue(secret: &Secret, sub: &str, grants: &[(String, Access)], expires_at: u64) -> Result<String, IssueError> {
    let claims =
        Claims { sub: sub.to_owned(), exp: expires_at, docs: grants.iter().cloned().collect(), aud: None, iss: None };
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret.0.as_bytes()))
        .map_err(|e| IssueError::Sign(e.to_string()))
}

/// Parses a duration such as `90s`, `30m`, `1h`, `7d` (a bare number is seconds).
pub fn parse_ttl(s: &str) -> Result<u64, String> {
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = digits.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("bad duration unit in {s:?} (use s, m, h or d)")),
    };
    Ok(n * mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> Secret {
        "s3cret".parse().unwrap()
    }

    fn hs256() -> Auth {
        let secret = secret();
        Auth::new(AuthSettings { secret: Some(&secret), public_key_pem: None, audience: None, issuer: None }).unwrap()
    }

    #[test]
    fn longest_matching_pattern_wins_and_no_match_means_no_access() {
        let id = Identity {
            user: "u".into(),
            grants: vec![
                ("notes/*".into(), Access::Write),
                ("notes/secret".into(), Access::Read),
                ("*".into(), Access::Read),
            ],
            expires_at: None,
        };
        assert_eq!(id.access("notes/a"), Some(Access::Write));
        assert_eq!(id.access("notes/secret"), Some(Access::Read));
        assert_eq!(id.access("other"), Some(Access::Read));
        let narrow = Identity { grants: vec![("team/*".into(), Access::Write)], ..id };
        assert_eq!(narrow.access("teams"), None);
        assert_eq!(narrow.access("team/"), Some(Access::Write));
    }

    #[test]
    fn a_valid_token_yields_the_user_and_grants() {
        let token = issue(&secret(), "alice", &[("notes/*".into(), Access::Write)], 1_000).unwrap();
        let id = hs256().authenticate(Some(&token), 900).unwrap();
        assert_eq!(&*id.user, "alice");
        assert_eq!(id.access("notes/x"), Some(Access::Write));
        assert_eq!(id.access("x"), None);
    }

    #[test]
    fn expired_missing_and_forged_tokens_are_refused() {
        let token = issue(&secret(), "alice", &[], 1_000).unwrap();
        assert_eq!(hs256().authenticate(Some(&token), 1_000 + LEEWAY_SECS).err(), Some(AuthError::Expired));
        assert_eq!(hs256().authenticate(None, 0).err(), Some(AuthError::Missing));
        let forged = issue(&"other".parse().unwrap(), "alice", &[], 1_000).unwrap();
        assert!(matches!(hs256().authenticate(Some(&forged), 0), Err(AuthError::Invalid(_))));
        assert!(matches!(hs256().authenticate(Some("not.a.jwt"), 0), Err(AuthError::Invalid(_))));
    }

    #[test]
    fn a_token_signed_with_another_algorithm_is_refused() {
        // `alg: none` and HS512 headers are not in the configured family (HS256 only).
        let claims = r#"{"sub":"mallory","exp":4000000000,"docs":{"*":"write"}}"#;
        use base64::Engine;
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let none = format!("{}.{}.", b64(r#"{"alg":"none","typ":"JWT"}"#), b64(claims));
        assert!(matches!(hs256().authenticate(Some(&none), 0), Err(AuthError::Invalid(_))));
        let hs512 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &serde_json::from_str::<serde_json::Value>(claims).unwrap(),
            &EncodingKey::from_secret(b"s3cret"),
        )
        .unwrap();
        assert!(matches!(hs256().authenticate(Some(&hs512), 0), Err(AuthError::Invalid(_))));
    }

    #[test]
    fn audience_and_issuer_are_checked_when_configured() {
        let secret = secret();
        let auth = Auth::new(AuthSettings {
            secret: Some(&secret),
            public_key_pem: None,
            audience: Some("yserve"),
            issuer: Some("idp"),
        })
        .unwrap();
        let without = issue(&secret, "alice", &[], 4_000_000_000).unwrap();
        assert!(matches!(auth.authenticate(Some(&without), 0), Err(AuthError::Invalid(_))));
        let with = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"sub": "alice", "exp": 4_000_000_000u64, "aud": "yserve", "iss": "idp"}),
            &EncodingKey::from_secret(b"s3cret"),
        )
        .unwrap();
        assert_eq!(&*auth.authenticate(Some(&with), 0).unwrap().user, "alice");
    }

    #[test]
    fn public_keys_select_their_algorithm_and_refuse_the_others() {
        let keys = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys/");
        let read = |f: &str| std::fs::read(format!("{keys}{f}")).unwrap();
        let claims = serde_json::json!({"sub": "alice", "exp": 4_000_000_000u64, "docs": {"*": "write"}});
        for (public, private, alg, encoding) in [
            ("ed.pub", "ed.key", Algorithm::EdDSA, EncodingKey::from_ed_pem as fn(&[u8]) -> _),
            ("ec.pub", "ec8.key", Algorithm::ES256, EncodingKey::from_ec_pem),
            ("rsa.pub", "rsa.key", Algorithm::RS256, EncodingKey::from_rsa_pem),
        ] {
            let auth = Auth::new(AuthSettings {
                secret: None,
                public_key_pem: Some((public, read(public))),
                audience: None,
                issuer: None,
            })
            .unwrap();
            let token = jsonwebtoken::encode(&Header::new(alg), &claims, &encoding(&read(private)).unwrap()).unwrap();
            assert_eq!(&*auth.authenticate(Some(&token), 0).unwrap().user, "alice", "{alg:?}");
            // An HS256 token "signed" with the public key bytes (key confusion) is refused.
            let confused =
                jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(&read(public)))
                    .unwrap();
            assert!(matches!(auth.authenticate(Some(&confused), 0), Err(AuthError::Invalid(_))), "{alg:?}");
        }
        let bad = Auth::new(AuthSettings {
            secret: None,
            public_key_pem: Some(("x", b"not a key".to_vec())),
            audience: None,
            issuer: None,
        });
        assert!(matches!(bad, Err(KeyError::UnknownKey(_))));
    }

    #[test]
    fn grants_and_durations_parse() {
        assert_eq!(parse_grant("notes/*=write").unwrap(), ("notes/*".into(), Access::Write));
        assert_eq!(parse_grant("a=b=read").unwrap(), ("a=b".into(), Access::Read));
        assert!(parse_grant("notes").is_err());
        assert_eq!(parse_ttl("1h").unwrap(), 3600);
        assert_eq!(parse_ttl("90").unwrap(), 90);
        assert!(parse_ttl("1w").is_err());
    }

    #[test]
    fn secrets_do_not_show_in_debug_output() {
        assert_eq!(format!("{:?}", secret()), "***");
    }
}
