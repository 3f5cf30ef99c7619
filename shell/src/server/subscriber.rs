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
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, Role, WebSocketConfig, WebSocketContext};
use tungstenite::Message;

use super::auth::Authenticator;
use super::fanout::{Fanout, Membership};
use super::framing::{ArrayBuilder, Framed, Outbox, Slices};
use super::group::Overtaken;
use super::metrics::ServerCounters;
use super::session::{Action, Delivery, Phase, Session, SessionLimits, SHED_ORDER};
use super::status::{self, CloseReason, AUTH_FAILED, CONNECTED, MAX_CONNECTIONS};
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
}

/// A resume being sent.
#[derive(Clone, Copy, Debug)]
struct Replay {
    from_seq: u64,
    /// The next `seq` to look at.
    next_seq: u64,
    /// Already sent live before the resume began: not sent again.
    skip: Option<(u64, u64)>,
    last_sent: Option<u64>,
}

/// tungstenite's side of the codec: reads come from the bytes handed in, writes (pongs, close
/// frames, pings) land in a buffer that becomes one outbox message.
struct Pipe<'a> {
    input: &'a [u8],
    output: &'a mut Vec<u8>,
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
}

impl Written {
    fn count(&mut self, framed: &Framed) {
        self.messages += 1;
        if framed.events > 0 {
            self.events += u64::from(framed.events);
            let first = self.seqs.map_or(framed.seqs.0, |(first, _)| first);
            self.seqs = Some((first, framed.seqs.1));
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
}

impl Subscriber {
    /// A connection whose upgrade was accepted at `now`: `upgrade` (the `101` response) and
    /// `connected` are its first bytes.
    pub fn new(
        now: Instant,
        connection_key: usize,
        settings: &ServerSettings,
        config: WebSocketConfig,
        leftover: Vec<u8>,
        upgrade: Vec<u8>,
    ) -> Subscriber {
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
        }
    }

    /// The protocol state.
    pub fn session(&self) -> &Session {
        &self.session
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

    /// Live delivery waits until then, if it waits.
    pub fn hold_until(&self) -> Option<Instant> {
        self.hold_until
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
                Message::Ping(_) | Message::Frame(_) => {}
            }
        }
        if let Some(error) = failure {
            self.input_failed = true;
            self.read_failed(now, error, env);
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
        if was_waiting && self.session.phase == Phase::Active {
            env.counters.auth_successes.add(1);
        }
        if actions.contains(&Action::Close(CloseReason::AuthFailed)) {
            env.counters.auth_failures.add(1);
        }
        env.counters.client_errors.add(u64::from(self.session.errors() - errors_before));
        self.expires_at = self.session.identity.as_ref().and_then(|i| i.expires_at_s).map(|exp| {
            // `exp` is the last whole second the token is good for.
            now + Duration::from_secs((exp + 1).saturating_sub(env.now_s))
        });
        let count = self.session.subscription_count();
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
                Action::Resume(from_seq) => self.resume(now, from_seq, env),
                Action::Policy(policy) => self.set_policy(now, policy, env),
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

    /// Leaves the group; what it had not written goes into the outbox first.
    fn stop_live(&mut self, env: &mut Env<'_>) {
        if let Some(membership) = self.membership.take() {
            for (framed, offset) in env.fanout.leave(membership) {
                self.outbox.push_partial(framed, offset);
            }
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
        self.stop_live(env);
        self.replay = None;
        let mut control = Vec::new();
        let frame =
            CloseFrame { code: CloseCode::from(reason.code()), reason: reason.text().into() };
        let _ = self.ws.close(&mut Pipe { input: &[], output: &mut control }, Some(frame));
        self.outbox.push(Framed::raw(control));
        self.closing = Some(now + close_timeout(env.settings));
    }

    /// `resume` from `from_seq`: live events not yet written are taken back (the replay
    /// covers them), then the retained history is replayed and live delivery continues.
    fn resume(&mut self, now: Instant, from_seq: u64, env: &mut Env<'_>) {
        let history = &env.fanout.history;
        if let Some(oldest) = history.oldest_seq().filter(|&oldest| from_seq < oldest) {
            self.queue(Framed::text(&status::resume_failed(oldest)), env);
            return;
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
        self.replay = Some(Replay { from_seq, next_seq: from_seq, skip, last_sent: None });
        self.pump_replay(now, env);
    }

    /// Sends more of the replay while the outbox has room; finishes it with `resumed` once it
    /// has caught up with the history's newest event, and goes live.
    fn pump_replay(&mut self, now: Instant, env: &mut Env<'_>) {
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
        for entry in history.from_seq(replay.next_seq) {
            if self.outbox.bytes() >= room {
                break;
            }
            examined = Some(entry.seq);
            let skipped =
                replay.skip.is_some_and(|(first, last)| (first..=last).contains(&entry.seq));
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
        let newest = history.newest_seq();
        match examined {
            Some(seq) if Some(seq) != newest => {
                replay.next_seq = seq + 1;
                self.replay = Some(replay);
            }
            _ if examined.is_none() && newest.is_some_and(|n| replay.next_seq <= n) => {
                // No room this time.
                self.replay = Some(replay);
            }
            _ => {
                let to_seq = replay.last_sent.unwrap_or(replay.from_seq.saturating_sub(1));
                self.outbox.push(Framed::text(&status::resumed(replay.from_seq, to_seq)));
                if let Some(newest) = newest {
                    // Live again from the next batch on: everything up to here was replayed.
                    self.live = Some((self.live.map_or(newest + 1, |(first, _)| first), newest));
                }
                self.replay = None;
                self.start_live(env);
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
            if self.policy != SlowConsumerPolicy::Conflate {
                return;
            }
            let Some(conflation) = group.resume_streaming(membership.member) else { return };
            env.counters.conflated_events.add(conflation.replaced);
            env.counters.slow_consumer_dropped_events.add(conflation.replaced);
            self.outbox.push(Framed::text(&status::conflated(conflation.dropped)));
            for framed in conflation.release(env.fanout.frame_bytes_max()) {
                self.outbox.push(framed);
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

    /// What to write now, in order: the outbox, then the group's released messages (unless
    /// live delivery is held).
    pub fn poll_transmit<'a>(&'a self, now: Instant, fanout: &'a Fanout, slices: &mut Slices<'a>) {
        if !self.outbox.slices(slices) || self.hold_until.is_some_and(|until| now < until) {
            return;
        }
        if let Some(membership) = self.membership {
            if let Some(group) = fanout.group(membership.group) {
                group.slices(membership.member, slices);
            }
        }
    }

    /// `n` bytes of what [`Subscriber::poll_transmit`] gave were written.
    pub fn handle_written(&mut self, now: Instant, n: usize, env: &mut Env<'_>) {
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
        if self.hold_until.is_some_and(|until| now >= until) {
            self.hold_until = None;
        }
        let c = env.counters;
        c.writes.add(1);
        c.bytes_out.add(n as u64);
        c.messages_out.add(written.messages);
        c.events_out.add(written.events);
        if self.closing.is_some() && self.outbox.is_empty() && !self.ws.can_read() {
            // Our close went out after the client's: the handshake is complete.
            self.dead = true;
        }
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
            Phase::AwaitingAuth { deadline } if now >= deadline => {
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
        if self.hold_until.is_some_and(|until| now >= until) {
            self.hold_until = None;
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

    /// The server is stopping: close 1001.
    pub fn shut_down(&mut self, now: Instant, env: &mut Env<'_>) {
        self.close(now, CloseReason::GoingAway, env);
    }

    /// The connection goes: leave the group, uncount the user.
    pub fn leave(&mut self, env: &mut Env<'_>) {
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
