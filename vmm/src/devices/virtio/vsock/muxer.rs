//! The connection table of one vsock device and the host's Unix sockets: host clients
//! accepted on the hybrid socket `<uds>` (handshake `CONNECT <port>`), guest connections
//! to host port P made to `<uds>_P`, and the routing of packets between them. Packets for
//! connections that do not exist are answered with a RST.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::{ErrorKind, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::connection::{Connection, State, BUF_ALLOC};
use super::hybrid::LineReader;
use super::packet::{Header, TxPacket, OP_REQUEST, OP_RST, TYPE_STREAM};
use super::HOST_CID;

/// Host-side ports of host-initiated connections start here (above the well-known ones
/// guests listen on).
const FIRST_HOST_PORT: u32 = 1 << 30;

/// Every connection of one device.
pub struct Muxer {
    guest_cid: u64,
    uds: PathBuf,
    listener: UnixListener,
    handshakes: Vec<(UnixStream, LineReader)>,
    /// By (host port, guest port).
    conns: BTreeMap<(u32, u32), Connection<UnixStream>>,
    /// RSTs owed for packets of unknown connections.
    resets: VecDeque<Header>,
    next_host_port: u32,
    /// The descriptors in the device's epoll set after the last [`Muxer::sync_interest`].
    watched: BTreeSet<RawFd>,
}

impl Muxer {
    /// Listens on `uds` (a stale socket file there is replaced).
    pub fn bind(uds: &Path, guest_cid: u64) -> std::io::Result<Self> {
        match std::fs::remove_file(uds) {
            Err(e) if e.kind() != ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let listener = UnixListener::bind(uds)?;
        listener.set_nonblocking(true)?;
        Ok(Self {
            guest_cid,
            uds: uds.to_owned(),
            listener,
            handshakes: Vec::new(),
            conns: BTreeMap::new(),
            resets: VecDeque::new(),
            next_host_port: FIRST_HOST_PORT,
            watched: BTreeSet::new(),
        })
    }

    /// What to wait for on each descriptor now: the listener and clients mid-handshake
    /// always; a connection's stream for reading while its data can go to the guest
    /// (`deliver`: the driver has RX buffers; the connection is established and the guest
    /// has credit), for writing while guest data waits for it.
    fn interest(&self, deliver: bool) -> Vec<(RawFd, EventSet)> {
        let mut wanted = vec![(self.listener.as_raw_fd(), EventSet::IN)];
        wanted.extend(
            self.handshakes
                .iter()
                .map(|(s, _)| (s.as_raw_fd(), EventSet::IN)),
        );
        for conn in self.conns.values() {
            let mut events = EventSet::empty();
            if deliver && conn.wants_host_data() {
                events |= EventSet::IN;
            }
            if conn.has_host_backlog() {
                events |= EventSet::OUT;
            }
            if !events.is_empty() {
                wanted.push((conn.stream().as_raw_fd(), events));
            }
        }
        wanted
    }

    /// Brings `epoll` (level-triggered) in line with [`Muxer::interest`]. Every wanted
    /// descriptor is set again each time: one closed since keeps no registration, and its
    /// number may now belong to a new socket.
    pub fn sync_interest(&mut self, epoll: &Epoll, deliver: bool) -> std::io::Result<()> {
        let wanted = self.interest(deliver);
        let now: BTreeSet<RawFd> = wanted.iter().map(|(fd, _)| *fd).collect();
        for &gone in self.watched.difference(&now) {
            // Already closed (and so gone from the set), or no longer of interest.
            let _ = epoll.ctl(ControlOperation::Delete, gone, EpollEvent::default());
        }
        for (fd, events) in wanted {
            let event = EpollEvent::new(events, fd as u64);
            match epoll.ctl(ControlOperation::Modify, fd, event) {
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    epoll.ctl(ControlOperation::Add, fd, event)?
                }
                other => other?,
            }
        }
        self.watched = now;
        Ok(())
    }

