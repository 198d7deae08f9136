//! The registry API's refusals, in Confluent's shape: `{"error_code": N, "message": "..."}`
//! with the HTTP status in the code's first three digits (40401 is a 404), so clients written
//! for Confluent's registry react to them as they would there.

use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};

use crate::compat::Compatibility;
use crate::encoding::truncate;

/// The media type of every answer.
pub(crate) const MEDIA_TYPE: &str = "application/vnd.schemaregistry.v1+json";

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    pub code: u32,
    pub message: String,
}

impl ApiError {
    pub fn new(code: u32, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
        }
    }

    /// The code's first three digits (the code itself when it has three).
    pub fn status(&self) -> StatusCode {
        let status = if self.code >= 1000 {
            self.code / 100
        } else {
            self.code
        };
        u16::try_from(status)
            .ok()
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    pub fn subject_not_found(subject: &str) -> ApiError {
        ApiError::new(40401, format!("Subject '{subject}' not found."))
    }

    pub fn version_not_found(subject: &str, version: i32) -> ApiError {
        ApiError::new(
            40402,
            format!("Version {version} not found for subject '{subject}'."),
        )
    }

    pub fn schema_not_found() -> ApiError {
        ApiError::new(40403, "Schema not found")
    }

    pub fn id_not_found(id: impl std::fmt::Display) -> ApiError {
        ApiError::new(40403, format!("Schema {id} not found"))
    }

    pub fn soft_deleted(subject: &str, version: i32) -> ApiError {
        ApiError::new(
            40406,
            format!("Subject '{subject}' Version {version} was soft deleted already"),
        )
    }

    pub fn no_subject_level(subject: &str) -> ApiError {
        ApiError::new(
            40408,
            format!("Subject '{subject}' does not have subject-level compatibility configured"),
        )
    }

    pub fn incompatible(subject: &str, level: Compatibility, messages: &[String]) -> ApiError {
        ApiError::new(
            409,
            truncate(
                &format!(
                    "Schema being registered is incompatible with an earlier schema for subject \"{subject}\" (compatibility {level}), details: [{}]",
                    messages.join("; ")
                ),
                8000,
            ),
        )
    }

    pub fn invalid_schema(message: impl Into<String>) -> ApiError {
        ApiError::new(42201, message)
    }

    pub fn invalid_version(text: &str) -> ApiError {
        ApiError::new(
            42202,
            format!(
                "The specified version '{}' is not a valid version id. Allowed values are between [1, 2^31-1] and the string \"latest\"",
                truncate(text, 100)
            ),
        )
    }

    pub fn invalid_level(text: &str) -> ApiError {
        ApiError::new(
            42203,
            format!(
                "Invalid compatibility level '{}'. Valid values are: BACKWARD, BACKWARD_TRANSITIVE, FORWARD, FORWARD_TRANSITIVE, FULL, FULL_TRANSITIVE, NONE",
                truncate(text, 100)
            ),
        )
    }

    /// A body of the wrong shape (a field missing or of the wrong type).
    pub fn unprocessable(message: impl Into<String>) -> ApiError {
        ApiError::new(422, message)
    }

    /// A body that is not JSON at all.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, message)
    }

    /// Kafka failed under a write: the registry could not store the change.
    pub fn store(message: impl Into<String>) -> ApiError {
        ApiError::new(
            50001,
            format!("Error in the backend data store: {}", message.into()),
        )
    }

    /// The write reached Kafka but this replica has not read it back in time.
    pub fn timeout(message: impl Into<String>) -> ApiError {
        ApiError::new(50002, format!("Operation timed out: {}", message.into()))
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(500, format!("Internal error: {}", message.into()))
    }

    pub fn body(&self) -> String {
        serde_json::json!({ "error_code": self.code, "message": self.message }).to_string()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(code = self.code, message = %self.message, "registry request failed");
        }
        (status, [(CONTENT_TYPE, MEDIA_TYPE)], self.body()).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_is_the_first_three_digits() {
        assert_eq!(
            ApiError::subject_not_found("s").status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            ApiError::invalid_schema("x").status(),
            StatusCode::UNPROCESSABLE_ENTITY
        );
        assert_eq!(ApiError::new(409, "x").status(), StatusCode::CONFLICT);
        assert_eq!(
            ApiError::store("x").status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(
            ApiError::new(413, "x").status(),
            StatusCode::PAYLOAD_TOO_LARGE
        );
        assert_eq!(
            ApiError::new(7, "x").status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }

    #[test]
    fn the_body_is_confluents_shape() {
        let body: serde_json::Value =
            serde_json::from_str(&ApiError::no_subject_level("s").body()).unwrap();
        assert_eq!(body["error_code"], 40408);
        assert_eq!(
            body["message"],
            "Subject 's' does not have subject-level compatibility configured"
        );
        assert_eq!(body.as_object().map(|o| o.len()), Some(2));
    }
}
