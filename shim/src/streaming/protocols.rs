//! The streaming protocols this server speaks and how one is picked: the client lists what it
//! speaks (`X-Stream-Protocol-Version` headers before a SPDY upgrade, `Sec-WebSocket-Protocol`
//! before a WebSocket one) and the first of them this server knows wins, as in kubelet.

use http::HeaderMap;

use super::status::StatusFormat;
use super::websocket::Encoding;

/// The remote-command protocols over SPDY. v5 is served as v4, as kubelet does (its close
/// signal is a WebSocket matter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SpdyVersion {
    V1,
    V2,
    V3,
    V4,
    V5,
}

impl SpdyVersion {
    /// Server preference order.
    pub const ALL: [(&'static str, SpdyVersion); 5] = [
        ("v5.channel.k8s.io", SpdyVersion::V5),
        ("v4.channel.k8s.io", SpdyVersion::V4),
        ("v3.channel.k8s.io", SpdyVersion::V3),
        ("v2.channel.k8s.io", SpdyVersion::V2),
        ("channel.k8s.io", SpdyVersion::V1),
    ];

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
    }

    /// Whether the client opens a resize stream (with a terminal).
    pub fn has_resize(self) -> bool {
        self >= SpdyVersion::V3
    }

    pub fn status_format(self) -> StatusFormat {
        match self {
            SpdyVersion::V1 => StatusFormat::None,
            SpdyVersion::V2 | SpdyVersion::V3 => StatusFormat::Text,
            SpdyVersion::V4 | SpdyVersion::V5 => StatusFormat::Json,
        }
    }
}

/// The one port-forward protocol over SPDY.
pub const PORT_FORWARD_SPDY: &str = "portforward.k8s.io";

/// A protocol over WebSocket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WsProtocol {
    /// The subprotocol name; empty for a client that names none.
    pub name: &'static str,
    pub encoding: Encoding,
    /// v5's `[255, channel]` half-close.
    pub close_signal: bool,
    pub status: StatusFormat,
}

const fn ws(
    name: &'static str,
    encoding: Encoding,
    close_signal: bool,
    status: StatusFormat,
) -> WsProtocol {
    WsProtocol {
        name,
        encoding,
        close_signal,
        status,
    }
}

/// Exec and attach over WebSocket: kubelet's four, plus v5 with its close signal.
pub const WS_REMOTE: [WsProtocol; 6] = [
    ws(
        "v5.channel.k8s.io",
        Encoding::Binary,
        true,
        StatusFormat::Json,
    ),
    ws(
        "v4.channel.k8s.io",
        Encoding::Binary,
        false,
        StatusFormat::Json,
    ),
    ws(
        "v4.base64.channel.k8s.io",
        Encoding::Base64,
        false,
        StatusFormat::Json,
    ),
    ws(
        "channel.k8s.io",
        Encoding::Binary,
        false,
        StatusFormat::Text,
    ),
    ws(
        "base64.channel.k8s.io",
        Encoding::Base64,
        false,
        StatusFormat::Text,
    ),
    ws("", Encoding::Binary, false, StatusFormat::Text),
];

/// Port forwarding over WebSocket, as kubelet serves it.
pub const WS_PORT_FORWARD: [WsProtocol; 3] = [
    ws(
        "v4.channel.k8s.io",
        Encoding::Binary,
        false,
        StatusFormat::Text,
    ),
    ws(
        "v4.base64.channel.k8s.io",
        Encoding::Base64,
        false,
        StatusFormat::Text,
    ),
    ws("", Encoding::Binary, false, StatusFormat::Text),
];

/// The protocols a client lists in `header`: every value, split on commas, trimmed.
pub fn client_protocols(headers: &HeaderMap, header: &str) -> Vec<String> {
    headers
        .get_all(header)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .collect()
}

/// The first protocol of the client's that the server knows.
pub fn negotiate<'a>(client: &[String], server: &[&'a str]) -> Option<&'a str> {
    client
        .iter()
        .find_map(|c| server.iter().find(|s| **s == c.as_str()).copied())
}

/// The WebSocket protocol for a client's list (no list means the unnamed protocol).
pub fn negotiate_ws(client: &[String], server: &[WsProtocol]) -> Option<WsProtocol> {
    if client.is_empty() {
        return server.iter().find(|p| p.name.is_empty()).copied();
    }
    client
        .iter()
        .find_map(|c| server.iter().find(|s| !s.name.is_empty() && s.name == c))
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_clients_order_wins() {
        let server: Vec<&str> = SpdyVersion::ALL.iter().map(|(n, _)| *n).collect();
        // client-go 0.26 offers v4 first.
        let client = list(&[
            "v4.channel.k8s.io",
            "v3.channel.k8s.io",
            "v2.channel.k8s.io",
            "channel.k8s.io",
        ]);
        assert_eq!(negotiate(&client, &server), Some("v4.channel.k8s.io"));
        assert_eq!(negotiate(&list(&["v9.channel.k8s.io"]), &server), None);
        assert_eq!(
            SpdyVersion::from_name("v5.channel.k8s.io").map(|v| v.status_format()),
            Some(StatusFormat::Json)
        );
        assert!(!SpdyVersion::V2.has_resize() && SpdyVersion::V3.has_resize());
    }

    #[test]
    fn header_values_split_on_commas() {
        let mut headers = HeaderMap::new();
        headers.append(
            "x-stream-protocol-version",
            "v4.channel.k8s.io".parse().unwrap(),
        );
        headers.append(
            "x-stream-protocol-version",
            "v3.channel.k8s.io, channel.k8s.io".parse().unwrap(),
        );
        assert_eq!(
            client_protocols(&headers, "X-Stream-Protocol-Version"),
            list(&["v4.channel.k8s.io", "v3.channel.k8s.io", "channel.k8s.io"])
        );
    }

    #[test]
    fn websocket_protocols() {
        let p = negotiate_ws(&list(&["v5.channel.k8s.io"]), &WS_REMOTE).unwrap();
        assert!(p.close_signal);
        let p = negotiate_ws(&list(&["nope", "v4.base64.channel.k8s.io"]), &WS_REMOTE).unwrap();
        assert_eq!(p.encoding, Encoding::Base64);
        assert_eq!(negotiate_ws(&[], &WS_REMOTE).unwrap().name, "");
        assert!(negotiate_ws(&list(&["v5.channel.k8s.io"]), &WS_PORT_FORWARD).is_none());
    }
}
