//! UpdateInterface, UpdateRoutes: the pod network inside the guest ([`crate::network`]).

use vessel_protocols::agent as api;

use super::error::Result;
use super::AgentService;
use crate::network;

pub async fn update_interface(
    _: &AgentService,
    req: api::UpdateInterfaceRequest,
) -> Result<api::Interface> {
    let want = req.interface.into_option().unwrap_or_default();
    Ok(network::update_interface(&want).await?)
}

pub async fn update_routes(_: &AgentService, req: api::UpdateRoutesRequest) -> Result<api::Routes> {
    let routes = req.routes.into_option().unwrap_or_default();
    Ok(network::update_routes(&routes).await?)
}
