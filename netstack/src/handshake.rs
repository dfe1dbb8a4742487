//! Who is at the other end of a data connection, and the proof that it belongs to this
//! cluster. Every TaskManager process has a random 16-byte [`TmId`]; the JobManager gives all
//! of its TaskManagers one 32-byte cluster token, and optionally the cluster has a secret.
//! A connection opens with a HELLO from each side (id, token, pid, heartbeat interval, a fresh
//! 32-byte nonce), then an AUTH from each side carrying
//! `HMAC-SHA256(key, label ‖ dialer's HELLO ‖ acceptor's HELLO ‖ sender's role)`, where the
//! key is the cluster secret if one is configured, else the token, and each HELLO is the exact
//! frame that crossed the wire (header and body). The nonces make every transcript fresh, the
//! role byte keeps one side's MAC from being replayed as the other's, and the receiver checks
//! the MAC in constant time (`hmac`'s `verify_slice`).
//!
//! Without a secret the token travels in the clear, so the MAC only proves that the peer read
//! the same token: it keeps TaskManagers of two clusters (or a stray process) apart, it does
//! not stop an attacker on the network. With a secret, only holders of the secret pass.
//!
//! The checks here are pure functions ([`check_peer_hello`], [`auth_mac`], [`verify_auth`]);
//! [`crate::remote::PeerSession`] runs them as frames arrive.

use std::fmt;
use std::sync::Arc;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use thiserror::Error;

use crate::error::NetError;
use crate::wire::{FrameError, Hello};

/// Bytes of a MAC, a nonce and a cluster token.
pub const MAC_BYTES: usize = 32;

/// Prefix of every AUTH transcript: a MAC for anything else never verifies here.
const AUTH_LABEL: &[u8] = b"corestream data connection v2 AUTH\0";

/// A TaskManager process: 16 random bytes, printed as 32 hex digits (as the engine's
/// `TaskManagerId`, which converts to and from it).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct TmId(pub [u8; 16]);

impl TmId {
    /// A new random id from the kernel's random source.
    pub fn random() -> Result<Self, NetError> {
        let mut bytes = [0u8; 16];
        fill_random(&mut bytes)?;
        Ok(Self(bytes))
    }

    /// The first 8 hex digits, for names in logs and errors.
    pub fn short(&self) -> String {
        self.to_string()[..8].to_string()
    }
}

impl fmt::Display for TmId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for TmId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A fresh 32-byte nonce for one HELLO.
pub fn random_nonce() -> Result<[u8; MAC_BYTES], NetError> {
    let mut nonce = [0u8; MAC_BYTES];
    fill_random(&mut nonce)?;
    Ok(nonce)
}

fn fill_random(out: &mut [u8]) -> Result<(), NetError> {
    getrandom::fill(out).map_err(|e| NetError::Random { detail: e.to_string() })
}

/// What proves membership of the cluster: the token every TaskManager of the cluster was given
/// and, if the cluster has one, its secret (then the MAC key). `Debug` never prints either.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterAuth {
    token: [u8; MAC_BYTES],
    secret: Option<Arc<[u8]>>,
}

impl ClusterAuth {
    pub fn new(token: [u8; MAC_BYTES], secret: Option<&[u8]>) -> Self {
        Self { token, secret: secret.map(Arc::from) }
    }

    pub fn token(&self) -> &[u8; MAC_BYTES] {
        &self.token
    }

    pub fn has_secret(&self) -> bool {
        self.secret.is_some()
    }

    fn key(&self) -> &[u8] {
        self.secret.as_deref().unwrap_or(&self.token)
    }
}

impl fmt::Debug for ClusterAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterAuth").field("secret", &self.secret.is_some()).finish_non_exhaustive()
    }
}

/// Which end of the connection a side is. The TaskManager with the lower id dials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Dialer,
    Acceptor,
}

impl Role {
    fn byte(self) -> u8 {
        match self {
            Role::Dialer => b'D',
            Role::Acceptor => b'A',
        }
    }

    pub fn other(self) -> Role {
        match self {
            Role::Dialer => Role::Acceptor,
            Role::Acceptor => Role::Dialer,
        }
    }
}

