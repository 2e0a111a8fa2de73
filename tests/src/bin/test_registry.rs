//! A local registry holding the end-to-end tests' busybox image, for trying vessel by hand
//! with crictl: starts Debian's `docker-registry` on 127.0.0.1 (a free port), pushes the
//! image, prints its reference on stdout and serves until stdin closes or the process is
//! killed. Loopback registries are spoken to over plain http, so no config is needed:
//!
//! ```text
//! cargo run -q -p vessel-tests --bin test_registry   # prints 127.0.0.1:<port>/vessel/busybox:latest
//! crictl pull 127.0.0.1:<port>/vessel/busybox:latest  # in another terminal
//! ```

use std::io::{Read, Write};

use anyhow::{bail, Result};
use vessel_tests::cri::registry_with_busybox;

#[tokio::main]
async fn main() -> Result<()> {
    if !vessel_tests::registry::available("test_registry") {
        bail!("docker-registry is missing (scripts/setup.sh installs it)");
    }
    let (_registry, image) = registry_with_busybox().await;
    let mut out = std::io::stdout();
    writeln!(out, "{image}")?;
    out.flush()?;
    // Serve until stdin ends; the registry stops when `_registry` drops.
    tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
    })
    .await?;
    Ok(())
}
