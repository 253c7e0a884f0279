//! A wrapper that keeps credentials out of logs: its `Debug` and `Display` print `[redacted]`.
//! It owns the wrapping only; code must not take the value out except to send it where it belongs.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A secret value (a bearer token, a key). Read it with [`Secret::expose`], deliberately.
///
/// ```
/// use tka_core::Secret;
/// let token = Secret::new(String::from("eyJhbGciOi..."));
/// assert_eq!(format!("{token:?} {token}"), "[redacted] [redacted]");
/// assert_eq!(token.expose(), "eyJhbGciOi...");
/// ```
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    /// Wraps a secret value.
    pub fn new(value: T) -> Self {
        Self(value)
    }

    /// The secret itself. Call sites of this are the places to audit.
    pub fn expose(&self) -> &T {
        &self.0
    }

    /// Unwraps the secret.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> From<T> for Secret<T> {
    fn from(value: T) -> Self {
        Self(value)
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl<T> fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}
