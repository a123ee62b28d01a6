//! The versioned envelope of every handoff message.
//!
//! The old and the new process may be different releases, so every message
//! says which state format wrote it. A reader takes its own format and the
//! one before it (fields added since carry `#[serde(default)]`), and refuses
//! anything newer with a message that says what to do: the running process
//! then goes on serving.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The state format this binary writes.
pub const FORMAT: u32 = 1;
/// The oldest state format this binary reads (the one before `FORMAT` once
/// there is one).
pub const OLDEST_READABLE_FORMAT: u32 = 1;

#[derive(Debug, Error)]
pub enum FormatError {
    #[error(
        "state format {found} (written by snapnet {writer}) is newer than this binary's \
         {FORMAT}: upgrade to a binary at least as new as the running one"
    )]
    Newer { found: u32, writer: String },
    #[error(
        "state format {found} (written by snapnet {writer}) is older than this binary reads \
         (oldest {OLDEST_READABLE_FORMAT}): upgrade through an intermediate release"
    )]
    Older { found: u32, writer: String },
    #[error("expected a {expected} message, got {found}")]
    UnexpectedKind { expected: String, found: String },
    #[error("cannot write a {kind} message: {source}")]
    Unwritable {
        kind: String,
        source: serde_json::Error,
    },
    #[error("malformed {kind} message: {source}")]
    Malformed {
        kind: String,
        source: serde_json::Error,
    },
}

/// What travels on the wire: the body with who wrote it and in which format.
#[derive(Serialize)]
struct Envelope<'a, T> {
    format: u32,
    writer: &'a str,
    kind: &'a str,
    body: &'a T,
}

/// The envelope's fields a reader checks before it trusts the body.
#[derive(Deserialize)]
struct Header {
    format: u32,
    #[serde(default)]
    writer: String,
    kind: String,
}

#[derive(Deserialize)]
struct Body<T> {
    body: T,
}

/// The bytes of a `kind` message carrying `body`, in this binary's format.
pub fn encode<T: Serialize>(kind: &str, body: &T) -> Result<Vec<u8>, FormatError> {
    serde_json::to_vec(&Envelope {
        format: FORMAT,
        writer: crate::VERSION,
        kind,
        body,
    })
    .map_err(|source| FormatError::Unwritable {
        kind: kind.to_string(),
        source,
    })
}

/// Reads a `kind` message: the format is checked first, then the kind, and
/// only then is the body parsed.
pub fn decode<T: DeserializeOwned>(kind: &str, bytes: &[u8]) -> Result<T, FormatError> {
    let malformed = |source| FormatError::Malformed {
        kind: kind.to_string(),
        source,
    };
    let header: Header = serde_json::from_slice(bytes).map_err(malformed)?;
    if header.format > FORMAT {
        return Err(FormatError::Newer {
            found: header.format,
            writer: header.writer,
        });
    }
    if header.format < OLDEST_READABLE_FORMAT {
        return Err(FormatError::Older {
            found: header.format,
            writer: header.writer,
        });
    }
    if header.kind != kind {
        return Err(FormatError::UnexpectedKind {
            expected: kind.to_string(),
            found: header.kind,
        });
    }
    let b: Body<T> = serde_json::from_slice(bytes).map_err(malformed)?;
    Ok(b.body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Hello {
        version: String,
        engines: Vec<u32>,
    }

    fn hello() -> Hello {
        Hello {
            version: "x".into(),
            engines: vec![1, 2, 3],
        }
    }

    #[test]
    fn a_message_reads_back_as_written() {
        let bytes = encode("hello", &hello()).unwrap();
        assert_eq!(decode::<Hello>("hello", &bytes).unwrap(), hello());
    }

    #[test]
    fn a_newer_format_is_refused_with_what_to_do() {
        let bytes = serde_json::to_vec(&serde_json::json!({
            "format": FORMAT + 1, "writer": "9.9.9", "kind": "hello",
            "body": { "something": "new" }
        }))
        .unwrap();
        let e = decode::<Hello>("hello", &bytes).unwrap_err();
        assert!(matches!(e, FormatError::Newer { found, .. } if found == FORMAT + 1));
        let text = e.to_string();
        assert!(
            text.contains("9.9.9") && text.contains("at least as new"),
            "{text}"
        );
    }

    #[test]
    fn a_format_below_the_oldest_readable_is_refused() {
        let bytes = serde_json::to_vec(&serde_json::json!({
            "format": OLDEST_READABLE_FORMAT - 1, "writer": "0.0.1", "kind": "hello",
            "body": hello()
        }))
        .unwrap();
        assert!(matches!(
            decode::<Hello>("hello", &bytes),
            Err(FormatError::Older { found: 0, .. })
        ));
    }

    #[test]
    fn the_kind_is_checked_before_the_body() {
        let bytes = encode("engine", &17u32).unwrap();
        let e = decode::<Hello>("hello", &bytes).unwrap_err();
        assert!(matches!(e, FormatError::UnexpectedKind { .. }), "{e}");
    }

    #[test]
    fn a_body_that_does_not_fit_is_malformed_not_a_panic() {
        let bytes = encode("hello", &"not a hello").unwrap();
        assert!(matches!(
            decode::<Hello>("hello", &bytes),
            Err(FormatError::Malformed { .. })
        ));
        assert!(matches!(
            decode::<Hello>("hello", b"\xff{"),
            Err(FormatError::Malformed { .. })
        ));
    }
}
