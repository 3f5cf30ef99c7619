//! The HTTP side of the one port: the request line and headers (parsed by `httparse`), the
//! route, and the responses. Pure: bytes in, decisions and bytes out.

/// Largest request head accepted, in bytes; a longer one is a `400`.
pub const REQUEST_BYTES_MAX: usize = 8 * 1024;
/// Headers parsed, at most.
const HEADERS_MAX: usize = 32;

/// A parsed request head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// `GET` and friends.
    pub method: String,
    /// The path without the query.
    pub path: String,
    /// The query string, if any.
    pub query: Option<String>,
    /// `Upgrade: websocket` with `Connection: upgrade`.
    pub upgrade: bool,
    /// `Sec-WebSocket-Key`.
    pub websocket_key: Option<String>,
    /// The token of `Authorization: Bearer <token>`.
    pub bearer: Option<String>,
    /// Every `Sec-WebSocket-Extensions` value, comma-joined (the offers).
    pub extensions: Option<String>,
    /// `Host` (for the absolute `next_url` of the aggregates endpoint).
    pub host: Option<String>,
}

/// Parsing progress.
#[derive(Debug, PartialEq, Eq)]
pub enum Parse {
    /// Need more bytes; nothing consumed.
    Partial,
    /// A whole head of this many bytes.
    Complete(Request, usize),
    /// Not HTTP, or too long.
    Bad(&'static str),
}

/// Parses a request head from the start of `buf`.
pub fn parse(buf: &[u8]) -> Parse {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(buf) {
        Ok(httparse::Status::Partial) if buf.len() >= REQUEST_BYTES_MAX => {
            Parse::Bad("request head too long")
        }
        Ok(httparse::Status::Partial) => Parse::Partial,
        Err(_) => Parse::Bad("malformed request"),
        Ok(httparse::Status::Complete(len)) => {
            let target = request.path.unwrap_or("/");
            let (path, query) = match target.split_once('?') {
                Some((path, query)) => (path, Some(query.to_owned())),
                None => (target, None),
            };
            let header = |name: &str| {
                request
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case(name))
                    .and_then(|h| std::str::from_utf8(h.value).ok())
                    .map(str::trim)
            };
            let upgrade = header("upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
                && header("connection").is_some_and(|v| v.to_ascii_lowercase().contains("upgrade"));
            let bearer = header("authorization")
                .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
                .map(|token| token.trim().to_owned());
            let offers: Vec<&str> = request
                .headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case("sec-websocket-extensions"))
                .filter_map(|h| std::str::from_utf8(h.value).ok())
                .collect();
            let extensions = (!offers.is_empty()).then(|| offers.join(", "));
            Parse::Complete(
                Request {
                    method: request.method.unwrap_or("").to_owned(),
                    path: path.to_owned(),
                    query,
                    upgrade,
                    websocket_key: header("sec-websocket-key").map(str::to_owned),
                    bearer,
                    extensions,
                    host: header("host")
                        .filter(|h| h.bytes().all(|b| b.is_ascii_graphic()))
                        .map(str::to_owned),
                },
                len,
            )
        }
    }
}

