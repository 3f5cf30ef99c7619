//! One connection's protocol state, apart from the socket (STYLE habit 12): authentication,
//! subscriptions and client errors. It takes what the client sent and returns what to send
//! back; the event loop does the I/O. Unit-tested without sockets.

use std::collections::HashSet;
use std::time::Instant;

use serde::Deserialize;

use super::auth::{Authenticator, Identity};

/// Channels a client may subscribe to, in index order.
pub const CHANNELS: [&str; 7] = ["T", "A", "AM", "HL", "TR", "SV", "FMV"];

/// Where a connection is in PROTOCOL.md section 2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// `connected` sent; waiting for a token until the deadline.
    AwaitingAuth {
        /// `auth_timeout_ms` after `connected`.
        deadline: Instant,
    },
    /// Authenticated.
    Active,
    /// A close was sent; the socket goes at the deadline at the latest.
    Closing {
        /// `close_timeout_ms` after the close.
        deadline: Instant,
    },
}

/// What the event loop should do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send this text message.
    Send(String),
    /// Send a close frame with this code and reason, then drop the connection.
    Close(u16, &'static str),
    /// Replay the retained history from this `seq` (PROTOCOL.md section 2, step 5).
    Resume(u64),
}

#[derive(Clone, Debug, Default)]
struct ChannelSubscription {
    all: bool,
    symbols: HashSet<String>,
}

/// A client's filter (PROTOCOL.md section 4); every bound optional.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    min_price_raw: Option<i64>,
    max_price_raw: Option<i64>,
    min_volume: Option<u64>,
    /// 1 weak, 2 moderate, 3 strong.
    min_strength: Option<u8>,
    /// Channels let through, by index; `None` means all.
    kinds: Option<[bool; CHANNELS.len()]>,
}

impl Filter {
    /// Parses `params`; an unknown key or a wrong type is an error naming it.
    fn parse(params: &serde_json::Value) -> Result<Filter, String> {
        let object = params.as_object().ok_or("params: want an object")?;
        let mut filter = Filter::default();
        for (key, value) in object {
            let price =
                || value.as_f64().and_then(tickstock_engine::Price::from_f64).map(|p| p.raw());
            match key.as_str() {
                "min_price" => {
                    filter.min_price_raw = Some(price().ok_or("min_price: want a number")?)
                }
                "max_price" => {
                    filter.max_price_raw = Some(price().ok_or("max_price: want a number")?)
                }
                "min_volume" => {
                    filter.min_volume =
                        Some(value.as_u64().ok_or("min_volume: want a whole number")?)
                }
                "min_strength" => {
                    let level = match value.as_str() {
                        Some("weak") => 1,
                        Some("moderate") => 2,
                        Some("strong") => 3,
                        _ => return Err("min_strength: want weak, moderate or strong".to_owned()),
                    };
                    filter.min_strength = Some(level);
                }
                "kinds" => {
                    let list = value.as_array().ok_or("kinds: want a list of channels")?;
                    let mut kinds = [false; CHANNELS.len()];
                    for kind in list {
                        let index = kind
                            .as_str()
                            .and_then(channel_index)
                            .ok_or("kinds: unknown channel")?;
                        kinds[index] = true;
                    }
                    filter.kinds = Some(kinds);
                }
                other => return Err(format!("unknown filter key {other:?}")),
            }
        }
        Ok(filter)
    }

    /// Whether a frame passes.
    pub fn passes(&self, channel: usize, price_raw: i64, volume: u64, strength: u8) -> bool {
        let priced = price_raw != 0;
        self.kinds.is_none_or(|kinds| kinds.get(channel).copied().unwrap_or(false))
            && self.min_price_raw.is_none_or(|min| !priced || price_raw >= min)
            && self.max_price_raw.is_none_or(|max| !priced || price_raw <= max)
            && self.min_volume.is_none_or(|min| volume == u64::MAX || volume >= min)
            && self.min_strength.is_none_or(|min| strength == 0 || strength >= min)
    }
}

