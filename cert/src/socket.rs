//! The UDP socket under every DSM endpoint (coordinator, clients, and the benchmarks' raw quinn
//! floors), with kernel buffers sized for bulk page traffic.
//!
//! With the kernel's default buffers (`net.core.rmem_default`, 208 KiB on Debian: about 90
//! full-size datagrams) a burst from a fast sender overflows the receiver's socket on loopback
//! before its thread is scheduled; quinn then sees losses, and BBR and loss recovery slow the
//! transfer down. [`SOCKET_BUFFER`] asks for room for about a flow-control window's worth of
//! in-flight data; the kernel caps the request at `net.core.rmem_max` / `wmem_max` without an
//! error, so on a host with small limits this changes nothing and costs nothing.

use std::net::{SocketAddr, UdpSocket};

use socket2::{Domain, Protocol, Socket, Type};

use crate::transport::MAX_UDP_PAYLOAD;

/// Requested size of each UDP socket's receive and send buffer (bytes).
pub const SOCKET_BUFFER: usize = 4 << 20;

/// A UDP socket bound to `addr` with [`SOCKET_BUFFER`]-sized kernel buffers (as large as the
/// host allows).
pub fn udp_socket(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // Like std's bind: "[::]:0" accepts IPv4-mapped peers too where the host allows it.
        let _ = socket.set_only_v6(false);
    }
    // Capped by the host's limits; a refusal only leaves the default in place.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// A quinn endpoint on [`udp_socket`]`(addr)`, serving incoming connections with `server` if
/// given, accepting datagrams up to [`MAX_UDP_PAYLOAD`] (what the peer's MTU discovery may
/// then find), sending GSO batches too large for one `sendmsg` in parts (`gso.rs`). Must be
/// called inside a tokio runtime.
pub fn endpoint(addr: SocketAddr, server: Option<quinn::ServerConfig>) -> std::io::Result<quinn::Endpoint> {
    let runtime = quinn::default_runtime()
        .ok_or_else(|| std::io::Error::other("no async runtime found (quinn endpoints need tokio)"))?;
    let mut config = quinn::EndpointConfig::default();
    config
        .max_udp_payload_size(MAX_UDP_PAYLOAD)
        .map_err(|e| std::io::Error::other(format!("max UDP payload {MAX_UDP_PAYLOAD}: {e}")))?;
    let socket = runtime.wrap_udp_socket(udp_socket(addr)?)?;
    let socket = std::sync::Arc::new(crate::gso::SplitGso::new(socket));
    quinn::Endpoint::new_with_abstract_socket(config, server, socket, runtime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_receive_buffer_is_what_was_asked_for_or_the_hosts_limit() {
        let s = udp_socket("127.0.0.1:0".parse().unwrap()).unwrap();
        assert_ne!(s.local_addr().unwrap().port(), 0);
        let s = Socket::from(s);
        // The kernel doubles what it grants (bookkeeping); with rmem_max >= 4 MiB the request
        // is granted in full, with the default limits it is capped near 208 KiB.
        let limit = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .ok()
            .and_then(|t| t.trim().parse::<usize>().ok())
            .unwrap_or(0);
        let got = s.recv_buffer_size().unwrap();
        assert!(got >= SOCKET_BUFFER.min(limit), "receive buffer {got}, limit {limit}");
    }

    #[test]
    fn an_ipv6_wildcard_socket_binds() {
        // Hosts without IPv6 cannot create the socket at all; that is not what this checks.
        if let Ok(s) = udp_socket("[::]:0".parse().unwrap()) {
            assert!(s.local_addr().unwrap().is_ipv6());
        }
    }
}