/// Where a request goes (PROTOCOL.md section 1).
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// `GET /health`.
    Health,
    /// `GET /v1/universes`.
    Universes,
    /// `GET /metrics`.
    Metrics,
    /// `GET /` and the other files of the [Dashboard](super::dashboard).
    Dashboard(&'static super::dashboard::Asset),
    /// A WebSocket upgrade on `/stocks` or `/v1/stream`.
    Stream,
    /// A WebSocket upgrade on `/echo` (served only in conformance mode).
    Echo,
    /// `404`.
    NotFound,
    /// `400` and close.
    BadRequest(&'static str),
    /// `GET /v2/aggs/...`: bars from the database.
    Aggs,
}

/// Query parameters that carry credentials: refused, since query strings end up in logs.
const TOKEN_PARAMETERS: [&str; 6] = ["token", "apikey", "api_key", "key", "jwt", "access_token"];

/// Routes a request.
pub fn route(request: &Request) -> Route {
    if request.method != "GET" {
        return Route::NotFound;
    }
    let has_token = request.query.as_deref().is_some_and(|query| {
        query.split('&').any(|pair| {
            let name = pair.split('=').next().unwrap_or("").to_ascii_lowercase();
            TOKEN_PARAMETERS.contains(&name.as_str())
        })
    });
    match request.path.as_str() {
        "/stocks" | "/v1/stream" if has_token => Route::BadRequest("credentials in the query string are refused; use the auth message or an Authorization header"),
        "/stocks" | "/v1/stream" if !request.upgrade || request.websocket_key.is_none() => {
            Route::BadRequest("this endpoint needs a WebSocket upgrade")
        }
        "/stocks" | "/v1/stream" => Route::Stream,
        "/echo" if request.upgrade && request.websocket_key.is_some() => Route::Echo,
        "/health" => Route::Health,
        "/metrics" => Route::Metrics,
        "/v1/universes" => Route::Universes,
        path if crate::database::aggs::is_aggs_path(path) && has_token => Route::BadRequest(
            "credentials in the query string are refused; use an Authorization: Bearer header",
        ),
        path if crate::database::aggs::is_aggs_path(path) => Route::Aggs,
        path => super::dashboard::asset(path).map_or(Route::NotFound, Route::Dashboard),
    }
}

/// A whole HTTP/1.1 response that closes the connection; `headers` are further header
/// lines, each ending in CRLF.
pub fn response(status: &str, content_type: &str, headers: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\n{headers}\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The `101 Switching Protocols` answer to a WebSocket upgrade, accepting
/// permessage-deflate as `deflate` says.
pub fn upgrade_response(websocket_key: &str, deflate: Option<super::deflate::Accepted>) -> Vec<u8> {
    let accept = tungstenite::handshake::derive_accept_key(websocket_key.as_bytes());
    let extension = match deflate {
        Some(accepted) => format!("Sec-WebSocket-Extensions: {}\r\n", accepted.response()),
        None => String::new(),
    };
    format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n{extension}\r\n")
        .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(text: &str) -> Request {
        match parse(text.as_bytes()) {
            Parse::Complete(request, len) => {
                assert_eq!(len, text.len());
                request
            }
            other => panic!("{other:?}"),
        }
    }

    const UPGRADE: &str = "Upgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";

    #[test]
    fn routes_of_the_one_port() {
        let stream = request(&format!(
            "GET /stocks HTTP/1.1\r\nHost: x\r\n{UPGRADE}Authorization: Bearer abc.def\r\n\r\n"
        ));
        assert_eq!(route(&stream), Route::Stream);
        assert_eq!(stream.bearer.as_deref(), Some("abc.def"));
        assert_eq!(
            route(&request(&format!("GET /v1/stream HTTP/1.1\r\n{UPGRADE}\r\n"))),
            Route::Stream
        );
        assert_eq!(route(&request("GET /health HTTP/1.1\r\n\r\n")), Route::Health);
        assert_eq!(route(&request("GET /metrics HTTP/1.1\r\n\r\n")), Route::Metrics);
        let universes = request("GET /v1/universes HTTP/1.1\r\n\r\n");
        assert_eq!(route(&universes), Route::Universes);
        assert!(matches!(route(&request("GET / HTTP/1.1\r\n\r\n")), Route::Dashboard(_)));
        assert_eq!(route(&request("GET /nothing HTTP/1.1\r\n\r\n")), Route::NotFound);
        assert_eq!(route(&request("POST /health HTTP/1.1\r\n\r\n")), Route::NotFound);
        assert!(
            matches!(route(&request(&format!("GET /stocks?apiKey=s3cret HTTP/1.1\r\n{UPGRADE}\r\n"))), Route::BadRequest(m) if m.contains("query"))
        );
        assert!(matches!(route(&request("GET /stocks HTTP/1.1\r\n\r\n")), Route::BadRequest(_)));
    }

    #[test]
    fn partial_bad_and_too_long_heads() {
        assert_eq!(parse(b"GET /health HTTP/1.1\r\nHost:"), Parse::Partial);
        assert!(matches!(parse(b"\x16\x03\x01 not http\r\n\r\n"), Parse::Bad(_)));
        let long = format!("GET /health HTTP/1.1\r\nX: {}", "a".repeat(REQUEST_BYTES_MAX));
        assert!(matches!(parse(long.as_bytes()), Parse::Bad(_)));
    }

    #[test]
    fn upgrade_accept_key_is_rfc6455() {
        let response =
            String::from_utf8(upgrade_response("dGhlIHNhbXBsZSBub25jZQ==", None)).unwrap();
        assert!(response.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
        assert!(!response.contains("Extensions"));
        let response = String::from_utf8(upgrade_response(
            "dGhlIHNhbXBsZSBub25jZQ==",
            crate::server::deflate::negotiate("permessage-deflate"),
        ))
        .unwrap();
        assert!(response.contains(
            "\r\nSec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n\r\n"
        ));
        let offered = request(&format!(
            "GET /stocks HTTP/1.1\r\n{UPGRADE}Sec-WebSocket-Extensions: x-foo\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n"
        ));
        assert_eq!(offered.extensions.as_deref(), Some("x-foo, permessage-deflate"));
    }
}
