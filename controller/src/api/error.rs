//! API errors as CloudStack reports them: HTTP status = `errorcode`, `cserrorcode` names the
//! Java exception class CKS would have thrown, `errortext` is CKS's message (cks-reference §5).
//! This is the one place where the controller's internal errors become API errors.

use serde_json::{Value, json};

use crate::settings::SettingsError;
use crate::store::StoreError;

/// One API error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {text}")]
pub struct ApiError {
    /// `errorcode`, also the HTTP status.
    pub code: u16,
    /// `cserrorcode`; absent for authentication failures, as in CloudStack.
    pub cs_code: Option<u32>,
    /// `errortext`.
    pub text: String,
}

// === impl ApiError ===

impl ApiError {
    /// An error with explicit codes.
    pub fn new(code: u16, cs_code: Option<u32>, text: impl Into<String>) -> Self {
        Self {
            code,
            cs_code,
            text: text.into(),
        }
    }

    /// 401: unknown API key, bad signature or expired request (CloudStack's wording).
    pub fn unauthorized() -> Self {
        Self::new(
            401,
            None,
            "unable to verify user credentials and/or request signature",
        )
    }

    /// 431 `InvalidParameterValueException`.
    pub fn param(text: impl Into<String>) -> Self {
        Self::new(431, Some(4350), text)
    }

    /// 431 for missing required parameters, with CloudStack's wording.
    pub fn missing(command: &str, names: &[&str]) -> Self {
        Self::param(format!(
            "Unable to execute API command {} due to missing parameter {}",
            command.to_lowercase(),
            names.join(", ")
        ))
    }

    /// 432: the command does not exist or the caller may not use it.
    pub fn unknown_command(command: &str, user_id: &str) -> Self {
        Self::new(
            432,
            Some(9999),
            format!(
                "The given command:{command} does not exist or it is not available for user with id:{user_id}"
            ),
        )
    }

    /// 530 `CloudRuntimeException`: most CKS failures.
    pub fn internal(text: impl Into<String>) -> Self {
        Self::new(530, Some(4250), text)
    }

    /// 531 `PermissionDeniedException`.
    pub fn permission(text: impl Into<String>) -> Self {
        Self::new(531, Some(4365), text)
    }

    /// 536 `ResourceInUseException`.
    pub fn in_use(text: impl Into<String>) -> Self {
        Self::new(536, Some(4375), text)
    }

    /// The error object (without the `<command>response` wrapper).
    pub fn body(&self) -> Value {
        let mut body = json!({
            "uuidList": [],
            "errorcode": self.code,
            "errortext": self.text,
        });
        if let Some(cs_code) = self.cs_code {
            body["cserrorcode"] = json!(cs_code);
        }
        body
    }
}

impl From<&crate::cloudstack::CloudStackError> for ApiError {
    /// CloudStack's own refusal keeps its code and text (the caller asked for something
    /// CloudStack will not do); anything else is the controller's internal error.
    fn from(err: &crate::cloudstack::CloudStackError) -> Self {
        use crate::cloudstack::CloudStackError;
        match err {
            CloudStackError::Api {
                errorcode,
                errortext,
                ..
            }
            | CloudStackError::Job {
                errorcode,
                errortext,
                ..
            } => ApiError::new(*errorcode, Some(4250), errortext.clone()),
            other => ApiError::internal(crate::error_chain(other)),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        // The cause chain goes to the log; the caller learns that it is ours, not theirs.
        tracing::error!(error = %crate::error_chain(&err), "store failure");
        ApiError::internal(format!("internal error: {err}"))
    }
}

impl From<SettingsError> for ApiError {
    fn from(err: SettingsError) -> Self {
        match err {
            SettingsError::Store(err) => err.into(),
            other => ApiError::param(other.to_string()),
        }
    }
}
