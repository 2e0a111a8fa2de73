//! UpdateInterface, UpdateRoutes: not wired yet.

use vessel_protocols::agent as api;

use super::error::{AgentError, Result};
use super::AgentService;

pub async fn update_interface(
    _: &AgentService,
    _: api::UpdateInterfaceRequest,
) -> Result<api::Interface> {
    Err(AgentError::Unimplemented {
        rpc: "UpdateInterface",
        reason: "guest NIC configuration (rtnetlink) lands with pod networking",
    })
}

pub async fn update_routes(_: &AgentService, _: api::UpdateRoutesRequest) -> Result<api::Routes> {
    Err(AgentError::Unimplemented {
        rpc: "UpdateRoutes",
        reason: "guest routes (rtnetlink) land with pod networking",
    })
}
