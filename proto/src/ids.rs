//! Agent and zone identifiers.
//!
//! Both appear in logs, file names, CMDB keys and (later) MQTT topics, so they are restricted
//! to a conservative alphabet: ASCII letters, digits, `.`, `_` and `-`, 1 to 64 characters,
//! starting with a letter or digit.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

/// Longest identifier accepted.
pub const MAX_ID_LEN: usize = 64;

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{what} is empty")]
    Empty { what: &'static str },
    #[error("{what} {value:?} is longer than {MAX_ID_LEN} characters")]
    TooLong { what: &'static str, value: String },
    #[error(
        "{what} {value:?} contains {bad:?}; use ASCII letters, digits, '.', '_' and '-', starting with a letter or digit"
    )]
    BadChar {
        what: &'static str,
        value: String,
        bad: char,
    },
}

fn validate(what: &'static str, value: &str) -> Result<(), IdError> {
    if value.is_empty() {
        return Err(IdError::Empty { what });
    }
    if value.len() > MAX_ID_LEN {
        return Err(IdError::TooLong {
            what,
            value: value.chars().take(MAX_ID_LEN + 8).collect(),
        });
    }
    for (i, c) in value.chars().enumerate() {
        let ok = c.is_ascii_alphanumeric() || (i > 0 && matches!(c, '.' | '_' | '-'));
        if !ok {
            return Err(IdError::BadChar {
                what,
                value: value.to_owned(),
                bad: c,
            });
        }
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Validates and wraps an identifier.
            pub fn new(value: impl Into<String>) -> Result<Self, IdError> {
                let value = value.into();
                validate($what, &value)?;
                Ok(Self(value))
            }

            /// The identifier as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let value = String::deserialize(d)?;
                Self::new(value).map_err(serde::de::Error::custom)
            }
        }
    };
}

id_type!(
    /// The name an agent signs its envelopes as (for example `gw-line1`).
    AgentId,
    "agent id"
);
id_type!(
    /// An IEC 62443 zone (for example `cell-1`).
    ZoneId,
    "zone"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_names() {
        assert!(AgentId::new("gw-line1").is_ok());
        assert!(ZoneId::new("cell_1.north").is_ok());
    }

    #[test]
    fn refuses_bad_names_with_a_reason() {
        assert_eq!(AgentId::new(""), Err(IdError::Empty { what: "agent id" }));
        assert!(matches!(
            ZoneId::new("a/b"),
            Err(IdError::BadChar { bad: '/', .. })
        ));
        assert!(matches!(
            ZoneId::new("-a"),
            Err(IdError::BadChar { bad: '-', .. })
        ));
        assert!(matches!(
            AgentId::new("x".repeat(65)),
            Err(IdError::TooLong { .. })
        ));
        let msg = ZoneId::new("cell 1").unwrap_err().to_string();
        assert!(msg.contains("zone \"cell 1\" contains ' '"), "{msg}");
    }

    #[test]
    fn deserialisation_validates() {
        let bytes = crate::cbor::encode(&"bad zone").unwrap();
        assert!(crate::cbor::decode::<ZoneId>(&bytes).is_err());
    }
}
