//! The Subscriber: one client connection, sans-IO (quinn-proto's `Connection` split). It
//! holds the WebSocket codec state, the protocol [`Session`], its outbox, its place in a
//! group's stream, a replay in progress, its slow-consumer policy and its timers, and never
//! sees a socket or reads a clock: the event loop hands it the bytes it read
//! ([`Subscriber::handle_read`]), the time ([`Subscriber::handle_timeout`]) and how much a
//! write took ([`Subscriber::handle_written`]), and asks it what to write
//! ([`Subscriber::poll_transmit`]). So most of the server's behaviour is tested on simulated
//! time with no socket at all.
//!
//! # Call order
//! After every `handle_*` the event loop calls [`Subscriber::poll_transmit`] and writes what
//! it gives (unless the socket would block), then [`Subscriber::handle_written`]; it drops the
//! connection once [`Subscriber::is_dead`]. [`Subscriber::poll_timeout`] says when
//! `handle_timeout` is due next.
//!
//! # Order
//! What the connection sends is one sequence: its outbox, then its group's stream from its
//! cursor. A message queued while the cursor is behind first moves the stream's unwritten
//! messages into the outbox, so statuses, replays and live events keep the order in which they
//! happened, and every event goes out in `seq` order.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tickstock_engine::{Channel, Ticker};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, Role, WebSocketConfig, WebSocketContext};
use tungstenite::Message;

use super::auth::Authenticator;
use super::deflate::{InflateError, Inflater};
use super::event_log::{EventLogReader, LogCursor, ReadError};
use super::fanout::{Fanout, Membership};
use super::framing::{ArrayBuilder, Framed, Outbox, Slices};
use super::group::Overtaken;
use super::metrics::ServerCounters;
use super::session::SHED_ORDER;
use super::session::{Action, Delivery, Phase, ResumeFrom, Session, SessionLimits, Topics};
use super::snapshot::Latest;
use super::status::{self, CloseReason, AUTH_FAILED, CONNECTED, MAX_CONNECTIONS};
use super::universes::Universes;
use crate::config::{ServerSettings, SlowConsumerPolicy};

/// Authenticated connections per user, over every event loop (the control plane only: it is
/// touched when a connection authenticates or goes).
#[derive(Debug, Default)]
pub struct Users {
    counts: Mutex<HashMap<String, u32>>,
}

impl Users {
    /// Counts one more connection of `user`; false (and not counted) past `max`.
    fn admit(&self, user: &str, max: u32) -> bool {
        let mut counts = self.counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = counts.entry(user.to_owned()).or_insert(0);
        if *count >= max {
            return false;
        }
        *count += 1;
        true
    }

    fn release(&self, user: &str) {
        let mut counts = self.counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = counts.get_mut(user) {
            *count -= 1;
            if *count == 0 {
                counts.remove(user);
            }
        }
    }
}

/// What a Subscriber works with besides itself: the loop's fan-out and settings, and the
/// shared and counted state.
#[derive(Debug)]
pub struct Env<'a> {
    /// The event loop's groups and history.
    pub fanout: &'a mut Fanout,
    /// Token checks.
    pub auth: &'a Authenticator,
    /// The server's settings.
    pub settings: &'a ServerSettings,
    /// The loop's counters.
    pub counters: &'a ServerCounters,
    /// Connections per user.
    pub users: &'a Users,
    /// The loop's subscribed-topic total (published as a gauge).
    pub subscriptions: &'a mut u64,
    /// Wall-clock Unix seconds (token expiry).
    pub now_s: u64,
    /// The universes in force (swapped on reload).
    pub universes: &'a Arc<Universes>,
    /// The event log, when there is one: a resume older than the history reads it.
    pub event_log: Option<&'a EventLogReader>,
}

/// A Subscriber's world without an event loop: its own fan-out (with an empty history),
/// token checks from `settings` (the open loopback default if it names no keys), counters
/// and universes. What fuzzing and benches drive a Subscriber with.
#[derive(Debug)]
pub struct Standalone {
    /// The fan-out.
    pub fanout: Fanout,
    /// Token checks.
    pub auth: Authenticator,
    /// The settings.
    pub settings: ServerSettings,
    /// Counters.
    pub counters: ServerCounters,
    /// Connections per user.
    pub users: Users,
    /// Subscribed topics in all.
    pub subscriptions: u64,
    /// The universes.
    pub universes: Arc<Universes>,
}

impl Standalone {
    /// A world for `settings`; an error when its keys cannot be loaded.
    pub fn new(settings: ServerSettings, universes: Arc<Universes>) -> Result<Standalone, String> {
        let history = super::history::History::new(
            settings.history_max_events as usize,
            settings.history_max_bytes as usize,
        );
        Ok(Standalone {
            fanout: Fanout::new(settings.frame_bytes_max as usize, history),
            auth: Authenticator::load(&settings)?,
            settings,
            counters: ServerCounters::default(),
            users: Users::default(),
            subscriptions: 0,
            universes,
        })
    }

    /// What a Subscriber's calls take.
    pub fn env(&mut self) -> Env<'_> {
        Env {
            fanout: &mut self.fanout,
            auth: &self.auth,
            settings: &self.settings,
            counters: &self.counters,
            users: &self.users,
            subscriptions: &mut self.subscriptions,
            now_s: 1_700_000_000,
            universes: &self.universes,
            event_log: None,
        }
    }
}

/// The most snapshot `seq`s a connection remembers so that a replay does not send them
/// again (with an event log a replay can reach back a day; older ones may come twice).
const SNAPSHOT_SENT_MAX: usize = 1 << 20;

/// A resume being sent.
#[derive(Clone, Copy, Debug)]
struct Replay {
    from_seq: u64,
    /// `from_t`, when the resume was by time (the `resumed` status names it).
    from_t: Option<u64>,
    /// The next `seq` to look at.
    next_seq: u64,
    /// Already sent live before the resume began: not sent again.
    skip: Option<(u64, u64)>,
    last_sent: Option<u64>,
    /// Its pace (`resume_events_per_sec_max`).
    pace: Pace,
}

/// A replay's pace (`resume_events_per_sec_max`): a token bucket of time. It earns credit as
/// time passes, at most [`Pace::cap_ns`] of it (1 ms of events, at least 256), and each event
/// it looks at, sent or not (that is what a replay costs its event loop), spends
/// `1 / rate` of it. Out of credit, it waits (`paused_until`) until 256 events are due again.
#[derive(Clone, Copy, Debug)]
struct Pace {
    /// Events a second; 0: no limit.
    rate: u64,
    credit_ns: u64,
    at: Instant,
    paused_until: Option<Instant>,
}

impl Pace {
    const WAKE_EVENTS: u64 = 256;

    fn new(rate: u32, now: Instant) -> Self {
        let mut pace = Pace { rate: rate.into(), credit_ns: 0, at: now, paused_until: None };
        pace.credit_ns = pace.cap_ns();
        pace
    }

    fn cap_ns(&self) -> u64 {
        (Self::WAKE_EVENTS * 1_000_000_000 / self.rate.max(1)).max(1_000_000)
    }

    /// How many events it may look at now; at 0 it pauses until enough are due.
    fn allowance(&mut self, now: Instant) -> u64 {
        if self.rate == 0 {
            return u64::MAX;
        }
        let elapsed = now.saturating_duration_since(self.at).as_nanos() as u64;
        self.credit_ns = self.credit_ns.saturating_add(elapsed).min(self.cap_ns());
        self.at = now;
        self.pause_if_spent()
    }

    /// `events` of the allowance were used. Out of credit, it is paused from here: a slice
    /// that sent nothing (every event filtered out) leaves nothing to write that would bring
    /// the event loop back, so the wake must be known now.
    fn spend(&mut self, events: u64) {
        if self.rate != 0 {
            let cost = (events as u128 * 1_000_000_000).div_ceil(self.rate as u128);
            self.credit_ns = self.credit_ns.saturating_sub(cost.min(u64::MAX as u128) as u64);
            self.pause_if_spent();
        }
    }

    /// The events the credit allows; with none, `paused_until` is when 256 are due.
    fn pause_if_spent(&mut self) -> u64 {
        let allowance = (self.credit_ns as u128 * self.rate as u128 / 1_000_000_000) as u64;
        self.paused_until = (allowance == 0).then(|| {
            let due = Self::WAKE_EVENTS * 1_000_000_000 / self.rate;
            self.at + Duration::from_nanos(due.saturating_sub(self.credit_ns))
        });
        allowance
    }
}

impl Replay {
    /// Whether the replay leaves out the retained event `seq`: the connection has it
    /// already, live or from a snapshot (`snapshot_sent`, ascending).
    fn skips(&self, seq: u64, snapshot_sent: &[u64]) -> bool {
        self.skip.is_some_and(|(first, last)| (first..=last).contains(&seq))
            || snapshot_sent.binary_search(&seq).is_ok()
    }
}

/// tungstenite's side of the codec: reads come from the bytes handed in, writes (pongs, close
/// frames, pings) land in a buffer that becomes one outbox message.
pub(crate) struct Pipe<'a> {
    pub(crate) input: &'a [u8],
    pub(crate) output: &'a mut Vec<u8>,
}

impl Read for Pipe<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.input.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(self.input.len());
        buf[..n].copy_from_slice(&self.input[..n]);
        self.input = &self.input[n..];
        Ok(n)
    }
}

impl Write for Pipe<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What a write took, tallied for the counters and the live range.
#[derive(Default)]
struct Written {
    messages: u64,
    events: u64,
    seqs: Option<(u64, u64)>,
    /// The earliest trade ring entry of the live messages written, and their events.
    timed: Delivered,
}

/// What a write delivered of the live stream, for the tick-to-client histogram.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Delivered {
    /// The earliest ring entry (Unix ns) among the trades of the messages written; 0 for none.
    pub recv_ns: u64,
    /// Events in those messages.
    pub events: u64,
}

impl Written {
    fn count(&mut self, framed: &Framed) {
        self.messages += 1;
        if framed.events > 0 {
            self.events += u64::from(framed.events);
            let first = self.seqs.map_or(framed.seqs.0, |(first, _)| first);
            self.seqs = Some((first, framed.seqs.1));
        }
        if framed.recv_ns > 0 {
            let t = &mut self.timed;
            t.recv_ns = if t.recv_ns == 0 { framed.recv_ns } else { t.recv_ns.min(framed.recv_ns) };
            t.events += u64::from(framed.events);
        }
    }
}

