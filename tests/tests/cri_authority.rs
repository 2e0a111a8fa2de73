//! grpc-go clients of Kubernetes before 1.30 (kubelet, crictl ≤ 1.29) and grpc-java send the
//! socket *path* as HTTP/2 `:authority`. This test speaks raw HTTP/2 to the real daemon with
//! such a request and expects a gRPC answer, not RST_STREAM PROTOCOL_ERROR.

use std::time::Duration;

use loona_hpack::{Decoder, Encoder};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use vessel_protocols::cri;
use vessel_tests::cri::Daemon;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u32).to_be_bytes();
    let mut f = vec![len[1], len[2], len[3], kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

async fn read_frame(s: &mut UnixStream) -> (u8, u8, u32, Vec<u8>) {
    let mut head = [0u8; 9];
    s.read_exact(&mut head).await.expect("frame header");
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).await.expect("frame payload");
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    (head[3], head[4], stream, payload)
}

#[tokio::test]
async fn socket_path_as_authority_gets_an_answer() {
    // No VM needed: Version is answered by the daemon alone. Root is needed for its dirs.
    if !nix::unistd::Uid::effective().is_root() {
        vessel_tests::skipped(
            "socket_path_as_authority_gets_an_answer",
            "not running as root",
        );
        return;
    }
    let daemon = Daemon::start().await;
    let mut s = UnixStream::connect(&daemon.socket).await.expect("connect");
    let authority = daemon.socket.display().to_string();
    let mut enc = Encoder::new();
    let mut out = PREFACE.to_vec();
    out.extend(frame(0x4, 0, 0, &[])); // SETTINGS
                                       // Two requests on one connection: the second reuses the encoder's dynamic table, as
                                       // grpc-go does.
    for stream in [1u32, 3] {
        let headers: Vec<(&[u8], &[u8])> = vec![
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", b"/runtime.v1.RuntimeService/Version"),
            (b":authority", authority.as_bytes()),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
        ];
        out.extend(frame(0x1, 0x4, stream, &enc.encode(headers)));
        let msg = cri::VersionRequest {
            version: "v1".into(),
        }
        .encode_to_vec();
        let mut grpc = vec![0u8];
        grpc.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        grpc.extend_from_slice(&msg);
        out.extend(frame(0x0, 0x1, stream, &grpc)); // DATA, END_STREAM
    }
    s.write_all(&out).await.expect("send requests");

    let mut dec = Decoder::new();
    let mut answered = Vec::new();
    let mut statuses = Vec::new();
    let result = tokio::time::timeout(Duration::from_secs(20), async {
        while statuses.len() < 2 {
            let (kind, flags, stream, payload) = read_frame(&mut s).await;
            match kind {
                0x0 if payload.len() > 5 => {
                    let v = cri::VersionResponse::decode(&payload[5..]).expect("VersionResponse");
                    answered.push((stream, v.runtime_name));
                }
                0x1 => {
                    for (name, value) in dec.decode(&payload).expect("hpack") {
                        if name == b"grpc-status" {
                            statuses.push((stream, String::from_utf8_lossy(&value).into_owned()));
                        }
                    }
                }
                0x3 => panic!("RST_STREAM on stream {stream}: {payload:?}"),
                0x4 if flags & 0x1 == 0 => {
                    s.write_all(&frame(0x4, 0x1, 0, &[]))
                        .await
                        .expect("settings ack");
                }
                0x7 => panic!("GOAWAY: {payload:?}"),
                _ => {}
            }
        }
    })
    .await;
    assert!(
        result.is_ok(),
        "no complete answer; got {answered:?} {statuses:?}"
    );
    answered.sort();
    statuses.sort();
    assert_eq!(
        answered,
        [(1, "vessel".to_string()), (3, "vessel".to_string())]
    );
    assert_eq!(statuses, [(1, "0".to_string()), (3, "0".to_string())]);
}
