//! ExecSync; Exec, Attach and PortForward (streaming) answer Unimplemented until the
//! streaming server lands.

use std::sync::Arc;

use vessel_protocols::cri;

use crate::runtime::{Runtime, RuntimeError};

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

fn streaming(rpc: &str) -> RuntimeError {
    RuntimeError::Unimplemented(format!(
        "{rpc}: vessel has no streaming server yet (use ExecSync)"
    ))
}

pub async fn exec(
    _: &Arc<Runtime>,
    _: cri::ExecRequest,
) -> Result<cri::ExecResponse, RuntimeError> {
    Err(streaming("Exec"))
}

pub async fn attach(
    _: &Arc<Runtime>,
    _: cri::AttachRequest,
) -> Result<cri::AttachResponse, RuntimeError> {
    Err(streaming("Attach"))
}

pub async fn port_forward(
    _: &Arc<Runtime>,
    _: cri::PortForwardRequest,
) -> Result<cri::PortForwardResponse, RuntimeError> {
    Err(streaming("PortForward"))
}
