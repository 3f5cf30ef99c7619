//! The fan-out of one event loop: its groups, the topic index over them, the retained
//! history that `resume` replays from and the snapshot table `snapshot` starts from.
//! Sans-IO: batches and time in, shared messages out.
//!
//! Each batch is appended to the history, then each frame is routed through the topic index
//! to the groups that want it (their entitlement and filter checked once per group, not per
//! member), and each touched group frames its cycle's arrays once. Cost per batch: frames ×
//! interested groups, plus one message per touched group; members cost nothing here.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use slab::Slab;

use super::deflate::Compressors;
use super::group::Group;
use super::history::History;
use super::session::Delivery;
use super::snapshot::SnapshotTable;
use super::topics::TopicIndex;
use crate::emitter::FrameBatch;

/// A member's place: its group and its member id there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Membership {
    /// The group.
    pub group: usize,
    /// The member id in that group.
    pub member: usize,
}

/// One event loop's groups and history.
#[derive(Debug)]
pub struct Fanout {
    groups: Slab<Group>,
    by_delivery: HashMap<Delivery, usize>,
    index: TopicIndex,
    /// What `resume` replays from.
    pub history: History,
    /// What a `subscribe` with `snapshot` starts from.
    pub latest: SnapshotTable,
    /// Deflate the messages of compressed groups.
    compressors: Compressors,
    /// Groups touched by the batch being routed.
    touched: Vec<usize>,
    /// Groups holding messages not yet released.
    held: Vec<usize>,
    /// Groups that got messages since the last [`Fanout::take_grown`]: the only ones whose
    /// retention by bytes can have been passed.
    grown: Vec<usize>,
    frame_bytes_max: usize,
    /// Events appended to groups, once per group, in all.
    pub group_events: u64,
}

impl Fanout {
    /// An empty fan-out.
    pub fn new(frame_bytes_max: usize, history: History) -> Fanout {
        Fanout {
            groups: Slab::new(),
            by_delivery: HashMap::new(),
            index: TopicIndex::default(),
            history,
            latest: SnapshotTable::default(),
            compressors: Compressors::default(),
            touched: Vec::new(),
            held: Vec::new(),
            grown: Vec::new(),
            frame_bytes_max,
            group_events: 0,
        }
    }

    /// Compresses messages of `min_bytes` and more for compressed groups
    /// (`server.compression_min_bytes`).
    pub fn with_compression_min_bytes(mut self, min_bytes: usize) -> Fanout {
        self.compressors = Compressors::new(min_bytes);
        self
    }

    /// The largest message payload.
    pub fn frame_bytes_max(&self) -> usize {
        self.frame_bytes_max
    }

    /// Groups in all.
    pub fn group_count(&self) -> usize {
        self.groups.len()
    }

    /// A group.
    pub fn group(&self, group: usize) -> Option<&Group> {
        self.groups.get(group)
    }

    /// A group, to change.
    pub fn group_mut(&mut self, group: usize) -> Option<&mut Group> {
        self.groups.get_mut(group)
    }

    /// Joins connection `connection` to the group of `delivery` (made if new), at its end.
    pub fn join(&mut self, delivery: &Delivery, connection: usize) -> Membership {
        let group = match self.by_delivery.get(delivery) {
            Some(&group) => group,
            None => {
                let group = self.groups.insert(Group::new(delivery.clone(), self.frame_bytes_max));
                self.index.insert(group, delivery);
                self.by_delivery.insert(delivery.clone(), group);
                group
            }
        };
        let member = self.groups[group].join(connection);
        Membership { group, member }
    }

    /// Takes a member out of its group (dropped with its last member); returns the messages
    /// it had not written yet, the first partly written with its offset.
    pub fn leave(&mut self, membership: Membership) -> Vec<(super::framing::Framed, usize)> {
        let Some(group) = self.groups.get_mut(membership.group) else { return Vec::new() };
        let left = group.leave(membership.member);
        if group.is_empty() {
            let group = self.groups.remove(membership.group);
            self.index.remove(membership.group, &group.delivery);
            self.by_delivery.remove(&group.delivery);
            self.held.retain(|&g| g != membership.group);
        }
        left
    }