/// One client connection, sans-IO.
#[derive(Debug)]
pub struct Subscriber {
    ws: WebSocketContext,
    session: Session,
    outbox: Outbox,
    /// Its place in a group's stream; `None` while it receives nothing live (not subscribed,
    /// replaying, closing).
    membership: Option<Membership>,
    /// What it receives now (the key of its group).
    delivery: Delivery,
    policy: SlowConsumerPolicy,
    /// Channels shed: the first `shed` of [`SHED_ORDER`].
    shed: usize,
    /// When the last shed or unshed step was taken.
    shed_at: Instant,
    replay: Option<Replay>,
    /// Where the replay reads the event log, while what it needs is older than the history.
    disk: Option<Box<LogCursor>>,
    /// The `seq`s of the snapshot events sent, ascending, that the history may still hold: a
    /// replay does not send them again.
    snapshot_sent: Vec<u64>,
    /// The first and last `seq` written live.
    live: Option<(u64, u64)>,
    /// Live delivery waits until then after a subscribe (`resume_window_us`).
    hold_until: Option<Instant>,
    next_ping: Instant,
    ping_sent: Option<Instant>,
    /// A close was queued; the connection goes at this deadline at the latest.
    closing: Option<Instant>,
    dead: bool,
    /// The user counted in [`Users`].
    user: Option<String>,
    subscriptions: usize,
    /// The event loop's key for this connection (what its group membership points back to).
    connection_key: usize,
    /// The codec failed on the client's bytes: nothing more is read (tungstenite must not be
    /// fed after an error).
    input_failed: bool,
    /// When the token expires (a JWT's `exp`), on the loop's clock.
    expires_at: Option<Instant>,
    /// The client's address, for the log.
    peer: SocketAddr,
    /// Events and bytes written to it, for the log line when it goes.
    sent: (u64, u64),
    /// Why the server closed it, if it did.
    closed_by_server: Option<CloseReason>,
    /// Conformance mode: every message goes back as it came (`server.conformance_echo`).
    echo: bool,
    /// permessage-deflate was negotiated: compressed client messages are inflated here,
    /// before tungstenite reads them.
    inflater: Option<Inflater>,
}

impl Subscriber {
    /// A connection whose upgrade was accepted at `now`: `upgrade` (the `101` response) and
    /// `connected` are its first bytes.
    pub fn new(
        now: Instant,
        connection_key: usize,
        peer: SocketAddr,
        settings: &ServerSettings,
        config: WebSocketConfig,
        leftover: Vec<u8>,
        upgrade: Vec<u8>,
    ) -> Subscriber {
        tracing::info!(%peer, "connection accepted");
        let ms = |ms: u32| Duration::from_millis(ms.into());
        let limits = SessionLimits {
            errors_max: settings.client_errors_max,
            messages_per_sec: settings.client_messages_per_sec,
            subscriptions_max: settings.subscriptions_max,
        };
        let mut outbox = Outbox::default();
        outbox.push(Framed::raw(upgrade));
        Subscriber {
            ws: WebSocketContext::from_partially_read(leftover, Role::Server, Some(config)),
            session: Session::new(now, now + ms(settings.auth_timeout_ms), limits),
            outbox,
            membership: None,
            delivery: Delivery::default(),
            policy: settings.slow_consumer_policy,
            shed: 0,
            shed_at: now,
            replay: None,
            disk: None,
            snapshot_sent: Vec::new(),
            live: None,
            hold_until: None,
            next_ping: now + ms(settings.ping_interval_ms),
            ping_sent: None,
            closing: None,
            dead: false,
            user: None,
            subscriptions: 0,
            connection_key,
            expires_at: None,
            input_failed: false,
            peer,
            sent: (0, 0),
            closed_by_server: None,
            echo: false,
            inflater: None,
        }
    }

    /// The upgrade accepted permessage-deflate with a `window_bits` server window: client
    /// messages may come compressed (at most `limit` bytes inflated) and what it receives
    /// live comes compressed.
    pub fn enable_deflate(&mut self, limit: usize, window_bits: u8) {
        self.inflater = Some(Inflater::new(limit));
        self.session.set_deflate(window_bits);
    }

    /// Its group and member id, while it reads a group's stream.
    pub fn membership(&self) -> Option<Membership> {
        self.membership
    }

    /// Its slow-consumer policy.
    pub fn policy(&self) -> SlowConsumerPolicy {
        self.policy
    }

    /// Channels shed now.
    pub fn shed_level(&self) -> usize {
        self.shed
    }

    /// True once the connection should be dropped.
    pub fn is_dead(&self) -> bool {
        self.dead
    }

    /// True once a close was queued.
    pub fn is_closing(&self) -> bool {
        self.closing.is_some()
    }

