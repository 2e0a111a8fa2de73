//! The ttrpc service: one thin handler per RPC (split by family into the files of this
//! module). Every handler runs in a span with its method and ids, converts the request at
//! the edge, calls the core, and maps errors through [`AgentError::into_ttrpc`].

mod container;
mod convert;
mod guest;
mod network;
mod process;
mod sandbox;

use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use tracing::Instrument;
use vessel_protocols::agent::{self as api, Agent};
use vessel_protocols::ttrpc::{self, r#async::TtrpcContext};

use crate::container::{Containers, Stream};
use crate::error::{AgentError, Result};
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
    let svc = Arc::new(AgentService::new(pid1, reaper));
    if let Some(path) = listen.strip_prefix("unix://") {
        let _ = std::fs::remove_file(path);
    }
    let mut server = ttrpc::r#async::Server::new()
        .bind(listen)?
        .register_service(api::create_agent(svc));
    server.start().await?;
    eprintln!("vessel-agent: ready");
    tracing::info!(
        listen,
        pid1,
        version = env!("CARGO_PKG_VERSION"),
        "agent serving"
    );
    std::future::pending::<()>().await;
    Ok(())
}

/// Runs one handler in its span and maps its error.
async fn handle<T>(
    method: &'static str,
    container_id: &str,
    exec_id: &str,
    fut: impl Future<Output = Result<T>>,
) -> ttrpc::Result<T> {
    let span = tracing::info_span!("rpc", method, container_id, exec_id);
    async move {
        tracing::debug!("request");
        fut.await.map_err(|e| {
            match &e {
                AgentError::Internal(_) => tracing::error!(error = %e, "failed"),
                _ => tracing::warn!(code = ?e.code(), error = %e, "refused"),
            }
            e.into_ttrpc()
        })
    }
    .instrument(span)
    .await
}

fn empty(r: Result<()>) -> Result<api::Empty> {
    r.map(|()| api::Empty::new())
}

#[async_trait]
impl Agent for AgentService {
    async fn check(
        &self,
        _: &TtrpcContext,
        _: api::CheckRequest,
    ) -> ttrpc::Result<api::CheckResponse> {
        Ok(guest::check())
    }

    async fn get_guest_details(
        &self,
        _: &TtrpcContext,
        _: api::GetGuestDetailsRequest,
    ) -> ttrpc::Result<api::GuestDetails> {
        handle("GetGuestDetails", "", "", async { guest::guest_details() }).await
    }

    async fn set_guest_date_time(
        &self,
        _: &TtrpcContext,
        req: api::SetGuestDateTimeRequest,
    ) -> ttrpc::Result<api::Empty> {
        handle("SetGuestDateTime", "", "", async {
            empty(guest::set_date_time(&req))
        })
        .await
    }

    async fn create_sandbox(
        &self,
        _: &TtrpcContext,
        req: api::CreateSandboxRequest,
    ) -> ttrpc::Result<api::Empty> {
        handle("CreateSandbox", "", "", async {
            empty(sandbox::create(self, req).await)
        })
        .await
    }

    async fn destroy_sandbox(
        &self,
        _: &TtrpcContext,
        req: api::DestroySandboxRequest,
    ) -> ttrpc::Result<api::Empty> {
        handle("DestroySandbox", "", "", async {
            empty(sandbox::destroy(self, req).await)
        })
        .await
    }

    async fn create_container(
        &self,
        _: &TtrpcContext,
        req: api::CreateContainerRequest,
    ) -> ttrpc::Result<api::Empty> {
        let id = req.container_id.clone();
        handle("CreateContainer", &id, "", async {
            empty(container::create(self, req).await)
        })
        .await
    }

    async fn start_container(
        &self,
        _: &TtrpcContext,
        req: api::StartContainerRequest,
    ) -> ttrpc::Result<api::Empty> {
        handle("StartContainer", &req.container_id, "", async {
            empty(container::start(self, &req).await)
        })
        .await
    }

