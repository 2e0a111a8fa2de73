//! PullImage: the CRI AuthConfig becomes pull credentials; the runtime pulls and records.

use std::sync::Arc;

use base64::Engine as _;
use vessel_protocols::cri;

use super::reference;
use crate::image::{Credentials, PullAuth};
use crate::runtime::{Runtime, RuntimeError};

pub async fn pull(
    rt: &Arc<Runtime>,
    req: cri::PullImageRequest,
) -> Result<cri::PullImageResponse, RuntimeError> {
    let reference = reference(req.image)?;
    let auth = pull_auth(req.auth)?;
    let image = rt.images.pull(&reference, auth).await?;
    Ok(cri::PullImageResponse {
        image_ref: image.id,
    })
}

/// The pull credentials a CRI AuthConfig carries: a registry token, a username and password,
/// or `auth` (base64 of `user:password`).
fn pull_auth(auth: Option<cri::AuthConfig>) -> Result<PullAuth, RuntimeError> {
    let Some(auth) = auth else {
        return Ok(PullAuth::default());
    };
    let credentials = if !auth.registry_token.is_empty() {
        Credentials::Bearer(auth.registry_token)
    } else if !auth.username.is_empty() {
        Credentials::Basic {
            username: auth.username,
            password: auth.password,
        }
    } else if !auth.auth.is_empty() {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.auth.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| RuntimeError::invalid("auth.auth", "not base64 of user:password"))?;
        let (username, password) = decoded
            .split_once(':')
            .ok_or_else(|| RuntimeError::invalid("auth.auth", "decodes to no user:password"))?;
        Credentials::Basic {
            username: username.to_owned(),
            password: password.to_owned(),
        }
    } else if !auth.identity_token.is_empty() {
        return Err(RuntimeError::invalid(
            "auth.identity_token",
            "OAuth2 refresh tokens are not supported; pass registry_token or username and password",
        ));
    } else {
        Credentials::Anonymous
    };
    Ok(PullAuth {
        credentials,
        server: Some(auth.server_address).filter(|s| !s.is_empty()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_configs_become_credentials() {
        let auth = |f: fn(&mut cri::AuthConfig)| {
            let mut a = cri::AuthConfig::default();
            f(&mut a);
            pull_auth(Some(a))
        };
        assert_eq!(pull_auth(None).unwrap().credentials, Credentials::Anonymous);
        let basic = auth(|a| {
            a.username = "u".into();
            a.password = "p".into();
            a.server_address = "reg:5000".into();
        })
        .unwrap();
        assert_eq!(
            basic.credentials,
            Credentials::Basic {
                username: "u".into(),
                password: "p".into()
            }
        );
        assert_eq!(basic.server.as_deref(), Some("reg:5000"));
        let encoded = auth(|a| a.auth = "dTpwOnE=".into()).unwrap(); // u:p:q
        assert_eq!(
            encoded.credentials,
            Credentials::Basic {
                username: "u".into(),
                password: "p:q".into()
            }
        );
        let token = auth(|a| a.registry_token = "t".into()).unwrap();
        assert_eq!(token.credentials, Credentials::Bearer("t".into()));
        let err = auth(|a| a.auth = "!!".into()).unwrap_err();
        assert!(err.to_string().contains("auth.auth"), "{err}");
        let err = auth(|a| a.identity_token = "r".into()).unwrap_err();
        assert!(err.to_string().contains("auth.identity_token"), "{err}");
    }
}
