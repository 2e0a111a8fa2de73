//! The requests Exec, Attach and PortForward hand out, waiting for their client, as kubelet's
//! streaming library keeps them: each under a random single-use token that expires a minute
//! after it was issued, at most [`MAX_IN_FLIGHT`] at a time.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::Engine;
use parking_lot::Mutex;
use vessel_protocols::cri;

/// How long a token stays valid.
pub const TOKEN_TTL: Duration = Duration::from_secs(60);
/// The most requests waiting at once (kubelet's limit too).
pub const MAX_IN_FLIGHT: usize = 1000;
/// Random bytes per token.
const TOKEN_BYTES: usize = 32;

/// A request waiting for its client.
#[derive(Debug, Clone)]
pub enum Pending {
    Exec(cri::ExecRequest),
    Attach(cri::AttachRequest),
    PortForward(cri::PortForwardRequest),
}

impl Pending {
    /// The URL path segment of the kind, before the token.
    pub fn kind(&self) -> &'static str {
        match self {
            Pending::Exec(_) => "exec",
            Pending::Attach(_) => "attach",
            Pending::PortForward(_) => "portforward",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("{MAX_IN_FLIGHT} streaming requests are already waiting for their client")]
    Full,
    #[error("token: {0}")]
    Random(std::io::Error),
}

struct Entry {
    request: Pending,
    expires: Instant,
}

/// Pending requests by token.
#[derive(Default)]
pub struct RequestCache {
    entries: Mutex<HashMap<String, Entry>>,
}

impl RequestCache {
    /// Stores a request; returns its token.
    pub fn insert(&self, request: Pending) -> Result<String, CacheError> {
        let token = random_token().map_err(CacheError::Random)?;
        let now = Instant::now();
        let mut entries = self.entries.lock();
        entries.retain(|_, e| e.expires > now);
        if entries.len() >= MAX_IN_FLIGHT {
            return Err(CacheError::Full);
        }
        entries.insert(
            token.clone(),
            Entry {
                request,
                expires: now + TOKEN_TTL,
            },
        );
        Ok(token)
    }

    /// Takes the request of a token of the given kind, once: a token used, expired, of
    /// another kind or never issued gives `None`.
    pub fn consume(&self, kind: &str, token: &str) -> Option<Pending> {
        let mut entries = self.entries.lock();
        let entry = entries.remove(token)?;
        (entry.expires > Instant::now() && entry.request.kind() == kind).then_some(entry.request)
    }

    #[cfg(test)]
    fn expire_all(&self) {
        let past = Instant::now() - Duration::from_secs(1);
        for e in self.entries.lock().values_mut() {
            e.expires = past;
        }
    }
}

/// URL-safe base64 of random bytes from the kernel.
fn random_token() -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; TOKEN_BYTES];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec() -> Pending {
        Pending::Exec(cri::ExecRequest {
            container_id: "c".into(),
            cmd: vec!["sh".into()],
            stdout: true,
            ..Default::default()
        })
    }

    #[test]
    fn a_token_works_once() {
        let cache = RequestCache::default();
        let token = cache.insert(exec()).unwrap();
        assert_eq!(token.len(), 43);
        assert!(token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert!(matches!(
            cache.consume("exec", &token),
            Some(Pending::Exec(_))
        ));
        assert!(cache.consume("exec", &token).is_none(), "reused");
        assert!(cache.consume("exec", "nope").is_none(), "never issued");
    }

    #[test]
    fn tokens_are_distinct_and_bound_to_their_kind() {
        let cache = RequestCache::default();
        let a = cache.insert(exec()).unwrap();
        let b = cache.insert(exec()).unwrap();
        assert_ne!(a, b);
        assert!(cache.consume("attach", &a).is_none());
        // A token tried with the wrong kind is spent.
        assert!(cache.consume("exec", &a).is_none());
        assert!(cache.consume("exec", &b).is_some());
    }

    #[test]
    fn expired_tokens_are_refused_and_make_room() {
        let cache = RequestCache::default();
        let token = cache.insert(exec()).unwrap();
        cache.expire_all();
        assert!(cache.consume("exec", &token).is_none());
        for _ in 0..MAX_IN_FLIGHT {
            cache.insert(exec()).unwrap();
        }
        assert!(matches!(cache.insert(exec()), Err(CacheError::Full)));
        cache.expire_all();
        assert!(cache.insert(exec()).is_ok(), "expired entries are dropped");
    }
}
