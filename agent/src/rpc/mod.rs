//! The ttrpc service: one thin handler per RPC, split by family into the files of this
//! module, each `async fn(&AgentService, Request) -> Result<Reply>`: it converts the request
//! at the edge and calls the core. [`agent_service!`] wires them all the same way: a span
//! with the method and the request's ids, errors mapped through [`error::AgentError::into_ttrpc`].

mod container;
pub(crate) mod convert;
mod error;
mod guest;
mod network;
mod process;
mod sandbox;

use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use protobuf::MessageDyn;
use tracing::Instrument;
use vessel_protocols::agent::{self as api, Agent};
use vessel_protocols::ttrpc::{self, r#async::TtrpcContext};

use self::error::Result;
use crate::container::Containers;
use crate::init::reaper::Reaper;
use crate::sandbox::Sandbox;

/// State shared by all handlers.
pub struct AgentService {
    pub pid1: bool,
    pub sandbox: Sandbox,
    pub containers: Containers,
}

impl AgentService {
    pub fn new(pid1: bool, reaper: Arc<Reaper>) -> Self {
        AgentService {
            pid1,
            sandbox: Sandbox::default(),
            containers: Containers::new(reaper),
        }
    }
}

/// Starts the reaper and serves the agent API on `listen` (a ttrpc address such as
/// `vsock://-1:1024` or `unix:///path`). Returns only on a startup error.
pub async fn serve(listen: &str, pid1: bool) -> anyhow::Result<()> {
    let reaper = Reaper::new();
    reaper.start()?;
    if crate::init::host::in_pod_network() {
        crate::network::loopback_up().await?;
    }
    let svc = Arc::new(AgentService::new(pid1, reaper));
    if let Some(path) = listen.strip_prefix("unix://") {
        let _ = std::fs::remove_file(path);
    }
    if let Some(address) = crate::streams::address(listen) {
        crate::streams::serve(address, Arc::clone(&svc)).await?;
    }
    let mut server = ttrpc::r#async::Server::new()
        .bind(listen)?
        .register_service(api::create_agent(svc));
    server.start().await?;
    eprintln!("{}", vessel_protocols::guest::AGENT_READY_LINE);
    tracing::info!(
        listen,
        pid1,
        version = env!("CARGO_PKG_VERSION"),
        "agent serving"
    );
    std::future::pending::<()>().await;
    Ok(())
}

/// The container and exec ids a request names (empty where it has no such field), read
/// through the message's descriptor so every request gets them alike.
fn ids(req: &dyn MessageDyn) -> (String, String) {
    let descriptor = req.descriptor_dyn();
    let field = |name: &str| {
        descriptor
            .field_by_name(name)
            .and_then(|f| f.get_singular(req))
            .and_then(|v| v.to_str().map(str::to_owned))
            .unwrap_or_default()
    };
    (field("container_id"), field("exec_id"))
}

/// Runs one handler in a span with its method and the request's ids, and maps its error.
async fn handle<T>(
    method: &'static str,
    (container_id, exec_id): (String, String),
    fut: impl Future<Output = Result<T>>,
) -> ttrpc::Result<T> {
    let span = tracing::info_span!("rpc", method, container_id, exec_id);
    async move {
        tracing::debug!("request");
        fut.await.map_err(|e| {
            match e.code() {
                ttrpc::Code::INTERNAL => tracing::error!(error = %e, "failed"),
                code => tracing::warn!(?code, error = %e, "refused"),
            }
            e.into_ttrpc()
        })
    }
    .instrument(span)
    .await
}

/// Implements the agent API: every RPC is `async fn(&AgentService, Request) -> Result<Reply>`
/// in the file of its family, run through [`handle`]. (`async_trait` must see the expanded
/// methods, so the whole impl block is generated here.)
macro_rules! agent_service {
    ($($name:ident($method:literal): $req:ident -> $resp:ident = $handler:path;)*) => {
        #[async_trait]
        impl Agent for AgentService {
            $(
                async fn $name(
                    &self,
                    _: &TtrpcContext,
                    req: api::$req,
                ) -> ttrpc::Result<api::$resp> {
                    handle($method, ids(&req), $handler(self, req)).await
                }
            )*
        }
    };
}

agent_service! {
    check("Check"): CheckRequest -> CheckResponse = guest::check;
    get_guest_details("GetGuestDetails"): GetGuestDetailsRequest -> GuestDetails = guest::guest_details;
    set_guest_date_time("SetGuestDateTime"): SetGuestDateTimeRequest -> Empty = guest::set_date_time;
    create_sandbox("CreateSandbox"): CreateSandboxRequest -> Empty = sandbox::create;
    destroy_sandbox("DestroySandbox"): DestroySandboxRequest -> Empty = sandbox::destroy;
    create_container("CreateContainer"): CreateContainerRequest -> Empty = container::create;
    start_container("StartContainer"): StartContainerRequest -> Empty = container::start;
    remove_container("RemoveContainer"): RemoveContainerRequest -> Empty = container::remove;
    stats_container("StatsContainer"): StatsContainerRequest -> ContainerStats = container::stats;
    update_container("UpdateContainer"): UpdateContainerRequest -> Empty = container::update;
    exec_process("ExecProcess"): ExecProcessRequest -> Empty = process::exec;
    signal_process("SignalProcess"): SignalProcessRequest -> Empty = process::signal;
    wait_process("WaitProcess"): WaitProcessRequest -> WaitProcessResponse = process::wait;
    write_stdin("WriteStdin"): WriteStdinRequest -> WriteStdinResponse = process::write_stdin;
    close_stdin("CloseStdin"): CloseStdinRequest -> Empty = process::close_stdin;
    read_stdout("ReadStdout"): ReadStreamRequest -> ReadStreamResponse = process::read_stdout;
    read_stderr("ReadStderr"): ReadStreamRequest -> ReadStreamResponse = process::read_stderr;
    tty_win_resize("TtyWinResize"): TtyWinResizeRequest -> Empty = process::resize;
    update_interface("UpdateInterface"): UpdateInterfaceRequest -> Interface = network::update_interface;
    update_routes("UpdateRoutes"): UpdateRoutesRequest -> Routes = network::update_routes;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_come_from_the_request_fields() {
        let mut exec = api::SignalProcessRequest::new();
        exec.container_id = "c1".into();
        exec.exec_id = "e1".into();
        assert_eq!(ids(&exec), ("c1".into(), "e1".into()));
        let mut start = api::StartContainerRequest::new();
        start.container_id = "c2".into();
        assert_eq!(ids(&start), ("c2".into(), String::new()));
        assert_eq!(
            ids(&api::CheckRequest::new()),
            (String::new(), String::new())
        );
    }
}