    /// Appends a batch to the history and routes it to the groups; each touched group frames
    /// its arrays and holds them until released.
    pub fn handle_batch(&mut self, now: Instant, batch: &FrameBatch) {
        // History first: a resume that starts after this batch finds it there.
        self.history.append(batch);
        self.latest.update(batch);
        for frame in batch.frames() {
            let (all, symbol) = self.index.groups(frame.channel, &frame.ticker);
            for &id in all.iter().chain(symbol) {
                let group = &mut self.groups[id];
                if !group.accepts(frame) {
                    continue;
                }
                group.append(frame, batch.json(frame), now, &mut self.compressors);
                self.group_events += 1;
                if !group.touched {
                    group.touched = true;
                    self.touched.push(id);
                }
            }
        }
        for id in self.touched.drain(..) {
            let group = &mut self.groups[id];
            group.touched = false;
            group.close_cycle(now, &mut self.compressors);
            if !group.grown {
                group.grown = true;
                self.grown.push(id);
            }
            if group.is_held() && !group.listed {
                group.listed = true;
                self.held.push(id);
            }
        }
    }

    /// Releases every group whose held messages are due at `now`; their ids go to
    /// `released`.
    pub fn release_due(
        &mut self,
        now: Instant,
        linger: Duration,
        coalesce_bytes: usize,
        released: &mut Vec<usize>,
    ) {
        let groups = &mut self.groups;
        self.held.retain(|&id| {
            let Some(group) = groups.get_mut(id) else { return false };
            match group.release_due(linger, coalesce_bytes) {
                Some(due) if due <= now => {
                    group.release();
                    group.listed = false;
                    released.push(id);
                    false
                }
                Some(_) => true,
                None => {
                    group.listed = false;
                    false
                }
            }
        });
    }

    /// When the next held group is due.
    pub fn next_release(&self, linger: Duration, coalesce_bytes: usize) -> Option<Instant> {
        self.held
            .iter()
            .filter_map(|&id| self.groups.get(id)?.release_due(linger, coalesce_bytes))
            .min()
    }

    /// Group ids with retained messages (for retention by age, checked now and then).
    pub fn group_ids(&self) -> impl Iterator<Item = usize> + '_ {
        self.groups.iter().filter(|(_, g)| !g.stream.is_empty()).map(|(id, _)| id)
    }

    /// The groups that got messages since the last call (for retention by bytes, checked
    /// after every batch at the cost of what the batch touched, not of every group).
    pub fn take_grown(&mut self, into: &mut Vec<usize>) {
        for &id in &self.grown {
            if let Some(group) = self.groups.get_mut(id) {
                group.grown = false;
                into.push(id);
            }
        }
        self.grown.clear();
    }
}

/// A batch of hand-made frames (channel, ticker, price) with seqs from `first` (tests).
#[cfg(test)]
pub(crate) fn test_batch(
    first: u64,
    frames: &[(tickstock_engine::Channel, &str, i64)],
) -> FrameBatch {
    use crate::emitter::Frame;
    use tickstock_engine::{SymbolId, Ticker};
    let mut batch = FrameBatch::new(1 << 20);
    for (i, (channel, ticker, price)) in frames.iter().enumerate() {
        let seq = first + i as u64;
        let json = format!(
            r#"{{"ev":"{}","sym":"{ticker}","seq":{seq},"pad":"{}"}}"#,
            channel.label(),
            "p".repeat(40)
        );
        batch.push_raw(
            Frame {
                seq,
                symbol: SymbolId(0),
                ticker: Ticker::new(ticker).expect("a valid test ticker"),
                channel: *channel,
                price_raw: *price,
                volume: 100,
                strength: 0,
                recv_ns: 0,
                // One second apart, from 1 s: `resume` by time can be tested in seconds.
                t_ms: 1_000 * seq,
                start: 0,
                end: 0,
            },
            json.as_bytes(),
        );
    }
    batch
}

