//! Fetching the documents and blobs of one pull from its endpoints. Each request tries the
//! endpoint that served the previous one first, then the others in configured order; only
//! when every endpoint fails is the pull failed, with each endpoint's reason in the message.

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::Client;

use super::{Credentials, Endpoint, PullAuth, RegistryConfig};
use crate::image::content::ContentStore;
use crate::image::manifest::ACCEPT;
use crate::image::name::ImageName;
use crate::image::ImageError;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest silence while reading a response.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Why one endpoint could not serve one request.
enum Failure {
    Unauthorized(String),
    NotFound(String),
    /// The endpoint served content that failed verification.
    Content(ImageError),
    Other(String),
}

impl Failure {
    fn message(&self) -> String {
        match self {
            Self::Unauthorized(m) | Self::NotFound(m) | Self::Other(m) => m.clone(),
            Self::Content(e) => e.to_string(),
        }
    }
}

impl From<OciDistributionError> for Failure {
    fn from(e: OciDistributionError) -> Self {
        let message = e.to_string();
        match &e {
            OciDistributionError::UnauthorizedError { .. }
            | OciDistributionError::AuthenticationFailure(_) => Self::Unauthorized(message),
            OciDistributionError::ImageManifestNotFoundError(_) => Self::NotFound(message),
            OciDistributionError::ServerError {
                code: 401 | 403, ..
            } => Self::Unauthorized(message),
            OciDistributionError::ServerError { code: 404, .. } => Self::NotFound(message),
            OciDistributionError::RegistryError { envelope, .. } => {
                match envelope.errors.first().map(|e| &e.code) {
                    Some(OciErrorCode::Unauthorized | OciErrorCode::Denied) => {
                        Self::Unauthorized(message)
                    }
                    Some(
                        OciErrorCode::ManifestUnknown
                        | OciErrorCode::BlobUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::NotFound,
                    ) => Self::NotFound(message),
                    _ => Self::Other(message),
                }
            }
            _ => Self::Other(message),
        }
    }
}

/// The registry side of one pull.
pub struct Fetcher {
    client: Client,
    name: ImageName,
    endpoints: Vec<Endpoint>,
    auth: PullAuth,
    preferred: AtomicUsize,
}

/// rustls needs a process-wide crypto provider; ring is the one this build links.
fn install_crypto_provider() {
    // An error only says one is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl Fetcher {
    pub fn new(config: &RegistryConfig, name: &ImageName, auth: PullAuth) -> Self {
        install_crypto_provider();
        let endpoints = config.endpoints(name.registry());
        let plain_http = endpoints
            .iter()
            .filter(|e| e.plain_http)
            .map(|e| e.host.clone())
            .collect();
        let client = Client::new(ClientConfig {
            protocol: ClientProtocol::HttpsExcept(plain_http),
            platform_resolver: None,
            connect_timeout: Some(CONNECT_TIMEOUT),
            read_timeout: Some(READ_TIMEOUT),
            ..Default::default()
        });
        Self {
            client,
            name: name.clone(),
            endpoints,
            auth,
            preferred: AtomicUsize::new(0),
        }
    }

    /// The credentials `endpoint` may see.
    fn auth_for(&self, endpoint: &Endpoint) -> RegistryAuth {
        let allowed = match self.auth.server.as_deref() {
            Some(server) => server_host(server) == endpoint.host,
            None => !endpoint.mirror,
        };
        match (&self.auth.credentials, allowed) {
            (Credentials::Basic { username, password }, true) => {
                RegistryAuth::Basic(username.clone(), password.clone())
            }
            (Credentials::Bearer(token), true) => RegistryAuth::Bearer(token.clone()),
            _ => RegistryAuth::Anonymous,
        }
    }

    /// Fetches the document the name's tag (or `digest`) points at; returns its bytes and
    /// digest (checked against `digest` when one is given).
    pub async fn manifest(&self, digest: Option<&str>) -> Result<(Vec<u8>, String), ImageError> {
        self.try_each("manifest", |endpoint| async move {
            let reference = self.name.at(&endpoint.host, digest);
            let (bytes, got) = self
                .client
                .pull_manifest_raw(&reference, &self.auth_for(endpoint), ACCEPT)
                .await?;
            Ok((bytes.to_vec(), got))
        })
        .await
    }

    /// Downloads the blob `digest` of `size` bytes into the content store (verified there).
    pub async fn blob(
        &self,
        content: &ContentStore,
        digest: &str,
        size: u64,
    ) -> Result<PathBuf, ImageError> {
        self.try_each(&format!("blob {digest}"), |endpoint| async move {
            let reference = self.name.at(&endpoint.host, None);
            self.client
                .store_auth_if_needed(reference.resolve_registry(), &self.auth_for(endpoint))
                .await;
            let mut stream = self.client.pull_blob_stream(&reference, digest).await?;
            let mut writer = content.writer(digest, size).map_err(Failure::Content)?;
            while let Some(chunk) = stream.next().await {
                match chunk {
                    Ok(chunk) => writer.write(&chunk).await.map_err(Failure::Content)?,
                    // oci-client checks the digest too and fails the stream's end; when every
                    // byte arrived, our own check gives the typed digest error.
                    Err(_) if writer.written() == size => break,
                    Err(e) => return Err(Failure::Other(format!("read blob: {e}"))),
                }
            }
            writer.commit().await.map_err(Failure::Content)
        })
        .await
    }

    async fn try_each<'a, T, F, Fut>(&'a self, what: &str, mut f: F) -> Result<T, ImageError>
    where
        F: FnMut(&'a Endpoint) -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let first = self.preferred.load(Ordering::Relaxed);
        let order = std::iter::once(first).chain((0..self.endpoints.len()).filter(|&i| i != first));
        let mut failures = Vec::new();
        for i in order {
            let endpoint = &self.endpoints[i];
            match f(endpoint).await {
                Ok(value) => {
                    self.preferred.store(i, Ordering::Relaxed);
                    return Ok(value);
                }
                Err(failure) => {
                    tracing::warn!(
                        image = %self.name, endpoint = %endpoint.url(), what,
                        error = %failure.message(), "registry endpoint failed"
                    );
                    failures.push((endpoint.url(), failure));
                }
            }
        }
        Err(self.failed(what, failures))
    }

    fn failed(&self, what: &str, mut failures: Vec<(String, Failure)>) -> ImageError {
        let reference = self.name.to_string();
        if let [(_, Failure::Content(_))] = failures.as_slice() {
            if let Some((_, Failure::Content(e))) = failures.pop() {
                return e;
            }
        }
        let detail = failures
            .iter()
            .map(|(url, f)| format!("{url}: {}", f.message()))
            .collect::<Vec<_>>()
            .join("; ");
        if failures
            .iter()
            .all(|(_, f)| matches!(f, Failure::Unauthorized(_)))
        {
            ImageError::Unauthorized { reference, detail }
        } else if failures
            .iter()
            .all(|(_, f)| matches!(f, Failure::NotFound(_)))
        {
            ImageError::NotInRegistry {
                reference,
                what: what.to_owned(),
                detail,
            }
        } else {
            ImageError::Registry {
                reference,
                what: what.to_owned(),
                detail,
            }
        }
    }
}