/// One connection's protocol state.
#[derive(Debug)]
pub struct Session {
    /// The client's filter.
    pub filter: Filter,
    /// Current phase.
    pub phase: Phase,
    /// Who authenticated.
    pub identity: Option<Identity>,
    subscriptions: [ChannelSubscription; CHANNELS.len()],
    errors: u32,
    errors_max: u32,
    /// Token bucket of client messages: tokens left and when it was last refilled.
    bucket: (f64, Instant),
    rate_per_sec: f64,
}

#[derive(Deserialize)]
struct ClientMessage {
    action: String,
    #[serde(default)]
    params: serde_json::Value,
}

/// `[{"ev":"status","status":S,"message":M}]`, or several statuses in one array.
pub fn status_array(statuses: &[(&str, &str)]) -> String {
    let items: Vec<String> = statuses
        .iter()
        .map(|(status, message)| {
            format!(r#"{{"ev":"status","status":{},"message":{}}}"#, json(status), json(message))
        })
        .collect();
    format!("[{}]", items.join(","))
}

fn json(text: &str) -> String {
    serde_json::to_string(text).expect("Invariant: a str serializes")
}

/// The first message on every connection.
pub const CONNECTED: &str =
    r#"[{"ev":"status","status":"connected","message":"Connected Successfully"}]"#;
const AUTH_SUCCESS: &str = r#"[{"ev":"status","status":"auth_success","message":"authenticated"}]"#;
/// The answer to a bad, expired or missing token.
pub const AUTH_FAILED: &str =
    r#"[{"ev":"status","status":"auth_failed","message":"authentication failed"}]"#;
/// Close code for policy violations (auth failures, too many client errors).
pub const CLOSE_POLICY: u16 = 1008;

impl Session {
    /// A session that has just sent `connected`.
    pub fn new(auth_deadline: Instant, errors_max: u32, messages_per_sec: u32) -> Session {
        let rate_per_sec = f64::from(messages_per_sec);
        Session {
            phase: Phase::AwaitingAuth { deadline: auth_deadline },
            identity: None,
            filter: Filter::default(),
            subscriptions: Default::default(),
            errors: 0,
            errors_max,
            bucket: (rate_per_sec, Instant::now()),
            rate_per_sec,
        }
    }

    /// Takes a token for one client message at `now`; past the rate, the message is refused
    /// with an error status and counts as a client error.
    pub fn admit(&mut self, now: Instant) -> Result<(), Vec<Action>> {
        let (tokens, at) = self.bucket;
        let refill = now.saturating_duration_since(at).as_secs_f64() * self.rate_per_sec;
        let tokens = (tokens + refill).min(self.rate_per_sec);
        if tokens >= 1.0 {
            self.bucket = (tokens - 1.0, now);
            Ok(())
        } else {
            self.bucket = (tokens, now);
            Err(self.client_error("rate limit exceeded: too many messages per second"))
        }
    }

    /// Authenticates with a token from the upgrade's `Authorization: Bearer` header.
    pub fn authenticate(&mut self, token: &str, auth: &Authenticator, now_s: u64) -> Vec<Action> {
        match auth.verify(token, now_s) {
            Ok(identity) => {
                self.identity = Some(identity);
                self.phase = Phase::Active;
                vec![Action::Send(AUTH_SUCCESS.to_owned())]
            }
            Err(_) => vec![
                Action::Send(AUTH_FAILED.to_owned()),
                Action::Close(CLOSE_POLICY, "authentication failed"),
            ],
        }
    }

    /// Handles one client text message.
    pub fn on_text(&mut self, text: &str, auth: &Authenticator, now_s: u64) -> Vec<Action> {
        let message: ClientMessage = match serde_json::from_str(text) {
            Ok(message) => message,
            Err(_) => {
                return self.client_error("invalid message: want a JSON object with an action")
            }
        };
        match (self.phase, message.action.as_str()) {
            (Phase::AwaitingAuth { .. }, "auth") => match message.params.as_str() {
                Some(token) => self.authenticate(token, auth, now_s),
                None => vec![
                    Action::Send(AUTH_FAILED.to_owned()),
                    Action::Close(CLOSE_POLICY, "authentication failed"),
                ],
            },
            (Phase::AwaitingAuth { .. }, _) => vec![
                Action::Send(status_array(&[("error", "authenticate first")])),
                Action::Close(CLOSE_POLICY, "not authenticated"),
            ],
            (Phase::Active, "subscribe") => self.subscription(&message.params, true),
            (Phase::Active, "unsubscribe") => self.subscription(&message.params, false),
            (Phase::Active, "auth") => self.client_error("already authenticated"),
            (Phase::Active, "refresh") => self.refresh(&message.params, auth, now_s),
            (Phase::Active, "filter") => match Filter::parse(&message.params) {
                Ok(filter) => {
                    self.filter = filter;
                    vec![Action::Send(status_array(&[("success", "filter set")]))]
                }
                Err(why) => self.client_error(&format!("filter refused, the old one stays: {why}")),
            },
            (Phase::Active, "resume") => {
                match message.params.get("from_seq").and_then(serde_json::Value::as_u64) {
                    Some(from_seq) => vec![Action::Resume(from_seq)],
                    None => self.client_error("resume: want params {\"from_seq\": N}"),
                }
            }
            (Phase::Active, _) => self.client_error("unknown action"),
            (Phase::Closing { .. }, _) => Vec::new(),
        }
    }

    /// `refresh`: a new token replaces the old without reconnecting; a bad one leaves the old
    /// in force until it expires.
    fn refresh(
        &mut self,
        params: &serde_json::Value,
        auth: &Authenticator,
        now_s: u64,
    ) -> Vec<Action> {
        let Some(token) = params.as_str() else {
            return self.client_error("params: want the new token");
        };
        match auth.verify(token, now_s) {
            Ok(identity) => {
                self.identity = Some(identity);
                vec![Action::Send(AUTH_SUCCESS.to_owned())]
            }
            Err(_) => {
                self.client_error("refresh refused: the old token stays in force until it expires")
            }
        }
    }

    fn client_error(&mut self, message: &str) -> Vec<Action> {
        self.errors += 1;
        let mut actions = vec![Action::Send(status_array(&[("error", message)]))];
        if self.errors >= self.errors_max {
            actions.push(Action::Close(CLOSE_POLICY, "too many client errors"));
        }
        actions
    }

    fn subscription(&mut self, params: &serde_json::Value, subscribe: bool) -> Vec<Action> {
        let Some(list) = params.as_str() else {
            return self.client_error("params: want a comma-separated list of topics");
        };
        let mut statuses: Vec<(String, String)> = Vec::new();
        let mut bad = 0;
        for topic in list.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            match self.topic(topic, subscribe) {
                Ok(()) => {
                    let verb = if subscribe { "subscribed to" } else { "unsubscribed from" };
                    statuses.push(("success".to_owned(), format!("{verb}: {topic}")));
                }
                Err(why) => {
                    bad += 1;
                    statuses.push(("error".to_owned(), format!("{topic}: {why}")));
                }
            }
        }
        if statuses.is_empty() {
            return self.client_error("params: no topics");
        }
        let pairs: Vec<(&str, &str)> =
            statuses.iter().map(|(s, m)| (s.as_str(), m.as_str())).collect();
        let mut actions = vec![Action::Send(status_array(&pairs))];
        self.errors += bad;
        if bad > 0 && self.errors >= self.errors_max {
            actions.push(Action::Close(CLOSE_POLICY, "too many client errors"));
        }
        actions
    }

    fn topic(&mut self, topic: &str, subscribe: bool) -> Result<(), &'static str> {
        let (channel, symbol) = topic.split_once('.').ok_or("want CHANNEL.SYMBOL")?;
        let index = CHANNELS.iter().position(|&c| c == channel).ok_or("unknown channel")?;
        let entry = &mut self.subscriptions[index];
        if symbol == "*" {
            entry.all = subscribe;
            if !subscribe {
                entry.symbols.clear();
            }
            return Ok(());
        }
        tickstock_engine::Ticker::new(symbol).map_err(|_| "bad symbol")?;
        if subscribe {
            let identity = self.identity.as_ref().ok_or("not authenticated")?;
            if !identity.entitled(symbol) {
                return Err("not entitled to this symbol");
            }
            entry.symbols.insert(symbol.to_owned());
        } else {
            entry.symbols.remove(symbol);
        }
        Ok(())
    }

    /// Whether an event of channel index `channel` about `symbol` goes to this client.
    pub fn wants(&self, channel: usize, symbol: &str) -> bool {
        let Some(entry) = self.subscriptions.get(channel) else { return false };
        let subscribed = entry.all || (!entry.symbols.is_empty() && entry.symbols.contains(symbol));
        subscribed && self.identity.as_ref().is_some_and(|identity| identity.entitled(symbol))
    }

    /// True once authenticated and subscribed to anything.
    pub fn subscribed(&self) -> bool {
        self.phase == Phase::Active
            && self.subscriptions.iter().any(|s| s.all || !s.symbols.is_empty())
    }

    /// Client errors so far (bad messages, refused topics, filters or refreshes, rate limit).
    pub fn errors(&self) -> u32 {
        self.errors
    }

    /// Subscribed topics in all.
    pub fn subscription_count(&self) -> usize {
        self.subscriptions.iter().map(|s| usize::from(s.all) + s.symbols.len()).sum()
    }
}

