//! A strict `application/x-www-form-urlencoded` extractor.
//!
//! The usual decoders are lenient: `%zz` passes through literally and invalid UTF-8 becomes
//! U+FFFD, silently changing what a person typed. Here both are a 400 with a clear message, so
//! nothing is saved that differs from what was sent.

use poem::{FromRequest, Request, RequestBody};
use serde::de::DeserializeOwned;

use crate::error::AppError;

pub struct StrictForm<T>(pub T);

impl<'a, T: DeserializeOwned> FromRequest<'a> for StrictForm<T> {
    async fn from_request(req: &'a Request, body: &mut RequestBody) -> poem::Result<Self> {
        let content_type = req.content_type().unwrap_or("");
        if !content_type.starts_with("application/x-www-form-urlencoded") {
            return Err(AppError::BadRequest(
                "Send the form as application/x-www-form-urlencoded.".into(),
            )
            .into());
        }
        let bytes =
            body.take()?.into_bytes().await.map_err(|_| {
                AppError::BadRequest("The form could not be read completely.".into())
            })?;
        validate(&bytes)?;
        serde_urlencoded::from_bytes(&bytes)
            .map(StrictForm)
            .map_err(|e| AppError::BadRequest(format!("The form is not valid: {e}.")).into())
    }
}

/// Every `%` starts two hex digits, and every decoded value is valid UTF-8.
fn validate(bytes: &[u8]) -> Result<(), AppError> {
    for pair in bytes.split(|b| *b == b'&') {
        let mut decoded = Vec::with_capacity(pair.len());
        let mut i = 0;
        while i < pair.len() {
            match pair[i] {
                b'%' => {
                    let hex = pair
                        .get(i + 1..i + 3)
                        .and_then(|h| std::str::from_utf8(h).ok());
                    let byte = hex
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                        .ok_or_else(|| {
                            AppError::BadRequest(
                                "The form has a malformed percent-encoding.".into(),
                            )
                        })?;
                    decoded.push(byte);
                    i += 3;
                }
                b'+' => {
                    decoded.push(b' ');
                    i += 1;
                }
                other => {
                    decoded.push(other);
                    i += 1;
                }
            }
        }
        if std::str::from_utf8(&decoded).is_err() {
            return Err(AppError::BadRequest(
                "The form is not valid UTF-8 text.".into(),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::validate;

    #[test]
    fn accepts_well_formed_forms() {
        assert!(validate(b"message=caf%C3%A9+au+lait&csrf_token=abc").is_ok());
        assert!(validate(b"").is_ok());
    }

    #[test]
    fn rejects_bad_percent_encoding_and_invalid_utf8() {
        assert!(validate(b"message=%zz").is_err());
        assert!(validate(b"message=%4").is_err());
        assert!(validate(b"message=%FF%FE").is_err());
        assert!(validate(b"message=\xff").is_err());
    }
}