/// Why this side refused the peer during the handshake. The peer gets ERROR with code 3 and
/// this text; none of these goes away by retrying with the same settings.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum HandshakeError {
    #[error("wrong cluster token: the peer belongs to another cluster")]
    WrongClusterToken,
    #[error("bad MAC in the peer's AUTH: it does not hold this cluster's secret (or token)")]
    BadMac,
    #[error("the peer speaks protocol version {found}, this build speaks {supported}")]
    UnsupportedVersion { found: u8, supported: u8 },
    #[error(
        "heartbeat intervals differ: this side beats every {local_ms} ms, the peer every {peer_ms} ms \
         (each side would declare the other dead)"
    )]
    HeartbeatMismatch { local_ms: u32, peer_ms: u32 },
    #[error("reached TaskManager {found}, expected TaskManager {expected}")]
    UnexpectedPeer { expected: TmId, found: TmId },
    #[error("the peer uses this TaskManager's own id {id}")]
    SameId { id: TmId },
    #[error(
        "TaskManager {dialer} dialed TaskManager {acceptor}, but of two TaskManagers the one with the lower id dials"
    )]
    WrongDialer { dialer: TmId, acceptor: TmId },
    #[error("the peer did not open with a valid handshake: {0}")]
    Malformed(FrameError),
}

/// What this side knows of itself and expects of the peer when a HELLO arrives.
#[derive(Debug, Clone, Copy)]
pub struct HelloCheck<'a> {
    pub local: &'a Hello,
    pub auth: &'a ClusterAuth,
    pub role: Role,
    /// The TaskManager this side dialed; `None` when accepting.
    pub expected_peer: Option<TmId>,
}

/// Checks the peer's HELLO: the same cluster token (compared in constant time), the same
/// heartbeat interval, the expected TaskManager if this side dialed it, another id than this
/// side's, and the dialing rule (the lower id dials).
pub fn check_peer_hello(check: &HelloCheck<'_>, peer: &Hello) -> Result<(), HandshakeError> {
    if !constant_time_eq(&peer.cluster_token, check.auth.token()) {
        return Err(HandshakeError::WrongClusterToken);
    }
    if peer.tm == check.local.tm {
        return Err(HandshakeError::SameId { id: peer.tm });
    }
    if let Some(expected) = check.expected_peer {
        if peer.tm != expected {
            return Err(HandshakeError::UnexpectedPeer { expected, found: peer.tm });
        }
    }
    let (dialer, acceptor) = match check.role {
        Role::Dialer => (check.local.tm, peer.tm),
        Role::Acceptor => (peer.tm, check.local.tm),
    };
    if dialer > acceptor {
        return Err(HandshakeError::WrongDialer { dialer, acceptor });
    }
    if peer.heartbeat_ms != check.local.heartbeat_ms {
        return Err(HandshakeError::HeartbeatMismatch {
            local_ms: check.local.heartbeat_ms,
            peer_ms: peer.heartbeat_ms,
        });
    }
    Ok(())
}

fn constant_time_eq(a: &[u8; MAC_BYTES], b: &[u8; MAC_BYTES]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

fn transcript(auth: &ClusterAuth, dialer_hello: &[u8], acceptor_hello: &[u8], sender: Role) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(auth.key()).expect("HMAC takes a key of any length");
    mac.update(AUTH_LABEL);
    mac.update(dialer_hello);
    mac.update(acceptor_hello);
    mac.update(&[sender.byte()]);
    mac
}

/// The MAC the side with role `sender` puts in its AUTH; `dialer_hello` and `acceptor_hello`
/// are the two HELLO frames as they crossed the wire.
pub fn auth_mac(auth: &ClusterAuth, dialer_hello: &[u8], acceptor_hello: &[u8], sender: Role) -> [u8; MAC_BYTES] {
    transcript(auth, dialer_hello, acceptor_hello, sender).finalize().into_bytes().into()
}

