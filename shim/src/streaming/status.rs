//! How a remote command ended, as its error stream says it. The v4 protocols (and v5) write a
//! `metav1.Status` object in JSON, as kubelet does; v2 and v3 write the failure's message as
//! plain text and nothing on success; v1 writes nothing (its error stream is reset).

use serde_json::json;

/// How an exec or attach ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// The command exited with a non-zero code (or was killed: 128 + signal); the message
    /// says what ran.
    ExitCode {
        code: i32,
        message: String,
    },
    /// Vessel could not run or follow the command.
    Internal(String),
}

/// What the error stream carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusFormat {
    /// `metav1.Status` JSON (v4, v5).
    Json,
    /// The failure message as text (v2, v3, and the unversioned WebSocket protocols).
    Text,
    /// Nothing (v1 over SPDY).
    None,
}

impl Outcome {
    /// The exit of `cmd`: success for 0, else [`Outcome::ExitCode`] with kubelet's message.
    pub fn from_exit(cmd: &[String], code: i32) -> Self {
        if code == 0 {
            return Outcome::Success;
        }
        Outcome::ExitCode {
            code,
            message: format!(
                "command terminated with non-zero exit code: error executing command {cmd:?}, exit code {code}"
            ),
        }
    }

    /// The bytes for the error stream; empty means write nothing.
    pub fn encode(&self, format: StatusFormat) -> Vec<u8> {
        match (format, self) {
            (StatusFormat::None, _) | (StatusFormat::Text, Outcome::Success) => Vec::new(),
            (StatusFormat::Text, Outcome::ExitCode { message, .. }) => message.clone().into_bytes(),
            (StatusFormat::Text, Outcome::Internal(message)) => {
                format!("Internal error occurred: {message}").into_bytes()
            }
            (StatusFormat::Json, outcome) => outcome.status().to_string().into_bytes(),
        }
    }

    /// The `metav1.Status` object.
    fn status(&self) -> serde_json::Value {
        match self {
            Outcome::Success => json!({"metadata": {}, "status": "Success"}),
            Outcome::ExitCode { code, message } => json!({
                "metadata": {},
                "status": "Failure",
                "message": message,
                "reason": "NonZeroExitCode",
                "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
            }),
            Outcome::Internal(message) => json!({
                "metadata": {},
                "status": "Failure",
                "message": format!("Internal error occurred: {message}"),
                "reason": "InternalError",
                "details": {"causes": [{"message": message}]},
                "code": 500,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_status_objects() {
        let ok: serde_json::Value =
            serde_json::from_slice(&Outcome::Success.encode(StatusFormat::Json)).unwrap();
        assert_eq!(ok, json!({"metadata": {}, "status": "Success"}));
        let cmd = vec!["sh".to_string(), "-c".into(), "exit 3".into()];
        let failed = Outcome::from_exit(&cmd, 3);
        let v: serde_json::Value =
            serde_json::from_slice(&failed.encode(StatusFormat::Json)).unwrap();
        assert_eq!(v["status"], "Failure");
        assert_eq!(v["reason"], "NonZeroExitCode");
        assert_eq!(v["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(v["details"]["causes"][0]["message"], "3");
        assert_eq!(Outcome::from_exit(&cmd, 0), Outcome::Success);
        let internal: serde_json::Value =
            serde_json::from_slice(&Outcome::Internal("boom".into()).encode(StatusFormat::Json))
                .unwrap();
        assert_eq!(internal["code"], 500);
        assert_eq!(internal["reason"], "InternalError");
    }

    #[test]
    fn older_protocols_write_text_or_nothing() {
        let failed = Outcome::from_exit(&["false".to_string()], 1);
        assert!(Outcome::Success.encode(StatusFormat::Text).is_empty());
        assert!(String::from_utf8(failed.encode(StatusFormat::Text))
            .unwrap()
            .contains("exit code 1"));
        assert!(failed.encode(StatusFormat::None).is_empty());
    }
}
