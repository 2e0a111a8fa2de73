//! UpdateInterface, UpdateRoutes: not wired yet.

use vessel_protocols::agent as api;

use super::AgentService;
use crate::error::{AgentError, Result};

pub async fn update_interface(
    _: &AgentService,
    _: api::UpdateInterfaceRequest,
) -> Result<api::Interface> {
    Err(AgentError::Unimplemented(
        "UpdateInterface: guest NIC configuration (rtnetlink) lands with pod networking".into(),
    ))
}

pub async fn update_routes(_: &AgentService, _: api::UpdateRoutesRequest) -> Result<api::Routes> {
    Err(AgentError::Unimplemented(
        "UpdateRoutes: guest routes (rtnetlink) land with pod networking".into(),
    ))
}
