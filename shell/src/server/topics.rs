//! The topic index: (channel, symbol) → the groups that want it, so that routing a frame
//! costs what it delivers. Ten thousand watchlist groups on ten symbols each cost a hash
//! look-up per frame and a visit per interested group, never a scan of every group.

use std::collections::HashMap;

use tickstock_engine::{Channel, Ticker};

use super::session::Delivery;

/// Groups by topic.
#[derive(Debug, Default)]
pub struct TopicIndex {
    /// Per channel: the groups with a `*` topic.
    all: [Vec<usize>; Channel::COUNT],
    /// Per channel: the groups with a topic on the symbol (and no `*` on that channel).
    by_symbol: [HashMap<Ticker, Vec<usize>>; Channel::COUNT],
}

impl TopicIndex {
    /// Registers group `group` under every topic of `delivery`.
    pub fn insert(&mut self, group: usize, delivery: &Delivery) {
        for channel in Channel::ALL {
            let topics = &delivery.topics[channel.index()];
            if topics.all {
                self.all[channel.index()].push(group);
                continue;
            }
            for ticker in &topics.symbols {
                self.by_symbol[channel.index()].entry(*ticker).or_default().push(group);
            }
        }
    }

    /// Removes group `group`, registered with `delivery`.
    pub fn remove(&mut self, group: usize, delivery: &Delivery) {
        for channel in Channel::ALL {
            let topics = &delivery.topics[channel.index()];
            if topics.all {
                self.all[channel.index()].retain(|&g| g != group);
                continue;
            }
            let map = &mut self.by_symbol[channel.index()];
            for ticker in &topics.symbols {
                if let Some(groups) = map.get_mut(ticker) {
                    groups.retain(|&g| g != group);
                    if groups.is_empty() {
                        map.remove(ticker);
                    }
                }
            }
        }
    }

    /// The groups interested in `channel` for `ticker`: those with `*`, then those with the
    /// symbol. A group is in at most one of the two lists.
    pub fn groups(&self, channel: Channel, ticker: &Ticker) -> (&[usize], &[usize]) {
        let all = &self.all[channel.index()];
        let symbol = self.by_symbol[channel.index()].get(ticker).map_or(&[][..], Vec::as_slice);
        (all, symbol)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(topics: &[(Channel, Option<&str>)]) -> Delivery {
        let mut delivery = Delivery::default();
        for (channel, symbol) in topics {
            let entry = &mut delivery.topics[channel.index()];
            match symbol {
                None => entry.all = true,
                Some(symbol) => {
                    entry.symbols.insert(Ticker::new(symbol).unwrap());
                }
            }
        }
        delivery
    }

    #[test]
    fn groups_are_found_by_channel_and_symbol_and_removed_again() {
        let mut index = TopicIndex::default();
        let aapl = Ticker::new("AAPL").unwrap();
        let msft = Ticker::new("MSFT").unwrap();
        let watch = delivery(&[(Channel::T, Some("AAPL")), (Channel::A, Some("AAPL"))]);
        let everything = delivery(&[(Channel::T, None)]);
        index.insert(1, &watch);
        index.insert(2, &everything);
        assert_eq!(index.groups(Channel::T, &aapl), (&[2][..], &[1][..]));
        assert_eq!(index.groups(Channel::T, &msft), (&[2][..], &[][..]));
        assert_eq!(index.groups(Channel::A, &aapl), (&[][..], &[1][..]));
        assert_eq!(index.groups(Channel::Hl, &aapl), (&[][..], &[][..]));
        index.remove(1, &watch);
        assert_eq!(index.groups(Channel::T, &aapl), (&[2][..], &[][..]));
        assert!(index.by_symbol.iter().all(HashMap::is_empty), "no empty lists are left");
        index.remove(2, &everything);
        assert!(index.all.iter().all(Vec::is_empty));
    }
}
