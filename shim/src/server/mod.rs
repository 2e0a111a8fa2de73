//! The CRI server: RuntimeService and ImageService on the CRI Unix socket, behind the `:authority` fix for
//! older gRPC clients.

pub mod authority;
pub mod image_service;
pub mod instrument;
pub mod runtime_service;

use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use tokio::net::{UnixListener, UnixStream};
use tokio_stream::wrappers::UnixListenerStream;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::Connected;
use tonic::{Request, Response, Status};
use vessel_protocols::cri;
use vessel_protocols::cri::image_service_server::{ImageService, ImageServiceServer};
use vessel_protocols::cri::runtime_service_server::{RuntimeService, RuntimeServiceServer};

use self::authority::AuthorityFixStream;
use self::instrument::call;
use crate::runtime::{Runtime, RuntimeError};
use crate::streaming::StreamingServer;

/// kubelet's default gRPC message limit; ExecSync output can be that large.
const MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// The RuntimeService over the runtime core, and the streaming server its Exec, Attach and
/// PortForward hand clients to.
#[derive(Clone)]
pub struct CriService {
    runtime: Arc<Runtime>,
    streaming: Arc<StreamingServer>,
}

impl CriService {
    pub fn new(runtime: Arc<Runtime>, streaming: Arc<StreamingServer>) -> Self {
        Self { runtime, streaming }
    }
}

/// The ImageService over the runtime core.
#[derive(Clone)]
pub struct CriImageService {
    runtime: Arc<Runtime>,
}

impl CriImageService {
    pub fn new(runtime: Arc<Runtime>) -> Self {
        Self { runtime }
    }
}

impl Connected for AuthorityFixStream<UnixStream> {
    type ConnectInfo = ();

    fn connect_info(&self) -> Self::ConnectInfo {}
}

/// Serves CRI on `socket` until `shutdown` completes. A stale socket file is replaced.
pub async fn serve(
    runtime: Arc<Runtime>,
    streaming: Arc<StreamingServer>,
    socket: &Path,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).map_err(|e| ServeError::Bind(socket.to_owned(), e))?;
    }
    match std::fs::remove_file(socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(ServeError::Bind(socket.to_owned(), e)),
    }
    let listener =
        UnixListener::bind(socket).map_err(|e| ServeError::Bind(socket.to_owned(), e))?;
    tracing::info!(socket = %socket.display(), "serving CRI");
    let incoming = UnixListenerStream::new(listener).map(|s| s.map(AuthorityFixStream::new));
    let service = RuntimeServiceServer::new(CriService::new(runtime.clone(), streaming))
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let images = ImageServiceServer::new(CriImageService::new(runtime.clone()))
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let result = tonic::transport::Server::builder()
        .add_service(service)
        .add_service(images)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await;
    let _ = std::fs::remove_file(socket);
    result.map_err(ServeError::Serve)
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("bind CRI socket {0}: {1}")]
    Bind(std::path::PathBuf, std::io::Error),
    #[error("CRI server: {0}")]
    Serve(tonic::transport::Error),
}

/// Implements a CRI service: each listed RPC calls its handler through [`call`]; the
/// remaining items are written out. (`async_trait` must see the expanded methods, so the
/// whole impl block is generated here.)
macro_rules! cri_service {
    ($service:ident for $ty:ty: $($name:ident: $req:ident -> $resp:ident = $handler:path;)* { $($rest:tt)* }) => {
        #[tonic::async_trait]
        impl $service for $ty {
            $(
                async fn $name(&self, request: Request<cri::$req>) -> Result<Response<cri::$resp>, Status> {
                    call(stringify!($name), $handler(&self.runtime, request.into_inner())).await
                }
            )*
            $($rest)*
        }
    };
}

fn unimplemented(rpc: &str) -> Status {
    instrument::status(&RuntimeError::Unimplemented(format!(
        "{rpc} is not supported by vessel"
    )))
}

type EventStream = Pin<Box<dyn Stream<Item = Result<cri::ContainerEventResponse, Status>> + Send>>;

cri_service! {
    ImageService for CriImageService:
        list_images: ListImagesRequest -> ListImagesResponse = image_service::status::list;
        image_status: ImageStatusRequest -> ImageStatusResponse = image_service::status::status;
        pull_image: PullImageRequest -> PullImageResponse = image_service::pull::pull;
        remove_image: RemoveImageRequest -> RemoveImageResponse = image_service::remove::remove;
        image_fs_info: ImageFsInfoRequest -> ImageFsInfoResponse = image_service::fs_info::fs_info;
    {}
}

