//! CloudStack API errors: the HTTP status equals `errorcode`, `cserrorcode` names the Java
//! exception class (`CSExceptionErrorCode`), `errortext` is the human message.

use serde_json::{Value, json};

/// One API error as CloudStack reports it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code} ({cs_code:?}): {text}")]
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
    fn new(code: u16, cs_code: Option<u32>, text: impl Into<String>) -> Self {
        Self {
            code,
            cs_code,
            text: text.into(),
        }
    }

    /// 401: unknown API key, bad signature or expired request.
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

    /// 431 for a missing required parameter, with CloudStack's wording.
    pub fn missing(command: &str, names: &[&str]) -> Self {
        Self::param(format!(
            "Unable to execute API command {} due to missing parameter {}",
            command.to_lowercase(),
            names.join(", ")
        ))
    }

    /// 432: the command does not exist (or the caller may not use it).
    pub fn unknown_command(command: &str, user_id: &str) -> Self {
        Self::new(
            432,
            Some(9999),
            format!(
                "The given command:{command} does not exist or it is not available for user with id:{user_id}"
            ),
        )
    }

    /// A `ServerApiException` raised by a command class without a cause: `errorcode` as given,
    /// `cserrorcode` 9999 (e.g. 535 `RESOURCE_ALLOCATION_ERROR` for an exceeded resource limit at
    /// deploy, which `DeployVMCmd.create` rethrows this way).
    pub fn server(code: u16, text: impl Into<String>) -> Self {
        Self::new(code, Some(9999), text)
    }

    /// 530 `CloudRuntimeException`.
    pub fn internal(text: impl Into<String>) -> Self {
        Self::new(530, Some(4250), text)
    }

    /// 531 `PermissionDeniedException`.
    pub fn permission(text: impl Into<String>) -> Self {
        Self::new(531, Some(4365), text)
    }

    /// 533 `InsufficientServerCapacityException`.
    pub fn capacity(text: impl Into<String>) -> Self {
        Self::new(533, Some(4335), text)
    }

    /// 533 `InsufficientAddressCapacityException`.
    pub fn address_capacity(text: impl Into<String>) -> Self {
        Self::new(533, Some(4320), text)
    }

    /// 536 `ResourceInUseException`.
    pub fn in_use(text: impl Into<String>) -> Self {
        Self::new(536, Some(4375), text)
    }

    /// 537 `NetworkRuleConflictException`.
    pub fn rule_conflict(text: impl Into<String>) -> Self {
        Self::new(537, Some(4360), text)
    }

    /// An error with an explicit code, as configured by fault injection.
    pub fn injected(code: u16, text: impl Into<String>) -> Self {
        let cs_code = match code {
            431 => 4350,
            531 => 4365,
            533 => 4335,
            536 => 4375,
            537 => 4360,
            530 => 4250,
            _ => 9999,
        };
        Self::new(code, Some(cs_code), text)
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
