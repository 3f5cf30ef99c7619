//! What the server tells a client about itself: the `status` messages of PROTOCOL.md, built in
//! this one place, and the typed reasons a connection is closed for (each with its close code
//! and the reason text sent in the close frame).

use tickstock_engine::Channel;

/// Why the server closes a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// A bad, expired or missing token (1008).
    AuthFailed,
    /// No token within `auth_timeout_ms` (1008).
    AuthTimeout,
    /// An action before authenticating (1008).
    NotAuthenticated,
    /// `client_errors_max` client errors (1008).
    TooManyErrors,
    /// A JWT expired without a refresh (1008).
    TokenExpired,
    /// The API key it authenticated with was removed by a reload (1008).
    KeyRevoked,
    /// The connection limit, in all or per user (1013, try again later).
    TryLater,
    /// The client could not keep up (4008, PROTOCOL.md section 5).
    SlowConsumer,
    /// A client frame or message above `client_message_bytes_max` (1009).
    TooBig,
    /// A text message that is not UTF-8 (1007).
    BadUtf8,
    /// Any other WebSocket protocol violation, unmasked frames among them (1002).
    Protocol,
    /// The server is stopping (1001).
    GoingAway,
}

impl CloseReason {
    /// The close code.
    pub const fn code(self) -> u16 {
        match self {
            CloseReason::AuthFailed
            | CloseReason::AuthTimeout
            | CloseReason::NotAuthenticated
            | CloseReason::TooManyErrors
            | CloseReason::TokenExpired
            | CloseReason::KeyRevoked => 1008,
            CloseReason::TryLater => 1013,
            CloseReason::SlowConsumer => 4008,
            CloseReason::TooBig => 1009,
            CloseReason::BadUtf8 => 1007,
            CloseReason::Protocol => 1002,
            CloseReason::GoingAway => 1001,
        }
    }

    /// The reason text of the close frame.
    pub const fn text(self) -> &'static str {
        match self {
            CloseReason::AuthFailed => "authentication failed",
            CloseReason::AuthTimeout => "authentication timeout",
            CloseReason::NotAuthenticated => "not authenticated",
            CloseReason::TooManyErrors => "too many client errors",
            CloseReason::TokenExpired => "token expired",
            CloseReason::KeyRevoked => "key revoked",
            CloseReason::TryLater => "try again later",
            CloseReason::SlowConsumer => "slow consumer",
            CloseReason::TooBig => "message too big",
            CloseReason::BadUtf8 => "invalid UTF-8",
            CloseReason::Protocol => "protocol error",
            CloseReason::GoingAway => "server shutting down",
        }
    }
}

/// The first message on every connection.
pub const CONNECTED: &str =
    r#"[{"ev":"status","status":"connected","message":"Connected Successfully"}]"#;
/// A token was accepted (by `auth`, the upgrade header or `refresh`).
pub const AUTH_SUCCESS: &str =
    r#"[{"ev":"status","status":"auth_success","message":"authenticated"}]"#;
/// A bad, expired or missing token.
pub const AUTH_FAILED: &str =
    r#"[{"ev":"status","status":"auth_failed","message":"authentication failed"}]"#;
/// A JWT expired without a refresh.
pub const TOKEN_EXPIRED: &str =
    r#"[{"ev":"status","status":"token_expired","message":"token expired"}]"#;
/// A reload removed the API key the connection authenticated with (before close 1008).
pub const KEY_REVOKED: &str = r#"[{"ev":"status","status":"auth_failed","message":"key revoked"}]"#;
/// The connection limit is reached, in all.
pub const MAX_CONNECTIONS: &str =
    r#"[{"ev":"status","status":"max_connections","message":"too many connections"}]"#;
/// The connection limit is reached for this user.
pub const MAX_CONNECTIONS_USER: &str = r#"[{"ev":"status","status":"max_connections","message":"too many connections for this user"}]"#;

