//! Rendering errors for logs and replies. The error types themselves live with the code
//! that fails (`container::ContainerError`, `sandbox::SandboxError`, …) and meet in
//! `rpc::error::AgentError`, where they become ttrpc statuses.

/// Renders an error and all its sources as `outer: inner: root`.
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_joins_sources() {
        let io = std::io::Error::other("disk on fire");
        #[derive(Debug, thiserror::Error)]
        #[error("write config")]
        struct Outer(#[source] std::io::Error);
        assert_eq!(chain(&Outer(io)), "write config: disk on fire");
    }
}