    /// Accepts host clients, advances their handshakes, flushes guest data to host streams
    /// and forgets closed connections.
    pub fn poll_host(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) if stream.set_nonblocking(true).is_ok() => {
                    self.handshakes.push((stream, LineReader::default()));
                }
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => break, // WouldBlock: nothing more to accept
            }
        }
        let mut still = Vec::new();
        for (mut stream, mut reader) in std::mem::take(&mut self.handshakes) {
            let mut buf = [0u8; 64];
            match stream.read(&mut buf) {
                Ok(0) => {} // the client went away
                Ok(n) => match reader.push(&buf[..n]) {
                    Ok(None) => still.push((stream, reader)),
                    // Data before the guest accepted is not part of the protocol.
                    Ok(Some(port)) if reader.rest().is_empty() => self.host_connect(port, stream),
                    Ok(Some(_)) | Err(_) => tracing::warn!("bad hybrid vsock handshake"),
                },
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
                    still.push((stream, reader))
                }
                Err(_) => {}
            }
        }
        self.handshakes = still;
        for conn in self.conns.values_mut() {
            if conn.flush_host().is_err() {
                conn.reset();
            }
        }
    }

    fn host_connect(&mut self, guest_port: u32, stream: UnixStream) {
        let host_port = self.next_host_port;
        self.next_host_port = self.next_host_port.wrapping_add(1).max(FIRST_HOST_PORT);
        let conn = Connection::host_initiated(self.guest_cid, guest_port, host_port, stream);
        self.conns.insert((host_port, guest_port), conn);
    }

    /// Routes a packet from the guest.
    pub fn from_guest(&mut self, packet: &TxPacket) {
        let h = packet.header;
        if h.dst_cid != HOST_CID || h.src_cid != self.guest_cid {
            return; // not a packet for this host
        }
        let key = (h.dst_port, h.src_port);
        if let Some(conn) = self.conns.get_mut(&key) {
            conn.from_guest(packet);
            return;
        }
        match h.op {
            OP_REQUEST => {
                let port = h.dst_port;
                let path = format!("{}_{port}", self.uds.display());
                match UnixStream::connect(&path).and_then(|s| s.set_nonblocking(true).map(|_| s)) {
                    Ok(stream) => {
                        self.conns
                            .insert(key, Connection::guest_initiated(&h, stream));
                    }
                    Err(_) => self.reset(&h),
                }
            }
            OP_RST => {}
            _ => self.reset(&h),
        }
    }

    fn reset(&mut self, to: &Header) {
        self.resets.push_back(Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: to.dst_port,
            dst_port: to.src_port,
            len: 0,
            type_: TYPE_STREAM,
            op: OP_RST,
            flags: 0,
            buf_alloc: BUF_ALLOC,
            fwd_cnt: 0,
        });
    }

    /// The next packet for the guest (at most `room` payload bytes), if any.
    pub fn to_guest(&mut self, room: usize) -> Option<(Header, Vec<u8>)> {
        if let Some(rst) = self.resets.pop_front() {
            return Some((rst, Vec::new()));
        }
        let mut found = None;
        for conn in self.conns.values_mut() {
            if let Some(packet) = conn.to_guest(room) {
                found = Some(packet);
                break;
            }
        }
        // A closed connection with nothing more to say is gone.
        self.conns
            .retain(|_, c| c.state != State::Closed || c.has_pending());
        found
    }
}

