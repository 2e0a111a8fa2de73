//! The guest's side of the pod network, as the shim asks for it: the pod interface (found by
//! the MAC the VMM gave the virtio-net device, else by name) gets exactly the pod's addresses
//! and MTU and comes up, loopback comes up, and the pod's routes are put in place. Netlink
//! through rtnetlink, in the agent's own network namespace (the guest's).

use std::net::IpAddr;

use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};
use vessel_protocols::agent as api;
use vessel_protocols::ttrpc::Code;

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("{field} {value:?}: {reason}")]
    Invalid {
        field: &'static str,
        value: String,
        reason: String,
    },
    #[error("no interface {0}")]
    NoInterface(String),
    #[error("netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("{what}: {source}")]
    Netlink {
        what: String,
        source: rtnetlink::Error,
    },
}

impl NetworkError {
    /// The ttrpc status code the shim sees.
    pub fn code(&self) -> Code {
        match self {
            NetworkError::Invalid { .. } => Code::INVALID_ARGUMENT,
            NetworkError::NoInterface(_) => Code::NOT_FOUND,
            NetworkError::Socket(_) | NetworkError::Netlink { .. } => Code::INTERNAL,
        }
    }
}

fn netlink(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetworkError {
    let what = what.into();
    move |source| NetworkError::Netlink { what, source }
}

fn connect() -> Result<Handle, NetworkError> {
    let (connection, handle, _) = rtnetlink::new_connection().map_err(NetworkError::Socket)?;
    tokio::spawn(connection);
    Ok(handle)
}

/// Parses `aa:bb:cc:dd:ee:ff`.
fn parse_mac(text: &str) -> Result<[u8; 6], NetworkError> {
    let invalid = || NetworkError::Invalid {
        field: "interface.hw_addr",
        value: text.to_owned(),
        reason: "not a MAC address (aa:bb:cc:dd:ee:ff)".into(),
    };
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next().filter(|p| p.len() == 2).ok_or_else(invalid)?;
        *byte = u8::from_str_radix(part, 16).map_err(|_| invalid())?;
    }
    match parts.next() {
        Some(_) => Err(invalid()),
        None => Ok(mac),
    }
}

fn parse_ip(field: &'static str, text: &str) -> Result<IpAddr, NetworkError> {
    text.parse()
        .map_err(|e: std::net::AddrParseError| NetworkError::Invalid {
            field,
            value: text.to_owned(),
            reason: e.to_string(),
        })
}

/// Parses `addr/len`.
fn parse_prefix(field: &'static str, text: &str) -> Result<(IpAddr, u8), NetworkError> {
    let invalid = |reason: &str| NetworkError::Invalid {
        field,
        value: text.to_owned(),
        reason: reason.to_owned(),
    };
    let (addr, len) = text.split_once('/').ok_or_else(|| invalid("not a CIDR"))?;
    let addr = parse_ip(field, addr)?;
    let len: u8 = len.parse().map_err(|_| invalid("bad prefix length"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if len > max {
        return Err(invalid("prefix length too long"));
    }
    Ok((addr, len))
}

fn mac_of(link: &LinkMessage) -> Option<&[u8]> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(mac) => Some(mac.as_slice()),
        _ => None,
    })
}

