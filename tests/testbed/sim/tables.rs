//! The data tables of one simulated unit: sparse maps from address to value.
//!
//! A read or write succeeds only when every address it touches is mapped (adjacent blocks
//! join up); otherwise the device answers exception 02 IllegalDataAddress, like a real PLC.

use std::collections::BTreeMap;

use tokio_modbus::ExceptionCode;

/// Largest quantities the Modbus spec allows per request.
pub const MAX_READ_BITS: u16 = 2000;
pub const MAX_READ_REGISTERS: u16 = 125;
pub const MAX_WRITE_REGISTERS: u16 = 123;
pub const MAX_WRITE_BITS: u16 = 1968;

/// Input registers drift within this many counts of their base value.
const DRIFT_SPAN: u16 = 16;

/// One value table.
#[derive(Debug, Clone, Default)]
pub struct Table<T> {
    cells: BTreeMap<u16, T>,
}

impl<T: Copy> Table<T> {
    pub fn from_blocks(blocks: &[(u16, Vec<T>)]) -> Self {
        let mut cells = BTreeMap::new();
        for (start, values) in blocks {
            for (addr, v) in (*start..=u16::MAX).zip(values.iter()) {
                cells.insert(addr, *v);
            }
        }
        Self { cells }
    }

    /// Checks the quantity (03 when outside `1..=max`) and that every address is mapped (02).
    fn check(&self, addr: u16, qty: u16, max: u16) -> Result<(), ExceptionCode> {
        if qty == 0 || qty > max {
            return Err(ExceptionCode::IllegalDataValue);
        }
        let end = u32::from(addr) + u32::from(qty);
        if end > 0x1_0000 {
            return Err(ExceptionCode::IllegalDataAddress);
        }
        if (addr..=u16::MAX)
            .take(usize::from(qty))
            .all(|a| self.cells.contains_key(&a))
        {
            Ok(())
        } else {
            Err(ExceptionCode::IllegalDataAddress)
        }
    }

    pub fn read(&self, addr: u16, qty: u16, max: u16) -> Result<Vec<T>, ExceptionCode> {
        self.check(addr, qty, max)?;
        Ok((addr..=u16::MAX)
            .take(usize::from(qty))
            .filter_map(|a| self.cells.get(&a).copied())
            .collect())
    }

    pub fn write(&mut self, addr: u16, values: &[T], max: u16) -> Result<(), ExceptionCode> {
        let qty = u16::try_from(values.len()).map_err(|_| ExceptionCode::IllegalDataValue)?;
        self.check(addr, qty, max)?;
        for (a, v) in (addr..=u16::MAX).zip(values) {
            self.cells.insert(a, *v);
        }
        Ok(())
    }

    pub fn get(&self, addr: u16) -> Option<T> {
        self.cells.get(&addr).copied()
    }
}

/// Input registers: base values plus a per-register read counter that makes them drift.
#[derive(Debug, Clone, Default)]
pub struct ProcessTable {
    base: Table<u16>,
    reads: BTreeMap<u16, u16>,
}

impl ProcessTable {
    pub fn from_blocks(blocks: &[(u16, Vec<u16>)]) -> Self {
        Self {
            base: Table::from_blocks(blocks),
            reads: BTreeMap::new(),
        }
    }

    /// Reads the registers; each one read moves to its next value, so two consecutive reads
    /// of a register never return the same value.
    pub fn read(&mut self, addr: u16, qty: u16) -> Result<Vec<u16>, ExceptionCode> {
        let base = self.base.read(addr, qty, MAX_READ_REGISTERS)?;
        let mut out = Vec::with_capacity(base.len());
        for (a, b) in (addr..=u16::MAX).zip(base) {
            let n = self.reads.entry(a).or_insert(0);
            *n = n.wrapping_add(1);
            out.push(b.wrapping_add((n.wrapping_add(a)) % DRIFT_SPAN));
        }
        Ok(out)
    }
}

/// The four tables of one unit.
#[derive(Debug, Clone, Default)]
pub struct UnitTables {
    pub holding: Table<u16>,
    pub input: ProcessTable,
    pub coils: Table<bool>,
    pub discrete: Table<bool>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_need_every_address_mapped_and_sane_quantities() {
        let t = Table::from_blocks(&[(100, vec![1u16, 2, 3]), (103, vec![4])]);
        assert_eq!(t.read(100, 4, MAX_READ_REGISTERS), Ok(vec![1, 2, 3, 4]));
        assert_eq!(
            t.read(99, 2, MAX_READ_REGISTERS),
            Err(ExceptionCode::IllegalDataAddress)
        );
        assert_eq!(
            t.read(100, 5, MAX_READ_REGISTERS),
            Err(ExceptionCode::IllegalDataAddress)
        );
        assert_eq!(
            t.read(100, 0, MAX_READ_REGISTERS),
            Err(ExceptionCode::IllegalDataValue)
        );
        assert_eq!(
            t.read(100, 126, MAX_READ_REGISTERS),
            Err(ExceptionCode::IllegalDataValue)
        );
        assert_eq!(
            t.read(u16::MAX, 2, MAX_READ_REGISTERS),
            Err(ExceptionCode::IllegalDataAddress)
        );
    }

    #[test]
    fn writes_land_only_on_mapped_addresses() {
        let mut t = Table::from_blocks(&[(0, vec![0u16; 4])]);
        assert_eq!(t.write(1, &[7, 8], MAX_WRITE_REGISTERS), Ok(()));
        assert_eq!(t.read(0, 4, MAX_READ_REGISTERS), Ok(vec![0, 7, 8, 0]));
        assert_eq!(
            t.write(3, &[1, 1], MAX_WRITE_REGISTERS),
            Err(ExceptionCode::IllegalDataAddress)
        );
        assert_eq!(t.get(3), Some(0));
    }

    #[test]
    fn process_values_change_on_every_read() {
        let mut p = ProcessTable::from_blocks(&[(0, vec![500, 600])]);
        let mut last = p.read(0, 2).unwrap();
        for _ in 0..40 {
            let next = p.read(0, 2).unwrap();
            assert_ne!(next[0], last[0]);
            assert_ne!(next[1], last[1]);
            assert!(
                next.iter()
                    .zip([500u16, 600])
                    .all(|(v, b)| *v >= b && *v < b + 16)
            );
            last = next;
        }
    }
}
