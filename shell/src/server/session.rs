//! One connection's protocol state, apart from the socket (STYLE habit 12): authentication,
//! subscriptions, filter, options and client errors. It takes what the client sent and returns
//! what to do ([`Action`]); the [`Subscriber`](super::subscriber::Subscriber) carries it out.
//! Its [`Delivery`] is what the connection receives: the key of its group. Unit-tested without
//! sockets.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use serde::Deserialize;
use tickstock_engine::{Channel, Ticker};

use super::auth::{Authenticator, Identity};
use super::status::{self, CloseReason, AUTH_FAILED, AUTH_SUCCESS};
use super::universes::Universes;
use crate::config::SlowConsumerPolicy;

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

/// What the subscriber should do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send this text message.
    Send(String),
    /// Send a close frame for this reason, then drop the connection.
    Close(CloseReason),
    /// Replay the retained history from here (PROTOCOL.md section 2, step 5).
    Resume(ResumeFrom),
    /// The client chose its slow-consumer policy (`options`, PROTOCOL.md section 5).
    Policy(SlowConsumerPolicy),
    /// Send the snapshot of the topics a `subscribe` with `"snapshot":true` added
    /// (PROTOCOL.md section 2, step 3), per channel.
    Snapshot(Box<[Topics; Channel::COUNT]>),
}

/// Where a `resume` starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResumeFrom {
    /// `from_seq`: this `seq`.
    Seq(u64),
    /// `from_t`: the first event whose time is at or after this Unix ms.
    Time(u64),
}

/// One channel's topics: `*`, or a set of symbols.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Topics {
    /// `CHANNEL.*`: every (entitled) symbol.
    pub all: bool,
    /// `CHANNEL.SYMBOL` topics.
    pub symbols: BTreeSet<Ticker>,
    /// `CHANNEL.@NAME` topics (a subscription's; a [`Delivery`] holds their symbols instead).
    pub universes: BTreeSet<String>,
}

impl Topics {
    fn is_empty(&self) -> bool {
        !self.all && self.symbols.is_empty() && self.universes.is_empty()
    }

    /// The symbols its symbol and universe topics name.
    fn covered(&self, universes: &Universes) -> BTreeSet<Ticker> {
        let mut covered = self.symbols.clone();
        for name in &self.universes {
            covered.extend(universes.get(name).into_iter().flatten().copied());
        }
        covered
    }
}

/// What a connection receives: its topics (already narrowed to its entitlement and stripped of
/// the channels it sheds), its filter, and, for `*` topics, its entitlement. Connections with
/// equal deliveries receive identical bytes, so they share one group.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Delivery {
    /// Per channel, by [`Channel::index`].
    pub topics: [Topics; Channel::COUNT],
    /// The filter.
    pub filter: Filter,
    /// The symbols a `*` topic is limited to; `None` when every symbol is entitled or no
    /// channel has a `*` topic.
    pub entitled: Option<BTreeSet<Ticker>>,
    /// The connection negotiated permessage-deflate with this window (bits, 9 to 15; 0:
    /// not compressed): its group's messages are compressed so.
    pub deflate: u8,
}

impl Delivery {
    /// True when nothing is delivered.
    pub fn is_empty(&self) -> bool {
        self.topics.iter().all(Topics::is_empty)
    }

    /// Whether a `*` topic carries `ticker`: the entitled symbols, and for everyone the
    /// market-wide `*` of `ACT` (it carries no symbol's data).
    pub fn entitled_to(&self, ticker: &Ticker) -> bool {
        *ticker == Ticker::MARKET || self.entitled.as_ref().is_none_or(|e| e.contains(ticker))
    }

    /// Every symbol it carries, when no channel has a `*` topic (a replay then looks at
    /// their events only, `History::among`); `None` with a `*` topic.
    pub fn symbols(&self) -> Option<BTreeSet<Ticker>> {
        let mut symbols = BTreeSet::new();
        for topics in &self.topics {
            if topics.all {
                return None;
            }
            symbols.extend(topics.symbols.iter().copied());
        }
        Some(symbols)
    }

    /// Whether a retained event goes out under this delivery (what a replay sends).
    pub fn wants(&self, entry: &super::history::Entry) -> bool {
        let fields = (entry.price_raw, entry.volume, entry.strength);
        self.carries(entry.channel, &entry.ticker, fields)
    }

