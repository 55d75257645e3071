//! Is anybody there? Tells a silent conduit from a silent agent from an idle one.
//!
//! Agents send a heartbeat every `interval` (carried in the heartbeat). The collector keeps,
//! per agent it has verified an envelope from (bounded by [`MAX_AGENTS`]), when it last heard
//! from it. On each tick:
//! - **conduit silent**: no datagram at all (from anyone, valid or not) for more than
//!   `factor × interval` (the largest interval heard of, or [`DEFAULT_INTERVAL_MS`]): the diode,
//!   the link or the network is down; one `conduit_silent` event, one `conduit_resumed` event
//!   when datagrams come back. Agents are not blamed meanwhile.
//! - **agent silent**: datagrams arrive, but nothing verified from this agent for more than
//!   `factor × its interval`: one `agent_silent` event, `agent_resumed` when it is back.
//! - **agent idle** is the normal case of heartbeats without summaries: no event.

use std::collections::BTreeMap;

/// Heartbeat interval assumed before an agent has told us its own.
pub const DEFAULT_INTERVAL_MS: u64 = 10_000;
/// Missed intervals before "silent".
pub const DEFAULT_FACTOR: u64 = 3;
/// Agents tracked at most (only agents with a verified envelope are ever added).
pub const MAX_AGENTS: usize = 65_536;

#[derive(Debug, Clone, Copy)]
struct Agent {
    last_ms: u64,
    interval_ms: u64,
    silent: bool,
}

/// A change worth an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    ConduitSilent { silent_ms: u64 },
    ConduitResumed,
    AgentSilent { agent: String, silent_ms: u64 },
    AgentResumed { agent: String },
}

/// Liveness of the conduit and of each agent.
#[derive(Debug)]
pub struct Liveness {
    factor: u64,
    conduit_silent: bool,
    agents: BTreeMap<String, Agent>,
}

impl Default for Liveness {
    fn default() -> Self {
        Self::new(DEFAULT_FACTOR)
    }
}

impl Liveness {
    pub fn new(factor: u64) -> Self {
        Self {
            factor: factor.max(1),
            conduit_silent: false,
            agents: BTreeMap::new(),
        }
    }

    /// A verified envelope from `agent` at `now_ms`; `interval_ms` when it was a heartbeat.
    pub fn heard(&mut self, agent: &str, interval_ms: Option<u64>, now_ms: u64) -> Option<Change> {
        if let Some(a) = self.agents.get_mut(agent) {
            a.last_ms = now_ms;
            if let Some(i) = interval_ms {
                a.interval_ms = i.max(1);
            }
            if a.silent {
                a.silent = false;
                return Some(Change::AgentResumed {
                    agent: agent.to_owned(),
                });
            }
            return None;
        }
        if self.agents.len() < MAX_AGENTS {
            self.agents.insert(
                agent.to_owned(),
                Agent {
                    last_ms: now_ms,
                    interval_ms: interval_ms.unwrap_or(DEFAULT_INTERVAL_MS).max(1),
                    silent: false,
                },
            );
        }
        None
    }

    /// The conduit threshold: `factor ×` the largest interval heard of.
    pub fn conduit_threshold_ms(&self) -> u64 {
        let interval = self
            .agents
            .values()
            .map(|a| a.interval_ms)
            .max()
            .unwrap_or(DEFAULT_INTERVAL_MS);
        interval.saturating_mul(self.factor)
    }

    /// Checks deadlines. `idle_ms`: time since the last datagram of any kind.
    pub fn tick(&mut self, now_ms: u64, idle_ms: u64) -> Vec<Change> {
        let mut out = Vec::new();
        if idle_ms > self.conduit_threshold_ms() {
            if !self.conduit_silent {
                self.conduit_silent = true;
                out.push(Change::ConduitSilent { silent_ms: idle_ms });
            }
            return out;
        }
        if self.conduit_silent {
            self.conduit_silent = false;
            out.push(Change::ConduitResumed);
            // Agents get a fresh start: the silence was the conduit's.
            for a in self.agents.values_mut() {
                a.last_ms = a.last_ms.max(now_ms.saturating_sub(idle_ms));
            }
        }
        for (name, a) in &mut self.agents {
            let quiet = now_ms.saturating_sub(a.last_ms);
            if !a.silent && quiet > a.interval_ms.saturating_mul(self.factor) {
                a.silent = true;
                out.push(Change::AgentSilent {
                    agent: name.clone(),
                    silent_ms: quiet,
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conduit_silence_is_not_blamed_on_agents() {
        let mut l = Liveness::new(3);
        assert_eq!(l.heard("a", Some(1_000), 0), None);
        l.heard("b", Some(1_000), 0);
        assert!(l.tick(2_000, 2_000).is_empty());
        assert_eq!(
            l.tick(3_500, 3_500),
            vec![Change::ConduitSilent { silent_ms: 3_500 }]
        );
        assert!(l.tick(9_000, 9_000).is_empty(), "reported once");
        // Traffic again (from b only).
        l.heard("b", None, 9_100);
        assert_eq!(l.tick(9_200, 100), vec![Change::ConduitResumed]);
        // a stays quiet while b talks: a is silent, b is not.
        l.heard("b", None, 12_000);
        let c = l.tick(12_500, 0);
        assert_eq!(
            c,
            vec![Change::AgentSilent {
                agent: "a".into(),
                silent_ms: 3_400
            }]
        );
        assert_eq!(
            l.heard("a", None, 13_000),
            Some(Change::AgentResumed { agent: "a".into() })
        );
    }
}
