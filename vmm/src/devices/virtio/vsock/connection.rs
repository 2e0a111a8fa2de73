//! One vsock stream connection between a guest port and a host Unix stream: its state
//! machine (virtio 1.2, 5.10.6.4), credit accounting both ways, and the packets it owes the
//! guest. The device feeds it the guest's packets ([`Connection::from_guest`]) and asks it
//! for the next packet for the guest ([`Connection::to_guest`]); host data is read only
//! while the guest has credit for it, and guest data is written to the host stream or, if
//! the stream would block, buffered up to the buffer space this side advertised.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};

use super::hybrid::ok_line;
use super::packet::{
    Header, TxPacket, MAX_PAYLOAD, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE,
    OP_RST, OP_RW, OP_SHUTDOWN, TYPE_STREAM,
};
use super::HOST_CID;

/// Buffer space this side advertises to the guest (`buf_alloc`).
pub const BUF_ALLOC: u32 = 256 * 1024;
/// SHUTDOWN flags.
const SHUTDOWN_RCV: u32 = 1;
const SHUTDOWN_SEND: u32 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// The host connected (hybrid handshake done); REQUEST sent, RESPONSE awaited.
    HostRequested,
    Established,
    /// The guest shut down both directions, or either side reset: nothing more flows.
    Closed,
}

/// A connection and its host stream.
pub struct Connection<S> {
    pub guest_cid: u64,
    /// The guest's port and the host-side port.
    pub guest_port: u32,
    pub host_port: u32,
    pub state: State,
    stream: S,
    /// Bytes the host stream did not take yet: the `OK` line first, if not all sent, then
    /// guest data.
    pending_to_host: Vec<u8>,
    /// How many bytes at the front of `pending_to_host` are the `OK` line, which the
    /// guest never sent and so must not count in `fwd_cnt`.
    pending_handshake: usize,
    /// Control packets owed to the guest, in order.
    pending_ops: VecDeque<u16>,
    /// Bytes of guest data forwarded to the host stream, and what the guest was last told.
    fwd_cnt: u32,
    fwd_cnt_told: u32,
    /// Bytes of host data sent to the guest.
    rx_cnt: u32,
    /// The guest's receive buffer and how much of what it got it has consumed.
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
}

impl<S: Read + Write> Connection<S> {
    /// A connection the guest asked for (its REQUEST), to a host stream that accepted it.
    pub fn guest_initiated(request: &Header, stream: S) -> Self {
        let mut c = Self::new(request.src_cid, request.src_port, request.dst_port, stream);
        c.state = State::Established;
        c.update_peer_credit(request);
        c.pending_ops.push_back(OP_RESPONSE);
        c
    }

    /// A connection a host client asked for (`CONNECT guest_port`), from `host_port`.
    pub fn host_initiated(guest_cid: u64, guest_port: u32, host_port: u32, stream: S) -> Self {
        let mut c = Self::new(guest_cid, guest_port, host_port, stream);
        c.pending_ops.push_back(OP_REQUEST);
        c
    }

    fn new(guest_cid: u64, guest_port: u32, host_port: u32, stream: S) -> Self {
        Self {
            guest_cid,
            guest_port,
            host_port,
            state: State::HostRequested,
            stream,
            pending_to_host: Vec::new(),
            pending_handshake: 0,
            pending_ops: VecDeque::new(),
            fwd_cnt: 0,
            fwd_cnt_told: 0,
            rx_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
        }
    }

    pub fn stream(&self) -> &S {
        &self.stream
    }

    /// Whether control packets are still owed to the guest.
    pub fn has_pending(&self) -> bool {
        !self.pending_ops.is_empty()
    }

    /// Whether host data read now could go to the guest: established, with credit left.
    pub fn wants_host_data(&self) -> bool {
        self.state == State::Established && self.peer_credit() > 0
    }

    /// Whether guest data waits for the host stream to take it.
    pub fn has_host_backlog(&self) -> bool {
        !self.pending_to_host.is_empty()
    }

    fn update_peer_credit(&mut self, header: &Header) {
        self.peer_buf_alloc = header.buf_alloc;
        self.peer_fwd_cnt = header.fwd_cnt;
    }

    /// Bytes the guest can still take.
    pub fn peer_credit(&self) -> u32 {
        self.peer_buf_alloc
            .saturating_sub(self.rx_cnt.wrapping_sub(self.peer_fwd_cnt))
    }

    /// Handles a packet from the guest for this connection.
    pub fn from_guest(&mut self, packet: &TxPacket) {
        let header = packet.header;
        self.update_peer_credit(&header);
        match (header.op, self.state) {
            (_, State::Closed) => {}
            (OP_RESPONSE, State::HostRequested) => {
                self.state = State::Established;
                let ok = ok_line(self.host_port);
                self.pending_handshake += ok.len();
                if self.write_host(ok.as_bytes()).is_err() {
                    self.reset();
                }
            }
            (OP_RW, State::Established) => {
                let room = BUF_ALLOC as usize - self.pending_to_host.len();
                if packet.data.len() > room || self.write_host(&packet.data).is_err() {
                    self.reset(); // the guest overran the credit it was given, or the host hung up
                }
            }
            (OP_CREDIT_UPDATE, _) => {}
            (OP_CREDIT_REQUEST, _) => self.pending_ops.push_back(OP_CREDIT_UPDATE),
            (OP_SHUTDOWN, _)
                if header.flags & (SHUTDOWN_RCV | SHUTDOWN_SEND)
                    == SHUTDOWN_RCV | SHUTDOWN_SEND =>
            {
                self.reset();
            }
            (OP_SHUTDOWN, _) => {}
            (OP_RST, _) => {
                self.state = State::Closed;
                self.pending_ops.clear();
            }
            _ => self.reset(), // a packet this state does not allow
        }
    }

