//! A real OCI distribution registry for tests: Debian's `docker-registry` (CNCF distribution
//! 2.8) serving plain HTTP on `127.0.0.1:<free port>`, anonymous, behind HTTP basic auth, or
//! behind token auth.
//!
//! Storage is a filesystem root in a fresh tempdir, with deletes enabled and no blob
//! descriptor cache (`storage.cache` is left out), so a test that corrupts or moves a blob's
//! file on disk (see [`Registry::blob_data_path`]) gets exactly what is on disk served back.
//! The registry's stdout and stderr go to a log file: its own text log on stderr and the
//! access log, in Combined Log Format, on stdout, which [`Registry::blob_gets`] counts.
//!
//! Basic auth (`auth.htpasswd`) works without TLS in 2.8: the docs warn against it but the
//! registry enforces it, answering an anonymous `GET /v2/` with 401 and
//! `WWW-Authenticate: Basic realm="vessel-tests"`.
//!
//! Token auth (`auth.token`) sends clients to a [`TokenServer`] the fixture runs itself: an
//! anonymous `GET /v2/` gets 401 and `WWW-Authenticate: Bearer realm="http://127.0.0.1:<port>/
//! token",service="vessel-test-registry"`, and the token server hands RS256 JWTs to the
//! fixture's user and password. oci-client given those as `RegistryAuth::Basic` follows the
//! challenge by itself; [`Registry::issue_token`] makes a token directly.
//!
//! Also here: a tiny blocking HTTP GET for checking what the registry serves, and the
//! oci-client push primitives ([`registry_client`], [`push_blobs`], [`put_manifest`]) that
//! [`crate::images::push`] builds on and that tests can use to push hand-made manifests.

use std::fs;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::{Digest as _, Sha256};

use crate::token_auth::{TokenServer, OPENSSL_BIN};

/// An `Accept` header value naming all four manifest media types.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
    application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.list.v2+json";

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// Debian's docker-registry package's binary.
pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";
/// apache2-utils' htpasswd, which writes the bcrypt password file.
pub const HTPASSWD_BIN: &str = "/usr/bin/htpasswd";

const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Whether the registry tools are installed; prints a SKIPPED line for `test` when not.
pub fn available(test: &str) -> bool {
    let ok = [REGISTRY_BIN, HTPASSWD_BIN, OPENSSL_BIN]
        .iter()
        .all(|bin| Path::new(bin).is_file());
    if !ok {
        crate::skipped(
            test,
            "docker-registry, htpasswd or openssl missing (scripts/setup.sh)",
        );
    }
    ok
}

/// A running registry; dropping it kills the process and removes its storage.
pub struct Registry {
    child: Child,
    host: String,
    credentials: Option<(String, String)>,
    token: Option<TokenServer>,
    dir: tempfile::TempDir,
}

impl Registry {
    /// Starts an anonymous registry (anyone may push and pull).
    pub fn start() -> Self {
        Self::spawn(None, None)
    }

    /// Starts a registry that requires HTTP basic auth as `user`/`pass` for every request.
    pub fn start_with_basic_auth(user: &str, pass: &str) -> Self {
        Self::spawn(Some((user, pass)), None)
    }

    /// Starts a registry that requires a Bearer token from its own token server, which gives
    /// one to `user`/`pass` (HTTP basic auth) for whatever repository scope is asked.
    pub fn start_with_token_auth(user: &str, pass: &str) -> Self {
        Self::spawn(Some((user, pass)), Some(TokenServer::start(user, pass)))
    }

