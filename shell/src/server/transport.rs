//! A client connection's byte stream: the TCP socket itself, or TLS over it (rustls), with
//! the same `Read` and `Write` for the event loop either way.
//!
//! With `server.tls_cert_file` and `server.tls_key_file` the port speaks TLS only: `wss://`
//! and `https://` (health, metrics) on the one port. The handshake runs inside the first
//! reads; a client that fails it is dropped without disturbing the others.
//!
//! Back-pressure stays in the socket: rustls holds at most [`TLS_BUFFER_BYTES`] of records
//! not yet written; past that a write takes nothing (`WouldBlock`), so a slow TLS client's
//! backlog is its lag in the group stream, as for a plain one, not a growing buffer here.
//! TLS costs what it must: every connection encrypts its own copy of the shared messages.

use std::io::{self, IoSlice, Read, Write};
use std::path::Path;
use std::sync::Arc;

use mio::net::TcpStream;
use rustls::ServerConnection;

use crate::config::ServerSettings;

/// TLS records a connection may hold unwritten (rustls's buffer limit).
pub const TLS_BUFFER_BYTES: usize = 64 * 1024;

/// The server's TLS configuration from its certificate and key files.
pub fn tls_config(settings: &ServerSettings) -> Result<Option<Arc<rustls::ServerConfig>>, String> {
    let (Some(cert_file), Some(key_file)) = (&settings.tls_cert_file, &settings.tls_key_file)
    else {
        return Ok(None);
    };
    let read = |path: &Path, what: &str| {
        std::fs::read(path).map_err(|e| format!("server.{what} {}: {e}", path.display()))
    };
    let pem = read(cert_file, "tls_cert_file")?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("server.tls_cert_file {}: {e}", cert_file.display()))?;
    if certs.is_empty() {
        return Err(format!("server.tls_cert_file {}: no certificate in it", cert_file.display()));
    }
    let pem = read(key_file, "tls_key_file")?;
    let key = rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| format!("server.tls_key_file {}: {e}", key_file.display()))?
        .ok_or_else(|| {
            format!("server.tls_key_file {}: no private key in it", key_file.display())
        })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("server.tls_cert_file and tls_key_file: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(Arc::new(config)))
}

/// One client's stream.
#[derive(Debug)]
pub enum Transport {
    /// `ws://`, `http://`.
    Plain(TcpStream),
    /// `wss://`, `https://`.
    Tls(Box<Tls>),
}

/// TLS over a socket.
#[derive(Debug)]
pub struct Tls {
    tcp: TcpStream,
    session: ServerConnection,
}

impl Transport {
    /// A stream over `tcp`: TLS when `tls` is configured (a session that cannot be made is
    /// an error: the connection is dropped).
    pub fn new(tcp: TcpStream, tls: Option<&Arc<rustls::ServerConfig>>) -> io::Result<Transport> {
        let Some(config) = tls else { return Ok(Transport::Plain(tcp)) };
        let mut session = ServerConnection::new(Arc::clone(config)).map_err(io::Error::other)?;
        session.set_buffer_limit(Some(TLS_BUFFER_BYTES));
        Ok(Transport::Tls(Box::new(Tls { tcp, session })))
    }

    /// The socket (to register with mio, set options, read the peer's address).
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Transport::Plain(tcp) => tcp,
            Transport::Tls(tls) => &tls.tcp,
        }
    }

    /// The socket, mutably.
    pub fn tcp_mut(&mut self) -> &mut TcpStream {
        match self {
            Transport::Plain(tcp) => tcp,
            Transport::Tls(tls) => &mut tls.tcp,
        }
    }

    /// Writes out the TLS records waiting (handshake messages, encrypted data); `true`
    /// when none waits (always, for a plain socket).
    pub fn flush_pending(&mut self) -> io::Result<bool> {
        let Transport::Tls(tls) = self else { return Ok(true) };
        while tls.session.wants_write() {
            match tls.session.write_tls(&mut tls.tcp) {
                Ok(_) => {}
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
        Ok(true)
    }

    /// Ends the sending side: TLS `close_notify` first, then the TCP half-close.
    pub fn shutdown_write(&mut self) {
        if let Transport::Tls(tls) = self {
            tls.session.send_close_notify();
            let _ = self.flush_pending();
        }
        let _ = self.tcp().shutdown(std::net::Shutdown::Write);
    }
}

impl Read for Transport {
    /// Plaintext, if any waits; else records from the socket, processed (a TLS handshake
    /// runs here). Records that carry no application data end in `Interrupted`, so that the
    /// caller, which reads until `WouldBlock`, reads again.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let tls = match self {
            Transport::Plain(tcp) => return tcp.read(buf),
            Transport::Tls(tls) => tls,
        };
        match tls.session.reader().read(buf) {
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
            done => return done,
        }
        if tls.session.read_tls(&mut tls.tcp)? == 0 {
            return Ok(0);
        }
        let processed = tls.session.process_new_packets();
        // Handshake answers, or the alert that says why it failed.
        let _ = self.flush_pending();
        let Transport::Tls(tls) = self else { return Ok(0) };
        if let Err(error) = processed {
            return Err(io::Error::new(io::ErrorKind::InvalidData, error));
        }
        tls.session.reader().read(buf).map_err(|error| {
            if error.kind() == io::ErrorKind::WouldBlock {
                io::ErrorKind::Interrupted.into()
            } else {
                error
            }
        })
    }
}

impl Write for Transport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        if let Transport::Plain(tcp) = self {
            return tcp.write_vectored(bufs);
        }
        // Records still waiting go first: nothing more is taken while the socket is full.
        if !self.flush_pending()? {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let Transport::Tls(tls) = self else { unreachable!() };
        let taken = tls.session.writer().write_vectored(bufs)?;
        if taken == 0 && bufs.iter().any(|b| !b.is_empty()) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        // What the socket does not take now waits in rustls (bounded) until it is writable.
        self.flush_pending()?;
        Ok(taken)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flush_pending().map(|_| ())
    }
}