    /// Whether an event of `channel` for `ticker`, with the filter fields `(price_raw,
    /// volume, strength)` (see `Frame`), goes out under this delivery.
    pub fn carries(&self, channel: Channel, ticker: &Ticker, fields: (i64, u64, u8)) -> bool {
        let topics = &self.topics[channel.index()];
        let topic =
            if topics.all { self.entitled_to(ticker) } else { topics.symbols.contains(ticker) };
        topic && self.filter.passes(channel, fields.0, fields.1, fields.2)
    }
}

/// The channels `shed` stops sending, in the order it stops them (PROTOCOL.md section 5): a
/// shed level of `n` stops the first `n`.
pub const SHED_ORDER: [Channel; 3] = [Channel::T, Channel::A, Channel::Am];

/// A client's filter (PROTOCOL.md section 4); every bound optional.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Filter {
    min_price_raw: Option<i64>,
    max_price_raw: Option<i64>,
    min_volume: Option<u64>,
    /// 1 weak, 2 moderate, 3 strong.
    min_strength: Option<u8>,
    /// Channels let through, by index; `None` means all.
    kinds: Option<[bool; Channel::COUNT]>,
}

impl Filter {
    /// Parses `params`; an unknown key or a wrong type is an error naming it.
    pub(crate) fn parse(params: &serde_json::Value) -> Result<Filter, String> {
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
                    let mut kinds = [false; Channel::COUNT];
                    for kind in list {
                        let channel = kind
                            .as_str()
                            .and_then(Channel::parse)
                            .ok_or("kinds: unknown channel")?;
                        kinds[channel.index()] = true;
                    }
                    filter.kinds = Some(kinds);
                }
                other => return Err(format!("unknown filter key {other:?}")),
            }
        }
        Ok(filter)
    }

    /// Whether a frame passes.
    pub fn passes(&self, channel: Channel, price_raw: i64, volume: u64, strength: u8) -> bool {
        let priced = price_raw != 0;
        self.kinds.is_none_or(|kinds| kinds[channel.index()])
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
    subscriptions: [Topics; Channel::COUNT],
    errors: u32,
    errors_max: u32,
    subscriptions_max: usize,
    /// The universes `@NAME` topics name (the loop's current ones, set by its Subscriber).
    universes: Arc<Universes>,
    /// The window of the permessage-deflate it negotiated, 0 for none (its deliveries say so).
    deflate: u8,
    /// Token bucket of client messages: tokens left and when it was last refilled.
    bucket: (f64, Instant),
    rate_per_sec: f64,
}

#[derive(Deserialize)]
struct ClientMessage {
    action: String,
    #[serde(default)]
    params: serde_json::Value,
    /// A `subscribe` that first sends the latest event of each new topic.
    #[serde(default)]
    snapshot: bool,
}

/// The limits a session enforces.
#[derive(Clone, Copy, Debug)]
pub struct SessionLimits {
    /// Client errors before the connection is closed with 1008.
    pub errors_max: u32,
    /// Client messages per second (a token bucket of this size).
    pub messages_per_sec: u32,
    /// Topics held at once.
    pub subscriptions_max: u32,
}

