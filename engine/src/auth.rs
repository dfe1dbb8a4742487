//! The shared secret of a cluster and what is built on it: nonces, MACs over handshake
//! transcripts, and the bearer check of the REST API's mutations.
//!
//! Every process of a cluster is given the same [`ClusterSecret`] (`security.cluster.secret`
//! or `security.cluster.secret-file`). The data and control connections prove knowledge of
//! it with [`mac`] over both sides' [`nonce`]s; the REST API compares the `Authorization:
//! Bearer` header against it ([`check_bearer`]). Comparisons run in constant time, and neither
//! `Debug` nor any error message ever contains the secret.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use thiserror::Error;

use crate::conf::SecuritySettings;

/// Longest secret accepted, in bytes (a secret is one line of text).
pub const SECRET_BYTES_MAX: usize = 4096;

/// Shorter secrets are accepted with a warning: 16 random characters are the least that
/// resists guessing.
pub const SECRET_BYTES_RECOMMENDED_MIN: usize = 16;

type HmacSha256 = Hmac<Sha256>;

/// The cluster's shared secret: 1 to [`SECRET_BYTES_MAX`] bytes of visible ASCII (no blanks),
/// because it also travels as `Authorization: Bearer <secret>`. `Debug` prints no byte of it
/// and equality runs in constant time.
#[derive(Clone)]
pub struct ClusterSecret {
    bytes: Box<[u8]>,
}

impl fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterSecret(<redacted>)")
    }
}

impl PartialEq for ClusterSecret {
    fn eq(&self, other: &Self) -> bool {
        self.bytes.len() == other.bytes.len()
            && self.bytes.iter().zip(other.bytes.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }
}

/// Why authentication failed or a secret could not be had. No variant holds the secret or
/// the credential a client sent.
#[derive(Debug, Error)]
pub enum AuthError {
    #[error("missing credentials: this request needs the header `Authorization: Bearer <cluster secret>`")]
    MissingCredentials,
    #[error("the Authorization header does not use the Bearer scheme: send `Authorization: Bearer <cluster secret>`")]
    NotBearer,
    #[error("wrong cluster secret in the Authorization header")]
    WrongSecret,
    #[error("the cluster secret from {origin} {reason}")]
    InvalidSecret { origin: String, reason: String },
    #[error("cannot read the cluster secret file {path}: {source}")]
    ReadSecretFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "security.cluster.secret and security.cluster.secret-file are both set: set one (a later layer of the \
         configuration replaces an earlier layer's secret, but one layer may give only one)"
    )]
    BothSecrets,
}

impl ClusterSecret {
    /// A secret given inline; `origin` names where it came from in errors ("security.cluster.secret").
    pub fn new(secret: impl AsRef<[u8]>, origin: &str) -> Result<Self, AuthError> {
        let bytes = secret.as_ref();
        let invalid = |reason: String| AuthError::InvalidSecret { origin: origin.to_string(), reason };
        if bytes.is_empty() {
            return Err(invalid("is empty".into()));
        }
        if bytes.len() > SECRET_BYTES_MAX {
            return Err(invalid(format!("is {} bytes long, more than the limit of {SECRET_BYTES_MAX}", bytes.len())));
        }
        if let Some(at) = bytes.iter().position(|b| !b.is_ascii_graphic()) {
            return Err(invalid(format!(
                "has a blank, control or non-ASCII byte at offset {at}: it travels as `Authorization: Bearer \
                 <secret>`, so use visible ASCII only (e.g. the output of `openssl rand -hex 32`)"
            )));
        }
        if bytes.len() < SECRET_BYTES_RECOMMENDED_MIN {
            tracing::warn!(
                "the cluster secret from {origin} is only {} bytes long; use at least {SECRET_BYTES_RECOMMENDED_MIN} \
                 random characters (e.g. `openssl rand -hex 32`)",
                bytes.len()
            );
        }
        Ok(Self { bytes: bytes.into() })
    }

