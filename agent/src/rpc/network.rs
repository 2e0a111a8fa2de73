//! UpdateInterface, UpdateRoutes: not wired yet.

use vessel_protocols::agent as api;

use crate::error::{AgentError, Result};

pub fn update_interface(_req: &api::UpdateInterfaceRequest) -> Result<api::Interface> {
    Err(AgentError::Unimplemented(
        "UpdateInterface: guest NIC configuration (rtnetlink) lands with pod networking".into(),
    ))
}

pub fn update_routes(_req: &api::UpdateRoutesRequest) -> Result<api::Routes> {
    Err(AgentError::Unimplemented(
        "UpdateRoutes: guest routes (rtnetlink) land with pod networking".into(),
    ))
}