cri_service! {
    RuntimeService for CriService:
        version: VersionRequest -> VersionResponse = runtime_service::version::version;
        status: StatusRequest -> StatusResponse = runtime_service::status::status;
        update_runtime_config: UpdateRuntimeConfigRequest -> UpdateRuntimeConfigResponse = runtime_service::version::update_runtime_config;
        runtime_config: RuntimeConfigRequest -> RuntimeConfigResponse = runtime_service::version::runtime_config;
        run_pod_sandbox: RunPodSandboxRequest -> RunPodSandboxResponse = runtime_service::pod_sandbox::run;
        stop_pod_sandbox: StopPodSandboxRequest -> StopPodSandboxResponse = runtime_service::pod_sandbox::stop;
        remove_pod_sandbox: RemovePodSandboxRequest -> RemovePodSandboxResponse = runtime_service::pod_sandbox::remove;
        pod_sandbox_status: PodSandboxStatusRequest -> PodSandboxStatusResponse = runtime_service::pod_sandbox::status;
        list_pod_sandbox: ListPodSandboxRequest -> ListPodSandboxResponse = runtime_service::pod_sandbox::list;
        create_container: CreateContainerRequest -> CreateContainerResponse = runtime_service::container::create;
        start_container: StartContainerRequest -> StartContainerResponse = runtime_service::container::start;
        stop_container: StopContainerRequest -> StopContainerResponse = runtime_service::container::stop;
        remove_container: RemoveContainerRequest -> RemoveContainerResponse = runtime_service::container::remove;
        list_containers: ListContainersRequest -> ListContainersResponse = runtime_service::container::list;
        container_status: ContainerStatusRequest -> ContainerStatusResponse = runtime_service::container::status;
        update_container_resources: UpdateContainerResourcesRequest -> UpdateContainerResourcesResponse = runtime_service::container::update_resources;
        reopen_container_log: ReopenContainerLogRequest -> ReopenContainerLogResponse = runtime_service::container::reopen_log;
        exec_sync: ExecSyncRequest -> ExecSyncResponse = runtime_service::exec::exec_sync;
        container_stats: ContainerStatsRequest -> ContainerStatsResponse = runtime_service::stats::container;
        list_container_stats: ListContainerStatsRequest -> ListContainerStatsResponse = runtime_service::stats::list_containers;
        pod_sandbox_stats: PodSandboxStatsRequest -> PodSandboxStatsResponse = runtime_service::stats::pod;
        list_pod_sandbox_stats: ListPodSandboxStatsRequest -> ListPodSandboxStatsResponse = runtime_service::stats::list_pods;
    {

    async fn exec(&self, request: Request<cri::ExecRequest>) -> Result<Response<cri::ExecResponse>, Status> {
        let req = request.into_inner();
        call("exec", runtime_service::exec::exec(&self.runtime, &self.streaming, req)).await
    }

    async fn attach(&self, request: Request<cri::AttachRequest>) -> Result<Response<cri::AttachResponse>, Status> {
        let req = request.into_inner();
        call("attach", runtime_service::exec::attach(&self.runtime, &self.streaming, req)).await
    }

    async fn port_forward(
        &self,
        request: Request<cri::PortForwardRequest>,
    ) -> Result<Response<cri::PortForwardResponse>, Status> {
        let req = request.into_inner();
        call("port_forward", runtime_service::exec::port_forward(&self.runtime, &self.streaming, req)).await
    }

    type GetContainerEventsStream = EventStream;

    async fn checkpoint_container(
        &self,
        _: Request<cri::CheckpointContainerRequest>,
    ) -> Result<Response<cri::CheckpointContainerResponse>, Status> {
        Err(unimplemented("CheckpointContainer"))
    }

    async fn get_container_events(
        &self,
        _: Request<cri::GetEventsRequest>,
    ) -> Result<Response<Self::GetContainerEventsStream>, Status> {
        Err(unimplemented("GetContainerEvents"))
    }

    async fn list_metric_descriptors(
        &self,
        _: Request<cri::ListMetricDescriptorsRequest>,
    ) -> Result<Response<cri::ListMetricDescriptorsResponse>, Status> {
        Err(unimplemented("ListMetricDescriptors"))
    }

    async fn list_pod_sandbox_metrics(
        &self,
        _: Request<cri::ListPodSandboxMetricsRequest>,
    ) -> Result<Response<cri::ListPodSandboxMetricsResponse>, Status> {
        Err(unimplemented("ListPodSandboxMetrics"))
    }
}
}
