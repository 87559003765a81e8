//! The UDP socket quinn sends through, with every `sendmsg` kept within what the kernel takes.
//!
//! quinn hands the socket up to 10 datagrams of one size in one [`Transmit`] (GSO) and puts no
//! cap on their total; over UDP/IPv4 one `sendmsg` carries at most [`MAX_SEND_BYTES`], and a
//! larger batch fails as a whole (`EMSGSIZE`), which quinn takes for a black hole: the
//! connection falls back to 1200-byte packets for good. [`SplitGso`] sends such a batch as
//! several `sendmsg`s of whole datagrams, each within the limit, so that MTU discovery may find
//! what the path really carries (64 KiB on loopback, 9000 with jumbo frames) without the batch
//! overflowing.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};

/// Most bytes one `sendmsg` carries over UDP/IPv4 (65,535 minus the IP and UDP headers), a GSO
/// batch included.
pub const MAX_SEND_BYTES: usize = 65_507;

/// quinn's socket, with batches over [`MAX_SEND_BYTES`] sent in parts (see the module docs).
pub(crate) struct SplitGso {
    inner: Arc<dyn AsyncUdpSocket>,
}

impl SplitGso {
    pub(crate) fn new(inner: Arc<dyn AsyncUdpSocket>) -> SplitGso {
        SplitGso { inner }
    }
}

impl fmt::Debug for SplitGso {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SplitGso").field("inner", &self.inner).finish()
    }
}

/// The parts of a batch of `len` bytes in datagrams of `segment` bytes (the last may be
/// shorter), each part at most [`MAX_SEND_BYTES`] and whole datagrams: byte ranges.
fn parts(len: usize, segment: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    let per = (MAX_SEND_BYTES / segment.max(1)).max(1) * segment.max(1);
    (0..len).step_by(per).map(move |start| start..(start + per).min(len))
}

impl AsyncUdpSocket for SplitGso {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Arc::clone(&self.inner).create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        let Some(segment) = transmit.segment_size else { return self.inner.try_send(transmit) };
        if transmit.contents.len() <= MAX_SEND_BYTES {
            return self.inner.try_send(transmit);
        }
        for (i, range) in parts(transmit.contents.len(), segment).enumerate() {
            let contents = &transmit.contents[range];
            let part = Transmit {
                destination: transmit.destination,
                ecn: transmit.ecn,
                contents,
                segment_size: (contents.len() > segment).then_some(segment),
                src_ip: transmit.src_ip,
            };
            match self.inner.try_send(&part) {
                Ok(()) => {}
                // Parts already sent cannot be taken back: quinn must not send them again, so
                // the batch counts as sent and the rest is recovered as lost packets are.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && i > 0 => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn poll_recv(&self, cx: &mut Context, bufs: &mut [IoSliceMut<'_>], meta: &mut [RecvMeta]) -> Poll<io::Result<usize>> {
        self.inner.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_splits_into_whole_datagrams_within_the_limit() {
        // Ten 8972-byte datagrams (jumbo frames): 89,720 bytes, over the limit.
        let p: Vec<_> = parts(89_720, 8972).collect();
        assert_eq!(p, vec![0..7 * 8972, 7 * 8972..89_720]);
        for r in &p {
            assert!(r.len() <= MAX_SEND_BYTES && r.start % 8972 == 0);
        }
        // A short last datagram stays in the last part.
        let p: Vec<_> = parts(9 * 8972 + 100, 8972).collect();
        assert_eq!(p.last().unwrap().end, 9 * 8972 + 100);
        // Datagrams as large as the limit: one per part.
        assert_eq!(parts(3 * MAX_SEND_BYTES, MAX_SEND_BYTES).count(), 3);
    }
}
