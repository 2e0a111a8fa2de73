//! ExecSync; Exec, Attach and PortForward, which check the request and hand back a URL of the
//! streaming server (`crate::streaming`) with a single-use token.

use std::sync::Arc;

use vessel_protocols::cri;

use crate::runtime::{Runtime, RuntimeError};
use crate::streaming::cache::Pending;
use crate::streaming::StreamingServer;

pub async fn exec_sync(
    rt: &Arc<Runtime>,
    req: cri::ExecSyncRequest,
) -> Result<cri::ExecSyncResponse, RuntimeError> {
    let out = rt
        .exec
        .exec_sync(&req.container_id, req.cmd, req.timeout)
        .await?;
    Ok(cri::ExecSyncResponse {
        stdout: out.stdout,
        stderr: out.stderr,
        exit_code: out.exit_code,
    })
}

/// The checks kubelet's streaming library makes of an Exec or Attach request.
fn check_streams(
    id: &str,
    stdin: bool,
    stdout: bool,
    stderr: bool,
    tty: bool,
) -> Result<(), RuntimeError> {
    if id.is_empty() {
        return Err(RuntimeError::invalid("container_id", "missing"));
    }
    if tty && stderr {
        return Err(RuntimeError::invalid(
            "stderr",
            "tty and stderr cannot both be true (a terminal merges stderr into stdout)",
        ));
    }
    if !(stdin || stdout || stderr) {
        return Err(RuntimeError::invalid(
            "stdin/stdout/stderr",
            "one of stdin, stdout, or stderr must be set",
        ));
    }
    Ok(())
}

pub async fn exec(
    rt: &Arc<Runtime>,
    streaming: &StreamingServer,
    req: cri::ExecRequest,
) -> Result<cri::ExecResponse, RuntimeError> {
    check_streams(
        &req.container_id,
        req.stdin,
        req.stdout,
        req.stderr,
        req.tty,
    )?;
    if req.cmd.is_empty() {
        return Err(RuntimeError::invalid("cmd", "empty"));
    }
    rt.exec.check_streamed(&req.container_id)?;
    let url = streaming.url(Pending::Exec(req))?;
    Ok(cri::ExecResponse { url })
}

pub async fn attach(
    rt: &Arc<Runtime>,
    streaming: &StreamingServer,
    req: cri::AttachRequest,
) -> Result<cri::AttachResponse, RuntimeError> {
    check_streams(
        &req.container_id,
        req.stdin,
        req.stdout,
        req.stderr,
        req.tty,
    )?;
    rt.containers
        .check_attach(&req.container_id, req.stdin, req.tty)?;
    let url = streaming.url(Pending::Attach(req))?;
    Ok(cri::AttachResponse { url })
}

pub async fn port_forward(
    rt: &Arc<Runtime>,
    streaming: &StreamingServer,
    req: cri::PortForwardRequest,
) -> Result<cri::PortForwardResponse, RuntimeError> {
    if req.pod_sandbox_id.is_empty() {
        return Err(RuntimeError::invalid("pod_sandbox_id", "missing"));
    }
    if let Some(bad) = req.port.iter().find(|p| !(1..=65535).contains(*p)) {
        return Err(RuntimeError::invalid(
            "port",
            format!("{bad} is not a TCP port"),
        ));
    }
    rt.pods.check_port_forward(&req.pod_sandbox_id)?;
    let url = streaming.url(Pending::PortForward(req))?;
    Ok(cri::PortForwardResponse { url })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_requests_are_checked_as_kubelet_does() {
        assert!(check_streams("c", false, true, true, false).is_ok());
        let e = check_streams("", false, true, false, false).unwrap_err();
        assert!(e.to_string().contains("container_id"));
        let e = check_streams("c", true, true, true, true).unwrap_err();
        assert!(e.to_string().contains("tty and stderr"));
        let e = check_streams("c", false, false, false, false).unwrap_err();
        assert!(e.to_string().contains("one of stdin, stdout, or stderr"));
    }
}
