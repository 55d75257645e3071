//! How much a flood of refused input may write to the quarantine table.
//!
//! Every refusal is always counted. Writing a quarantine row (and a copy of the bytes) for each
//! one would let anyone who can reach the UDP port fill the disk, so rows and copied bytes are
//! admitted by two token buckets: on average [`ROWS_PER_SEC`] rows (bursts of [`ROW_BURST`]) and
//! [`BYTES_PER_SEC`] copied bytes (bursts of [`BYTE_BURST`]). Past the byte budget a row is
//! kept without its bytes; past the row budget only the counters (and `quarantine_suppressed`)
//! move. Time is passed in.

/// Average quarantine rows per second.
pub const ROWS_PER_SEC: u64 = 50;
/// Rows admitted at once after a quiet period.
pub const ROW_BURST: u64 = 500;
/// Average bytes of refused input copied per second.
pub const BYTES_PER_SEC: u64 = 256 * 1024;
/// Bytes copied at once after a quiet period.
pub const BYTE_BURST: u64 = 4 * 1024 * 1024;

/// What may be written for one refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// A row with a copy of the bytes.
    RowWithBytes,
    /// A row without the bytes (`stored_len` 0).
    RowOnly,
    /// No row; count it as suppressed.
    Nothing,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: u64,
    burst: u64,
    per_sec: u64,
    /// Milliseconds of refill not yet turned into whole tokens are kept by not advancing this.
    last_ms: u64,
}

impl Bucket {
    fn new(burst: u64, per_sec: u64) -> Self {
        Self {
            tokens: burst,
            burst,
            per_sec,
            last_ms: 0,
        }
    }

    fn refill(&mut self, now_ms: u64) {
        if now_ms <= self.last_ms {
            // The clock went backwards or did not move: no refill, but follow it.
            self.last_ms = self.last_ms.min(now_ms);
            return;
        }
        let elapsed = now_ms - self.last_ms;
        let earned = elapsed.saturating_mul(self.per_sec) / 1000;
        if earned > 0 {
            self.tokens = self.tokens.saturating_add(earned).min(self.burst);
            self.last_ms = now_ms;
        }
    }

    fn take(&mut self, n: u64) -> bool {
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }
}

/// The two buckets.
#[derive(Debug, Clone)]
pub struct QuarantineBudget {
    rows: Bucket,
    bytes: Bucket,
    started: bool,
}

impl Default for QuarantineBudget {
    fn default() -> Self {
        Self {
            rows: Bucket::new(ROW_BURST, ROWS_PER_SEC),
            bytes: Bucket::new(BYTE_BURST, BYTES_PER_SEC),
            started: false,
        }
    }
}

impl QuarantineBudget {
    /// Decides what to write for a refusal of `len` bytes (already capped) at `now_ms`.
    pub fn admit(&mut self, len: usize, now_ms: u64) -> Admission {
        if !self.started {
            self.rows.last_ms = now_ms;
            self.bytes.last_ms = now_ms;
            self.started = true;
        }
        self.rows.refill(now_ms);
        self.bytes.refill(now_ms);
        if !self.rows.take(1) {
            return Admission::Nothing;
        }
        if self.bytes.take(len as u64) {
            Admission::RowWithBytes
        } else {
            Admission::RowOnly
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_averages() {
        let mut b = QuarantineBudget::default();
        for _ in 0..ROW_BURST {
            assert_eq!(b.admit(100, 1_000), Admission::RowWithBytes);
        }
        assert_eq!(b.admit(100, 1_000), Admission::Nothing);
        // One second later: ROWS_PER_SEC more.
        let admitted = (0..1_000)
            .filter(|_| b.admit(100, 2_000) != Admission::Nothing)
            .count();
        assert_eq!(admitted as u64, ROWS_PER_SEC);
    }

    #[test]
    fn bytes_run_out_before_rows() {
        let mut b = QuarantineBudget::default();
        let big = 1024 * 1024;
        for _ in 0..4 {
            assert_eq!(b.admit(big, 0), Admission::RowWithBytes);
        }
        assert_eq!(b.admit(big, 0), Admission::RowOnly);
        assert_eq!(b.admit(10, 0), Admission::RowOnly);
        assert_eq!(b.admit(10, 1_000), Admission::RowWithBytes);
        // The clock going backwards does not break anything.
        assert_ne!(b.admit(10, 0), Admission::Nothing);
    }
}