    /// Writes guest data to the host stream, buffering what it does not take now.
    fn write_host(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.pending_to_host.extend_from_slice(data);
        self.flush_host()
    }

    /// Pushes buffered guest data to the host stream (also when it becomes writable).
    pub fn flush_host(&mut self) -> std::io::Result<()> {
        while !self.pending_to_host.is_empty() {
            match self.stream.write(&self.pending_to_host) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.pending_to_host.drain(..n);
                    let handshake = n.min(self.pending_handshake);
                    self.pending_handshake -= handshake;
                    self.fwd_cnt = self.fwd_cnt.wrapping_add((n - handshake) as u32);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        // Tell the guest about freed space once half the buffer was consumed.
        if self.fwd_cnt.wrapping_sub(self.fwd_cnt_told) >= BUF_ALLOC / 2
            && !self.pending_ops.contains(&OP_CREDIT_UPDATE)
        {
            self.pending_ops.push_back(OP_CREDIT_UPDATE);
        }
        Ok(())
    }

    /// Ends the connection with a RST to the guest.
    pub fn reset(&mut self) {
        if self.state != State::Closed {
            self.state = State::Closed;
            self.pending_ops.clear();
            self.pending_ops.push_back(OP_RST);
            // Nothing more goes to the host stream (or it stays watched for writing).
            self.pending_to_host.clear();
            self.pending_handshake = 0;
        }
    }

    fn header(&mut self, op: u16) -> Header {
        self.fwd_cnt_told = self.fwd_cnt;
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: self.host_port,
            dst_port: self.guest_port,
            len: 0,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: BUF_ALLOC,
            fwd_cnt: self.fwd_cnt,
        }
    }

