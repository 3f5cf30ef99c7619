//! Client authentication: API keys from a key file, or JWTs (HS256, RS256, ES256) with `exp`,
//! `sub` and the optional `symbols` entitlement claim (PROTOCOL.md section 2).
//!
//! Key file: one key per line, optionally followed by `user=ID` and `symbols=AAPL,MSFT`
//! (whitespace-separated); `#` starts a comment; blank lines are ignored. A key with no
//! `user=` is its own user id's hash-free label `key-N` (its line number), so keys never
//! appear in any output.
//!
//! With no key file and no JWT configured, the server accepts any token, as user `local`,
//! but only when it listens on a loopback address (the out-of-the-box `tickstock serve`); on
//! any other address that configuration is refused at start-up.
//!
//! On SIGHUP the key file and the JWT key are read again ([`Credentials::reload`]); the new
//! [`Authenticator`] is swapped in with `arc-swap`, so the event loops never wait for it, and
//! each loop closes the connections whose key is gone (1008 `key revoked`). A file that cannot
//! be used is refused and the old credentials stay.

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::{Arc, OnceLock};

use arc_swap::{ArcSwap, ArcSwapOption};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::config::ServerSettings;

/// Who a token belongs to and what it may receive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// User id (`sub` of a JWT, `user=` of a key).
    pub user: String,
    /// Symbols the user may receive; `None` means all.
    pub symbols: Option<Arc<HashSet<String>>>,
    /// When the token expires, Unix seconds (JWTs only).
    pub expires_at_s: Option<u64>,
    /// Which API key admitted it: a fingerprint (a keyed hash, never the key), so a reload
    /// can tell whether that key is still there. `None` for a JWT or the open loopback.
    pub key: Option<u64>,
}

impl Identity {
    /// Whether the user may receive `symbol`.
    pub fn entitled(&self, symbol: &str) -> bool {
        self.symbols.as_ref().is_none_or(|symbols| symbols.contains(symbol))
    }
}

/// Checks tokens.
pub struct Authenticator {
    keys: HashMap<String, Identity>,
    jwt: Option<(DecodingKey, Validation)>,
    open: bool,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the keys themselves.
        f.debug_struct("Authenticator")
            .field("keys", &self.keys.len())
            .field("jwt", &self.jwt.is_some())
            .field("open", &self.open)
            .finish()
    }
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default)]
    symbols: Option<Vec<String>>,
}

impl Authenticator {
    /// Loads the key file and the JWT key named by the settings.
    pub fn load(settings: &ServerSettings) -> Result<Authenticator, String> {
        let mut keys = HashMap::new();
        if let Some(path) = &settings.api_keys_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("server.api_keys_file {}: {e}", path.display()))?;
            keys = parse_key_file(&text)
                .map_err(|e| format!("server.api_keys_file {}: {e}", path.display()))?;
        }
        let jwt = match settings.jwt_algorithm.as_deref() {
            None => None,
            Some(name) => Some(jwt_key(settings, name)?),
        };
        let loopback = settings
            .listen
            .parse::<std::net::SocketAddr>()
            .is_ok_and(|addr| addr.ip().is_loopback());
        let open = keys.is_empty() && jwt.is_none();
        if open && !loopback {
            return Err(format!(
                "server.listen = {} is not loopback and no credentials are configured: set server.api_keys_file or server.jwt_algorithm",
                settings.listen
            ));
        }
        Ok(Authenticator { keys, jwt, open })
    }

    /// Whether a connection admitted as `identity` may stay under these credentials: its key
    /// is still listed (or, for a JWT or the open loopback, that kind is still accepted).
    pub fn admits(&self, identity: &Identity) -> bool {
        match identity.key {
            Some(fingerprint) => self.keys.values().any(|i| i.key == Some(fingerprint)),
            None if identity.expires_at_s.is_some() => self.jwt.is_some(),
            None => self.open,
        }
    }

    /// API keys listed.
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// True when any token is accepted (no credentials configured, loopback only).
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// Checks a token at `now_s` (Unix seconds).
    pub fn verify(&self, token: &str, now_s: u64) -> Result<Identity, &'static str> {
        if let Some(identity) = self.keys.get(token) {
            return Ok(identity.clone());
        }
        if let Some((key, validation)) = &self.jwt {
            if token.split('.').count() == 3 {
                let data = jsonwebtoken::decode::<Claims>(token, key, validation)
                    .map_err(|_| "invalid token")?;
                let claims = data.claims;
                if claims.exp.saturating_add(validation.leeway) < now_s {
                    return Err("token expired");
                }
                let symbols = claims.symbols.map(|list| Arc::new(list.into_iter().collect()));
                let expires_at_s = Some(claims.exp);
                return Ok(Identity { user: claims.sub, symbols, expires_at_s, key: None });
            }
        }
        if self.open && !token.is_empty() {
            let user = "local".to_owned();
            return Ok(Identity { user, symbols: None, expires_at_s: None, key: None });
        }
        Err("unknown token")
    }
}

/// A key's fingerprint: SipHash under a key drawn once per process, so it can be compared
/// across reloads but says nothing about the key outside this process.
fn fingerprint(key: &str) -> u64 {
    static HASHER: OnceLock<std::hash::RandomState> = OnceLock::new();
    HASHER.get_or_init(std::hash::RandomState::new).hash_one(key)
}

/// The server's credentials, both ways: the tokens it accepts ([`Authenticator`]) and the
/// certificate it presents (TLS, when configured). Swapped whole on reload.
#[derive(Debug)]
pub struct Credentials {
    current: ArcSwap<Authenticator>,
    tls: ArcSwapOption<rustls::ServerConfig>,
    settings: ServerSettings,
}

