//! A tiny token server for [`crate::registry::Registry::start_with_token_auth`]: the Docker
//! registry token protocol (`auth.token` in distribution 2.8's config), served over plain
//! HTTP/1.1 on `127.0.0.1:<free port>` by a background thread, one request per connection.
//!
//! `GET /token?service=..&scope=repository:<name>:<actions>[&scope=..][&account=..]` with
//! `Authorization: Basic` as the fixture's user and password answers `{"token": .., "access_token":
//! .., "expires_in": 300, "issued_at": ..}` granting every action asked for; bad or missing
//! credentials get 401, another service 400. The token is an RS256 JWT whose `x5c` header
//! holds the self-signed certificate that the registry's `rootcertbundle` trusts; the key and
//! certificate are made per server with the `openssl` command line, which also signs.

use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use serde_json::{json, Value};

/// The openssl command line, which makes the key and certificate and signs tokens.
pub const OPENSSL_BIN: &str = "/usr/bin/openssl";
/// The `service` (token audience) the registry is configured with.
pub const SERVICE: &str = "vessel-test-registry";
/// The token issuer the registry trusts.
pub const ISSUER: &str = "vessel-test-issuer";
/// Lifetime of issued tokens, in seconds.
pub const EXPIRES_IN: u64 = 300;

/// A running token server; dropping it stops its thread and removes its key.
pub struct TokenServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    issuer: Arc<Issuer>,
    dir: tempfile::TempDir,
}

/// What signs tokens, shared with the server thread.
struct Issuer {
    user: String,
    pass: String,
    key: PathBuf,
    x5c: String,
    requests: Mutex<Vec<String>>,
}

impl TokenServer {
    /// Makes a key and self-signed certificate and starts serving tokens to `user`/`pass`.
    pub fn start(user: &str, pass: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("vessel-token-")
            .tempdir_in("/tmp")
            .expect("creating the token server's tempdir under /tmp");
        let (key, cert) = (dir.path().join("key.pem"), dir.path().join("cert.pem"));
        let out = Command::new(OPENSSL_BIN)
            .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .args(["-days", "1", "-subj", "/CN=vessel-test-token"])
            .output()
            .unwrap_or_else(|e| panic!("running {OPENSSL_BIN}: {e}"));
        assert!(out.status.success(), "openssl req -x509 failed: {out:?}");
        // A PEM certificate's body is the standard base64 of its DER, which x5c wants.
        let pem = fs::read_to_string(&cert).expect("reading cert.pem");
        let x5c: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        STANDARD
            .decode(&x5c)
            .expect("cert.pem's body is not base64");
        let issuer = Arc::new(Issuer {
            user: user.into(),
            pass: pass.into(),
            key,
            x5c,
            requests: Mutex::new(Vec::new()),
        });
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the token server");
        let addr = listener.local_addr().expect("the token server's address");
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("token-server".into())
            .spawn({
                let (stop, issuer) = (stop.clone(), issuer.clone());
                move || serve(listener, &stop, &issuer)
            })
            .expect("spawning the token server thread");
        TokenServer {
            addr,
            stop,
            thread: Some(thread),
            issuer,
            dir,
        }
    }

    /// `http://127.0.0.1:PORT/token`, the realm of the registry's Bearer challenge.
    pub fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// The `auth:` section of the registry's config.
    pub fn registry_config(&self) -> String {
        format!(
            "auth:\n  token:\n    realm: {}\n    service: {SERVICE}\n    issuer: {ISSUER}\n    \
             rootcertbundle: {}\n    autoredirect: false\n",
            self.realm(),
            self.dir.path().join("cert.pem").display()
        )
    }

    /// A token for the server's user granting `actions` on repository `repo`; with an empty
    /// `repo`, one granting nothing (enough for `GET /v2/`).
    pub fn issue(&self, repo: &str, actions: &[&str]) -> String {
        let actions: Vec<String> = actions.iter().map(|a| a.to_string()).collect();
        let access: Vec<_> = [(repo.to_string(), actions)]
            .into_iter()
            .filter(|(repo, _)| !repo.is_empty())
            .collect();
        self.issuer.token(&access).expect("signing a token")
    }

