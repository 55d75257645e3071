//! Rate limiting for warning lines, so a flood of bad input cannot fill the disk with logs.
//!
//! At most one line per reason per interval is let through; the lines held back are counted and
//! reported with the next line for that reason (or by [`LogLimiter::flush`] once the flood has
//! stopped) as "N more suppressed". Counters in the CMDB always count every event; only the log
//! is thinned. Time is passed in.

use std::collections::HashMap;

/// The default interval: one line per reason per second.
pub const DEFAULT_INTERVAL_MS: u64 = 1_000;

#[derive(Debug, Clone, Copy)]
struct Slot {
    last_logged_ms: u64,
    suppressed: u64,
}

/// Per-reason log thinning.
#[derive(Debug)]
pub struct LogLimiter {
    interval_ms: u64,
    slots: HashMap<String, Slot>,
}

impl Default for LogLimiter {
    fn default() -> Self {
        Self::new(DEFAULT_INTERVAL_MS)
    }
}

impl LogLimiter {
    /// A limiter letting one line per reason through every `interval_ms`.
    pub fn new(interval_ms: u64) -> Self {
        Self {
            interval_ms,
            slots: HashMap::new(),
        }
    }

    /// Whether to log a line for `reason` now: `Some(n)` to log it, mentioning the `n` lines
    /// suppressed since the last one; `None` to suppress it (it is counted).
    pub fn check(&mut self, reason: &str, now_ms: u64) -> Option<u64> {
        match self.slots.get_mut(reason) {
            Some(slot) if now_ms.saturating_sub(slot.last_logged_ms) < self.interval_ms => {
                slot.suppressed += 1;
                None
            }
            Some(slot) => {
                let suppressed = slot.suppressed;
                *slot = Slot {
                    last_logged_ms: now_ms,
                    suppressed: 0,
                };
                Some(suppressed)
            }
            None => {
                self.slots.insert(
                    reason.to_owned(),
                    Slot {
                        last_logged_ms: now_ms,
                        suppressed: 0,
                    },
                );
                Some(0)
            }
        }
    }

    /// Reasons whose interval has passed with lines still held back: (reason, count). Their
    /// counts are reset; call this periodically and log one summary line per entry.
    pub fn flush(&mut self, now_ms: u64) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        for (reason, slot) in &mut self.slots {
            if slot.suppressed > 0 && now_ms.saturating_sub(slot.last_logged_ms) >= self.interval_ms
            {
                out.push((reason.clone(), slot.suppressed));
                *slot = Slot {
                    last_logged_ms: now_ms,
                    suppressed: 0,
                };
            }
        }
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_reason_per_interval() {
        let mut l = LogLimiter::new(1_000);
        assert_eq!(l.check("bad_magic", 0), Some(0));
        for t in 1..=500 {
            assert_eq!(l.check("bad_magic", t), None);
        }
        // Another reason has its own budget.
        assert_eq!(l.check("replay", 10), Some(0));
        assert_eq!(l.check("bad_magic", 1_000), Some(500));
        assert_eq!(l.check("bad_magic", 1_001), None);
        assert!(l.flush(1_500).is_empty());
        assert_eq!(l.flush(2_000), vec![("bad_magic".to_owned(), 1)]);
        assert!(l.flush(5_000).is_empty());
    }
}