#[cfg(test)]
mod tests {
    use super::*;
    use tickstock_engine::{Channel, Ticker};

    fn batch(first: u64, frames: &[(Channel, &str, i64)]) -> FrameBatch {
        test_batch(first, frames)
    }

    fn delivery(channel: Channel, symbol: Option<&str>) -> Delivery {
        let mut delivery = Delivery::default();
        match symbol {
            None => delivery.topics[channel.index()].all = true,
            Some(s) => {
                delivery.topics[channel.index()].symbols.insert(Ticker::new(s).unwrap());
            }
        }
        delivery
    }

    #[test]
    fn equal_deliveries_share_a_group_and_its_bytes() {
        let now = Instant::now();
        let mut fanout = Fanout::new(1 << 20, History::new(100, 1 << 20));
        let everything = delivery(Channel::T, None);
        let members: Vec<Membership> = (0..100).map(|c| fanout.join(&everything, c)).collect();
        let watch = fanout.join(&delivery(Channel::T, Some("MSFT")), 100);
        assert_eq!(fanout.group_count(), 2);
        assert!(members.iter().all(|m| m.group == members[0].group));
        fanout.handle_batch(now, &batch(1, &[(Channel::T, "AAPL", 1), (Channel::T, "MSFT", 2)]));
        let mut released = Vec::new();
        fanout.release_due(now, Duration::ZERO, 1 << 20, &mut released);
        released.sort_unstable();
        assert_eq!(released.len(), 2);
        let all = fanout.group(members[0].group).unwrap();
        assert_eq!(all.stream.len(), 1, "one message for the hundred members");
        let mut slices = super::super::framing::Slices::new();
        all.slices(members[0].member, &mut slices);
        let first = slices.as_slices()[0].as_ptr();
        let mut other = super::super::framing::Slices::new();
        all.slices(members[99].member, &mut other);
        assert_eq!(first, other.as_slices()[0].as_ptr(), "the same bytes, not a copy");
        let text = String::from_utf8_lossy(&slices.as_slices()[0]).into_owned();
        assert!(text.contains("AAPL") && text.contains("MSFT"), "{text}");
        let mut slices = super::super::framing::Slices::new();
        fanout.group(watch.group).unwrap().slices(watch.member, &mut slices);
        let text = String::from_utf8_lossy(&slices.as_slices()[0]).into_owned();
        assert!(!text.contains("AAPL") && text.contains("MSFT"), "{text}");
        for m in members {
            fanout.leave(m);
        }
        fanout.leave(watch);
        assert_eq!(fanout.group_count(), 0, "empty groups are dropped");
    }

    #[test]
    fn filters_and_entitlements_are_checked_per_group() {
        let now = Instant::now();
        let mut fanout = Fanout::new(1 << 20, History::new(100, 1 << 20));
        let mut cheap = delivery(Channel::T, None);
        cheap.filter = serde_json::from_str::<serde_json::Value>(r#"{"max_price":1.5}"#)
            .map(|v| super::super::session::Filter::parse(&v).unwrap())
            .unwrap();
        let mut entitled = delivery(Channel::T, None);
        entitled.entitled = Some([Ticker::new("IBM").unwrap()].into_iter().collect());
        let a = fanout.join(&cheap, 1);
        let b = fanout.join(&entitled, 2);
        fanout.handle_batch(
            now,
            &batch(1, &[(Channel::T, "AAPL", 1_000_000), (Channel::T, "IBM", 2_000_000)]),
        );
        let mut released = Vec::new();
        fanout.release_due(now, Duration::ZERO, 1 << 20, &mut released);
        let payload = |m: Membership| {
            let group = fanout.group(m.group).unwrap();
            let mut slices = super::super::framing::Slices::new();
            group.slices(m.member, &mut slices);
            String::from_utf8_lossy(&slices.as_slices()[0]).into_owned()
        };
        assert!(payload(a).contains("AAPL") && !payload(a).contains("IBM"));
        assert!(payload(b).contains("IBM") && !payload(b).contains("AAPL"));
    }
}