    /// The token requests served so far, as `"<status> <request target>"`.
    pub fn requests(&self) -> Vec<String> {
        self.issuer.requests.lock().unwrap().clone()
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocked accept; if that fails the thread is left to die with the process.
        if TcpStream::connect(self.addr).is_ok() {
            if let Some(thread) = self.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

fn serve(listener: TcpListener, stop: &AtomicBool, issuer: &Issuer) {
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        if let Ok(conn) = conn {
            let _ = handle(conn, issuer);
        }
    }
}

fn handle(mut conn: TcpStream, issuer: &Issuer) -> io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut authorization = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim_end().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("authorization") {
                authorization = Some(value.trim().to_string());
            }
        }
    }
    let target = request_line.split(' ').nth(1).unwrap_or_default();
    let (status, extra, body) = respond(issuer, target, authorization.as_deref());
    issuer
        .requests
        .lock()
        .unwrap()
        .push(format!("{status} {target}"));
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        _ => "Internal Server Error",
    };
    let body = body.to_string();
    write!(
        conn,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n{extra}\r\n{body}",
        body.len()
    )?;
    // A GET has no body: nothing is left unread that would make closing reset the connection.
    conn.flush()
}

/// Status, extra header lines and JSON body for `GET target`.
fn respond(issuer: &Issuer, target: &str, authorization: Option<&str>) -> (u16, String, Value) {
    let error = |msg: &str| json!({"errors": [{"code": "DENIED", "message": msg}]});
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if path != "/token" {
        return (404, String::new(), error("no such path"));
    }
    let expected = format!("{}:{}", issuer.user, issuer.pass);
    let authorized = authorization
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b64| STANDARD.decode(b64.trim()).ok())
        .is_some_and(|creds| creds == expected.as_bytes());
    if !authorized {
        let challenge = "WWW-Authenticate: Basic realm=\"vessel-test-token\"\r\n";
        return (401, challenge.into(), error("bad or missing credentials"));
    }
    let mut access: Vec<(String, Vec<String>)> = Vec::new();
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        match name.as_ref() {
            "service" if value != SERVICE => {
                return (400, String::new(), error("unknown service"));
            }
            // Several scopes may also come space-separated in one parameter.
            "scope" => {
                for scope in value.split(' ').filter(|s| !s.is_empty()) {
                    let parsed = scope
                        .strip_prefix("repository:")
                        .and_then(|rest| rest.rsplit_once(':'));
                    let Some((repo, actions)) = parsed else {
                        return (400, String::new(), error("unsupported scope"));
                    };
                    let actions = actions.split(',').map(str::to_string).collect();
                    access.push((repo.to_string(), actions));
                }
            }
            _ => {}
        }
    }
    match issuer.token(&access) {
        Ok(token) => {
            let body = json!({
                "token": token,
                "access_token": token,
                "expires_in": EXPIRES_IN,
                "issued_at": rfc3339(now()),
            });
            (200, String::new(), body)
        }
        Err(e) => (500, String::new(), error(&e.to_string())),
    }
}

impl Issuer {
    /// An RS256 JWT for this user granting `access`, `(repository, actions)` pairs.
    fn token(&self, access: &[(String, Vec<String>)]) -> io::Result<String> {
        let now = now();
        let header = json!({"typ": "JWT", "alg": "RS256", "x5c": [self.x5c]});
        let access: Vec<Value> = access
            .iter()
            .map(|(name, actions)| json!({"type": "repository", "name": name, "actions": actions}))
            .collect();
        let claims = json!({
            "iss": ISSUER,
            "sub": self.user,
            "aud": SERVICE,
            "exp": now + EXPIRES_IN,
            "nbf": now - 10,
            "iat": now,
            "jti": jti()?,
            "access": access,
        });
        let b64 = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
        let signed = format!("{}.{}", b64(&header), b64(&claims));
        let signature = self.sign(signed.as_bytes())?;
        Ok(format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature)))
    }

    /// `openssl dgst -sha256 -sign key.pem` of `data`: an RSASSA-PKCS1-v1_5 SHA-256 signature.
    fn sign(&self, data: &[u8]) -> io::Result<Vec<u8>> {
        let mut child = Command::new(OPENSSL_BIN)
            .args(["dgst", "-sha256", "-sign"])
            .arg(&self.key)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        // The input is small, well under a pipe's buffer: no deadlock writing it all first.
        let written = child.stdin.take().map(|mut stdin| stdin.write_all(data));
        let out = child.wait_with_output()?;
        written.transpose()?;
        if !out.status.success() || out.stdout.is_empty() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            return Err(io::Error::other(format!("openssl dgst -sign: {stderr}")));
        }
        Ok(out.stdout)
    }
}

fn now() -> u64 {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH);
    since_epoch.expect("the clock is before 1970").as_secs()
}

/// 16 random bytes in hex.
fn jti() -> io::Result<String> {
    let mut bytes = [0u8; 16];
    fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// `secs` since the epoch as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn rfc3339(secs: u64) -> String {
    let time = i64::try_from(secs)
        .ok()
        .and_then(|secs| chrono::DateTime::from_timestamp(secs, 0))
        .unwrap_or_default();
    time.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}