impl Session {
    /// A session that has just sent `connected` at `now`.
    pub fn new(now: Instant, auth_deadline: Instant, limits: SessionLimits) -> Session {
        let rate_per_sec = f64::from(limits.messages_per_sec);
        Session {
            phase: Phase::AwaitingAuth { deadline: auth_deadline },
            identity: None,
            filter: Filter::default(),
            subscriptions: Default::default(),
            errors: 0,
            errors_max: limits.errors_max,
            subscriptions_max: limits.subscriptions_max as usize,
            universes: Arc::default(),
            deflate: 0,
            bucket: (rate_per_sec, now),
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

    /// The connection negotiated permessage-deflate: what it receives live is compressed.
    pub fn set_deflate(&mut self, window_bits: u8) {
        self.deflate = window_bits;
    }

    /// Takes up the universes now in force; true when that changes what this connection
    /// receives (it holds a universe topic), so its delivery must be followed.
    pub fn set_universes(&mut self, universes: &Arc<Universes>) -> bool {
        if Arc::ptr_eq(&self.universes, universes) {
            return false;
        }
        self.universes = Arc::clone(universes);
        self.subscriptions.iter().any(|topics| !topics.universes.is_empty())
    }

    /// Authenticates with a token from the upgrade's `Authorization: Bearer` header.
    pub fn authenticate(&mut self, token: &str, auth: &Authenticator, now_s: u64) -> Vec<Action> {
        match auth.verify(token, now_s) {
            Ok(identity) => {
                self.identity = Some(identity);
                self.phase = Phase::Active;
                vec![Action::Send(AUTH_SUCCESS.to_owned())]
            }
            Err(_) => {
                vec![Action::Send(AUTH_FAILED.to_owned()), Action::Close(CloseReason::AuthFailed)]
            }
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
                    Action::Close(CloseReason::AuthFailed),
                ],
            },
            (Phase::AwaitingAuth { .. }, _) => vec![
                Action::Send(status::error("authenticate first")),
                Action::Close(CloseReason::NotAuthenticated),
            ],
            (Phase::Active, "subscribe") if message.snapshot => {
                let before = self.subscriptions.clone();
                let mut actions = self.subscription(&message.params, true);
                if !actions.iter().any(|action| matches!(action, Action::Close(_))) {
                    actions.push(Action::Snapshot(Box::new(self.added_since(&before))));
                }
                actions
            }
            (Phase::Active, "subscribe") => self.subscription(&message.params, true),
            (Phase::Active, "unsubscribe") => self.subscription(&message.params, false),
            (Phase::Active, "auth") => self.client_error("already authenticated"),
            (Phase::Active, "refresh") => self.refresh(&message.params, auth, now_s),
            (Phase::Active, "filter") => match Filter::parse(&message.params) {
                Ok(filter) => {
                    self.filter = filter;
                    vec![Action::Send(status::success("filter set"))]
                }
                Err(why) => self.client_error(&format!("filter refused, the old one stays: {why}")),
            },
            (Phase::Active, "resume") => {
                let field = |key: &str| message.params.get(key).map(serde_json::Value::as_u64);
                match (field("from_seq"), field("from_t")) {
                    (Some(Some(from_seq)), None) => vec![Action::Resume(ResumeFrom::Seq(from_seq))],
                    (None, Some(Some(from_t))) => vec![Action::Resume(ResumeFrom::Time(from_t))],
                    _ => self.client_error(
                        "resume: want params {\"from_seq\": N} or {\"from_t\": UNIX_MS}",
                    ),
                }
            }
            (Phase::Active, "options") => self.options(&message.params),
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

    /// `options`: `{"slow_consumer": "close" | "conflate" | "shed"}`.
    fn options(&mut self, params: &serde_json::Value) -> Vec<Action> {
        let Some(object) = params.as_object() else {
            return self.client_error("options: want an object");
        };
        let mut actions = Vec::new();
        for (key, value) in object {
            match (key.as_str(), value.as_str()) {
                ("slow_consumer", Some(name)) => {
                    let policy = match name {
                        "close" => SlowConsumerPolicy::Close,
                        "conflate" => SlowConsumerPolicy::Conflate,
                        "shed" => SlowConsumerPolicy::Shed,
                        _ => {
                            return self.client_error(
                                "options: slow_consumer wants close, conflate or shed",
                            )
                        }
                    };
                    actions.push(Action::Policy(policy));
                }
                _ => return self.client_error(&format!("options: unknown option {key:?}")),
            }
        }
        actions.push(Action::Send(status::success("options set")));
        actions
    }

    fn client_error(&mut self, message: &str) -> Vec<Action> {
        self.errors += 1;
        let mut actions = vec![Action::Send(status::error(message))];
        if self.errors >= self.errors_max {
            actions.push(Action::Close(CloseReason::TooManyErrors));
        }
        actions
    }

    /// The topics subscribed now that `before` did not cover: a new `*`, or symbols new to a
    /// channel without `*`.
    fn added_since(&self, before: &[Topics; Channel::COUNT]) -> [Topics; Channel::COUNT] {
        let mut added: [Topics; Channel::COUNT] = Default::default();
        for channel in Channel::ALL {
            let (now, was) = (&self.subscriptions[channel.index()], &before[channel.index()]);
            let into = &mut added[channel.index()];
            if was.all {
                continue;
            }
            into.all = now.all;
            if !now.all {
                let before = was.covered(&self.universes);
                into.symbols = now.covered(&self.universes).difference(&before).copied().collect();
            }
        }
        added
    }

    fn subscription(&mut self, params: &serde_json::Value, subscribe: bool) -> Vec<Action> {
        let Some(list) = params.as_str() else {
            return self.client_error("params: want a comma-separated list of topics");
        };
        let mut statuses: Vec<(String, String)> = Vec::new();
        for topic in list.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            match self.topic(topic, subscribe) {
                Ok(()) => {
                    let verb = if subscribe { "subscribed to" } else { "unsubscribed from" };
                    statuses.push(("success".to_owned(), format!("{verb}: {topic}")));
                }
                Err(why) => statuses.push(("error".to_owned(), format!("{topic}: {why}"))),
            }
        }
        if statuses.is_empty() {
            return self.client_error("params: no topics");
        }
        // Per-topic errors are answers, not client errors (PROTOCOL.md section 2, step 3).
        let pairs: Vec<(&str, &str)> =
            statuses.iter().map(|(s, m)| (s.as_str(), m.as_str())).collect();
        vec![Action::Send(status::array(&pairs))]
    }

    fn topic(&mut self, topic: &str, subscribe: bool) -> Result<(), String> {
        let (channel, symbol) = topic.split_once('.').ok_or("want CHANNEL.SYMBOL")?;
        let channel = Channel::parse(channel).ok_or("unknown channel")?;
        let held = self.subscription_count();
        let limit = self.subscriptions_max;
        if channel == Channel::Act && symbol != "*" {
            return Err("ACT is market-wide: its only topic is ACT.*".to_owned());
        }
        if let Some(name) = symbol.strip_prefix('@') {
            if subscribe && self.universes.get(name).is_none() {
                return Err(format!("unknown universe {name:?} (GET /v1/universes lists them)"));
            }
            let entry = &mut self.subscriptions[channel.index()];
            if subscribe && !entry.universes.contains(name) && held >= limit {
                return Err(format!("subscriptions_max ({limit}) reached"));
            }
            if subscribe {
                entry.universes.insert(name.to_owned());
            } else {
                entry.universes.remove(name);
            }
            return Ok(());
        }
        let entry = &mut self.subscriptions[channel.index()];
        if symbol == "*" {
            if subscribe && !entry.all && held >= limit {
                return Err(format!("subscriptions_max ({limit}) reached"));
            }
            entry.all = subscribe;
            if !subscribe {
                entry.symbols.clear();
                entry.universes.clear();
            }
            return Ok(());
        }
        let ticker = Ticker::new(symbol).map_err(|_| "bad symbol")?;
        if subscribe {
            let identity = self.identity.as_ref().ok_or("not authenticated")?;
            if !identity.entitled(symbol) {
                return Err("not entitled to this symbol".to_owned());
            }
            if !entry.symbols.contains(&ticker) && held >= limit {
                return Err(format!("subscriptions_max ({limit}) reached"));
            }
            entry.symbols.insert(ticker);
        } else {
            entry.symbols.remove(&ticker);
        }
        Ok(())
    }

    /// What this connection receives with the first `shed` channels of [`SHED_ORDER`] shed:
    /// its topics narrowed to its entitlement, its filter, and the entitlement `*` topics
    /// need. Empty until authenticated.
    pub fn delivery(&self, shed: usize) -> Delivery {
        let mut delivery =
            Delivery { filter: self.filter.clone(), deflate: self.deflate, ..Delivery::default() };
        let Some(identity) = self.identity.as_ref().filter(|_| self.phase == Phase::Active) else {
            return delivery;
        };
        for channel in Channel::ALL {
            if SHED_ORDER[..shed.min(SHED_ORDER.len())].contains(&channel) {
                continue;
            }
            let topics = &self.subscriptions[channel.index()];
            let target = &mut delivery.topics[channel.index()];
            target.all = topics.all;
            if !topics.all {
                // A universe delivers its entitled symbols, like `*`.
                target.symbols = topics
                    .covered(&self.universes)
                    .into_iter()
                    .filter(|t| identity.entitled(t.as_str()))
                    .collect();
            }
        }
        if delivery.topics.iter().any(|t| t.all) {
            delivery.entitled = identity
                .symbols
                .as_ref()
                .map(|symbols| symbols.iter().filter_map(|s| Ticker::new(s).ok()).collect());
        }
        delivery
    }

    /// Client errors so far (bad messages, refused topics, filters or refreshes, rate limit).
    pub fn errors(&self) -> u32 {
        self.errors
    }

    /// Subscribed topics in all.
    pub fn subscription_count(&self) -> usize {
        let count = |s: &Topics| usize::from(s.all) + s.symbols.len() + s.universes.len();
        self.subscriptions.iter().map(count).sum()
    }
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

    const LIMITS: SessionLimits =
        SessionLimits { errors_max: 10, messages_per_sec: 50, subscriptions_max: 10_000 };

    fn fresh() -> Session {
        Session::new(Instant::now(), Instant::now(), LIMITS)
    }

    /// Whether the delivery carries `symbol` on `channel` (`*` narrowed to the entitlement).
    fn wants(session: &Session, channel: Channel, symbol: &str) -> bool {
        let delivery = session.delivery(0);
        let topics = &delivery.topics[channel.index()];
        let ticker = if symbol == "*" { Ticker::MARKET } else { Ticker::new(symbol).unwrap() };
        (topics.all && delivery.entitled_to(&ticker)) || topics.symbols.contains(&ticker)
    }

    #[test]
    fn act_is_market_wide_and_reaches_users_entitled_to_a_few_symbols() {
        let auth = keys();
        let mut session = fresh();
        session.on_text(r#"{"action":"auth","params":"k1"}"#, &auth, 0);
        let actions =
            session.on_text(r#"{"action":"subscribe","params":"ACT.*,ACT.AAPL"}"#, &auth, 0);
        let text = texts(&actions);
        assert!(text.contains("subscribed to: ACT.*"), "{text}");
        assert!(text.contains("ACT.AAPL: ACT is market-wide"), "{text}");
        assert_eq!(session.errors(), 0, "a refused topic is an answer, not a client error");
        assert!(wants(&session, Channel::Act, "*"), "alice is entitled to AAPL and MSFT only");
        let set = r#"{"action":"filter","params":{"kinds":["HL"]}}"#;
        session.on_text(set, &auth, 0);
        let delivery = session.delivery(0);
        assert!(!delivery.filter.passes(Channel::Act, 0, u64::MAX, 0), "kinds without ACT");
        session.on_text(r#"{"action":"filter","params":{"kinds":["ACT"]}}"#, &auth, 0);
        assert!(session.delivery(0).filter.passes(Channel::Act, 0, u64::MAX, 0));
    }

    #[test]
    fn auth_then_subscribe_with_per_topic_statuses_and_entitlements() {
        let auth = keys();
        let mut session = fresh();
        let actions = session.on_text(r#"{"action":"subscribe","params":"T.*"}"#, &auth, 0);
        assert!(texts(&actions).contains("authenticate first"));
        assert!(actions.contains(&Action::Close(CloseReason::NotAuthenticated)));
        let mut session = fresh();
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
        assert!(wants(&session, Channel::Am, "MSFT"), "* delivers entitled symbols");
        assert!(!wants(&session, Channel::Am, "IBM"), "* delivers only entitled symbols");
        assert!(wants(&session, Channel::A, "AAPL"));
        assert!(!wants(&session, Channel::A, "MSFT"));
        let actions = session.on_text(r#"{"action":"unsubscribe","params":"AM.*"}"#, &auth, 0);
        assert!(texts(&actions).contains("unsubscribed from: AM.*"));
        assert!(!wants(&session, Channel::Am, "MSFT"));
    }

    #[test]
    fn bad_tokens_and_too_many_errors_close_with_1008() {
        let auth = keys();
        let limits = SessionLimits { errors_max: 3, ..LIMITS };
        let mut session = Session::new(Instant::now(), Instant::now(), limits);
        let actions = session.on_text(r#"{"action":"auth","params":"nope"}"#, &auth, 0);
        assert_eq!(actions[1], Action::Close(CloseReason::AuthFailed));
        assert!(texts(&actions).contains("auth_failed"));
        let mut session = Session::new(Instant::now(), Instant::now(), limits);
        session.on_text(r#"{"action":"auth","params":"k2"}"#, &auth, 0);
        for round in 1..=3 {
            let actions = session.on_text("not json", &auth, 0);
            assert_eq!(actions.len(), if round < 3 { 1 } else { 2 }, "round {round}");
        }
    }

    #[test]
    fn the_rate_limit_is_a_token_bucket() {
        let start = Instant::now();
        let limits = SessionLimits { errors_max: 100, messages_per_sec: 5, ..LIMITS };
        let mut session = Session::new(start, start, limits);
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
        let mut session = fresh();
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
        let mut session = fresh();
        session.on_text(r#"{"action":"auth","params":"k2"}"#, &auth, 0);
        let set = r#"{"action":"filter","params":{"min_price":5,"max_price":10.5,"min_volume":100,"min_strength":"moderate","kinds":["T","TR"]}}"#;
        assert!(texts(&session.on_text(set, &auth, 0)).contains("filter set"));
        let (t, tr, a) = (Channel::T, Channel::Tr, Channel::A);
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

    #[test]
    fn per_topic_errors_are_answers_and_subscriptions_are_limited() {
        let auth = keys();
        let limits = SessionLimits { errors_max: 3, subscriptions_max: 4, ..LIMITS };
        let mut session = Session::new(Instant::now(), Instant::now(), limits);
        session.on_text(r#"{"action":"auth","params":"k2"}"#, &auth, 0);
        let bad = r#"{"action":"subscribe","params":"X.A,Y.B,T,Z.C,Q.D,W.E,T.a b,V.F,U.G,S.H"}"#;
        let actions = session.on_text(bad, &auth, 0);
        assert_eq!(actions.len(), 1, "ten bad topics: one answer, no close: {actions:?}");
        assert_eq!(session.errors(), 0, "per-topic errors are not client errors");
        let many = r#"{"action":"subscribe","params":"T.A,T.B,T.C,T.D,T.E,T.*"}"#;
        let text = texts(&session.on_text(many, &auth, 0));
        assert!(text.contains("subscribed to: T.D"), "{text}");
        assert!(text.contains("T.E: subscriptions_max (4) reached"), "{text}");
        assert!(text.contains("T.*: subscriptions_max (4) reached"), "{text}");
        assert_eq!(session.subscription_count(), 4);
        let again = texts(&session.on_text(r#"{"action":"subscribe","params":"T.A"}"#, &auth, 0));
        assert!(again.contains("subscribed to: T.A"), "a topic held already is no new one");
    }

    #[test]
    fn a_snapshot_subscribe_names_only_the_topics_it_adds() {
        let auth = keys();
        let mut session = fresh();
        session.on_text(r#"{"action":"auth","params":"k2"}"#, &auth, 0);
        session.on_text(r#"{"action":"subscribe","params":"T.A,AM.*"}"#, &auth, 0);
        let snapshot =
            r#"{"action":"subscribe","params":"T.A,T.B,AM.C,A.*,HL.X,XX.Y","snapshot":true}"#;
        let actions = session.on_text(snapshot, &auth, 0);
        let Some(Action::Snapshot(added)) = actions.last() else { panic!("{actions:?}") };
        let b = Ticker::new("B").unwrap();
        assert_eq!(added[Channel::T.index()].symbols, [b].into_iter().collect());
        assert!(!added[Channel::T.index()].all);
        assert!(added[Channel::Am.index()].is_empty(), "AM.* covered AM.C already");
        assert!(added[Channel::A.index()].all);
        assert_eq!(added[Channel::Hl.index()].symbols.len(), 1);
        assert!(texts(&actions).contains("XX.Y: unknown channel"));
    }

    #[test]
    fn options_choose_the_slow_consumer_policy_and_shed_narrows_the_delivery() {
        let auth = keys();
        let mut session = fresh();
        session.on_text(r#"{"action":"auth","params":"k2"}"#, &auth, 0);
        let actions =
            session.on_text(r#"{"action":"options","params":{"slow_consumer":"shed"}}"#, &auth, 0);
        assert_eq!(actions[0], Action::Policy(SlowConsumerPolicy::Shed));
        assert!(texts(&actions).contains("options set"));
        let bad =
            session.on_text(r#"{"action":"options","params":{"slow_consumer":"x"}}"#, &auth, 0);
        assert!(texts(&bad).contains("close, conflate or shed"));
        session.on_text(r#"{"action":"subscribe","params":"T.*,A.*,AM.*,HL.*"}"#, &auth, 0);
        let full = session.delivery(0);
        assert!(full.topics[Channel::T.index()].all);
        let shed = session.delivery(2);
        assert!(
            shed.topics[Channel::T.index()].is_empty()
                && shed.topics[Channel::A.index()].is_empty()
        );
        assert!(shed.topics[Channel::Am.index()].all && shed.topics[Channel::Hl.index()].all);
        assert_ne!(full, shed);
        assert_eq!(session.delivery(0), full, "equal sessions, equal deliveries");
    }
}