    /// When the event loop must come back to it unasked, if it must: the end of a
    /// subscribe's hold on live delivery (read the socket first), or the next slice of a
    /// paced replay.
    pub fn wake_at(&self) -> Option<Instant> {
        let paused = self.replay.and_then(|replay| replay.pace.paused_until);
        match (self.hold_until, paused) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The connection is admitted: `connected`, then, if the upgrade carried
    /// `Authorization: Bearer`, the answer to that token.
    pub fn start(&mut self, now: Instant, bearer: Option<&str>, env: &mut Env<'_>) {
        self.outbox.push(Framed::text(CONNECTED));
        if let Some(token) = bearer {
            let actions = self.with_session(now, env, |session, auth, now_s| {
                session.authenticate(token, auth, now_s)
            });
            self.apply(now, actions, env);
        }
    }

    /// Conformance mode instead of the protocol: no `connected`, no auth, no session; every
    /// text and binary message is sent back as it came.
    pub fn echo(&mut self) {
        self.echo = true;
    }

    /// The server is full: `max_connections` and close 1013.
    pub fn refuse(&mut self, now: Instant, env: &mut Env<'_>) {
        env.counters.refused_max_connections.add(1);
        self.queue(Framed::text(MAX_CONNECTIONS), env);
        self.close(now, CloseReason::TryLater, env);
    }

    /// Bytes read from the socket at `now`.
    pub fn handle_read(&mut self, now: Instant, bytes: &[u8], env: &mut Env<'_>) {
        if self.input_failed {
            return;
        }
        self.handle_universes(now, env);
        let inflated;
        let bytes = match self.inflater.as_mut() {
            None => bytes,
            Some(inflater) => {
                let mut out = Vec::with_capacity(bytes.len());
                if let Err(error) = inflater.handle_read(bytes, &mut out) {
                    self.input_failed = true;
                    let reason = match error {
                        InflateError::TooBig => CloseReason::TooBig,
                        InflateError::Protocol => CloseReason::Protocol,
                    };
                    self.protocol_close(now, reason, env);
                    return;
                }
                inflated = out;
                &inflated[..]
            }
        };
        let mut control = Vec::new();
        let mut messages = Vec::new();
        let mut failure = None;
        {
            let mut pipe = Pipe { input: bytes, output: &mut control };
            loop {
                match self.ws.read(&mut pipe) {
                    Ok(message) => messages.push(message),
                    Err(tungstenite::Error::Io(error))
                        if error.kind() == io::ErrorKind::WouldBlock =>
                    {
                        break
                    }
                    Err(error) => {
                        failure = Some(error);
                        break;
                    }
                }
            }
        }
        if !control.is_empty() {
            // Pongs and the echo of a client's close, in the order tungstenite wrote them.
            self.queue(Framed::raw(control), env);
        }
        for message in messages {
            if self.closing.is_some() {
                break;
            }
            match message {
                Message::Text(text) if self.echo => self.queue(Framed::text(text.as_str()), env),
                Message::Binary(bytes) if self.echo => self.queue(Framed::binary(&bytes), env),
                Message::Text(text) => {
                    let actions = self.with_session(now, env, |session, auth, now_s| match session
                        .admit(now)
                    {
                        Ok(()) => session.on_text(text.as_str(), auth, now_s),
                        Err(refused) => refused,
                    });
                    self.apply(now, actions, env);
                }
                Message::Binary(_) => {
                    let actions = self.with_session(now, env, |session, auth, _| {
                        session.on_text("binary", auth, 0)
                    });
                    self.apply(now, actions, env);
                }
                Message::Pong(_) => self.ping_sent = None,
                Message::Close(_) => {
                    // tungstenite queued the echo (above); the connection goes once it is out.
                    self.stop_live(env);
                    self.closing = Some(now + close_timeout(env.settings));
                }
                Message::Ping(_) => {
                    // A ping is a message too (tungstenite has queued its pong above): a
                    // flood of them meets the rate limit like actions do, and after
                    // `client_errors_max` refusals the connection is closed 1008, before
                    // its pongs cost more than a read's worth.
                    let actions = self.with_session(now, env, |session, _, _| {
                        session.admit(now).err().unwrap_or_default()
                    });
                    self.apply(now, actions, env);
                }
                Message::Frame(_) => {}
            }
        }
        if let Some(error) = failure {
            self.input_failed = true;
            self.read_failed(now, error, env);
        }
        // Its own queue (answers, pongs, echoes) is bounded too: a client that keeps asking
        // (a ping flood) and does not read is a slow consumer like one that lags its group.
        let own_max = 2 * env.settings.client_lag_max_bytes as usize;
        if self.closing.is_none() && self.outbox.bytes() > own_max {
            self.close_slow(now, env);
        }
    }

    /// The socket reached end of file, or failed.
    pub fn handle_eof(&mut self) {
        self.dead = true;
    }

    /// A read error: a protocol violation gets its close code; anything else drops.
    fn read_failed(&mut self, now: Instant, error: tungstenite::Error, env: &mut Env<'_>) {
        use tungstenite::error::ProtocolError;
        let reason = match error {
            tungstenite::Error::Capacity(_) => CloseReason::TooBig,
            tungstenite::Error::Utf8(_) => CloseReason::BadUtf8,
            tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
                self.dead = true;
                return;
            }
            tungstenite::Error::Protocol(_) => CloseReason::Protocol,
            tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
                // The close handshake is complete.
                if self.outbox.is_empty() {
                    self.dead = true;
                }
                return;
            }
            _ => {
                self.dead = true;
                return;
            }
        };
        self.protocol_close(now, reason, env);
    }

    /// The client broke the protocol: counted, and closed with `reason`.
    fn protocol_close(&mut self, now: Instant, reason: CloseReason, env: &mut Env<'_>) {
        env.counters.protocol_closes.add(1);
        self.close(now, reason, env);
    }

    /// Runs `f` on the session and counts what changed.
    fn with_session(
        &mut self,
        now: Instant,
        env: &mut Env<'_>,
        f: impl FnOnce(&mut Session, &Authenticator, u64) -> Vec<Action>,
    ) -> Vec<Action> {
        let was_waiting = matches!(self.session.phase, Phase::AwaitingAuth { .. });
        let errors_before = self.session.errors();
        let actions = f(&mut self.session, env.auth, env.now_s);
        let user = || self.session.identity.as_ref().map_or("", |i| i.user.as_str());
        if was_waiting && self.session.phase == Phase::Active {
            env.counters.auth_successes.add(1);
            tracing::info!(peer = %self.peer, user = user(), "authenticated");
        }
        if actions.contains(&Action::Close(CloseReason::AuthFailed)) {
            env.counters.auth_failures.add(1);
            tracing::warn!(peer = %self.peer, "authentication failed");
        }
        env.counters.client_errors.add(u64::from(self.session.errors() - errors_before));
        self.expires_at = self.session.identity.as_ref().and_then(|i| i.expires_at_s).map(|exp| {
            // `exp` is the last whole second the token is good for.
            now + Duration::from_secs((exp + 1).saturating_sub(env.now_s))
        });
        let count = self.session.subscription_count();
        if count != self.subscriptions {
            tracing::info!(peer = %self.peer, user = user(), topics = count, "subscriptions changed");
        }
        *env.subscriptions = *env.subscriptions + count as u64 - self.subscriptions as u64;
        self.subscriptions = count;
        env.counters.subscriptions.set(*env.subscriptions);
        actions
    }

    /// Carries out the session's actions, then follows its delivery.
    fn apply(&mut self, now: Instant, actions: Vec<Action>, env: &mut Env<'_>) {
        for action in actions {
            match action {
                Action::Send(text) => self.queue(Framed::text(&text), env),
                Action::Close(reason) => {
                    self.close(now, reason, env);
                    return;
                }
                Action::Resume(from) => self.resume(now, from, env),
                Action::Policy(policy) => self.set_policy(now, policy, env),
                Action::Snapshot(added) => self.snapshot(&added, env),
            }
        }
        self.admit_user(now, env);
        if self.closing.is_none() {
            self.regroup(now, env);
        }
    }

    /// Counts a newly authenticated connection against its user; past
    /// `connections_per_user_max` it gets `max_connections` and close 1013.
    fn admit_user(&mut self, now: Instant, env: &mut Env<'_>) {
        if self.user.is_some() || self.session.phase != Phase::Active || self.closing.is_some() {
            return;
        }
        let Some(identity) = &self.session.identity else { return };
        let user = identity.user.clone();
        if env.users.admit(&user, env.settings.connections_per_user_max) {
            self.user = Some(user);
            return;
        }
        env.counters.refused_max_connections.add(1);
        self.queue(Framed::text(status::MAX_CONNECTIONS_USER), env);
        self.close(now, CloseReason::TryLater, env);
    }

    /// Follows a change of delivery (topics, filter, identity, shed level): leaves the old
    /// group, sending what it had not written of it first, and joins the new one at its end.
    fn regroup(&mut self, now: Instant, env: &mut Env<'_>) {
        let delivery = self.session.delivery(self.shed);
        if delivery == self.delivery {
            return;
        }
        let was_empty = self.delivery.is_empty();
        self.delivery = delivery;
        if self.replay.is_some() {
            // The replay reads the new delivery; it joins the group when it is done.
            return;
        }
        self.stop_live(env);
        if !self.delivery.is_empty() {
            if was_empty && self.live.is_none() {
                let window = Duration::from_micros(env.settings.resume_window_us.into());
                self.hold_until = (!window.is_zero()).then_some(now + window);
            }
            self.start_live(env);
        }
    }

    /// Joins the group of the current delivery.
    fn start_live(&mut self, env: &mut Env<'_>) {
        if self.membership.is_none() && !self.delivery.is_empty() && self.closing.is_none() {
            self.membership = Some(env.fanout.join(&self.delivery, self.key()));
        }
    }

    /// Leaves the group; what it had not written goes into the outbox first (a conflating
    /// member's status and kept events included).
    fn stop_live(&mut self, env: &mut Env<'_>) {
        if let Some(membership) = self.membership {
            self.release_conflation(membership, env);
        }
        if let Some(membership) = self.membership.take() {
            for (framed, offset) in env.fanout.leave(membership) {
                self.outbox.push_partial(framed, offset);
            }
        }
    }

    /// A conflating member reads its group's stream again from its end: its `conflated`
    /// status and the latest events it kept go into the outbox.
    fn release_conflation(&mut self, membership: Membership, env: &mut Env<'_>) {
        let Some(group) = env.fanout.group_mut(membership.group) else { return };
        if !group.is_conflating(membership.member) {
            return;
        }
        let Some(conflation) = group.resume_streaming(membership.member) else { return };
        env.counters.conflated_events.add(conflation.replaced);
        env.counters.slow_consumer_dropped_events.add(conflation.replaced);
        self.outbox.push(Framed::text(&status::conflated(conflation.dropped)));
        for framed in conflation.release(env.fanout.frame_bytes_max()) {
            self.outbox.push(framed);
        }
    }

    /// The key the event loop knows this connection by (set by the loop after creation).
    fn key(&self) -> usize {
        self.connection_key
    }

    /// Queues a message after everything logically sent so far.
    fn queue(&mut self, framed: Framed, env: &mut Env<'_>) {
        if let Some(membership) = self.membership {
            if let Some(group) = env.fanout.group_mut(membership.group) {
                for (pending, offset) in group.take_pending(membership.member) {
                    self.outbox.push_partial(pending, offset);
                }
            }
        }
        self.outbox.push(framed);
    }

    /// Queues a close frame; nothing more is sent after it.
    fn close(&mut self, now: Instant, reason: CloseReason, env: &mut Env<'_>) {
        if self.closing.is_some() {
            return;
        }
        self.closed_by_server = Some(reason);
        self.stop_live(env);
        self.replay = None;
        let mut control = Vec::new();
        let frame =
            CloseFrame { code: CloseCode::from(reason.code()), reason: reason.text().into() };
        let _ = self.ws.close(&mut Pipe { input: &[], output: &mut control }, Some(frame));
        self.outbox.push(Framed::raw(control));
        self.closing = Some(now + close_timeout(env.settings));
    }

    /// `subscribe` with `snapshot`: the latest event of every (channel, symbol) the added
    /// topics cover, under this connection's entitlement, filter and shed channels, in `seq`
    /// order, then the `snapshot` status with the stream's newest `seq`; live delivery of the
    /// new topics starts after it (the group is joined at its end), so nothing is missed and
    /// nothing comes twice. At most `client_lag_max_bytes` of events: a bigger snapshot is
    /// refused with an error status (the subscription stands).
    fn snapshot(&mut self, added: &[Topics; Channel::COUNT], env: &mut Env<'_>) {
        if self.replay.is_some() {
            let refused = "snapshot: not sent while a resume is being sent; subscribed without one";
            self.queue(Framed::text(&status::error(refused)), env);
            return;
        }
        let delivery = self.session.delivery(self.shed);
        let table = &env.fanout.latest;
        let mut chosen: Vec<(u64, &[u8])> = Vec::new();
        for channel in Channel::ALL {
            let topics = &added[channel.index()];
            let candidates: Vec<(&Ticker, &Latest)> = if topics.all {
                table.channel(channel).collect()
            } else {
                let found = topics.symbols.iter().filter_map(|t| Some((t, table.get(channel, t)?)));
                found.collect()
            };
            for (ticker, latest) in candidates {
                let fields = (latest.price_raw, latest.volume, latest.strength);
                if delivery.carries(channel, ticker, fields) {
                    chosen.push((latest.seq, latest.json.as_slice()));
                }
            }
        }
        let bytes: usize = chosen.iter().map(|(_, json)| json.len() + 1).sum();
        let bytes_max = env.settings.client_lag_max_bytes as usize;
        if bytes > bytes_max {
            let refused = format!(
                "snapshot: {bytes} bytes, over client_lag_max_bytes ({bytes_max}); subscribed \
                 without one (ask for fewer topics at a time)"
            );
            self.queue(Framed::text(&status::error(&refused)), env);
            return;
        }
        chosen.sort_unstable_by_key(|&(seq, _)| seq);
        let mut builder = ArrayBuilder::new(env.fanout.frame_bytes_max());
        let mut messages = Vec::new();
        for &(seq, json) in &chosen {
            messages.extend(builder.push(json, seq));
        }
        messages.extend(builder.finish());
        let oldest = env.fanout.history.oldest_seq().unwrap_or(0);
        let to_seq = env.fanout.history.newest_seq().unwrap_or(0);
        // What a replay could send again: what the history holds, or with an event log
        // anything (kept to the newest SNAPSHOT_SENT_MAX).
        let oldest = if env.event_log.is_some() { 0 } else { oldest };
        self.snapshot_sent.retain(|&seq| seq >= oldest);
        self.snapshot_sent.extend(chosen.iter().map(|&(seq, _)| seq).filter(|&s| s >= oldest));
        self.snapshot_sent.sort_unstable();
        self.snapshot_sent.dedup();
        let over = self.snapshot_sent.len().saturating_sub(SNAPSHOT_SENT_MAX);
        self.snapshot_sent.drain(..over);
        let count = chosen.len();
        env.counters.snapshot_events.add(count as u64);
        for framed in messages {
            self.queue(framed.into_pinned(), env);
        }
        self.queue(Framed::text(&status::snapshot(count, to_seq)), env);
    }

    /// `resume` from `from_seq`: live events not yet written are taken back (the replay
    /// covers them), then the retained history is replayed and live delivery continues.
    /// `from_t` starts at the first retained event at or after that time; it fails like a
    /// `from_seq` does when an event the history no longer holds may have been after it.
    fn resume(&mut self, now: Instant, from: ResumeFrom, env: &mut Env<'_>) {
        let history = &env.fanout.history;
        let (from_seq, from_t) = match from {
            ResumeFrom::Seq(from_seq) => (from_seq, None),
            ResumeFrom::Time(from_t) => {
                // Memory first; older than it, the event log's time index.
                let on_disk = |oldest| match env.event_log.map(|log| log.seq_at_time(from_t)) {
                    Some(Ok(seq)) => Ok(seq),
                    Some(Err(ReadError::TooOld(on_disk))) => Err(on_disk.min(oldest)),
                    _ => Err(oldest),
                };
                match history.seq_at_time(from_t).or_else(on_disk) {
                    Ok(from_seq) => (from_seq, Some(from_t)),
                    Err(oldest) => {
                        self.queue(Framed::text(&status::resume_failed(oldest)), env);
                        return;
                    }
                }
            }
        };
        self.disk = None;
        if let Some(oldest) = history.oldest_seq().filter(|&oldest| from_seq < oldest) {
            // Older than the memory history: from the event log, if it has it.
            match env.event_log.map(|log| log.open_at(from_seq)) {
                Some(Ok(cursor)) => self.disk = Some(Box::new(cursor)),
                failed => {
                    let oldest = match failed {
                        Some(Err(ReadError::TooOld(on_disk))) => oldest.min(on_disk),
                        Some(Err(error)) => {
                            tracing::warn!(peer = %self.peer, ?error, from_seq,
                                "event log: a resume cannot read it");
                            oldest
                        }
                        _ => oldest,
                    };
                    self.queue(Framed::text(&status::resume_failed(oldest)), env);
                    return;
                }
            }
        }
        if let Some(membership) = self.membership.take() {
            let mut left = env.fanout.leave(membership).into_iter();
            if let Some((framed, offset)) = left.next().filter(|(_, offset)| *offset > 0) {
                self.outbox.push_partial(framed, offset);
            }
        }
        self.outbox.retract_events();
        let mut skip = self.live;
        if let Some(begun) = self.outbox.begun().filter(|f| f.events > 0) {
            let (first, last) = skip.unwrap_or(begun.seqs);
            skip = Some((first.min(begun.seqs.0), last.max(begun.seqs.1)));
        }
        self.hold_until = None;
        let pace = Pace::new(env.settings.resume_events_per_sec_max, now);
        self.replay =
            Some(Replay { from_seq, from_t, next_seq: from_seq, skip, last_sent: None, pace });
        self.pump_replay(now, env);
    }

    /// Sends more of the replay while the outbox has room; finishes it with `resumed` once it
    /// has caught up with the history's newest event, and goes live.
    fn pump_replay(&mut self, now: Instant, env: &mut Env<'_>) {
        let Some(replay) = self.replay.as_mut() else { return };
        let allowed = replay.pace.allowance(now);
        if allowed == 0 {
            return;
        }
        let next_seq = replay.next_seq;
        let history = &env.fanout.history;
        if self.disk.is_none() && history.oldest_seq().is_some_and(|oldest| next_seq < oldest) {
            // The history moved on past where the replay is (it left the log for the history
            // and then waited, for room or its pace): back to the log, if it has them.
            if let Some(Ok(cursor)) = env.event_log.map(|log| log.open_at(next_seq)) {
                self.disk = Some(Box::new(cursor));
            }
        }
        let mut allowance = allowed;
        let on_disk = self.disk.is_some() && !self.pump_disk(&mut allowance, env);
        if let Some(replay) = self.replay.as_mut() {
            replay.pace.spend(allowed - allowance);
        }
        if on_disk {
            return;
        }
        let allowed = allowance;
        let Some(mut replay) = self.replay else { return };
        let history = &env.fanout.history;
        if history.oldest_seq().is_some_and(|oldest| replay.next_seq < oldest) {
            // The history moved past the replay: it cannot finish without a gap.
            self.replay = None;
            self.close_slow(now, env);
            return;
        }
        let room = env.settings.client_lag_max_bytes as usize / 2;
        let mut builder = ArrayBuilder::new(env.fanout.frame_bytes_max());
        let mut scratch = Vec::new();
        let mut examined = None;
        // A watchlist looks at its symbols' events only (`History::replay_from`).
        let symbols = self.delivery.symbols();
        // Whether every entry up to the newest has been looked at.
        let mut exhausted = true;
        for entry in history.replay_from(replay.next_seq, symbols.as_ref()) {
            if self.outbox.bytes() >= room || allowance == 0 {
                exhausted = false;
                break;
            }
            allowance -= 1;
            examined = Some(entry.seq);
            let skipped = replay.skips(entry.seq, &self.snapshot_sent);
            if skipped || !self.delivery.wants(entry) {
                continue;
            }
            if let Some(full) = builder.push(history.json(entry, &mut scratch), entry.seq) {
                self.outbox.push(full);
            }
            replay.last_sent = Some(entry.seq);
        }
        if let Some(last) = builder.finish() {
            self.outbox.push(last);
        }
        replay.pace.spend(allowed - allowance);
        let newest = history.newest_seq();
        match examined {
            Some(seq) if !exhausted => {
                replay.next_seq = seq + 1;
                self.replay = Some(replay);
            }
            None if !exhausted => {
                // No room this time.
                self.replay = Some(replay);
            }
            _ => {
                let to_seq = replay.last_sent.unwrap_or(replay.from_seq.saturating_sub(1));
                let resumed = status::resumed(replay.from_seq, replay.from_t, to_seq);
                self.outbox.push(Framed::text(&resumed));
                if let Some(newest) = newest {
                    // Live again from the next batch on: everything up to here was replayed.
                    self.live = Some((self.live.map_or(newest + 1, |(first, _)| first), newest));
                }
                self.replay = None;
                self.start_live(env);
            }
        }
    }

    /// The part of a replay older than the memory history, from the event log: one slice
    /// per turn while the outbox has room. True once the rest is in the history (the memory
    /// replay goes on from there); false while there is more on disk, or when the log
    /// cannot give it (`resume_failed` with the history's oldest, and live delivery).
    fn pump_disk(&mut self, allowance: &mut u64, env: &mut Env<'_>) -> bool {
        let (Some(mut replay), Some(cursor)) = (self.replay, self.disk.as_mut()) else {
            self.disk = None;
            return true;
        };
        let history = &env.fanout.history;
        let memory_from = history.oldest_seq().unwrap_or(u64::MAX);
        let room = env.settings.client_lag_max_bytes as usize / 2;
        if replay.next_seq >= memory_from {
            self.disk = None;
            return true;
        }
        if self.outbox.bytes() >= room {
            return false;
        }
        let mut builder = ArrayBuilder::new(env.fanout.frame_bytes_max());
        let mut messages = Vec::new();
        let (delivery, snapshot_sent) = (&self.delivery, &self.snapshot_sent);
        let read = cursor.read_slice(|record| {
            if record.seq >= memory_from {
                return false; // the history has it from here
            }
            if *allowance == 0 {
                return false; // the rest when its pace allows
            }
            *allowance -= 1;
            let skipped = replay.skips(record.seq, snapshot_sent);
            let fields = (record.price_raw, record.volume, record.strength);
            if !skipped && delivery.carries(record.channel, &record.ticker, fields) {
                messages.extend(builder.push(record.json, record.seq));
                replay.last_sent = Some(record.seq);
            }
            true
        });
        messages.extend(builder.finish());
        for framed in messages {
            self.outbox.push(framed);
        }
        let next = cursor.next_seq();
        replay.next_seq = replay.next_seq.max(next);
        self.replay = Some(replay);
        match read {
            Ok(_) if replay.next_seq >= memory_from => {
                self.disk = None;
                true
            }
            Ok(taken) if taken > 0 => false,
            Ok(_) | Err(_) => {
                // The log ends (or is damaged, or has a hole) before the history begins.
                tracing::warn!(peer = %self.peer, at = replay.next_seq, ?read, memory_from,
                    "event log: a resume cannot be served without a gap");
                self.disk = None;
                self.replay = None;
                self.outbox.push(Framed::text(&status::resume_failed(memory_from)));
                self.start_live(env);
                false
            }
        }
    }

    /// `options`: a new slow-consumer policy; leaving `shed` gives back what was shed.
    fn set_policy(&mut self, now: Instant, policy: SlowConsumerPolicy, env: &mut Env<'_>) {
        self.policy = policy;
        if policy != SlowConsumerPolicy::Shed && self.shed > 0 {
            let restored = SHED_ORDER[..self.shed].to_vec();
            self.shed = 0;
            self.shed_at = now;
            self.regroup(now, env);
            self.queue(Framed::text(&status::shed("unshed", &restored, 0)), env);
        }
    }

    /// The group's retention overtook this connection: its policy applies.
    pub fn handle_overtaken(&mut self, now: Instant, overtaken: Overtaken, env: &mut Env<'_>) {
        if let Some((framed, offset)) = overtaken.partial {
            self.outbox.push_partial(framed, offset);
        }
        let skipped = overtaken.skipped_events;
        match self.policy {
            SlowConsumerPolicy::Conflate => {
                if let Some(membership) = self.membership {
                    if let Some(group) = env.fanout.group_mut(membership.group) {
                        group.conflate(membership.member, skipped);
                    }
                }
                env.counters.conflations.add(1);
                env.counters.conflated_events.add(skipped);
                env.counters.slow_consumer_dropped_events.add(skipped);
            }
            SlowConsumerPolicy::Shed => {
                env.counters.slow_consumer_dropped_events.add(skipped);
                match self.next_shed_level() {
                    Some(level) => {
                        let dropped = SHED_ORDER[self.shed..level].to_vec();
                        self.shed = level;
                        self.shed_at = now;
                        // Parked in the old group: leave it (nothing left to write there).
                        if let Some(membership) = self.membership.take() {
                            env.fanout.leave(membership);
                        }
                        self.delivery = self.session.delivery(level);
                        self.start_live(env);
                        self.queue(Framed::text(&status::shed("shed", &dropped, skipped)), env);
                        env.counters.shed_steps.add(1);
                    }
                    None => self.close_slow(now, env),
                }
            }
            SlowConsumerPolicy::Close => {
                env.counters.slow_consumer_dropped_events.add(skipped);
                self.close_slow(now, env);
            }
        }
    }

    /// The next shed level that changes the delivery and still delivers something.
    fn next_shed_level(&self) -> Option<usize> {
        let current = self.session.delivery(self.shed);
        (self.shed + 1..=SHED_ORDER.len()).find(|&level| {
            let delivery = self.session.delivery(level);
            delivery != current && !delivery.is_empty()
        })
    }

    /// Closes a slow consumer: what it has not begun is discarded, then 4008 goes as soon as
    /// the socket takes it.
    fn close_slow(&mut self, now: Instant, env: &mut Env<'_>) {
        if let Some(membership) = self.membership.take() {
            env.fanout.leave(membership);
        }
        let discarded = self.outbox.discard();
        env.counters.slow_consumer_dropped_events.add(discarded);
        env.counters.slow_consumer_closes.add(1);
        self.close(now, CloseReason::SlowConsumer, env);
    }

    /// Housekeeping before a write: a conflating connection that drained gets its latest
    /// events, a replay more of the history, a shed connection that caught up its channels.
    pub fn poll(&mut self, now: Instant, env: &mut Env<'_>) {
        if self.closing.is_some() || !self.outbox.is_empty() {
            return;
        }
        if self.replay.is_some() {
            self.pump_replay(now, env);
            return;
        }
        let Some(membership) = self.membership else { return };
        let Some(group) = env.fanout.group_mut(membership.group) else { return };
        if group.is_conflating(membership.member) {
            if self.policy == SlowConsumerPolicy::Conflate {
                self.release_conflation(membership, env);
            }
            return;
        }
        let recover = Duration::from_millis(env.settings.shed_recover_ms.into());
        if self.shed > 0 && group.caught_up(membership.member) && now >= self.shed_at + recover {
            let current = self.session.delivery(self.shed);
            let mut level = self.shed - 1;
            while level > 0 && self.session.delivery(level) == current {
                level -= 1;
            }
            let restored = SHED_ORDER[level..self.shed].to_vec();
            self.shed = level;
            self.shed_at = now;
            self.regroup(now, env);
            self.queue(Framed::text(&status::shed("unshed", &restored, 0)), env);
            env.counters.unshed_steps.add(1);
        }
    }

    /// The socket has been read to `WouldBlock` at `now`. A subscribe's hold on live delivery
    /// that has run out ends here and nowhere else: whatever the client sent within the
    /// window (the `resume` right behind its `subscribe`) is read first, however late the
    /// server gets to the socket, so the connection sees strict `seq` order.
    pub fn handle_drained(&mut self, now: Instant) {
        if self.hold_until.is_some_and(|until| now >= until) {
            self.hold_until = None;
        }
    }

    /// What to write now, in order: the outbox, then the group's released messages (unless
    /// live delivery is held: until [`Subscriber::handle_drained`] after the window).
    pub fn poll_transmit<'a>(&'a self, fanout: &'a Fanout, slices: &mut Slices<'a>) {
        if !self.outbox.slices(slices) || self.hold_until.is_some() {
            return;
        }
        if let Some(membership) = self.membership {
            if let Some(group) = fanout.group(membership.group) {
                group.slices(membership.member, slices);
            }
        }
    }

    /// `n` bytes of what [`Subscriber::poll_transmit`] gave were written.
    pub fn handle_written(&mut self, n: usize, env: &mut Env<'_>) -> Delivered {
        let mut written = Written::default();
        let rest = self.outbox.advance(n, |framed| written.count(framed));
        if rest > 0 {
            if let Some(membership) = self.membership {
                if let Some(group) = env.fanout.group_mut(membership.group) {
                    group.advance(membership.member, rest, |framed| written.count(framed));
                }
            }
        }
        if let Some((first, last)) = written.seqs {
            self.live = Some((self.live.map_or(first, |(earliest, _)| earliest), last));
        }
        let c = env.counters;
        c.writes.add(1);
        c.bytes_out.add(n as u64);
        c.messages_out.add(written.messages);
        c.events_out.add(written.events);
        self.sent = (self.sent.0 + written.events, self.sent.1 + n as u64);
        if self.closing.is_some() && self.outbox.is_empty() && !self.ws.can_read() {
            // Our close went out after the client's: the handshake is complete.
            self.dead = true;
        }
        written.timed
    }

    /// Timers at `now`: the auth deadline, token expiry, pings and pongs, the close deadline,
    /// the end of a hold, and [`Subscriber::poll`].
    pub fn handle_timeout(&mut self, now: Instant, env: &mut Env<'_>) {
        if let Some(deadline) = self.closing {
            if now >= deadline {
                self.dead = true;
            }
            return;
        }
        match self.session.phase {
            Phase::AwaitingAuth { deadline } if now >= deadline && !self.echo => {
                env.counters.auth_timeouts.add(1);
                self.queue(Framed::text(AUTH_FAILED), env);
                self.close(now, CloseReason::AuthTimeout, env);
                return;
            }
            Phase::Active if self.expires_at.is_some_and(|expiry| now >= expiry) => {
                self.queue(Framed::text(status::TOKEN_EXPIRED), env);
                self.close(now, CloseReason::TokenExpired, env);
                return;
            }
            _ => {}
        }
        let pong_timeout = Duration::from_millis(env.settings.pong_timeout_ms.into());
        if self.ping_sent.is_some_and(|sent| now.saturating_duration_since(sent) >= pong_timeout) {
            env.counters.pong_timeouts.add(1);
            self.dead = true;
            return;
        }
        if now >= self.next_ping {
            let mut control = Vec::new();
            let mut pipe = Pipe { input: &[], output: &mut control };
            let _ = self.ws.write(&mut pipe, Message::Ping(Default::default()));
            let _ = self.ws.flush(&mut pipe);
            if !control.is_empty() {
                self.queue(Framed::raw(control), env);
            }
            self.ping_sent.get_or_insert(now);
            self.next_ping = now + ping_interval(env.settings);
        }
        self.poll(now, env);
    }

    /// When `handle_timeout` is due next.
    pub fn poll_timeout(&self) -> Instant {
        let mut due = self.next_ping;
        if let Some(deadline) = self.closing {
            return deadline;
        }
        if let Phase::AwaitingAuth { deadline } = self.session.phase {
            due = due.min(deadline);
        }
        for at in [self.hold_until, self.expires_at].into_iter().flatten() {
            due = due.min(at);
        }
        due
    }

    /// Who it authenticated as, once it has.
    pub fn identity(&self) -> Option<&crate::server::auth::Identity> {
        self.session.identity.as_ref()
    }

    /// Takes up the universes in force (`env.universes`); after a reload that changed them,
    /// a connection with a universe topic follows: it leaves its group and joins the one of
    /// its new delivery, at its end, with nothing lost of the symbols it keeps.
    pub fn handle_universes(&mut self, now: Instant, env: &mut Env<'_>) {
        if self.session.set_universes(env.universes) && self.closing.is_none() {
            self.regroup(now, env);
        }
    }

    /// A reload removed the key it authenticated with: an error status, then close 1008
    /// `key revoked`.
    pub fn revoke(&mut self, now: Instant, env: &mut Env<'_>) {
        env.counters.keys_revoked.add(1);
        self.queue(Framed::text(status::KEY_REVOKED), env);
        self.close(now, CloseReason::KeyRevoked, env);
    }

    /// The server is stopping: close 1001.
    pub fn shut_down(&mut self, now: Instant, env: &mut Env<'_>) {
        self.close(now, CloseReason::GoingAway, env);
    }

    /// The connection goes: leave the group, uncount the user.
    pub fn leave(&mut self, env: &mut Env<'_>) {
        let user = self.session.identity.as_ref().map_or("", |i| i.user.as_str());
        let (code, reason) = match self.closed_by_server {
            Some(reason) => (reason.code(), reason.text()),
            None => (0, "by the client or the network"),
        };
        let (events, bytes) = self.sent;
        tracing::info!(peer = %self.peer, user, code, reason, events, bytes, "connection closed");
        if let Some(membership) = self.membership.take() {
            env.fanout.leave(membership);
        }
        if let Some(user) = self.user.take() {
            env.users.release(&user);
        }
        *env.subscriptions -= self.subscriptions as u64;
        self.subscriptions = 0;
        env.counters.subscriptions.set(*env.subscriptions);
    }
}