/// A channel's index in [`CHANNELS`].
pub fn channel_index(channel: &str) -> Option<usize> {
    CHANNELS.iter().position(|&c| c == channel)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ServerSettings;

    fn keys() -> Authenticator {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.txt");
        std::fs::write(&path, "k1 user=alice symbols=AAPL,MSFT\nk2 user=bob\n").unwrap();
        let settings = ServerSettings { api_keys_file: Some(path), ..ServerSettings::default() };
        Authenticator::load(&settings).unwrap()
    }

    fn texts(actions: &[Action]) -> String {
        actions.iter().map(|a| format!("{a:?}")).collect::<Vec<_>>().join("\n")
    }

    #[test]
    fn auth_then_subscribe_with_per_topic_statuses_and_entitlements() {
        let auth = keys();
        let mut session = Session::new(Instant::now(), 10, 50);
        let actions = session.on_text(r#"{"action":"subscribe","params":"T.*"}"#, &auth, 0);
        assert!(texts(&actions).contains("authenticate first") && texts(&actions).contains("1008"));
        let mut session = Session::new(Instant::now(), 10, 50);
        let actions = session.on_text(r#"{"action":"auth","params":"k1"}"#, &auth, 0);
        assert_eq!(actions, [Action::Send(AUTH_SUCCESS.to_owned())]);
        let actions = session.on_text(
            r#"{"action":"subscribe","params":"AM.*,A.AAPL,HL.IBM,XX.A,T"}"#,
            &auth,
            0,
        );
        let text = texts(&actions);
        assert!(
            text.contains("subscribed to: AM.*") && text.contains("subscribed to: A.AAPL"),
            "{text}"
        );
        assert!(
            text.contains("HL.IBM: not entitled") && text.contains("XX.A: unknown channel"),
            "{text}"
        );
        assert!(text.contains("T: want CHANNEL.SYMBOL"), "{text}");
        let am = channel_index("AM").unwrap();
        assert!(session.wants(am, "MSFT"), "* delivers entitled symbols");
        assert!(!session.wants(am, "IBM"), "* delivers only entitled symbols");
        assert!(session.wants(channel_index("A").unwrap(), "AAPL"));
        assert!(!session.wants(channel_index("A").unwrap(), "MSFT"));
        let actions = session.on_text(r#"{"action":"unsubscribe","params":"AM.*"}"#, &auth, 0);
        assert!(texts(&actions).contains("unsubscribed from: AM.*"));
        assert!(!session.wants(am, "MSFT"));
    }

    #[test]
    fn bad_tokens_and_too_many_errors_close_with_1008() {
        let auth = keys();
        let mut session = Session::new(Instant::now(), 3, 50);
        let actions = session.on_text(r#"{"action":"auth","params":"nope"}"#, &auth, 0);
        assert_eq!(actions[1], Action::Close(CLOSE_POLICY, "authentication failed"));
        assert!(texts(&actions).contains("auth_failed"));
        let mut session = Session::new(Instant::now(), 3, 50);
        session.on_text(r#"{"action":"auth","params":"k2"}"#, &auth, 0);
        for round in 1..=3 {
            let actions = session.on_text("not json", &auth, 0);
            assert_eq!(actions.len(), if round < 3 { 1 } else { 2 }, "round {round}");
        }
    }

    #[test]
    fn the_rate_limit_is_a_token_bucket() {
        let start = Instant::now();
        let mut session = Session::new(start, 100, 5);
        for _ in 0..5 {
            assert!(session.admit(start).is_ok());
        }
        assert!(texts(&session.admit(start).unwrap_err()).contains("rate limit"));
        // 200 ms later one token is back.
        let later = start + std::time::Duration::from_millis(200);
        assert!(session.admit(later).is_ok());
        assert!(session.admit(later).is_err());
    }

    #[test]
    fn refresh_replaces_the_token_and_a_bad_one_keeps_the_old() {
        let auth = keys();
        let mut session = Session::new(Instant::now(), 10, 50);
        session.on_text(r#"{"action":"auth","params":"k1"}"#, &auth, 0);
        assert_eq!(session.identity.as_ref().unwrap().user, "alice");
        let actions = session.on_text(r#"{"action":"refresh","params":"bad"}"#, &auth, 0);
        assert!(texts(&actions).contains("refresh refused"));
        assert_eq!(session.identity.as_ref().unwrap().user, "alice");
        let actions = session.on_text(r#"{"action":"refresh","params":"k2"}"#, &auth, 0);
        assert_eq!(actions, [Action::Send(AUTH_SUCCESS.to_owned())]);
        assert_eq!(session.identity.as_ref().unwrap().user, "bob");
    }

    #[test]
    fn filters_narrow_by_price_volume_strength_and_kind() {
        let auth = keys();
        let mut session = Session::new(Instant::now(), 10, 50);
        session.on_text(r#"{"action":"auth","params":"k2"}"#, &auth, 0);
        let set = r#"{"action":"filter","params":{"min_price":5,"max_price":10.5,"min_volume":100,"min_strength":"moderate","kinds":["T","TR"]}}"#;
        assert!(texts(&session.on_text(set, &auth, 0)).contains("filter set"));
        let (t, tr, a) = (
            channel_index("T").unwrap(),
            channel_index("TR").unwrap(),
            channel_index("A").unwrap(),
        );
        let dollars = |d: i64| d * 1_000_000;
        assert!(session.filter.passes(t, dollars(6), 100, 0));
        assert!(!session.filter.passes(t, dollars(4), 100, 0), "below min_price");
        assert!(!session.filter.passes(t, dollars(11), 100, 0), "above max_price");
        assert!(!session.filter.passes(t, dollars(6), 99, 0), "below min_volume");
        assert!(!session.filter.passes(a, dollars(6), 100, 0), "kind not listed");
        assert!(session.filter.passes(tr, 0, u64::MAX, 2), "TR passes price and volume bounds");
        assert!(!session.filter.passes(tr, 0, u64::MAX, 1), "weak is below moderate");
        let bad = r#"{"action":"filter","params":{"min_price":"cheap"}}"#;
        assert!(texts(&session.on_text(bad, &auth, 0)).contains("the old one stays"));
        assert!(!session.filter.passes(t, dollars(4), 100, 0), "the old filter stays");
        let unknown = r#"{"action":"filter","params":{"sector":"tech"}}"#;
        assert!(texts(&session.on_text(unknown, &auth, 0)).contains("unknown filter key"));
        session.on_text(r#"{"action":"filter","params":{}}"#, &auth, 0);
        assert!(session.filter.passes(a, dollars(1), 1, 0), "an empty object clears it");
    }
}
