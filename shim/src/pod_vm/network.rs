//! The pod VM's place on the pod network. Before boot, a tap in the pod's network namespace,
//! joined to the interface the CNI plugins made ([`crate::network::tap`]), becomes the VM's
//! NIC with that interface's MAC. After boot the agent gives the guest interface the pod's
//! addresses, that interface's MTU and the pod's routes, and brings loopback up.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use ipnet::IpNet;
use vessel_protocols::agent as api;
use vessel_protocols::guest::Capability;

use super::agent_client::{AgentClient, AgentError};
use super::guest::{GuestInfo, Unsupported};
use crate::hypervisor::VmNic;
use crate::network::netns::NetNs;
use crate::network::tap::{self, PodInterface, TapError, TAP_NAME};

/// The pod's network as the VM joins it.
#[derive(Debug, Clone, PartialEq)]
pub struct VmNetwork {
    /// The pod's pinned network namespace.
    pub netns: PathBuf,
    /// The pod interface there (CNI's `CNI_IFNAME`).
    pub ifname: String,
    /// The pod's addresses, with their prefix lengths.
    pub addresses: Vec<IpNet>,
    pub routes: Vec<VmRoute>,
}

/// A route in the guest.
#[derive(Debug, Clone, PartialEq)]
pub struct VmRoute {
    /// `None` for the default route of the gateway's family.
    pub dest: Option<IpNet>,
    pub gateway: Option<IpAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error(transparent)]
    Tap(#[from] TapError),
    #[error(transparent)]
    Unsupported(#[from] Unsupported),
    #[error("configure the guest's network: {0}")]
    Agent(#[from] AgentError),
}

/// The host side, before the VM starts: the tap, joined, as the VM's NIC, and the pod
/// interface it was joined to.
pub async fn prepare(network: &VmNetwork) -> Result<(VmNic, PodInterface), NetworkError> {
    let (fd, pod) = tap::create(&NetNs::at(&network.netns), &network.ifname).await?;
    let nic = VmNic {
        tap: TAP_NAME.into(),
        mac: pod.mac_string(),
        fd: Some(Arc::new(fd)),
    };
    Ok((nic, pod))
}

/// The guest side, once the agent answers: the interface with the pod's MAC gets the pod's
/// addresses and MTU, then the routes go in through it. Returns the guest interface's name.
pub async fn configure_guest(
    agent: &AgentClient,
    guest: &GuestInfo,
    network: &VmNetwork,
    pod: &PodInterface,
) -> Result<String, NetworkError> {
    guest.require(Capability::PodNetwork, "a pod with a network")?;
    let mut interface = api::Interface::new();
    interface.hw_addr = pod.mac_string();
    interface.mtu = pod.mtu;
    interface.addresses = network
        .addresses
        .iter()
        .map(|net| {
            let mut address = api::IPAddress::new();
            address.address = net.addr().to_string();
            address.prefix_len = u32::from(net.prefix_len());
            address
        })
        .collect();
    let mut req = api::UpdateInterfaceRequest::new();
    req.interface = protobuf::MessageField::some(interface);
    // The guest's reply names the interface; only its name is used, as the routes' device
    // (which the agent looks up again, so a wrong name fails there).
    let device = agent.update_interface(req).await?.name;
    let mut routes = api::Routes::new();
    routes.routes = network
        .routes
        .iter()
        .map(|r| {
            let mut route = api::Route::new();
            route.dest = r.dest.map(|d| d.to_string()).unwrap_or_default();
            route.gateway = r.gateway.map(|g| g.to_string()).unwrap_or_default();
            route.device = device.clone();
            route
        })
        .collect();
    let mut req = api::UpdateRoutesRequest::new();
    req.routes = protobuf::MessageField::some(routes);
    agent.update_routes(req).await?;
    Ok(device)
}