    /// The next packet for the guest, at most `room` payload bytes: owed control packets
    /// first, then host data the guest has credit for. `None` when there is nothing now.
    pub fn to_guest(&mut self, room: usize) -> Option<(Header, Vec<u8>)> {
        if let Some(op) = self.pending_ops.pop_front() {
            return Some((self.header(op), Vec::new()));
        }
        if self.state != State::Established {
            return None;
        }
        let want = (self.peer_credit() as usize)
            .min(room)
            .min(MAX_PAYLOAD as usize);
        if want == 0 {
            return None;
        }
        let mut data = vec![0u8; want];
        match self.stream.read(&mut data) {
            Ok(0) => {
                // The host closed its end: tell the guest nothing more comes.
                let mut header = self.header(OP_SHUTDOWN);
                header.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
                self.state = State::Closed;
                Some((header, Vec::new()))
            }
            Ok(n) => {
                data.truncate(n);
                self.rx_cnt = self.rx_cnt.wrapping_add(n as u32);
                Some((self.header(OP_RW), data))
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => None,
            Err(_) => {
                self.reset();
                self.pending_ops
                    .pop_front()
                    .map(|op| (self.header(op), Vec::new()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixStream;

    use super::*;

    fn guest_header(op: u16) -> Header {
        Header {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port: 1024,
            dst_port: 5000,
            len: 0,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: 16,
            fwd_cnt: 0,
        }
    }

    fn packet(op: u16, data: &[u8]) -> TxPacket {
        let mut header = guest_header(op);
        header.len = data.len() as u32;
        TxPacket {
            header,
            data: data.to_vec(),
        }
    }

    fn pair() -> (UnixStream, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        b.set_nonblocking(true).unwrap();
        (a, b)
    }

    #[test]
    fn guest_initiated_lifecycle_with_credit() {
        let (ours, mut host) = pair();
        let mut c = Connection::guest_initiated(&guest_header(OP_REQUEST), ours);
        let (h, _) = c.to_guest(4096).unwrap();
        assert_eq!(
            ({ h.op }, { h.src_port }, { h.dst_port }),
            (OP_RESPONSE, 5000, 1024)
        );
        assert_eq!({ h.buf_alloc }, BUF_ALLOC);

        // Guest → host data arrives intact.
        c.from_guest(&packet(OP_RW, b"ping"));
        let mut buf = [0u8; 4];
        host.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping");

        // Host → guest data is limited by the guest's credit (16 bytes).
        host.write_all(&[7u8; 40]).unwrap();
        let (h, data) = c.to_guest(4096).unwrap();
        assert_eq!(({ h.op }, data.len()), (OP_RW, 16));
        assert_eq!(
            { h.fwd_cnt },
            4,
            "what was forwarded to the host is reported"
        );
        assert!(c.to_guest(4096).is_none(), "no credit left");
        // The guest consumed it and says so: 16 more.
        let mut update = packet(OP_CREDIT_UPDATE, &[]);
        update.header.fwd_cnt = 16;
        c.from_guest(&update);
        assert_eq!(c.to_guest(4096).unwrap().1.len(), 16);
        // A smaller RX buffer limits the packet too.
        let mut update = packet(OP_CREDIT_UPDATE, &[]);
        update.header.fwd_cnt = 32;
        c.from_guest(&update);
        assert_eq!(c.to_guest(5).unwrap().1.len(), 5);

        // A credit request is answered with a credit update.
        c.from_guest(&packet(OP_CREDIT_REQUEST, &[]));
        assert_eq!({ c.to_guest(4096).unwrap().0.op }, OP_CREDIT_UPDATE);

        // The guest shuts down both ways: the connection ends with a RST.
        let mut shutdown = packet(OP_SHUTDOWN, &[]);
        shutdown.header.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
        c.from_guest(&shutdown);
        assert_eq!({ c.to_guest(4096).unwrap().0.op }, OP_RST);
        assert_eq!(c.state, State::Closed);
        assert!(c.to_guest(4096).is_none());
    }

    #[test]
    fn host_initiated_handshake_and_host_close() {
        let (ours, mut host) = pair();
        let mut c = Connection::host_initiated(3, 1024, 1 << 30, ours);
        let (h, _) = c.to_guest(4096).unwrap();
        assert_eq!(
            ({ h.op }, { h.dst_port }, { h.src_port }),
            (OP_REQUEST, 1024, 1 << 30)
        );
        assert!(
            c.to_guest(4096).is_none(),
            "no data before the guest accepts"
        );
        c.from_guest(&packet(OP_RESPONSE, &[]));
        assert_eq!(c.state, State::Established);
        let mut line = [0u8; 14];
        host.read_exact(&mut line).unwrap();
        assert_eq!(&line, b"OK 1073741824\n");
        // The OK line is ours, not guest data: the guest is told nothing was forwarded
        // (a guest computes its credit as buf_alloc - (tx_cnt - fwd_cnt)).
        c.from_guest(&packet(OP_RW, b"abc"));
        let mut abc = [0u8; 3];
        host.read_exact(&mut abc).unwrap();
        c.from_guest(&packet(OP_CREDIT_REQUEST, &[]));
        let (update, _) = c.to_guest(4096).unwrap();
        assert_eq!(({ update.op }, { update.fwd_cnt }), (OP_CREDIT_UPDATE, 3));
        // The host closes: the guest gets a SHUTDOWN of both directions.
        drop(host);
        let (h, _) = c.to_guest(4096).unwrap();
        assert_eq!(
            ({ h.op }, { h.flags }),
            (OP_SHUTDOWN, SHUTDOWN_RCV | SHUTDOWN_SEND)
        );
        assert_eq!(c.state, State::Closed);
    }

    #[test]
    fn protocol_violations_reset_and_resets_close() {
        // Data before the connection is established.
        let (ours, _host) = pair();
        let mut c = Connection::host_initiated(3, 1024, 1 << 30, ours);
        c.to_guest(4096); // the REQUEST
        c.from_guest(&packet(OP_RW, b"early"));
        assert_eq!({ c.to_guest(4096).unwrap().0.op }, OP_RST);
        // A guest overrunning the advertised buffer while the host does not read.
        let (ours, _host) = pair();
        let mut c = Connection::guest_initiated(&guest_header(OP_REQUEST), ours);
        c.to_guest(4096);
        let chunk = vec![1u8; MAX_PAYLOAD as usize];
        for _ in 0..16 {
            c.from_guest(&packet(OP_RW, &chunk));
            if c.state == State::Closed {
                break;
            }
        }
        assert_eq!(c.state, State::Closed);
        assert_eq!({ c.to_guest(4096).unwrap().0.op }, OP_RST);
        // The guest resets: closed, nothing owed.
        let (ours, _host) = pair();
        let mut c = Connection::guest_initiated(&guest_header(OP_REQUEST), ours);
        c.from_guest(&packet(OP_RST, &[]));
        assert_eq!(c.state, State::Closed);
        assert!(c.to_guest(4096).is_none());
    }

    #[test]
    fn forwarding_half_the_buffer_owes_a_credit_update() {
        let (ours, mut host) = pair();
        let mut c = Connection::guest_initiated(&guest_header(OP_REQUEST), ours);
        c.to_guest(4096); // RESPONSE
        let chunk = vec![2u8; 32 * 1024];
        let mut drained = vec![0u8; 64 * 1024];
        for _ in 0..(BUF_ALLOC / 2 / 32 / 1024) {
            c.from_guest(&packet(OP_RW, &chunk));
            while host.read(&mut drained).is_ok() {}
            c.flush_host().unwrap();
        }
        let (h, _) = c.to_guest(4096).unwrap();
        assert_eq!({ h.op }, OP_CREDIT_UPDATE);
        assert_eq!({ h.fwd_cnt }, BUF_ALLOC / 2);
    }
}
