//! The versioned hello that opens every connection.
//!
//! Both sides write [`HELLO_LEN`] bytes first on the connection's stream: the [`MAGIC`] and
//! their [`PROTOCOL_VERSION`] (big-endian `u16`). The layout is fixed forever so that any two
//! versions can tell each other apart and report a mismatch clearly, whatever their frame
//! format.

/// Identifies a DSM peer.
pub const MAGIC: [u8; 6] = *b"DSMSHM";

/// Version of the frame format and messages in [`crate::wire`]. Bump on any incompatible change.
pub const PROTOCOL_VERSION: u16 = 5;

/// Bytes in a hello.
pub const HELLO_LEN: usize = 8;

/// One side's hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    /// The protocol version the sender speaks.
    pub version: u16,
}

/// A hello that does not let the connection go on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HelloError {
    /// The peer is not a DSM peer.
    #[error("peer is not a DSM endpoint (bad magic {0:02x?})")]
    BadMagic([u8; 6]),
    /// The peer speaks another protocol version.
    #[error("protocol version mismatch: this side speaks version {ours}, the peer speaks version {theirs}; run the same DSM release on both sides")]
    VersionMismatch {
        /// Our version.
        ours: u16,
        /// The peer's version.
        theirs: u16,
    },
}

impl Hello {
    /// Our own hello.
    pub fn ours() -> Self {
        Hello { version: PROTOCOL_VERSION }
    }

    /// The bytes to send.
    pub fn encode(self) -> [u8; HELLO_LEN] {
        let mut out = [0; HELLO_LEN];
        out[..6].copy_from_slice(&MAGIC);
        out[6..].copy_from_slice(&self.version.to_be_bytes());
        out
    }

    /// Parses a peer's hello.
    pub fn decode(bytes: [u8; HELLO_LEN]) -> Result<Self, HelloError> {
        let mut magic = [0; 6];
        magic.copy_from_slice(&bytes[..6]);
        if magic != MAGIC {
            return Err(HelloError::BadMagic(magic));
        }
        Ok(Hello { version: u16::from_be_bytes([bytes[6], bytes[7]]) })
    }

    /// Checks that the peer's hello is compatible with ours.
    pub fn check(self) -> Result<(), HelloError> {
        if self.version != PROTOCOL_VERSION {
            return Err(HelloError::VersionMismatch { ours: PROTOCOL_VERSION, theirs: self.version });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_round_trip_and_mismatch() {
        let h = Hello::ours();
        assert_eq!(Hello::decode(h.encode()).unwrap(), h);
        assert!(h.check().is_ok());
        let other = Hello { version: PROTOCOL_VERSION + 1 };
        assert_eq!(
            Hello::decode(other.encode()).unwrap().check(),
            Err(HelloError::VersionMismatch { ours: PROTOCOL_VERSION, theirs: PROTOCOL_VERSION + 1 })
        );
        assert!(matches!(Hello::decode(*b"GET / HT"), Err(HelloError::BadMagic(_))));
    }
}
