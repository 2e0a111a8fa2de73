//! ExecProcess, SignalProcess, WaitProcess, WriteStdin, CloseStdin, ReadStdout/ReadStderr,
//! TtyWinResize.

use vessel_protocols::agent as api;

use super::error::Result;
use super::{convert, AgentService};
use crate::container::{ExecParams, Stream};

pub async fn exec(svc: &AgentService, req: api::ExecProcessRequest) -> Result<api::Empty> {
    let params = ExecParams {
        container_id: req.container_id,
        exec_id: req.exec_id,
        process_json: req.process_json,
        stdin: req.stdin,
    };
    svc.containers.exec(params).await?;
    Ok(api::Empty::new())
}

pub async fn signal(svc: &AgentService, req: api::SignalProcessRequest) -> Result<api::Empty> {
    svc.containers
        .signal(&req.container_id, &req.exec_id, req.signal, req.all)?;
    Ok(api::Empty::new())
}

pub async fn wait(
    svc: &AgentService,
    req: api::WaitProcessRequest,
) -> Result<api::WaitProcessResponse> {
    let exit = svc.containers.wait(&req.container_id, &req.exec_id).await?;
    Ok(convert::wait_response(exit))
}

pub async fn write_stdin(
    svc: &AgentService,
    req: api::WriteStdinRequest,
) -> Result<api::WriteStdinResponse> {
    let n = svc
        .containers
        .write_stdin(&req.container_id, &req.exec_id, &req.data)
        .await?;
    let mut r = api::WriteStdinResponse::new();
    r.len = u32::try_from(n).unwrap_or(u32::MAX);
    Ok(r)
}

pub async fn close_stdin(svc: &AgentService, req: api::CloseStdinRequest) -> Result<api::Empty> {
    svc.containers
        .close_stdin(&req.container_id, &req.exec_id)
        .await?;
    Ok(api::Empty::new())
}

pub async fn read_stdout(
    svc: &AgentService,
    req: api::ReadStreamRequest,
) -> Result<api::ReadStreamResponse> {
    read(svc, req, Stream::Stdout).await
}

pub async fn read_stderr(
    svc: &AgentService,
    req: api::ReadStreamRequest,
) -> Result<api::ReadStreamResponse> {
    read(svc, req, Stream::Stderr).await
}

async fn read(
    svc: &AgentService,
    req: api::ReadStreamRequest,
    stream: Stream,
) -> Result<api::ReadStreamResponse> {
    let data = svc
        .containers
        .read(&req.container_id, &req.exec_id, stream, req.len as usize)
        .await?;
    let mut r = api::ReadStreamResponse::new();
    r.data = data;
    Ok(r)
}

pub async fn resize(svc: &AgentService, req: api::TtyWinResizeRequest) -> Result<api::Empty> {
    svc.containers
        .resize(&req.container_id, &req.exec_id, req.rows, req.cols)?;
    Ok(api::Empty::new())
}