    fn spawn(credentials: Option<(&str, &str)>, token: Option<TokenServer>) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("vessel-registry-")
            .tempdir_in("/tmp")
            .expect("creating the registry's tempdir under /tmp");
        let auth = match (credentials, &token) {
            (_, Some(token)) => token.registry_config(),
            (Some((user, pass)), None) => {
                let htpasswd = dir.path().join("htpasswd");
                let out = Command::new(HTPASSWD_BIN)
                    .args(["-Bbn", user, pass])
                    .output()
                    .expect("running htpasswd");
                assert!(out.status.success(), "htpasswd -Bbn failed: {out:?}");
                fs::write(&htpasswd, &out.stdout).expect("writing the htpasswd file");
                format!(
                    "auth:\n  htpasswd:\n    realm: vessel-tests\n    path: {}\n",
                    htpasswd.display()
                )
            }
            (None, None) => String::new(),
        };
        let credentials = credentials.map(|(u, p)| (u.to_string(), p.to_string()));
        // Another process may take the free port between our probe and the registry's bind.
        let mut last_log = String::new();
        for _ in 0..3 {
            let port = free_port().expect("finding a free port on 127.0.0.1");
            let host = format!("127.0.0.1:{port}");
            let config = dir.path().join("config.yml");
            fs::write(
                &config,
                config_yaml(&dir.path().join("storage"), &host, &auth),
            )
            .expect("writing the registry config");
            let log_path = dir.path().join("registry.log");
            let log = fs::File::create(&log_path).expect("creating the registry log");
            let mut child = Command::new(REGISTRY_BIN)
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("cloning the log file handle"))
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("starting {REGISTRY_BIN}: {e}"));
            match wait_ready(&mut child, &host, &log_path) {
                Ok(()) => {
                    return Registry {
                        child,
                        host,
                        credentials,
                        token,
                        dir,
                    }
                }
                Err(log) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    if !log.contains("address already in use") {
                        panic!("docker-registry did not become ready; its log:\n{log}");
                    }
                    last_log = log;
                }
            }
        }
        panic!("docker-registry could not bind a free port; its last log:\n{last_log}");
    }

    /// `127.0.0.1:PORT`, the registry part of image references.
    pub fn host(&self) -> String {
        self.host.clone()
    }

    /// The user and password (basic auth, or the token server's), for [`crate::images::push`];
    /// None when anonymous.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.credentials
            .as_ref()
            .map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// A token granting `actions` (`"pull"`, `"push"`, ..) on `repo`, for use as
    /// `RegistryAuth::Bearer` or a CRI `registry_token`; with an empty `repo`, a token granting
    /// nothing, which is enough for `GET /v2/`. Panics unless started with token auth.
    pub fn issue_token(&self, repo: &str, actions: &[&str]) -> String {
        let token = self.token.as_ref().expect("the registry has no token auth");
        token.issue(repo, actions)
    }

    /// The token server's requests so far, as `"<status> <request target>"`; empty without
    /// token auth.
    pub fn token_requests(&self) -> Vec<String> {
        self.token
            .as_ref()
            .map(TokenServer::requests)
            .unwrap_or_default()
    }

    /// The storage driver's root directory.
    pub fn storage_root(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// The registry's log so far: its stderr text log and the stdout access log, interleaved.
    pub fn log(&self) -> String {
        read_log(&self.dir.path().join("registry.log"))
    }

    /// How many `GET /v2/<repo>/blobs/<digest>` requests got a 2xx answer (HEADs not counted).
    ///
    /// Counts the access log's Combined Log Format lines, like `127.0.0.1 - - [27/Nov/2026:
    /// 21:02:51 +0000] "GET /v2/r/blobs/sha256:ab.. HTTP/1.1" 200 5 "" "oci-client/0.18.0"`.
    /// The registry writes the line as the request's handler returns, just after the body; in
    /// practice it is there once the client has read the body (no miss in 600 GETs of a 1 MB
    /// blob under CPU load), though nothing orders the two strictly.
    pub fn blob_gets(&self, repo: &str, digest: &str) -> usize {
        let needle = format!("\"GET /v2/{repo}/blobs/{digest} HTTP/");
        self.log()
            .lines()
            .filter(|line| {
                line.find(&needle).is_some_and(|at| {
                    line[at + needle.len()..]
                        .split_once("\" ")
                        .is_some_and(|(_, status)| status.starts_with('2'))
                })
            })
            .count()
    }

    /// The file holding a blob (`sha256:<hex>` or `<hex>`) in registry storage.
    pub fn blob_data_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        let prefix = hex.get(..2).unwrap_or(hex);
        self.storage_root()
            .join("docker/registry/v2/blobs/sha256")
            .join(prefix)
            .join(hex)
            .join("data")
    }

    /// `GET path` with this registry's credentials (if any) and `headers`; with token auth, a
    /// token granting pull on the repository in `path`.
    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> io::Result<HttpResponse> {
        let auth = match &self.token {
            Some(_) => Some(format!(
                "Bearer {}",
                self.issue_token(path_repository(path), &["pull"])
            )),
            None => self.credentials().map(|(u, p)| basic_auth(u, p)),
        };
        let mut all: Vec<(&str, &str)> = headers.to_vec();
        if let Some(auth) = &auth {
            all.push(("Authorization", auth));
        }
        http_get(&self.host, path, &all)
    }

    /// Fetches a manifest (by tag or digest) with an `Accept` of all four manifest types. This
    /// registry answers 404 MANIFEST_UNKNOWN for an OCI manifest or index whose type is not
    /// accepted, and converts a Docker schema 2 manifest to schema 1 when its type is not.
    pub fn get_manifest(&self, repo: &str, reference: &str) -> io::Result<HttpResponse> {
        self.get(
            &format!("/v2/{repo}/manifests/{reference}"),
            &[("Accept", MANIFEST_ACCEPT)],
        )
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }
}

