//! The pod VM's tap, joined to the pod interface the CNI plugins made (Kata's "tcfilter"
//! model): an ingress qdisc on each, and on each a u32 match-all filter whose mirred action
//! redirects every frame to the other's egress. The guest interface carries the pod
//! interface's MAC, so the network sees one host behind the pair. u32 rather than matchall:
//! the hosts this runs on have cls_u32 built in, not always cls_matchall.
//!
//! The shim opens the tap inside the pod's namespace with the code the VMM takes it with
//! (`vessel_vmm`'s [`Tap`]) and joins it before the VM starts; the VMM inherits the open
//! descriptor and needs no access to the namespace. The tap lives as long as a descriptor of
//! it is open: when the VMM exits it is gone, and its filters with it.

use std::os::fd::OwnedFd;

use vessel_vmm::devices::virtio::net::Tap;

use futures_util::TryStreamExt;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::{Handle, LinkUnspec};

use super::netns::{NetNs, NetnsError};

/// The tap's name in the pod's namespace (one per namespace, so one name does).
pub const TAP_NAME: &str = "vtap0";

/// The ingress qdisc's handle (`ffff:`), the parent of the redirect filters.
const INGRESS_PARENT: u32 = 0xffff_0000;

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("netns {netns}: {what} {link}: {source}")]
    Netlink {
        netns: String,
        what: &'static str,
        link: String,
        source: Box<rtnetlink::Error>,
    },
    #[error("netns {netns}: no interface {link}")]
    Missing { netns: String, link: String },
    #[error("netns {netns}: interface {link} has no {what}")]
    Incomplete {
        netns: String,
        link: String,
        what: &'static str,
    },
    #[error("netns {netns}: {source}")]
    Open {
        netns: String,
        source: vessel_vmm::devices::virtio::net::TapError,
    },
}

/// What the guest interface takes over from the pod interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInterface {
    pub index: u32,
    pub mac: [u8; 6],
    pub mtu: u32,
}

impl PodInterface {
    /// The MAC as `aa:bb:cc:dd:ee:ff`.
    pub fn mac_string(&self) -> String {
        let hex: Vec<String> = self.mac.iter().map(|b| format!("{b:02x}")).collect();
        hex.join(":")
    }
}

/// The links of one namespace, through one netlink handle.
struct Links<'a> {
    netns: &'a NetNs,
    handle: Handle,
}

impl<'a> Links<'a> {
    fn new(netns: &'a NetNs) -> Result<Self, TapError> {
        Ok(Self {
            handle: netns.netlink()?,
            netns,
        })
    }

    fn ns(&self) -> String {
        self.netns.path().display().to_string()
    }

    fn netlink(&self, what: &'static str, link: &str) -> impl Fn(rtnetlink::Error) -> TapError {
        let (netns, link) = (self.ns(), link.to_owned());
        move |source| TapError::Netlink {
            netns: netns.clone(),
            what,
            link: link.clone(),
            source: Box::new(source),
        }
    }

    /// The link named `name`; `None` when there is none.
    async fn find(&self, name: &str) -> Result<Option<LinkMessage>, TapError> {
        let found = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute()
            .try_next()
            .await;
        match found {
            Ok(link) => Ok(link),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
            Err(e) => Err(self.netlink("look up", name)(e)),
        }
    }

    async fn interface(&self, name: &str) -> Result<PodInterface, TapError> {
        let link = self.find(name).await?.ok_or_else(|| TapError::Missing {
            netns: self.ns(),
            link: name.to_owned(),
        })?;
        let incomplete = |what| TapError::Incomplete {
            netns: self.ns(),
            link: name.to_owned(),
            what,
        };
        let mac = link
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::Address(mac) => <[u8; 6]>::try_from(mac.as_slice()).ok(),
                _ => None,
            })
            .ok_or_else(|| incomplete("Ethernet address"))?;
        let mtu = link
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::Mtu(mtu) => Some(*mtu),
                _ => None,
            })
            .ok_or_else(|| incomplete("MTU"))?;
        Ok(PodInterface {
            index: link.header.index,
            mac,
            mtu,
        })
    }

    /// An ingress qdisc on `index`, and a filter there redirecting everything to `to`.
    async fn redirect(&self, name: &str, index: u32, to: u32) -> Result<(), TapError> {
        let ifindex = i32::try_from(index).unwrap_or(i32::MAX);
        self.handle
            .qdisc()
            .add(ifindex)
            .ingress()
            .execute()
            .await
            .map_err(self.netlink("add the ingress qdisc of", name))?;
        self.handle
            .traffic_filter(ifindex)
            .add()
            .parent(INGRESS_PARENT)
            .protocol((libc::ETH_P_ALL as u16).to_be())
            .redirect(to)
            .map_err(self.netlink("build the redirect filter of", name))?
            .execute()
            .await
            .map_err(self.netlink("add the redirect filter of", name))
    }
}

