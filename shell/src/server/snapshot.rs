//! The snapshot table: the latest event of every (channel, symbol), as it was sent, which a
//! `subscribe` with `"snapshot":true` starts from (PROTOCOL.md section 2, step 3).
//!
//! The fan-out updates it as each batch passes (on the event loop's thread, not the
//! engine's): one hash look-up and one copy of the event's JSON per event, into a buffer the
//! entry keeps, so after every (channel, symbol) has been seen once nothing allocates. Its
//! size is bounded by the symbols the engine tracks: at most `symbols_max` entries per
//! channel (and one for `ACT`), each the size of one event. Unlike the resume history it
//! evicts nothing, so a symbol's latest `AM` is there however long ago the minute closed.

use std::collections::HashMap;

use tickstock_engine::{Channel, Ticker};

use crate::emitter::FrameBatch;

/// One (channel, symbol)'s latest event.
#[derive(Clone, Debug)]
pub struct Latest {
    /// Its `seq`.
    pub seq: u64,
    /// Filter fields (see `Frame`).
    pub price_raw: i64,
    /// Filter fields (see `Frame`).
    pub volume: u64,
    /// Filter fields (see `Frame`).
    pub strength: u8,
    /// Its JSON object, as sent.
    pub json: Vec<u8>,
}

/// The latest event per (channel, symbol).
#[derive(Debug, Default)]
pub struct SnapshotTable {
    by_channel: [HashMap<Ticker, Latest>; Channel::COUNT],
}

impl SnapshotTable {
    /// Takes the batch's events as the latest of their (channel, symbol).
    pub fn update(&mut self, batch: &FrameBatch) {
        for frame in batch.frames() {
            let json = batch.json(frame);
            let latest =
                self.by_channel[frame.channel.index()].entry(frame.ticker).or_insert_with(|| {
                    Latest {
                        seq: 0,
                        price_raw: 0,
                        volume: 0,
                        strength: 0,
                        json: Vec::with_capacity(json.len()),
                    }
                });
            latest.seq = frame.seq;
            latest.price_raw = frame.price_raw;
            latest.volume = frame.volume;
            latest.strength = frame.strength;
            latest.json.clear();
            latest.json.extend_from_slice(json);
        }
    }

    /// The latest event of `channel` for `ticker`.
    pub fn get(&self, channel: Channel, ticker: &Ticker) -> Option<&Latest> {
        self.by_channel[channel.index()].get(ticker)
    }

    /// Every symbol's latest event on `channel`, in no order.
    pub fn channel(&self, channel: Channel) -> impl Iterator<Item = (&Ticker, &Latest)> {
        self.by_channel[channel.index()].iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emitter::Frame;
    use tickstock_engine::SymbolId;

    #[test]
    fn each_channel_and_symbol_keeps_its_latest_event_only() {
        let mut batch = FrameBatch::new(1 << 16);
        let aapl = Ticker::new("AAPL").unwrap();
        for (seq, channel, ticker) in
            [(1, Channel::T, aapl), (2, Channel::A, aapl), (3, Channel::T, aapl)]
        {
            let frame = Frame {
                seq,
                symbol: SymbolId(0),
                ticker,
                channel,
                price_raw: 1,
                volume: 1,
                strength: 0,
                recv_ns: 0,
                t_ms: 0,
                start: 0,
                end: 0,
            };
            batch.push_raw(frame, format!(r#"{{"seq":{seq}}}"#).as_bytes());
        }
        let mut table = SnapshotTable::default();
        table.update(&batch);
        assert_eq!(Channel::ALL.iter().map(|&c| table.channel(c).count()).sum::<usize>(), 2);
        let latest = table.get(Channel::T, &aapl).unwrap();
        assert_eq!((latest.seq, latest.json.as_slice()), (3, &br#"{"seq":3}"#[..]));
        assert_eq!(table.get(Channel::A, &aapl).unwrap().seq, 2);
        assert!(table.get(Channel::Am, &aapl).is_none());
        assert_eq!(table.channel(Channel::T).count(), 1);
    }
}