fn close_timeout(settings: &ServerSettings) -> Duration {
    Duration::from_millis(settings.close_timeout_ms.into())
}

fn ping_interval(settings: &ServerSettings) -> Duration {
    Duration::from_millis(settings.ping_interval_ms.into())
}

#[cfg(test)]
mod tests {
    //! The Subscriber on simulated time: no socket, no clock. A client codec (tungstenite in
    //! the client role) makes its frames and reads what the Subscriber writes, and the test
    //! decides how much of it the "socket" takes.

    use super::*;

    const PEER: SocketAddr =
        SocketAddr::V4(std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 40_000));
    use crate::server::fanout::test_batch;
    use tickstock_engine::Channel;

    /// A Standalone world on simulated time, with a `seq` counter for test batches.
    struct Sim {
        world: Standalone,
        now: Instant,
        seq: u64,
    }

    impl std::ops::Deref for Sim {
        type Target = Standalone;
        fn deref(&self) -> &Standalone {
            &self.world
        }
    }

    impl std::ops::DerefMut for Sim {
        fn deref_mut(&mut self) -> &mut Standalone {
            &mut self.world
        }
    }

    /// A client's codec and what it has received.
    struct Client {
        ws: WebSocketContext,
        messages: Vec<Message>,
    }

    impl Client {
        fn new() -> Client {
            Client { ws: WebSocketContext::new(Role::Client, None), messages: Vec::new() }
        }

        fn frame(&mut self, text: &str) -> Vec<u8> {
            let mut out = Vec::new();
            let mut pipe = Pipe { input: &[], output: &mut out };
            self.ws.write(&mut pipe, Message::text(text)).unwrap();
            self.ws.flush(&mut pipe).unwrap();
            out
        }

        fn receive(&mut self, bytes: &[u8]) {
            let mut sink = Vec::new();
            let mut pipe = Pipe { input: bytes, output: &mut sink };
            loop {
                match self.ws.read(&mut pipe) {
                    Ok(message) => self.messages.push(message),
                    Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                        return
                    }
                    Err(tungstenite::Error::ConnectionClosed) => return,
                    Err(error) => panic!("the client codec failed: {error}"),
                }
            }
        }

        /// Every JSON object received in text messages, in order.
        fn objects(&self) -> Vec<serde_json::Value> {
            self.messages
                .iter()
                .filter_map(|m| match m {
                    Message::Text(text) => serde_json::from_str::<serde_json::Value>(text).ok(),
                    _ => None,
                })
                .flat_map(|v| v.as_array().cloned().unwrap_or_default())
                .collect()
        }

        fn seqs(&self) -> Vec<u64> {
            self.objects().iter().filter_map(|o| o["seq"].as_u64()).collect()
        }

        fn statuses(&self, status: &str) -> Vec<serde_json::Value> {
            self.objects().into_iter().filter(|o| o["status"] == status).collect()
        }

        fn close_code(&self) -> Option<u16> {
            self.messages.iter().find_map(|m| match m {
                Message::Close(Some(frame)) => Some(u16::from(frame.code)),
                _ => None,
            })
        }
    }

    impl Sim {
        fn new(configure: impl FnOnce(&mut ServerSettings)) -> Sim {
            let mut settings = ServerSettings::default();
            configure(&mut settings);
            let world = Standalone::new(settings, Arc::default()).unwrap();
            Sim { world, now: Instant::now(), seq: 1 }
        }

        fn env(&mut self) -> Env<'_> {
            self.world.env()
        }

        fn connect(&mut self, key: usize) -> (Subscriber, Client) {
            let config = WebSocketConfig::default();
            let mut subscriber = Subscriber::new(
                self.now,
                key,
                PEER,
                &self.settings,
                config,
                Vec::new(),
                Vec::new(),
            );
            let now = self.now;
            subscriber.start(now, None, &mut self.env());
            let mut client = Client::new();
            let auth = client.frame(r#"{"action":"auth","params":"token"}"#);
            subscriber.handle_read(now, &auth, &mut self.env());
            (subscriber, client)
        }

        /// A connection subscribed to `topics`, past the resume window, with what it was
        /// sent so far read.
        fn live(&mut self, key: usize, topics: &str) -> (Subscriber, Client) {
            let (mut sub, mut client) = self.connect(key);
            let subscribe = format!(r#"{{"action":"subscribe","params":"{topics}"}}"#);
            self.send(&mut sub, &mut client, &subscribe);
            self.advance(Duration::from_millis(5));
            self.drain(&mut sub, &mut client, None);
            (sub, client)
        }

        fn send(&mut self, subscriber: &mut Subscriber, client: &mut Client, text: &str) {
            let bytes = client.frame(text);
            let now = self.now;
            subscriber.handle_read(now, &bytes, &mut self.env());
        }

        /// One emitter cycle of `count` trades of `ticker` (and an `A` bar of it), released
        /// at once.
        fn cycle(&mut self, ticker: &str, count: usize) {
            let mut frames: Vec<(Channel, &str, i64)> =
                vec![(Channel::T, ticker, 1_000_000); count];
            frames.push((Channel::A, ticker, 1_000_000));
            let batch = test_batch(self.seq, &frames);
            self.seq += frames.len() as u64;
            let now = self.now;
            self.fanout.handle_batch(now, &batch);
            let mut released = Vec::new();
            self.fanout.release_due(now, Duration::ZERO, 1, &mut released);
        }

        /// Applies retention, and hands the overtaken to their Subscribers.
        fn retain(&mut self, subscribers: &mut [&mut Subscriber]) {
            let bytes_max = self.settings.client_lag_max_bytes as usize;
            let age_max = Duration::from_millis(self.settings.client_lag_max_ms.into());
            let ids: Vec<usize> = self.fanout.group_ids().collect();
            let now = self.now;
            for id in ids {
                let overtaken =
                    self.fanout.group_mut(id).unwrap().overtake(now, bytes_max, age_max);
                for o in overtaken {
                    let sub = subscribers.iter_mut().find(|s| s.connection_key == o.connection);
                    sub.unwrap().handle_overtaken(now, o, &mut self.env());
                }
            }
        }

        /// The socket takes up to `budget` bytes (all when `None`); the client reads them.
        fn drain(
            &mut self,
            subscriber: &mut Subscriber,
            client: &mut Client,
            budget: Option<usize>,
        ) {
            let mut left = budget.unwrap_or(usize::MAX);
            loop {
                let now = self.now;
                // The socket read to `WouldBlock`: nothing more from this client.
                subscriber.handle_drained(now);
                subscriber.poll(now, &mut self.env());
                let mut bytes = Vec::new();
                {
                    let mut slices = Slices::new();
                    subscriber.poll_transmit(&self.fanout, &mut slices);
                    for slice in slices.as_slices() {
                        bytes.extend_from_slice(slice);
                    }
                }
                let n = bytes.len().min(left);
                if n == 0 {
                    return;
                }
                subscriber.handle_written(n, &mut self.env());
                client.receive(&bytes[..n]);
                left -= n;
            }
        }

        fn advance(&mut self, by: Duration) {
            self.now += by;
        }
    }

    fn strictly_increasing(seqs: &[u64]) -> bool {
        seqs.windows(2).all(|w| w[0] < w[1])
    }

    #[test]
    fn equal_subscriptions_share_a_group_and_receive_identical_bytes() {
        let mut sim = Sim::new(|_| {});
        let (mut a, mut ca) = sim.connect(1);
        let (mut b, mut cb) = sim.connect(2);
        for (s, c) in [(&mut a, &mut ca), (&mut b, &mut cb)] {
            sim.send(s, c, r#"{"action":"subscribe","params":"T.*"}"#);
        }
        assert_eq!(a.membership().unwrap().group, b.membership().unwrap().group);
        sim.advance(Duration::from_millis(5)); // past the resume window
        sim.drain(&mut a, &mut ca, None);
        sim.drain(&mut b, &mut cb, None);
        sim.cycle("AAPL", 3);
        let group = sim.fanout.group(a.membership().unwrap().group).unwrap();
        assert_eq!(group.stream.len(), 1, "one shared message for both");
        sim.drain(&mut a, &mut ca, None);
        assert_eq!(sim.fanout.group(b.membership().unwrap().group).unwrap().stream.len(), 1);
        sim.drain(&mut b, &mut cb, None);
        assert!(sim.fanout.group(a.membership().unwrap().group).unwrap().stream.is_empty());
        assert_eq!(ca.messages.last(), cb.messages.last(), "the same bytes");
        assert_eq!(ca.seqs(), vec![1, 2, 3], "T only: the A bar is not subscribed");
    }

    #[test]
    fn a_snapshot_sends_the_latest_of_each_new_topic_then_live_and_a_resume_skips_it() {
        let mut sim = Sim::new(|_| {});
        sim.cycle("AAPL", 3); // T 1..=3, A 4
        sim.cycle("MSFT", 2); // T 5, 6, A 7
        sim.cycle("AAPL", 1); // T 8, A 9
        let (mut sub, mut client) = sim.live(1, "HL.IBM");
        let subscribe = r#"{"action":"subscribe","params":"A.*,T.AAPL,AM.*","snapshot":true}"#;
        sim.send(&mut sub, &mut client, subscribe);
        sim.drain(&mut sub, &mut client, None);
        assert_eq!(client.seqs(), [7, 8, 9], "A of MSFT and AAPL, T of AAPL, in seq order");
        let status = &client.statuses("snapshot")[0];
        assert_eq!((status["count"].as_u64(), status["to_seq"].as_u64()), (Some(3), Some(9)));
        let last = client.objects().len();
        assert_eq!(client.objects()[last - 1]["status"], "snapshot", "the status after them");
        sim.cycle("MSFT", 1); // T 10 (not wanted), A 11
        sim.drain(&mut sub, &mut client, None);
        assert_eq!(client.seqs(), [7, 8, 9, 11], "live after to_seq: no gap, no duplicate");
        // A resume sends what the snapshot and live did not: T 1..=3 and A 4 of AAPL.
        sim.send(&mut sub, &mut client, r#"{"action":"resume","params":{"from_seq":1}}"#);
        sim.drain(&mut sub, &mut client, None);
        assert_eq!(client.seqs(), [7, 8, 9, 11, 1, 2, 3, 4]);
        assert_eq!(client.statuses("resumed").len(), 1);
        // A symbol with no event yet: nothing for it, and its first event comes live.
        let ibm = r#"{"action":"subscribe","params":"T.IBM","snapshot":true}"#;
        sim.send(&mut sub, &mut client, ibm);
        sim.drain(&mut sub, &mut client, None);
        assert_eq!(client.statuses("snapshot")[1]["count"], 0);
        sim.cycle("IBM", 1); // T 12, A 13
        sim.drain(&mut sub, &mut client, None);
        assert_eq!(client.seqs(), [7, 8, 9, 11, 1, 2, 3, 4, 12, 13]);
        // A topic covered already adds nothing: an empty snapshot.
        sim.send(&mut sub, &mut client, subscribe);
        sim.drain(&mut sub, &mut client, None);
        let statuses = client.statuses("snapshot");
        assert_eq!(statuses[2]["count"], 0, "{statuses:?}");
        assert_eq!(sim.counters.snapshot_events.get(), 3);
    }

    #[test]
    fn a_resume_by_time_starts_at_the_first_event_at_or_after_it() {
        let mut sim = Sim::new(|_| {});
        sim.cycle("AAPL", 3); // test events: `seq` N at N seconds, T 1..=3, A 4
        sim.cycle("AAPL", 3); // T 5..=7, A 8
        let (mut sub, mut client) = sim.live(1, "T.AAPL");
        sim.send(&mut sub, &mut client, r#"{"action":"resume","params":{"from_t":4500}}"#);
        sim.drain(&mut sub, &mut client, None);
        assert_eq!(client.seqs(), [5, 6, 7], "from 5 s: T 5..=7 (the A bar is not subscribed)");
        let resumed = &client.statuses("resumed")[0];
        assert_eq!(resumed["from_seq"], 5);
        assert_eq!(resumed["from_t"], 4500);
        assert_eq!(resumed["to_seq"], 7);
        sim.cycle("AAPL", 1);
        sim.drain(&mut sub, &mut client, None);
        assert_eq!(client.seqs(), [5, 6, 7, 9], "then live");
        // A time after now replays nothing and goes on live.
        sim.send(&mut sub, &mut client, r#"{"action":"resume","params":{"from_t":99000}}"#);
        sim.drain(&mut sub, &mut client, None);
        let resumed = &client.statuses("resumed")[1];
        assert_eq!(
            (resumed["from_seq"].as_u64(), resumed["to_seq"].as_u64()),
            (Some(11), Some(10))
        );
        sim.cycle("AAPL", 1);
        sim.drain(&mut sub, &mut client, None);
        assert_eq!(client.seqs(), [5, 6, 7, 9, 11]);
        let bad = r#"{"action":"resume","params":{"from_t":"today"}}"#;
        sim.send(&mut sub, &mut client, bad);
        sim.drain(&mut sub, &mut client, None);
        let errors = client.statuses("error");
        assert!(errors[0]["message"].as_str().unwrap().contains("from_t"), "{errors:?}");
    }

    #[test]
    fn a_resume_by_time_before_what_the_history_lost_fails_with_the_oldest_seq() {
        let mut sim = Sim::new(|s| s.history_max_events = 4);
        sim.cycle("AAPL", 3);
        sim.cycle("AAPL", 3); // 1..=4 evicted: 5..=8 retained
        let (mut sub, mut client) = sim.live(1, "T.AAPL");
        sim.send(&mut sub, &mut client, r#"{"action":"resume","params":{"from_t":1000}}"#);
        sim.drain(&mut sub, &mut client, None);
        assert_eq!(client.statuses("resume_failed")[0]["oldest_seq"], 5);
        sim.send(&mut sub, &mut client, r#"{"action":"resume","params":{"from_t":4001}}"#);
        sim.drain(&mut sub, &mut client, None);
        assert_eq!(client.seqs(), [5, 6, 7], "nothing lost was at or after 4.001 s");
    }

    #[test]
    fn a_universe_delivers_its_symbols_and_a_reload_moves_live_subscriptions() {
        let mut sim = Sim::new(|_| {});
        sim.universes = Arc::new(Universes::parse("PAIR: AAPL,MSFT\n").unwrap());
        let (mut sub, mut client) = sim.connect(1);
        let subscribe = r#"{"action":"subscribe","params":"T.@PAIR,T.@NONE,A.IBM"}"#;
        sim.send(&mut sub, &mut client, subscribe);
        sim.advance(Duration::from_millis(5));
        sim.drain(&mut sub, &mut client, None);
        let errors = client.statuses("error");
        assert!(errors[0]["message"].as_str().unwrap().contains("unknown universe"));
        sim.cycle("AAPL", 1); // T 1, A 2
        sim.cycle("IBM", 1); // T 3, A 4
        sim.cycle("MSFT", 1); // T 5, A 6
        sim.drain(&mut sub, &mut client, None);
        assert_eq!(client.seqs(), [1, 4, 5]);
        // The operator drops MSFT and adds IBM: the subscription follows at once.
        sim.universes = Arc::new(Universes::parse("PAIR: AAPL,IBM\n").unwrap());
        let now = sim.now;
        sub.handle_universes(now, &mut sim.env());
        sim.cycle("MSFT", 1); // T 7, A 8
        sim.cycle("IBM", 1); // T 9, A 10
        sim.drain(&mut sub, &mut client, None);
        assert_eq!(client.seqs(), [1, 4, 5, 9, 10]);
        let unsubscribe = r#"{"action":"unsubscribe","params":"T.@PAIR"}"#;
        sim.send(&mut sub, &mut client, unsubscribe);
        sim.cycle("AAPL", 1); // T 11, A 12
        sim.drain(&mut sub, &mut client, None);
        assert_eq!(client.seqs(), [1, 4, 5, 9, 10], "unsubscribed");
    }

    #[test]
    fn a_snapshot_larger_than_the_lag_bound_is_refused_and_the_subscription_stands() {
        let mut sim = Sim::new(|s| s.client_lag_max_bytes = 150);
        sim.cycle("AAPL", 1);
        sim.cycle("MSFT", 1);
        let (mut sub, mut client) = sim.live(1, "HL.IBM");
        let subscribe = r#"{"action":"subscribe","params":"T.*,A.*","snapshot":true}"#;
        sim.send(&mut sub, &mut client, subscribe);
        sim.drain(&mut sub, &mut client, None);
        let errors = client.statuses("error");
        assert!(errors[0]["message"].as_str().unwrap().contains("over client_lag_max_bytes"));
        assert!(client.seqs().is_empty() && client.statuses("snapshot").is_empty());
        sim.cycle("IBM", 1);
        sim.drain(&mut sub, &mut client, None);
        assert_eq!(client.seqs(), [5, 6], "subscribed all the same");
    }

    #[test]
    fn a_resume_is_paced_by_resume_events_per_sec_max() {
        let mut sim = Sim::new(|s| s.resume_events_per_sec_max = 10_000);
        for _ in 0..10 {
            sim.cycle("MSFT", 100); // 1,010 events, T and A
        }
        let (mut sub, mut client) = sim.live(1, "T.*");
        sim.send(&mut sub, &mut client, r#"{"action":"resume","params":{"from_seq":1}}"#);
        sim.drain(&mut sub, &mut client, None);
        // A burst of 256 events looked at (the cap: 1 ms of events, at least 256), then a
        // pause until the pace has earned 256 again: 25.6 ms after the resume.
        let trades = |to: u64| (1..=to).filter(|s| s % 101 != 0).collect::<Vec<_>>();
        assert_eq!(client.seqs(), trades(256));
        assert_eq!(sub.wake_at(), Some(sim.now + Duration::from_micros(25_600)));
        // Time it was not drained does not buy a bigger burst: the credit is capped.
        sim.advance(Duration::from_secs(1));
        sim.drain(&mut sub, &mut client, None);
        assert_eq!(client.seqs(), trades(512));
        // From then on, 10 events a millisecond: what it has earned, and no more.
        sim.advance(Duration::from_millis(25));
        sim.drain(&mut sub, &mut client, None);
        assert_eq!(client.seqs(), trades(762));
        sim.advance(Duration::from_millis(24));
        sim.drain(&mut sub, &mut client, None);
        assert_eq!(client.seqs(), trades(1002));
        assert!(client.statuses("resumed").is_empty());
        sim.advance(Duration::from_millis(1));
        sim.drain(&mut sub, &mut client, None);
        assert_eq!(client.seqs(), trades(1010));
        assert_eq!(client.statuses("resumed")[0]["to_seq"], 1009);
        assert_eq!(sub.wake_at(), None);
    }

    #[test]
    fn a_paced_resume_that_sends_nothing_in_a_slice_still_asks_to_be_woken() {
        let mut sim = Sim::new(|s| s.resume_events_per_sec_max = 10_000);
        for _ in 0..10 {
            sim.cycle("MSFT", 100); // 1,010 events: T of MSFT, and its A bars
        }
        // A filter that nothing in the history passes: every slice sends nothing.
        let (mut sub, mut client) = sim.live(1, "T.*");
        sim.send(&mut sub, &mut client, r#"{"action":"filter","params":{"kinds":["HL"]}}"#);
        sim.send(&mut sub, &mut client, r#"{"action":"resume","params":{"from_seq":1}}"#);
        sim.drain(&mut sub, &mut client, None);
        assert!(client.seqs().is_empty());
        // With nothing to write, only the wake brings the loop back.
        let due = sub.wake_at().expect("a paused replay asks to be woken");
        assert_eq!(due, sim.now + Duration::from_micros(25_600));
        // Woken, it looks at another 256 and sends nothing again: it must ask again.
        sim.advance(Duration::from_micros(25_600));
        sim.drain(&mut sub, &mut client, None);
        let again = sub.wake_at().expect("still paused, still asking to be woken");
        assert_eq!(again, sim.now + Duration::from_micros(25_600));
        for _ in 0..5 {
            sim.advance(Duration::from_millis(25));
            sim.drain(&mut sub, &mut client, None);
        }
        assert_eq!(client.statuses("resumed")[0]["to_seq"], 0, "nothing passed the filter");
        assert_eq!(sub.wake_at(), None);
    }

    #[test]
    fn a_watchlist_resume_looks_at_its_symbols_events_only() {
        let mut sim = Sim::new(|s| s.resume_events_per_sec_max = 10_000);
        let mut ibm = Vec::new();
        let mut aapl_bars = Vec::new();
        for _ in 0..10 {
            sim.cycle("MSFT", 100); // 101 events of MSFT
            ibm.extend([sim.seq, sim.seq + 1]);
            sim.cycle("IBM", 2); // two trades and a bar
            sim.cycle("AAPL", 3);
            aapl_bars.push(sim.seq - 1);
        }
        // 1,080 events, 70 of them IBM's or AAPL's. Paced at 10 an ms with a burst of 256,
        // looking at every event would take four slices; looking at these, one.
        let (mut sub, mut client) = sim.live(1, "T.IBM,A.AAPL");
        sim.send(&mut sub, &mut client, r#"{"action":"resume","params":{"from_seq":1}}"#);
        sim.drain(&mut sub, &mut client, None);
        let mut wanted = [ibm, aapl_bars].concat();
        wanted.sort_unstable();
        assert_eq!(client.seqs(), wanted, "IBM's trades and AAPL's bars, in order");
        assert_eq!(client.statuses("resumed")[0]["to_seq"], *wanted.last().unwrap());
        assert_eq!(sub.wake_at(), None, "not paused: only 70 events were looked at");
        // Live from the next cycle on, as after any replay.
        sim.cycle("IBM", 1);
        sim.drain(&mut sub, &mut client, None);
        assert_eq!(client.seqs().last(), Some(&(sim.seq - 2)), "the live IBM trade");
    }

    #[test]
    fn a_resume_right_behind_a_subscribe_keeps_strict_seq_order() {
        let mut sim = Sim::new(|_| {});
        for _ in 0..3 {
            sim.cycle("MSFT", 10);
        }
        let (mut sub, mut client) = sim.connect(1);
        sim.send(&mut sub, &mut client, r#"{"action":"subscribe","params":"T.*"}"#);
        // A live cycle lands between the two messages, and the socket is writable.
        sim.cycle("MSFT", 10);
        sim.drain(&mut sub, &mut client, None);
        sim.advance(Duration::from_micros(500));
        sim.send(&mut sub, &mut client, r#"{"action":"resume","params":{"from_seq":5}}"#);
        sim.drain(&mut sub, &mut client, None);
        sim.advance(Duration::from_millis(5));
        sim.cycle("MSFT", 10);
        sim.drain(&mut sub, &mut client, None);
        let seqs = client.seqs();
        assert!(strictly_increasing(&seqs), "{seqs:?}");
        let trades: Vec<u64> = (5..=55).filter(|s| s % 11 != 0).collect();
        assert_eq!(seqs, trades, "every trade from 5 on, once, in order");
        let resumed = client.statuses("resumed");
        assert_eq!(resumed[0]["from_seq"], 5);
        assert_eq!(resumed[0]["to_seq"], 43);
    }

    #[test]
    fn a_resume_read_after_the_window_still_comes_before_live_delivery() {
        // The server got to the socket late (a reconnect storm): the window ran out before
        // the resume behind the subscribe was read. Live delivery waits for that read.
        let mut sim = Sim::new(|_| {});
        for _ in 0..3 {
            sim.cycle("MSFT", 10);
        }
        let (mut sub, mut client) = sim.connect(1);
        sim.send(&mut sub, &mut client, r#"{"action":"subscribe","params":"T.*"}"#);
        sim.drain(&mut sub, &mut client, None);
        sim.advance(Duration::from_millis(5));
        sim.cycle("MSFT", 10);
        // The fan-out writes to the member before its socket is read again: nothing live.
        let mut slices = Slices::new();
        sub.poll_transmit(&sim.fanout, &mut slices);
        assert!(slices.as_slices().is_empty(), "live delivery is still held");
        sim.send(&mut sub, &mut client, r#"{"action":"resume","params":{"from_seq":5}}"#);
        sim.drain(&mut sub, &mut client, None);
        let seqs = client.seqs();
        assert!(strictly_increasing(&seqs), "{seqs:?}");
        let trades: Vec<u64> = (5..=44).filter(|s| s % 11 != 0).collect();
        assert_eq!(seqs, trades, "the replay, then live, every trade once");
    }

    #[test]
    fn a_replay_obeys_frame_bytes_max() {
        let mut sim = Sim::new(|s| s.frame_bytes_max = 4_096);
        for _ in 0..20 {
            sim.cycle("IBM", 50);
        }
        let (mut sub, mut client) = sim.connect(1);
        sim.send(&mut sub, &mut client, r#"{"action":"subscribe","params":"T.*,A.*"}"#);
        sim.send(&mut sub, &mut client, r#"{"action":"resume","params":{"from_seq":1}}"#);
        sim.drain(&mut sub, &mut client, None);
        assert_eq!(client.seqs().len(), 20 * 51);
        for message in &client.messages {
            if let Message::Text(text) = message {
                assert!(text.len() <= 4_096, "a replay message of {} bytes", text.len());
            }
        }
    }

    #[test]
    fn a_stalled_client_is_closed_with_4008_which_goes_out_when_its_socket_takes_it() {
        let mut sim = Sim::new(|s| s.client_lag_max_bytes = 16 * 1024);
        let (mut slow, mut client) = sim.connect(1);
        let (mut fast, mut fast_client) = sim.connect(2);
        sim.send(&mut slow, &mut client, r#"{"action":"subscribe","params":"T.*"}"#);
        sim.send(&mut fast, &mut fast_client, r#"{"action":"subscribe","params":"T.*"}"#);
        sim.advance(Duration::from_millis(5));
        sim.drain(&mut slow, &mut client, None);
        sim.drain(&mut slow, &mut client, Some(0));
        for round in 0..20 {
            sim.cycle("AAPL", 20);
            // The slow socket takes 100 bytes once (a message is left half written).
            sim.drain(&mut slow, &mut client, Some(if round == 0 { 100 } else { 0 }));
            sim.drain(&mut fast, &mut fast_client, None);
            sim.retain(&mut [&mut slow, &mut fast]);
        }
        assert!(slow.is_closing());
        assert!(!fast.is_closing());
        assert_eq!(sim.counters.slow_consumer_closes.get(), 1);
        assert!(sim.counters.slow_consumer_dropped_events.get() > 0);
        // The stream holds nothing for the closed client: memory is the stream's, not its.
        let group = sim.fanout.group(fast.membership().unwrap().group).unwrap();
        assert!(group.stream.bytes() <= 16 * 1024);
        // Its socket takes bytes again: the rest of the half-written message, then 4008.
        sim.drain(&mut slow, &mut client, None);
        assert_eq!(client.close_code(), Some(4008));
        assert_eq!(fast_client.seqs().len(), 400, "the fast client got everything");
        // And at the close deadline it goes, whatever the client does.
        sim.advance(Duration::from_millis(sim.settings.close_timeout_ms.into()));
        let now = sim.now;
        slow.handle_timeout(now, &mut sim.env());
        assert!(slow.is_dead());
    }

    #[test]
    fn a_client_that_lags_in_time_is_slow_too() {
        let mut sim = Sim::new(|s| s.client_lag_max_ms = 100);
        let (mut sub, _client) = sim.live(1, "T.*");
        sim.cycle("AAPL", 1);
        sim.advance(Duration::from_millis(50));
        sim.retain(&mut [&mut sub]);
        assert!(!sub.is_closing(), "50 ms behind is within the bound");
        sim.advance(Duration::from_millis(60));
        sim.retain(&mut [&mut sub]);
        assert!(sub.is_closing(), "110 ms behind is past it");
    }

    #[test]
    fn conflation_keeps_the_latest_per_channel_and_symbol_and_counts_the_rest() {
        let mut sim = Sim::new(|s| {
            s.client_lag_max_bytes = 8 * 1024;
            s.slow_consumer_policy = SlowConsumerPolicy::Conflate;
        });
        let (mut sub, mut client) = sim.live(1, "T.*,A.*");
        for ticker in ["AAPL", "MSFT"].iter().cycle().take(40) {
            sim.cycle(ticker, 5);
            sim.retain(&mut [&mut sub]);
        }
        assert_eq!(sim.counters.conflations.get(), 1);
        let last_seq = sim.seq - 1;
        sim.drain(&mut sub, &mut client, None);
        let conflated = client.statuses("conflated");
        assert_eq!(conflated.len(), 1);
        let dropped = conflated[0]["dropped"].as_u64().unwrap();
        let got = client.seqs();
        assert!(strictly_increasing(&got), "{got:?}");
        assert_eq!(got.len() as u64 + dropped, last_seq, "every event delivered or counted");
        assert_eq!(*got.last().unwrap(), last_seq, "the latest event is there");
        // Then it is live again.
        sim.cycle("IBM", 2);
        sim.drain(&mut sub, &mut client, None);
        assert_eq!(client.seqs().len(), got.len() + 3);
    }

    #[test]
    fn a_conflating_client_that_changes_its_subscriptions_keeps_its_count_and_latest() {
        let mut sim = Sim::new(|s| {
            s.client_lag_max_bytes = 8 * 1024;
            s.slow_consumer_policy = SlowConsumerPolicy::Conflate;
        });
        let (mut sub, mut client) = sim.live(1, "T.*");
        for _ in 0..20 {
            sim.cycle("AAPL", 10);
            sim.retain(&mut [&mut sub]);
        }
        assert_eq!(sim.counters.conflations.get(), 1);
        let last = sim.seq - 2; // the last trade (the cycle's A bar is not subscribed)
        sim.send(&mut sub, &mut client, r#"{"action":"subscribe","params":"A.*"}"#);
        sim.drain(&mut sub, &mut client, None);
        // The answer, then what conflation kept (its count, the latest trade), then live.
        let objects = client.objects();
        let answer = objects.iter().position(|o| o["message"] == "subscribed to: A.*").unwrap();
        let conflated = objects.iter().position(|o| o["status"] == "conflated").unwrap();
        let latest = objects.iter().position(|o| o["seq"] == last).unwrap();
        assert!(answer < conflated && conflated < latest, "{objects:?}");
        let dropped = objects[conflated]["dropped"].as_u64().unwrap();
        let got = client.seqs();
        assert!(strictly_increasing(&got));
        assert_eq!(got.len() as u64 + dropped, 20 * 10, "every trade delivered or counted");
        sim.cycle("AAPL", 1);
        sim.drain(&mut sub, &mut client, None);
        assert_eq!(client.objects().last().unwrap()["ev"], "A", "live again, with A now");
    }

    #[test]
    fn shed_drops_trades_then_bars_announces_each_step_and_undoes_them() {
        let mut sim = Sim::new(|s| {
            s.client_lag_max_bytes = 8 * 1024;
            s.shed_recover_ms = 100;
        });
        let (mut sub, mut client) = sim.connect(1);
        sim.send(&mut sub, &mut client, r#"{"action":"subscribe","params":"T.*,A.*,HL.*"}"#);
        sim.send(
            &mut sub,
            &mut client,
            r#"{"action":"options","params":{"slow_consumer":"shed"}}"#,
        );
        assert_eq!(sub.policy(), SlowConsumerPolicy::Shed);
        sim.advance(Duration::from_millis(5));
        sim.drain(&mut sub, &mut client, None);
        for _ in 0..20 {
            sim.cycle("AAPL", 20);
            sim.retain(&mut [&mut sub]);
        }
        assert_eq!(sub.shed_level(), 1, "trades shed first");
        assert_eq!(sim.counters.shed_steps.get(), 1);
        sim.drain(&mut sub, &mut client, None);
        let shed = client.statuses("shed");
        assert_eq!(shed[0]["channels"], serde_json::json!(["T"]));
        assert!(shed[0]["dropped"].as_u64().unwrap() > 0);
        let before = client.objects().len();
        sim.cycle("AAPL", 20);
        sim.drain(&mut sub, &mut client, None);
        let new: Vec<_> = client.objects()[before..].to_vec();
        assert!(new.iter().all(|o| o["ev"] == "A"), "no trades while shed: {new:?}");
        // Caught up, and past shed_recover_ms: trades come back.
        sim.advance(Duration::from_millis(150));
        sim.drain(&mut sub, &mut client, None);
        assert_eq!(sub.shed_level(), 0);
        assert_eq!(client.statuses("unshed")[0]["channels"], serde_json::json!(["T"]));
        sim.cycle("AAPL", 2);
        sim.drain(&mut sub, &mut client, None);
        let seqs = client.seqs();
        assert!(strictly_increasing(&seqs));
        assert!(client.objects().last().unwrap()["ev"] == "A");
        assert!(client.objects().iter().rev().nth(1).unwrap()["ev"] == "T");
    }

    #[test]
    fn shed_closes_with_4008_when_nothing_is_left_to_shed() {
        let mut sim = Sim::new(|s| {
            s.client_lag_max_bytes = 8 * 1024;
            s.slow_consumer_policy = SlowConsumerPolicy::Shed;
        });
        let (mut sub, mut client) = sim.live(1, "T.*");
        for _ in 0..20 {
            sim.cycle("AAPL", 20);
            sim.retain(&mut [&mut sub]);
        }
        assert!(sub.is_closing(), "shedding T would leave nothing");
        sim.drain(&mut sub, &mut client, None);
        assert_eq!(client.close_code(), Some(4008));
    }

    #[test]
    fn a_subscription_change_keeps_what_the_old_group_had_queued() {
        let mut sim = Sim::new(|_| {});
        let (mut sub, mut client) = sim.live(1, "T.*");
        sim.cycle("AAPL", 5);
        // Not written yet when the client changes its filter: the five trades still come,
        // before the status, and the new group carries on.
        let old = sim.fanout.group(sub.membership().unwrap().group).unwrap().delivery.clone();
        sim.send(&mut sub, &mut client, r#"{"action":"filter","params":{"min_volume":1}}"#);
        let new = &sim.fanout.group(sub.membership().unwrap().group).unwrap().delivery;
        assert_ne!(*new, old, "a new group for the new filter");
        assert_eq!(sim.fanout.group_count(), 1, "the old group went with its last member");
        sim.cycle("AAPL", 5);
        sim.drain(&mut sub, &mut client, None);
        assert_eq!(client.seqs(), vec![1, 2, 3, 4, 5, 7, 8, 9, 10, 11]);
        let objects = client.objects();
        let status = objects.iter().position(|o| o["message"] == "filter set").unwrap();
        assert_eq!(objects[status - 1]["seq"], 5, "the status comes after what was queued");
    }

    #[test]
    fn client_pings_are_answered_and_a_ping_flood_meets_the_rate_limit() {
        let mut sim = Sim::new(|s| s.client_messages_per_sec = 5);
        let (mut sub, mut client) = sim.connect(1);
        let pings = |client: &mut Client, n: usize| {
            let mut out = Vec::new();
            let mut pipe = Pipe { input: &[], output: &mut out };
            for _ in 0..n {
                client.ws.write(&mut pipe, Message::Ping(b"p".to_vec().into())).unwrap();
            }
            client.ws.flush(&mut pipe).unwrap();
            out
        };
        // One a second for a while: every one answered, nothing refused.
        for _ in 0..10 {
            sim.advance(Duration::from_secs(1));
            let bytes = pings(&mut client, 1);
            let now = sim.now;
            sub.handle_read(now, &bytes, &mut sim.env());
        }
        sim.drain(&mut sub, &mut client, None);
        let pongs = client.messages.iter().filter(|m| matches!(m, Message::Pong(_))).count();
        assert_eq!(pongs, 10);
        assert!(client.statuses("error").is_empty(), "{:?}", client.objects());
        assert_eq!(client.close_code(), None);
        // A flood in one read: the bucket (5) lets five by; the rest are errors, and past
        // `client_errors_max` the connection is closed 1008.
        sim.advance(Duration::from_secs(1));
        let bytes = pings(&mut client, 1_000);
        let now = sim.now;
        sub.handle_read(now, &bytes, &mut sim.env());
        sim.drain(&mut sub, &mut client, None);
        let errors = client.statuses("error");
        assert!(!errors.is_empty() && errors.len() <= 11, "{errors:?}");
        assert!(errors[0]["message"].as_str().unwrap().contains("rate limit"), "{errors:?}");
        assert_eq!(client.close_code(), Some(1008));
    }

    #[test]
    fn auth_timeout_pings_and_pong_timeout_run_on_the_given_clock() {
        let mut sim = Sim::new(|s| {
            s.auth_timeout_ms = 100;
            s.ping_interval_ms = 1_000;
            s.pong_timeout_ms = 500;
        });
        let config = WebSocketConfig::default();
        let now = sim.now;
        let mut waiting =
            Subscriber::new(now, 9, PEER, &sim.settings, config, Vec::new(), Vec::new());
        waiting.start(now, None, &mut sim.env());
        assert_eq!(waiting.poll_timeout(), now + Duration::from_millis(100));
        sim.advance(Duration::from_millis(100));
        let now = sim.now;
        waiting.handle_timeout(now, &mut sim.env());
        let mut client = Client::new();
        sim.drain(&mut waiting, &mut client, None);
        assert_eq!(client.statuses("auth_failed").len(), 1);
        assert_eq!(client.close_code(), Some(1008));
        assert_eq!(sim.counters.auth_timeouts.get(), 1);

        let (mut sub, mut client) = sim.connect(1);
        sim.advance(Duration::from_millis(1_000));
        let now = sim.now;
        sub.handle_timeout(now, &mut sim.env());
        sim.drain(&mut sub, &mut client, None);
        assert!(client.messages.iter().any(|m| matches!(m, Message::Ping(_))));
        sim.advance(Duration::from_millis(500));
        let now = sim.now;
        sub.handle_timeout(now, &mut sim.env());
        assert!(sub.is_dead(), "no pong within pong_timeout_ms");
    }
}