    /// Reads a secret file: at most [`SECRET_BYTES_MAX`] bytes plus a line end, one trailing
    /// `\n` (or `\r\n`) removed, not empty. A file every user may read is accepted with a
    /// warning.
    pub fn from_file(path: &Path) -> Result<Self, AuthError> {
        let read_error = |source| AuthError::ReadSecretFile { path: path.to_path_buf(), source };
        let file = std::fs::File::open(path).map_err(read_error)?;
        let mode = file.metadata().map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()));
        if let Ok(mode) = mode {
            if is_world_readable(mode) {
                tracing::warn!(
                    "the cluster secret file {} can be read by every user (mode {:o}); restrict it with `chmod 600`",
                    path.display(),
                    mode & 0o7777
                );
            }
        }
        let mut bytes = Vec::new();
        file.take(SECRET_BYTES_MAX as u64 + 3).read_to_end(&mut bytes).map_err(read_error)?;
        let origin = format!("file {}", path.display());
        if bytes.len() > SECRET_BYTES_MAX + 2 {
            return Err(AuthError::InvalidSecret {
                origin,
                reason: format!("is longer than the limit of {SECRET_BYTES_MAX} bytes: a secret is one line"),
            });
        }
        Self::new(strip_line_end(&bytes), &origin)
    }

    /// The secret of these settings: inline, read from its file, or `None` if neither is set.
    /// Whether it is required is the settings' business (`security.auth.enabled`).
    pub fn from_settings(settings: &SecuritySettings) -> Result<Option<Self>, AuthError> {
        match (&settings.cluster_secret, &settings.cluster_secret_file) {
            (Some(_), Some(_)) => Err(AuthError::BothSecrets),
            (Some(secret), None) => Ok(Some(secret.clone())),
            (None, Some(path)) => Self::from_file(path).map(Some),
            (None, None) => Ok(None),
        }
    }

    /// The secret's bytes, for keying a MAC (the network handshake's key).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

fn strip_line_end(bytes: &[u8]) -> &[u8] {
    match bytes.strip_suffix(b"\n") {
        Some(line) => line.strip_suffix(b"\r").unwrap_or(line),
        None => bytes,
    }
}

/// Whether a file mode lets every user read the file.
fn is_world_readable(mode: u32) -> bool {
    mode & 0o004 != 0
}

/// 32 bytes from the kernel's random number generator. Panics only if the kernel has none
/// (a process that cannot make a nonce must not go on with a predictable one).
pub fn nonce() -> [u8; 32] {
    let mut out = [0u8; 32];
    getrandom::fill(&mut out).expect("the kernel's random number generator is unavailable");
    out
}

fn keyed(secret: &ClusterSecret, parts: &[&[u8]]) -> HmacSha256 {
    // HMAC takes a key of any length (longer keys are hashed), so this cannot fail.
    let mut m = <HmacSha256 as Mac>::new_from_slice(&secret.bytes).expect("HMAC accepts keys of any length");
    for part in parts {
        m.update(&(part.len() as u64).to_le_bytes());
        m.update(part);
    }
    m
}

/// HMAC-SHA256 keyed with the secret over the parts, each preceded by its length as 8
/// little-endian bytes, so that no two different lists of parts give the same input
/// (`["ab", "c"]` and `["a", "bc"]` differ).
pub fn mac(secret: &ClusterSecret, parts: &[&[u8]]) -> [u8; 32] {
    keyed(secret, parts).finalize().into_bytes().into()
}

/// Whether `mac` is [`mac`]`(secret, parts)`, compared in constant time.
pub fn verify(secret: &ClusterSecret, parts: &[&[u8]], mac: &[u8]) -> bool {
    keyed(secret, parts).verify_slice(mac).is_ok()
}

