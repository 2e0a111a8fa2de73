//! Reaching registries: which endpoints serve a registry host (its configured mirrors in order,
//! then the host itself), which of them speak plain http, which credentials each may see, and
//! fetching manifests and blobs from the first endpoint that serves them (oci-client speaks the
//! distribution protocol, token and basic auth included).

mod endpoint;
mod fetch;

pub use endpoint::{Endpoint, MirrorConfig, RegistryConfig};
pub use fetch::Fetcher;

/// Credentials for one pull, from the CRI request's AuthConfig.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum Credentials {
    #[default]
    Anonymous,
    Basic {
        username: String,
        password: String,
    },
    /// A registry bearer token, sent as is.
    Bearer(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Anonymous => f.write_str("Anonymous"),
            Self::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
            Self::Bearer(_) => f.write_str("Bearer(<redacted>)"),
        }
    }
}

/// The credentials of a pull and the registry host they belong to. They are sent to the
/// image's own registry, and to a mirror only when `server` names that mirror's host: a
/// mirror never sees another registry's secrets.
#[derive(Debug, Clone, Default)]
pub struct PullAuth {
    pub credentials: Credentials,
    /// `host[:port]` the credentials were issued for (CRI `server_address`), if given.
    pub server: Option<String>,
}