    async fn remove_container(
        &self,
        _: &TtrpcContext,
        req: api::RemoveContainerRequest,
    ) -> ttrpc::Result<api::Empty> {
        handle("RemoveContainer", &req.container_id, "", async {
            empty(container::remove(self, &req).await)
        })
        .await
    }

    async fn stats_container(
        &self,
        _: &TtrpcContext,
        req: api::StatsContainerRequest,
    ) -> ttrpc::Result<api::ContainerStats> {
        handle("StatsContainer", &req.container_id, "", async {
            container::stats(self, &req)
        })
        .await
    }

    async fn update_container(
        &self,
        _: &TtrpcContext,
        req: api::UpdateContainerRequest,
    ) -> ttrpc::Result<api::Empty> {
        handle("UpdateContainer", &req.container_id, "", async {
            empty(container::update(self, &req))
        })
        .await
    }

    async fn exec_process(
        &self,
        _: &TtrpcContext,
        req: api::ExecProcessRequest,
    ) -> ttrpc::Result<api::Empty> {
        let (cid, eid) = (req.container_id.clone(), req.exec_id.clone());
        handle("ExecProcess", &cid, &eid, async {
            empty(process::exec(self, req).await)
        })
        .await
    }

    async fn signal_process(
        &self,
        _: &TtrpcContext,
        req: api::SignalProcessRequest,
    ) -> ttrpc::Result<api::Empty> {
        handle("SignalProcess", &req.container_id, &req.exec_id, async {
            empty(process::signal(self, &req))
        })
        .await
    }

    async fn wait_process(
        &self,
        _: &TtrpcContext,
        req: api::WaitProcessRequest,
    ) -> ttrpc::Result<api::WaitProcessResponse> {
        handle(
            "WaitProcess",
            &req.container_id,
            &req.exec_id,
            process::wait(self, &req),
        )
        .await
    }

    async fn write_stdin(
        &self,
        _: &TtrpcContext,
        req: api::WriteStdinRequest,
    ) -> ttrpc::Result<api::WriteStdinResponse> {
        handle(
            "WriteStdin",
            &req.container_id,
            &req.exec_id,
            process::write_stdin(self, &req),
        )
        .await
    }

    async fn close_stdin(
        &self,
        _: &TtrpcContext,
        req: api::CloseStdinRequest,
    ) -> ttrpc::Result<api::Empty> {
        handle("CloseStdin", &req.container_id, &req.exec_id, async {
            empty(process::close_stdin(self, &req).await)
        })
        .await
    }

    async fn read_stdout(
        &self,
        _: &TtrpcContext,
        req: api::ReadStreamRequest,
    ) -> ttrpc::Result<api::ReadStreamResponse> {
        handle(
            "ReadStdout",
            &req.container_id,
            &req.exec_id,
            process::read(self, &req, Stream::Stdout),
        )
        .await
    }

    async fn read_stderr(
        &self,
        _: &TtrpcContext,
        req: api::ReadStreamRequest,
    ) -> ttrpc::Result<api::ReadStreamResponse> {
        handle(
            "ReadStderr",
            &req.container_id,
            &req.exec_id,
            process::read(self, &req, Stream::Stderr),
        )
        .await
    }

    async fn tty_win_resize(
        &self,
        _: &TtrpcContext,
        req: api::TtyWinResizeRequest,
    ) -> ttrpc::Result<api::Empty> {
        handle("TtyWinResize", &req.container_id, &req.exec_id, async {
            empty(process::resize(self, &req))
        })
        .await
    }

    async fn update_interface(
        &self,
        _: &TtrpcContext,
        req: api::UpdateInterfaceRequest,
    ) -> ttrpc::Result<api::Interface> {
        handle("UpdateInterface", "", "", async {
            network::update_interface(&req)
        })
        .await
    }

    async fn update_routes(
        &self,
        _: &TtrpcContext,
        req: api::UpdateRoutesRequest,
    ) -> ttrpc::Result<api::Routes> {
        handle("UpdateRoutes", "", "", async {
            network::update_routes(&req)
        })
        .await
    }
}