/// The REST API's check of a request that changes something. `expected` is `None` when
/// authentication is off (every request passes); otherwise the header must be
/// `Bearer <secret>` (scheme in any case). The comparison runs in constant time and does not
/// reveal the secret's length: both sides are MACed and the MACs compared.
pub fn check_bearer(expected: Option<&ClusterSecret>, authorization_header: Option<&str>) -> Result<(), AuthError> {
    let Some(secret) = expected else { return Ok(()) };
    let header = authorization_header.map(str::trim).filter(|h| !h.is_empty());
    let header = header.ok_or(AuthError::MissingCredentials)?;
    let (scheme, token) = header.split_once([' ', '\t']).unwrap_or((header, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::NotBearer);
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(AuthError::MissingCredentials);
    }
    let expected_mac = mac(secret, &[b"bearer", &secret.bytes]);
    if verify(secret, &[b"bearer", token.as_bytes()], &expected_mac) {
        Ok(())
    } else {
        Err(AuthError::WrongSecret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn secret() -> ClusterSecret {
        ClusterSecret::new(SECRET, "test").unwrap()
    }

    fn secret_file(content: &[u8], mode: u32) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(content).unwrap();
        std::fs::set_permissions(f.path(), std::fs::Permissions::from_mode(mode)).unwrap();
        f
    }

    #[test]
    fn debug_and_errors_never_show_the_secret() {
        let s = secret();
        assert_eq!(format!("{s:?}"), "ClusterSecret(<redacted>)");
        let wrong = check_bearer(Some(&s), Some("Bearer not-the-secret-at-all")).unwrap_err();
        assert!(!wrong.to_string().contains("not-the-secret"), "{wrong}");
        let bad = ClusterSecret::new("s3cr3t with a blank", "security.cluster.secret").unwrap_err().to_string();
        assert!(
            bad.contains("security.cluster.secret") && bad.contains("offset 6") && !bad.contains("s3cr3t"),
            "{bad}"
        );
    }

    #[test]
    fn inline_secrets_are_checked() {
        assert!(ClusterSecret::new("", "x").unwrap_err().to_string().contains("is empty"));
        assert!(ClusterSecret::new("a\tb", "x").is_err());
        assert!(ClusterSecret::new("é", "x").is_err());
        let long = "a".repeat(SECRET_BYTES_MAX + 1);
        assert!(ClusterSecret::new(&long, "x").unwrap_err().to_string().contains("limit of 4096"));
        assert_eq!(ClusterSecret::new("a".repeat(SECRET_BYTES_MAX), "x").unwrap().as_bytes().len(), SECRET_BYTES_MAX);
        assert!(ClusterSecret::new("short", "x").is_ok(), "short secrets only warn");
    }

    #[test]
    fn secret_files_lose_one_line_end() {
        let f = secret_file(format!("{SECRET}\n").as_bytes(), 0o600);
        assert_eq!(ClusterSecret::from_file(f.path()).unwrap(), secret());
        let f = secret_file(format!("{SECRET}\r\n").as_bytes(), 0o600);
        assert_eq!(ClusterSecret::from_file(f.path()).unwrap(), secret());
        let f = secret_file(SECRET.as_bytes(), 0o600);
        assert_eq!(ClusterSecret::from_file(f.path()).unwrap(), secret());
        let f = secret_file(format!("{SECRET}\n\n").as_bytes(), 0o600);
        assert!(ClusterSecret::from_file(f.path()).is_err(), "only one line end is removed");
    }

    #[test]
    fn bad_secret_files_are_refused_with_the_path() {
        let f = secret_file(b"\n", 0o600);
        let e = ClusterSecret::from_file(f.path()).unwrap_err().to_string();
        assert!(e.contains("is empty") && e.contains(&f.path().display().to_string()), "{e}");
        let f = secret_file(&vec![b'a'; SECRET_BYTES_MAX + 10], 0o600);
        assert!(ClusterSecret::from_file(f.path()).unwrap_err().to_string().contains("one line"));
        let e = ClusterSecret::from_file(Path::new("/nonexistent/secret")).unwrap_err();
        assert!(matches!(e, AuthError::ReadSecretFile { .. }) && e.to_string().contains("/nonexistent/secret"));
        let world = secret_file(SECRET.as_bytes(), 0o644);
        assert!(ClusterSecret::from_file(world.path()).is_ok(), "a world-readable file only warns");
    }

    #[test]
    fn world_readable_modes() {
        assert!(is_world_readable(0o100644));
        assert!(is_world_readable(0o004));
        assert!(!is_world_readable(0o100600));
        assert!(!is_world_readable(0o640));
    }

    #[test]
    fn secret_from_settings() {
        let mut s = SecuritySettings::default();
        assert_eq!(ClusterSecret::from_settings(&s).unwrap(), None);
        s.cluster_secret = Some(secret());
        assert_eq!(ClusterSecret::from_settings(&s).unwrap(), Some(secret()));
        let f = secret_file(format!("{SECRET}\n").as_bytes(), 0o600);
        s.cluster_secret_file = Some(f.path().to_path_buf());
        assert!(matches!(ClusterSecret::from_settings(&s), Err(AuthError::BothSecrets)));
        s.cluster_secret = None;
        assert_eq!(ClusterSecret::from_settings(&s).unwrap(), Some(secret()));
    }

    #[test]
    fn nonces_differ() {
        let a = nonce();
        let b = nonce();
        assert_ne!(a, b);
        assert_ne!(a, [0u8; 32]);
    }

    #[test]
    fn macs_separate_parts_and_keys() {
        let s = secret();
        let m = mac(&s, &[b"ab", b"c"]);
        assert_ne!(m, mac(&s, &[b"a", b"bc"]));
        assert_ne!(m, mac(&s, &[b"abc"]));
        assert_ne!(m, mac(&s, &[b"ab", b"c", b""]));
        assert_ne!(mac(&s, &[]), mac(&s, &[b""]));
        assert_ne!(m, mac(&ClusterSecret::new("another-secret-of-32-characters!", "x").unwrap(), &[b"ab", b"c"]));
        assert_eq!(m, mac(&s, &[b"ab", b"c"]));
        assert!(verify(&s, &[b"ab", b"c"], &m));
        assert!(!verify(&s, &[b"a", b"bc"], &m));
        assert!(!verify(&s, &[b"ab", b"c"], &m[..31]));
        let mut flipped = m;
        flipped[31] ^= 1;
        assert!(!verify(&s, &[b"ab", b"c"], &flipped));
    }

    #[test]
    fn mac_matches_hmac_sha256_of_the_framed_parts() {
        let s = ClusterSecret::new("key", "x").unwrap();
        let mut framed = Vec::new();
        for part in [&b"hello"[..], b"world"] {
            framed.extend_from_slice(&(part.len() as u64).to_le_bytes());
            framed.extend_from_slice(part);
        }
        let mut plain = <HmacSha256 as Mac>::new_from_slice(b"key").unwrap();
        plain.update(&framed);
        assert_eq!(mac(&s, &[b"hello", b"world"]), <[u8; 32]>::from(plain.finalize().into_bytes()));
    }

    #[test]
    fn bearer_check() {
        let s = secret();
        assert!(check_bearer(None, None).is_ok(), "auth disabled");
        assert!(check_bearer(None, Some("Bearer anything")).is_ok());
        assert!(check_bearer(Some(&s), Some(&format!("Bearer {SECRET}"))).is_ok());
        assert!(check_bearer(Some(&s), Some(&format!("bearer  {SECRET} "))).is_ok());
        assert!(matches!(check_bearer(Some(&s), None), Err(AuthError::MissingCredentials)));
        assert!(matches!(check_bearer(Some(&s), Some("  ")), Err(AuthError::MissingCredentials)));
        assert!(matches!(check_bearer(Some(&s), Some("Bearer")), Err(AuthError::MissingCredentials)));
        assert!(matches!(check_bearer(Some(&s), Some("Bearer ")), Err(AuthError::MissingCredentials)));
        assert!(matches!(check_bearer(Some(&s), Some(&format!("Basic {SECRET}"))), Err(AuthError::NotBearer)));
        assert!(matches!(check_bearer(Some(&s), Some(SECRET)), Err(AuthError::NotBearer)));
        let wrong = [&SECRET[..31], &format!("{SECRET}0"), "x", &SECRET.to_uppercase()];
        for w in wrong {
            assert!(matches!(check_bearer(Some(&s), Some(&format!("Bearer {w}"))), Err(AuthError::WrongSecret)), "{w}");
        }
        let missing = check_bearer(Some(&s), None).unwrap_err().to_string();
        let wrong = check_bearer(Some(&s), Some("Bearer x")).unwrap_err().to_string();
        assert!(missing.contains("missing") && wrong.contains("wrong"), "{missing} / {wrong}");
    }
}