/// The `host[:port]` of a CRI `server_address`, which may be a URL (`https://host/v1/`);
/// Docker Hub's aliases are `docker.io`, as image names say.
fn server_host(server: &str) -> &str {
    let rest = server.split_once("://").map_or(server, |(_, r)| r);
    match rest.split('/').next().unwrap_or(rest) {
        "index.docker.io" | "registry-1.docker.io" => "docker.io",
        host => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fetcher(auth: PullAuth) -> Fetcher {
        let config: RegistryConfig =
            toml::from_str(r#"mirrors."docker.io".endpoint = ["http://127.0.0.1:1"]"#).unwrap();
        Fetcher::new(&config, &ImageName::parse("busybox").unwrap(), auth)
    }

    #[test]
    fn credentials_reach_mirrors_only_when_issued_for_them() {
        let basic = Credentials::Basic {
            username: "u".into(),
            password: "p".into(),
        };
        let f = fetcher(PullAuth {
            credentials: basic.clone(),
            server: None,
        });
        let [mirror, own] = [&f.endpoints[0], &f.endpoints[1]];
        assert!(matches!(f.auth_for(mirror), RegistryAuth::Anonymous));
        assert!(matches!(f.auth_for(own), RegistryAuth::Basic(..)));

        let f = fetcher(PullAuth {
            credentials: basic,
            server: Some("http://127.0.0.1:1/v2/".into()),
        });
        assert!(matches!(
            f.auth_for(&f.endpoints[0]),
            RegistryAuth::Basic(..)
        ));
        assert!(matches!(
            f.auth_for(&f.endpoints[1]),
            RegistryAuth::Anonymous
        ));

        // Docker Hub credentials, keyed as docker config files key them, reach docker.io.
        let f = fetcher(PullAuth {
            credentials: Credentials::Bearer("t".into()),
            server: Some("https://index.docker.io/v1/".into()),
        });
        assert!(matches!(
            f.auth_for(&f.endpoints[1]),
            RegistryAuth::Bearer(_)
        ));
        assert!(matches!(
            f.auth_for(&f.endpoints[0]),
            RegistryAuth::Anonymous
        ));
    }

    #[tokio::test]
    async fn every_endpoint_failing_names_each() {
        let dir = tempfile::tempdir().unwrap();
        let content = ContentStore::open(dir.path()).unwrap();
        let config: RegistryConfig =
            toml::from_str(r#"mirrors."127.0.0.1:2".endpoint = ["http://127.0.0.1:1"]"#).unwrap();
        let name = ImageName::parse("127.0.0.1:2/app:v1").unwrap();
        let f = Fetcher::new(&config, &name, PullAuth::default());
        let err = f.manifest(None).await.unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("http://127.0.0.1:1"), "{msg}");
        assert!(msg.contains("http://127.0.0.1:2"), "{msg}");
        assert!(msg.contains("127.0.0.1:2/app:v1"), "{msg}");
        let digest = format!("sha256:{}", "0".repeat(64));
        assert!(f.blob(&content, &digest, 1).await.is_err());
        assert_eq!(
            std::fs::read_dir(dir.path().join("ingest"))
                .unwrap()
                .count(),
            0
        );
    }
}