/// Checks the MAC of the peer's AUTH (the peer's role is `sender`) in constant time.
pub fn verify_auth(
    auth: &ClusterAuth,
    dialer_hello: &[u8],
    acceptor_hello: &[u8],
    sender: Role,
    mac: &[u8; MAC_BYTES],
) -> Result<(), HandshakeError> {
    transcript(auth, dialer_hello, acceptor_hello, sender).verify_slice(mac).map_err(|_| HandshakeError::BadMac)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(tm: u8, token: u8) -> Hello {
        Hello { tm: TmId([tm; 16]), cluster_token: [token; 32], nonce: [tm ^ 0x5a; 32], pid: 7, heartbeat_ms: 1000 }
    }

    fn auth(token: u8) -> ClusterAuth {
        ClusterAuth::new([token; 32], None)
    }

    #[test]
    fn a_peer_hello_is_checked_field_by_field() {
        let (local, a) = (hello(1, 9), auth(9));
        let check = HelloCheck { local: &local, auth: &a, role: Role::Dialer, expected_peer: Some(TmId([2; 16])) };
        assert_eq!(check_peer_hello(&check, &hello(2, 9)), Ok(()));
        assert_eq!(check_peer_hello(&check, &hello(2, 8)), Err(HandshakeError::WrongClusterToken));
        assert_eq!(check_peer_hello(&check, &hello(1, 9)), Err(HandshakeError::SameId { id: TmId([1; 16]) }));
        assert_eq!(
            check_peer_hello(&check, &hello(3, 9)),
            Err(HandshakeError::UnexpectedPeer { expected: TmId([2; 16]), found: TmId([3; 16]) })
        );
        let slow = Hello { heartbeat_ms: 5000, ..hello(2, 9) };
        assert_eq!(
            check_peer_hello(&check, &slow),
            Err(HandshakeError::HeartbeatMismatch { local_ms: 1000, peer_ms: 5000 })
        );
        let acceptor = HelloCheck { role: Role::Acceptor, expected_peer: None, ..check };
        assert_eq!(check_peer_hello(&acceptor, &hello(0, 9)), Ok(()), "a lower id dials this side");
        let err = check_peer_hello(&acceptor, &hello(2, 9)).unwrap_err();
        assert_eq!(err, HandshakeError::WrongDialer { dialer: TmId([2; 16]), acceptor: TmId([1; 16]) });
        assert!(err.to_string().contains("lower id dials"), "{err}");
        let dialing_down = HelloCheck { expected_peer: Some(TmId([0; 16])), ..check };
        assert!(matches!(check_peer_hello(&dialing_down, &hello(0, 9)), Err(HandshakeError::WrongDialer { .. })));
    }

    #[test]
    fn macs_bind_both_hellos_the_role_and_the_key() {
        let (d, a) = (b"dialer hello".as_slice(), b"acceptor hello".as_slice());
        let token = auth(1);
        let mac = auth_mac(&token, d, a, Role::Dialer);
        assert_eq!(verify_auth(&token, d, a, Role::Dialer, &mac), Ok(()));
        assert_eq!(verify_auth(&token, d, a, Role::Acceptor, &mac), Err(HandshakeError::BadMac), "role");
        assert_eq!(verify_auth(&token, a, d, Role::Dialer, &mac), Err(HandshakeError::BadMac), "order");
        assert_eq!(verify_auth(&token, b"dialer hellO", a, Role::Dialer, &mac), Err(HandshakeError::BadMac));
        assert_eq!(verify_auth(&auth(2), d, a, Role::Dialer, &mac), Err(HandshakeError::BadMac), "token");
        let secret = ClusterAuth::new([1; 32], Some(b"s3cret"));
        let with_secret = auth_mac(&secret, d, a, Role::Dialer);
        assert_ne!(with_secret, mac, "the secret, not the token, keys the MAC");
        let other_secret = ClusterAuth::new([1; 32], Some(b"other"));
        assert_eq!(verify_auth(&other_secret, d, a, Role::Dialer, &with_secret), Err(HandshakeError::BadMac));
        assert_eq!(verify_auth(&secret, d, a, Role::Dialer, &with_secret), Ok(()));
    }

    #[test]
    fn ids_print_as_hex_and_secrets_never_print() {
        let id = TmId([0xab; 16]);
        assert_eq!(id.to_string(), "ab".repeat(16));
        assert_eq!(id.short(), "abababab");
        assert_ne!(TmId::random().unwrap(), TmId::random().unwrap());
        let printed = format!("{:?}", ClusterAuth::new([0x42; 32], Some(b"hunter2")));
        assert!(!printed.contains("hunter2") && !printed.contains("42, 42"), "{printed}");
    }
}