impl Credentials {
    /// Loads them as the settings say.
    pub fn load(settings: &ServerSettings) -> Result<Credentials, String> {
        let tls = super::transport::tls_config(settings)?;
        let credentials = Credentials::new(Authenticator::load(settings)?, settings);
        credentials.tls.store(tls);
        Ok(credentials)
    }

    /// Token checks already loaded, no TLS; a reload reads everything as `settings` say.
    pub fn new(auth: Authenticator, settings: &ServerSettings) -> Credentials {
        Credentials {
            current: ArcSwap::from_pointee(auth),
            tls: ArcSwapOption::empty(),
            settings: settings.clone(),
        }
    }

    /// The token checks now; never blocks.
    pub fn current(&self) -> Arc<Authenticator> {
        self.current.load_full()
    }

    /// The TLS configuration new connections get, if the port speaks TLS.
    pub fn tls(&self) -> Option<Arc<rustls::ServerConfig>> {
        self.tls.load_full()
    }

    /// Reads the key file, the JWT key and the certificate again and swaps them in; if any
    /// cannot be used, nothing changes. Returns what changed, in counts.
    pub fn reload(&self) -> Result<Reloaded, String> {
        let tls = super::transport::tls_config(&self.settings)?;
        let new = Authenticator::load(&self.settings)?;
        let old = self.current.load();
        let before: HashSet<u64> = old.keys.values().filter_map(|i| i.key).collect();
        let after: HashSet<u64> = new.keys.values().filter_map(|i| i.key).collect();
        let reloaded = Reloaded {
            keys: after.len(),
            added: after.difference(&before).count(),
            removed: before.difference(&after).count(),
            certificate: tls.is_some(),
        };
        self.current.store(Arc::new(new));
        self.tls.store(tls);
        Ok(reloaded)
    }
}

/// What a reload changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reloaded {
    /// API keys listed now.
    pub keys: usize,
    /// Keys that were not listed before.
    pub added: usize,
    /// Keys no longer listed: their connections are closed.
    pub removed: usize,
    /// A TLS certificate was read again (new connections present it).
    pub certificate: bool,
}

fn jwt_key(settings: &ServerSettings, name: &str) -> Result<(DecodingKey, Validation), String> {
    let (algorithm, key) = match name {
        "HS256" => {
            let secret = std::env::var(&settings.jwt_secret_env).unwrap_or_default();
            if secret.is_empty() {
                return Err(format!(
                    "server.jwt_algorithm = HS256 needs a secret in the environment variable {}",
                    settings.jwt_secret_env
                ));
            }
            (Algorithm::HS256, DecodingKey::from_secret(secret.as_bytes()))
        }
        "RS256" | "ES256" => {
            let path = settings.jwt_public_key_file.as_ref().ok_or_else(|| {
                format!("server.jwt_algorithm = {name} needs server.jwt_public_key_file")
            })?;
            let pem = std::fs::read(path)
                .map_err(|e| format!("server.jwt_public_key_file {}: {e}", path.display()))?;
            let bad = |e: jsonwebtoken::errors::Error| {
                format!("server.jwt_public_key_file {}: {e}", path.display())
            };
            if name == "RS256" {
                (Algorithm::RS256, DecodingKey::from_rsa_pem(&pem).map_err(bad)?)
            } else {
                (Algorithm::ES256, DecodingKey::from_ec_pem(&pem).map_err(bad)?)
            }
        }
        other => {
            return Err(format!("server.jwt_algorithm = {other:?}, must be HS256, RS256 or ES256"))
        }
    };
    let mut validation = Validation::new(algorithm);
    validation.leeway = settings.jwt_leeway_s;
    validation.required_spec_claims = ["exp", "sub"].into_iter().map(str::to_owned).collect();
    Ok((key, validation))
}

/// Parses a key file.
pub fn parse_key_file(text: &str) -> Result<HashMap<String, Identity>, String> {
    let mut keys = HashMap::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        let mut fields = line.split_whitespace();
        let Some(key) = fields.next() else { continue };
        let user = format!("key-{}", number + 1);
        let key_id = Some(fingerprint(key));
        let mut identity = Identity { user, symbols: None, expires_at_s: None, key: key_id };
        for field in fields {
            match field.split_once('=') {
                Some(("user", user)) if !user.is_empty() => identity.user = user.to_owned(),
                Some(("symbols", list)) => {
                    identity.symbols = Some(Arc::new(
                        list.split(',').filter(|s| !s.is_empty()).map(str::to_owned).collect(),
                    ));
                }
                _ => {
                    return Err(format!(
                        "line {}: unknown field (want user=ID or symbols=A,B)",
                        number + 1
                    ))
                }
            }
        }
        if keys.insert(key.to_owned(), identity).is_some() {
            return Err(format!("line {}: a key listed twice", number + 1));
        }
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_lines_fields_and_comments() {
        let keys =
            parse_key_file("# desk keys\nk1 user=alice symbols=AAPL,MSFT\n\nk2   # no fields\n")
                .unwrap();
        assert_eq!(keys["k1"].user, "alice");
        assert!(keys["k1"].entitled("AAPL") && !keys["k1"].entitled("IBM"));
        assert_eq!(keys["k2"].user, "key-4");
        assert!(keys["k2"].entitled("IBM"));
        assert!(parse_key_file("k1 role=admin").unwrap_err().contains("line 1"));
        assert!(parse_key_file("k1\nk1").unwrap_err().contains("twice"));
    }
}
