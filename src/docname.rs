//! `DocName`: a document name parsed at the edge (SPEC §2). Pure; no IO.
//!
//! The stock y-websocket client builds its URL as `serverUrl + '/' + roomname` without
//! encoding; the WebSocket library percent-encodes what a URL path cannot carry (non-ASCII,
//! spaces), so the server percent-decodes the whole path after the first `/`.

use std::fmt;
use std::sync::Arc;

use percent_encoding::percent_decode_str;

/// Longest document name, in bytes of UTF-8.
pub const DOC_NAME_BYTES_MAX: usize = 512;

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DocName(Arc<str>);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DocNameError {
    #[error("document name is empty")]
    Empty,
    #[error("document name is {len} bytes, more than {max}")]
    TooLong { len: usize, max: usize },
    #[error("document name is not UTF-8 once percent-decoded")]
    NotUtf8,
    #[error("document name contains a control character")]
    ControlCharacter,
}

impl DocName {
    /// Parses an already decoded name.
    pub fn new(name: &str) -> Result<Self, DocNameError> {
        if name.is_empty() {
            return Err(DocNameError::Empty);
        }
        if name.len() > DOC_NAME_BYTES_MAX {
            return Err(DocNameError::TooLong { len: name.len(), max: DOC_NAME_BYTES_MAX });
        }
        if name.chars().any(char::is_control) {
            return Err(DocNameError::ControlCharacter);
        }
        Ok(DocName(name.into()))
    }

    /// Parses the raw (still percent-encoded) URL path of a document connection, `/<name>`.
    pub fn from_url_path(path: &str) -> Result<Self, DocNameError> {
        let raw = path.strip_prefix('/').unwrap_or(path);
        let decoded = percent_decode_str(raw).decode_utf8().map_err(|_| DocNameError::NotUtf8)?;
        Self::new(&decoded)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn as_arc(&self) -> &Arc<str> {
        &self.0
    }
}

impl fmt::Display for DocName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for DocName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_name_is_the_path_after_the_first_slash() {
        assert_eq!(DocName::from_url_path("/notes").unwrap().as_str(), "notes");
    }

    #[test]
    fn name_may_contain_slashes() {
        assert_eq!(DocName::from_url_path("/team/a/b").unwrap().as_str(), "team/a/b");
        // `ws://host/` + '/' + name gives a leading slash that belongs to the name.
        assert_eq!(DocName::from_url_path("//x").unwrap().as_str(), "/x");
    }

    #[test]
    fn percent_encoded_utf8_is_decoded() {
        let name = DocName::from_url_path("/caf%C3%A9/%E6%97%A5%E8%A8%98%20one").unwrap();
        assert_eq!(name.as_str(), "café/日記 one");
    }

    #[test]
    fn empty_name_is_refused() {
        assert_eq!(DocName::from_url_path("/"), Err(DocNameError::Empty));
        assert_eq!(DocName::from_url_path(""), Err(DocNameError::Empty));
    }

    #[test]
    fn invalid_utf8_is_refused() {
        assert_eq!(DocName::from_url_path("/%FF%FE"), Err(DocNameError::NotUtf8));
    }

    #[test]
    fn control_characters_are_refused() {
        assert_eq!(DocName::from_url_path("/a%0Ab"), Err(DocNameError::ControlCharacter));
        assert_eq!(DocName::from_url_path("/a%00"), Err(DocNameError::ControlCharacter));
        assert_eq!(DocName::from_url_path("/a%7F"), Err(DocNameError::ControlCharacter));
    }

    #[test]
    fn length_is_counted_in_utf8_bytes() {
        let ok = "é".repeat(256); // 512 bytes
        assert!(DocName::new(&ok).is_ok());
        let long = format!("{ok}x");
        assert_eq!(DocName::new(&long), Err(DocNameError::TooLong { len: 513, max: 512 }));
    }
}