fn name_of(link: &LinkMessage) -> String {
    link.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::IfName(name) => Some(name.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

async fn links(handle: &Handle) -> Result<Vec<LinkMessage>, NetworkError> {
    handle
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(netlink("list interfaces"))
}

async fn set_up(
    handle: &Handle,
    index: u32,
    mtu: Option<u32>,
    name: &str,
) -> Result<(), NetworkError> {
    let mut change = LinkUnspec::new_with_index(index).up();
    if let Some(mtu) = mtu {
        change = change.mtu(mtu);
    }
    handle
        .link()
        .change(change.build())
        .execute()
        .await
        .map_err(netlink(format!("set up {name}")))
}

/// Brings loopback up: a native pod's agent does it in the pod's network namespace, which
/// nothing else configures but CNI's interface.
pub async fn loopback_up() -> Result<(), NetworkError> {
    let handle = connect()?;
    let all = links(&handle).await?;
    match all.iter().find(|l| name_of(l) == "lo") {
        Some(lo) => set_up(&handle, lo.header.index, None, "lo").await,
        None => Err(NetworkError::NoInterface("lo".into())),
    }
}

/// Configures the interface `want` names (by MAC, else by name): its MTU when given, exactly
/// its addresses (others, but IPv6 link-local ones, are removed), up; and loopback up.
pub async fn update_interface(want: &api::Interface) -> Result<api::Interface, NetworkError> {
    let mac = match want.hw_addr.as_str() {
        "" => None,
        text => Some(parse_mac(text)?),
    };
    let addresses = want
        .addresses
        .iter()
        .map(|a| {
            let text = format!("{}/{}", a.address, a.prefix_len);
            parse_prefix("interface.addresses", &text)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let handle = connect()?;
    let all = links(&handle).await?;
    if let Some(lo) = all.iter().find(|l| name_of(l) == "lo") {
        set_up(&handle, lo.header.index, None, "lo").await?;
    }
    let link = all
        .iter()
        .find(|l| match mac {
            Some(mac) => mac_of(l) == Some(mac.as_slice()),
            None => name_of(l) == want.name,
        })
        .ok_or_else(|| NetworkError::NoInterface(format!("{} {}", want.name, want.hw_addr)))?;
    let index = link.header.index;
    let name = name_of(link);
    let old: Vec<_> = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .map_err(netlink(format!("list the addresses of {name}")))?;
    for address in old {
        let link_local = address.attributes.iter().any(|a| {
            matches!(a, AddressAttribute::Address(IpAddr::V6(v6)) if v6.segments()[0] & 0xffc0 == 0xfe80)
        });
        if !link_local {
            handle
                .address()
                .del(address)
                .execute()
                .await
                .map_err(netlink(format!("remove an address of {name}")))?;
        }
    }
    let mtu = (want.mtu > 0).then_some(want.mtu);
    set_up(&handle, index, mtu, &name).await?;
    for (addr, len) in &addresses {
        handle
            .address()
            .add(index, *addr, *len)
            .replace()
            .execute()
            .await
            .map_err(netlink(format!("add {addr}/{len} to {name}")))?;
    }
    tracing::info!(interface = %name, addresses = ?addresses, mtu = ?mtu, "pod interface configured");
    let mut done = want.clone();
    done.name = name;
    Ok(done)
}

/// Adds each route (replacing one to the same destination); an empty `dest` is the default
/// route of the gateway's family.
pub async fn update_routes(routes: &api::Routes) -> Result<api::Routes, NetworkError> {
    let handle = connect()?;
    let all = links(&handle).await?;
    for route in &routes.routes {
        let gateway = match route.gateway.as_str() {
            "" => None,
            text => Some(parse_ip("routes.gateway", text)?),
        };
        let (dest, len) = match (route.dest.as_str(), gateway) {
            ("", Some(IpAddr::V4(_))) => (IpAddr::from([0u8; 4]), 0),
            ("", Some(IpAddr::V6(_))) => (IpAddr::from([0u16; 8]), 0),
            ("", None) => {
                return Err(NetworkError::Invalid {
                    field: "routes.dest",
                    value: String::new(),
                    reason: "a default route needs a gateway".into(),
                })
            }
            (text, _) => parse_prefix("routes.dest", text)?,
        };
        // (The builder's error type is not exported: its message is kept.)
        let invalid = |reason: String| NetworkError::Invalid {
            field: "routes",
            value: format!("{} via {}", route.dest, route.gateway),
            reason,
        };
        let mut builder = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(dest, len)
            .map_err(|e| invalid(e.to_string()))?;
        if let Some(gateway) = gateway {
            builder = builder
                .gateway(gateway)
                .map_err(|e| invalid(e.to_string()))?;
        }
        if !route.device.is_empty() {
            let link = all
                .iter()
                .find(|l| name_of(l) == route.device)
                .ok_or_else(|| NetworkError::NoInterface(route.device.clone()))?;
            builder = builder.output_interface(link.header.index);
        }
        handle
            .route()
            .add(builder.build())
            .replace()
            .execute()
            .await
            .map_err(netlink(format!("add the route to {dest}/{len}")))?;
    }
    tracing::info!(routes = routes.routes.len(), "pod routes configured");
    Ok(routes.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_are_checked_and_named() {
        assert_eq!(
            parse_mac("02:42:0a:58:00:07").unwrap(),
            [2, 0x42, 10, 0x58, 0, 7]
        );
        for bad in [
            "",
            "02:42:0a:58:00",
            "02:42:0a:58:00:07:01",
            "2:42:0a:58:00:07",
            "zz:42:0a:58:00:07",
        ] {
            let err = parse_mac(bad).unwrap_err();
            assert_eq!(err.code(), Code::INVALID_ARGUMENT);
            assert!(err.to_string().contains("interface.hw_addr"), "{err}");
        }
        assert_eq!(
            parse_prefix("f", "10.88.0.7/16").unwrap(),
            (IpAddr::from([10, 88, 0, 7]), 16)
        );
        assert!(parse_prefix("f", "fd00::7/64").is_ok());
        for bad in [
            "10.88.0.7",
            "10.88.0.7/33",
            "fd00::7/129",
            "x/8",
            "10.0.0.1/a",
        ] {
            let err = parse_prefix("routes.dest", bad).unwrap_err();
            assert!(err.to_string().starts_with("routes.dest"), "{err}");
        }
    }
}