/// The pod interface `ifname` in `netns`: its index, MAC and MTU.
pub async fn pod_interface(netns: &NetNs, ifname: &str) -> Result<PodInterface, TapError> {
    Links::new(netns)?.interface(ifname).await
}

/// Opens [`TAP_NAME`] in `netns` (creating it), gives it the MTU of the pod interface
/// `ifname`, brings it up and redirects frames between the two both ways. Returns the tap's
/// descriptor, for the VMM, and the pod interface, whose MAC the guest takes.
pub async fn create(netns: &NetNs, ifname: &str) -> Result<(OwnedFd, PodInterface), TapError> {
    let links = Links::new(netns)?;
    let pod = links.interface(ifname).await?;
    let tap = netns
        .run(|| Tap::open(TAP_NAME))?
        .map_err(|source| TapError::Open {
            netns: links.ns(),
            source,
        })?;
    let index = links
        .find(TAP_NAME)
        .await?
        .ok_or_else(|| TapError::Missing {
            netns: links.ns(),
            link: TAP_NAME.into(),
        })?
        .header
        .index;
    links
        .handle
        .link()
        .change(LinkUnspec::new_with_index(index).mtu(pod.mtu).up().build())
        .execute()
        .await
        .map_err(links.netlink("set up", TAP_NAME))?;
    links.redirect(ifname, pod.index, index).await?;
    links.redirect(TAP_NAME, index, pod.index).await?;
    tracing::debug!(netns = %links.ns(), ifname, tap = TAP_NAME, mtu = pod.mtu, "tap joined to the pod interface");
    Ok((tap.into_fd(), pod))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `ip`/`tc` in `ns` (test set-up and inspection only; the code under test uses
    /// netlink) and returns its stdout.
    fn sh(ns: &NetNs, line: &str) -> String {
        let out = ns
            .run(|| std::process::Command::new("sh").args(["-c", line]).output())
            .unwrap()
            .unwrap();
        assert!(out.status.success(), "{line}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    }

    #[tokio::test]
    async fn the_tap_is_joined_to_the_pod_interface_both_ways() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("SKIPPED the_tap_is_joined_to_the_pod_interface_both_ways: needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let ns = NetNs::create(&dir.path().join("pod")).unwrap();
        sh(
            &ns,
            "ip link add eth0 type veth peer name peer0 && ip link set eth0 mtu 1400 address 02:42:0a:58:00:07",
        );
        let pod = pod_interface(&ns, "eth0").await.unwrap();
        assert_eq!(pod.mtu, 1400);
        assert_eq!(pod.mac_string(), "02:42:0a:58:00:07");
        assert!(matches!(
            create(&ns, "eth9").await,
            Err(TapError::Missing { .. })
        ));
        let (fd, joined) = create(&ns, "eth0").await.unwrap();
        assert_eq!(joined, pod);
        let tap = sh(&ns, &format!("ip -o link show {TAP_NAME}"));
        assert!(tap.contains("mtu 1400") && tap.contains("UP"), "{tap}");
        for (from, to) in [("eth0", TAP_NAME), (TAP_NAME, "eth0")] {
            let filters = sh(&ns, &format!("tc filter show dev {from} ingress"));
            assert!(filters.contains("protocol all"), "{filters}");
            assert!(
                filters.contains(&format!("Redirect to device {to}")),
                "{filters}"
            );
        }
        // The VMM took the descriptor and exited: the tap is gone (the pod interface's
        // filter goes with that interface, at CNI DEL).
        drop(fd);
        assert!(!sh(&ns, "ip -o link show").contains(TAP_NAME));
        ns.remove().unwrap();
    }
}