impl Drop for Muxer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.uds);
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::super::packet::{OP_CREDIT_UPDATE, OP_RESPONSE, OP_RW};
    use super::*;

    const GUEST: u64 = 3;

    fn guest(op: u16, src_port: u32, dst_port: u32, data: &[u8]) -> TxPacket {
        TxPacket {
            header: Header {
                src_cid: GUEST,
                dst_cid: HOST_CID,
                src_port,
                dst_port,
                len: data.len() as u32,
                type_: TYPE_STREAM,
                op,
                flags: 0,
                buf_alloc: 8,
                fwd_cnt: 0,
            },
            data: data.to_vec(),
        }
    }

    /// The next packet for the guest, polling the host side until one comes.
    fn next(m: &mut Muxer) -> (Header, Vec<u8>) {
        for _ in 0..200 {
            m.poll_host();
            if let Some(p) = m.to_guest(4096) {
                return p;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        panic!("no packet for the guest");
    }

    #[test]
    fn host_clients_reach_guest_ports_and_data_flows_within_credit() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("vsock.sock");
        let mut m = Muxer::bind(&uds, GUEST).unwrap();
        let mut client = UnixStream::connect(&uds).unwrap();
        client.write_all(b"CONNECT 1024\n").unwrap();
        let (h, _) = next(&mut m);
        assert_eq!(({ h.op }, { h.dst_port }), (OP_REQUEST, 1024));
        let host_port = h.src_port;
        m.from_guest(&guest(OP_RESPONSE, 1024, host_port, &[]));
        let mut ok = vec![0u8; 14];
        client.read_exact(&mut ok).unwrap();
        assert_eq!(ok, format!("OK {host_port}\n").as_bytes());

        // Host → guest: 8 bytes of credit at a time, in order.
        client.write_all(b"0123456789abcdef").unwrap();
        let (h, data) = next(&mut m);
        assert_eq!(({ h.op }, data.as_slice()), (OP_RW, &b"01234567"[..]));
        assert!(m.to_guest(4096).is_none(), "credit exhausted");
        let mut update = guest(OP_CREDIT_UPDATE, 1024, host_port, &[]);
        update.header.fwd_cnt = 8;
        m.from_guest(&update);
        assert_eq!(next(&mut m).1, b"89abcdef");
        // Guest → host.
        m.from_guest(&guest(OP_RW, 1024, host_port, b"pong"));
        let mut buf = [0u8; 4];
        client.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"pong");
    }

    #[test]
    fn guest_connections_go_to_port_sockets_or_get_reset() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("vsock.sock");
        let mut m = Muxer::bind(&uds, GUEST).unwrap();
        let service = UnixListener::bind(format!("{}_5000", uds.display())).unwrap();
        m.from_guest(&guest(OP_REQUEST, 2000, 5000, &[]));
        let (h, _) = next(&mut m);
        assert_eq!(
            ({ h.op }, { h.dst_port }, { h.src_port }),
            (OP_RESPONSE, 2000, 5000)
        );
        let (mut accepted, _) = service.accept().unwrap();
        m.from_guest(&guest(OP_RW, 2000, 5000, b"hi"));
        let mut buf = [0u8; 2];
        accepted.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hi");
        // No socket for port 6000: RST. Data for an unknown connection: RST.
        m.from_guest(&guest(OP_REQUEST, 2001, 6000, &[]));
        assert_eq!({ next(&mut m).0.op }, OP_RST);
        m.from_guest(&guest(OP_RW, 2002, 7000, b"x"));
        assert_eq!({ next(&mut m).0.op }, OP_RST);
        // Packets from another CID are ignored.
        let mut foreign = guest(OP_REQUEST, 2003, 5000, &[]);
        foreign.header.src_cid = 9;
        m.from_guest(&foreign);
        assert!(m.to_guest(4096).is_none());
    }

    #[test]
    fn bad_handshakes_are_dropped_and_the_socket_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("vsock.sock");
        let mut m = Muxer::bind(&uds, GUEST).unwrap();
        let mut bad = UnixStream::connect(&uds).unwrap();
        bad.write_all(b"HELLO 1024\n").unwrap();
        let mut early = UnixStream::connect(&uds).unwrap();
        early.write_all(b"CONNECT 1024\ndata").unwrap();
        for _ in 0..20 {
            m.poll_host();
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(m.to_guest(4096).is_none(), "no connection was made");
        let mut buf = [0u8; 1];
        assert_eq!(bad.read(&mut buf).unwrap(), 0, "closed");
        drop(m);
        assert!(!uds.exists());
    }
}