/// `[{"ev":"status","status":S,"message":M}, ...]`: several statuses in one array.
pub fn array(statuses: &[(&str, &str)]) -> String {
    let items: Vec<String> = statuses
        .iter()
        .map(|(status, message)| {
            format!(r#"{{"ev":"status","status":{},"message":{}}}"#, json(status), json(message))
        })
        .collect();
    format!("[{}]", items.join(","))
}

/// One `error` status.
pub fn error(message: &str) -> String {
    array(&[("error", message)])
}

/// One `success` status.
pub fn success(message: &str) -> String {
    array(&[("success", message)])
}

/// A resume finished: the first `seq` it looked at (and the `from_t` it was asked by), and
/// the last `seq` it sent.
pub fn resumed(from_seq: u64, from_t: Option<u64>, to_seq: u64) -> String {
    let by_time = from_t.map(|t| format!(r#","from_t":{t}"#)).unwrap_or_default();
    format!(
        r#"[{{"ev":"status","status":"resumed","from_seq":{from_seq}{by_time},"to_seq":{to_seq}}}]"#
    )
}

/// A snapshot was sent: `count` events, and live delivery goes on after `to_seq`.
pub fn snapshot(count: usize, to_seq: u64) -> String {
    format!(r#"[{{"ev":"status","status":"snapshot","count":{count},"to_seq":{to_seq}}}]"#)
}

/// A resume from before the retained history.
pub fn resume_failed(oldest_seq: u64) -> String {
    format!(r#"[{{"ev":"status","status":"resume_failed","oldest_seq":{oldest_seq}}}]"#)
}

/// A conflating client caught up: how many events it lost.
pub fn conflated(dropped: u64) -> String {
    format!(r#"[{{"ev":"status","status":"conflated","dropped":{dropped}}}]"#)
}

/// A `shed` step (`shed`, with the channels no longer sent and the events dropped), or its
/// undoing (`unshed`, with the channels sent again).
pub fn shed(status: &str, channels: &[Channel], dropped: u64) -> String {
    let names: Vec<String> = channels.iter().map(|c| json(c.label())).collect();
    format!(
        r#"[{{"ev":"status","status":{},"channels":[{}],"dropped":{dropped}}}]"#,
        json(status),
        names.join(",")
    )
}

fn json(text: &str) -> String {
    serde_json::to_string(text).expect("Invariant: a str serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_json_arrays_of_status_objects() {
        for text in [
            CONNECTED.to_owned(),
            AUTH_SUCCESS.to_owned(),
            AUTH_FAILED.to_owned(),
            TOKEN_EXPIRED.to_owned(),
            MAX_CONNECTIONS.to_owned(),
            MAX_CONNECTIONS_USER.to_owned(),
            error("a \"quoted\" word"),
            success("ok"),
            resumed(1, None, 2),
            resumed(1, Some(1_700_000_000_000), 2),
            resume_failed(3),
            conflated(4),
            shed("shed", &[Channel::T, Channel::A], 5),
        ] {
            let value: serde_json::Value = serde_json::from_str(&text).expect(&text);
            let items = value.as_array().expect("an array");
            assert!(items.iter().all(|item| item["ev"] == "status"), "{text}");
        }
        let shed: serde_json::Value =
            serde_json::from_str(&shed("shed", &[Channel::T], 7)).unwrap();
        assert_eq!(shed[0]["channels"][0], "T");
        assert_eq!(shed[0]["dropped"], 7);
    }

    #[test]
    fn close_codes_follow_the_protocol() {
        assert_eq!(CloseReason::SlowConsumer.code(), 4008);
        assert_eq!(CloseReason::SlowConsumer.text(), "slow consumer");
        assert_eq!(CloseReason::TryLater.code(), 1013);
        assert_eq!(CloseReason::AuthTimeout.code(), 1008);
        assert_eq!(CloseReason::TooBig.code(), 1009);
    }
}
