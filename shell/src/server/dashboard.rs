//! The Dashboard: the web page served at `/` (HTML, CSS and JavaScript, embedded in the
//! binary at build time from `dashboard/`). It is a client like any other: it speaks the
//! stream's protocol over `/stocks` with first-message auth and polls `/health` and
//! `/metrics`. It loads nothing from anywhere else, and its `Content-Security-Policy` lets
//! the browser enforce that. `server.dashboard = false` answers these paths `404`.

/// One file of the page.
#[derive(Debug, PartialEq, Eq)]
pub struct Asset {
    /// Its `Content-Type`.
    pub content_type: &'static str,
    /// Its bytes.
    pub body: &'static str,
}

/// The headers every asset is served with: only this origin may be loaded from or
/// connected to (`'self'` covers the page's own `ws:`/`wss:` origin), nothing may frame the
/// page, and nothing is sniffed or sent as a referrer.
pub const HEADERS: &str = "Content-Security-Policy: default-src 'none'; script-src 'self'; \
style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
frame-ancestors 'none'\r\nX-Content-Type-Options: nosniff\r\nReferrer-Policy: no-referrer\r\n";

const INDEX: Asset =
    Asset { content_type: "text/html; charset=utf-8", body: include_str!("dashboard/index.html") };
const SCRIPT: Asset = Asset {
    content_type: "text/javascript; charset=utf-8",
    body: include_str!("dashboard/dashboard.js"),
};
const STYLE: Asset = Asset {
    content_type: "text/css; charset=utf-8",
    body: include_str!("dashboard/dashboard.css"),
};

/// The asset at `path`, if it is one of the page's.
pub fn asset(path: &str) -> Option<&'static Asset> {
    match path {
        "/" | "/index.html" => Some(&INDEX),
        "/dashboard.js" => Some(&SCRIPT),
        "/dashboard.css" => Some(&STYLE),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_names_only_its_own_assets_and_origin() {
        let page = asset("/").unwrap().body;
        for path in ["/dashboard.js", "/dashboard.css"] {
            assert!(page.contains(path), "{path}");
            assert!(asset(path).is_some(), "{path}");
        }
        assert!(asset("/other.js").is_none());
        // Nothing from elsewhere: no scheme-qualified or protocol-relative URL to fetch.
        for body in [INDEX.body, SCRIPT.body, STYLE.body] {
            for reference in ["http://", "https://", "src=\"//", "href=\"//", "url("] {
                assert!(!body.contains(reference), "{reference}");
            }
        }
        // The key goes in the first message, never in the URL.
        assert!(SCRIPT.body.contains(r#"action: "auth", params: currentKey()"#));
        assert!(!SCRIPT.body.contains("/stocks?"));
    }
}