/// The repository `name` in `/v2/<name>/{manifests,blobs,tags}/..`; empty for other paths.
fn path_repository(path: &str) -> &str {
    let rest = path.strip_prefix("/v2/").unwrap_or_default();
    let ends = ["/manifests/", "/blobs/", "/tags/"].map(|kind| rest.rfind(kind));
    ends.into_iter()
        .flatten()
        .max()
        .map_or("", |end| &rest[..end])
}

fn config_yaml(root: &Path, host: &str, auth: &str) -> String {
    format!(
        "version: 0.1
log:
  level: info
  formatter: text
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: {host}
  secret: vessel-tests-not-secret
{auth}",
        root = root.display()
    )
}

/// Polls `GET /v2/` until it answers 200 or 401; on failure returns the log.
fn wait_ready(child: &mut Child, host: &str, log_path: &Path) -> Result<(), String> {
    let log = || read_log(log_path);
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("(exited with {status})\n{}", log()));
        }
        if let Ok(resp) = http_get(host, "/v2/", &[]) {
            if resp.status == 200 || resp.status == 401 {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            return Err(format!("(not ready after {READY_TIMEOUT:?})\n{}", log()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn read_log(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_else(|e| format!("<cannot read the registry log: {e}>"))
}

fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// An HTTP response read to the end of the connection.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A plain `GET` of `path` from `host`: HTTP/1.0, so the body is never chunked and the server
/// closes the connection after it.
pub fn http_get(host: &str, path: &str, headers: &[(&str, &str)]) -> io::Result<HttpResponse> {
    let mut conn = TcpStream::connect(host)?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut request = format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    conn.write_all(request.as_bytes())?;
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw)?;
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of HTTP headers"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad HTTP status line"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    Ok(HttpResponse {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    })
}

/// An `Authorization` header value for HTTP basic auth.
pub fn basic_auth(user: &str, pass: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{user}:{pass}")))
}

/// An oci-client speaking plain HTTP, with credentials for `host` when given: sent as basic
/// auth, or to the realm of a Bearer challenge for a token.
pub async fn registry_client(host: &str, auth: Option<(&str, &str)>) -> anyhow::Result<Client> {
    // reqwest is built without a rustls provider and wants one even for plain HTTP.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let protocol = ClientProtocol::Http;
    let config = ClientConfig {
        protocol,
        ..Default::default()
    };
    let client = Client::try_from(config).context("creating the OCI client")?;
    if let Some((user, pass)) = auth {
        let auth = RegistryAuth::Basic(user.into(), pass.into());
        client.store_auth_if_needed(host, &auth).await;
    }
    Ok(client)
}

/// `host/repo:tag`, or `host/repo@digest` when `tag_or_digest` is a `sha256:` digest.
pub fn reference(host: &str, repo: &str, tag_or_digest: &str) -> Reference {
    let new = if tag_or_digest.starts_with("sha256:") {
        Reference::with_digest
    } else {
        Reference::with_tag
    };
    new(host.into(), repo.into(), tag_or_digest.into())
}

/// Pushes each `(digest, bytes)` blob that the repository of `reference` lacks.
pub async fn push_blobs(
    client: &Client,
    reference: &Reference,
    blobs: &[(&str, &[u8])],
) -> anyhow::Result<()> {
    for (digest, data) in blobs {
        let exists = client.blob_exists(reference, digest).await;
        if !exists.with_context(|| format!("HEAD of blob {digest} for {reference}"))? {
            let pushed = client.push_blob(reference, data.to_vec(), digest).await;
            pushed.with_context(|| format!("pushing blob {digest} for {reference}"))?;
        }
    }
    Ok(())
}

/// PUTs manifest bytes, as they are, with Content-Type `media_type` at `reference` (a tag,
/// or the bytes' digest); returns their digest.
pub async fn put_manifest(
    client: &Client,
    reference: &Reference,
    bytes: &[u8],
    media_type: &str,
) -> anyhow::Result<String> {
    let digest = sha256_digest(bytes);
    let location = client
        .push_manifest_raw(reference, bytes.to_vec(), media_type.parse()?)
        .await
        .with_context(|| format!("pushing manifest {digest} as {reference}"))?;
    // The registry answers with the manifest's URL by digest.
    anyhow::ensure!(
        location.ends_with(&digest),
        "manifest {digest} was stored as {location}"
    );
    Ok(digest)
}
