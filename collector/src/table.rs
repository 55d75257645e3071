//! Aligned text tables for people.
//!
//! Cells come from the network (device names, identity strings), so control characters are
//! escaped: a device must not be able to drive the operator's terminal.

/// A table with a header row.
#[derive(Debug, Clone)]
pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

/// Longest cell shown; longer values are cut with `…` (JSON output is never cut).
pub const MAX_CELL: usize = 64;

impl Table {
    /// An empty table with these column headers.
    pub fn new(headers: &[&'static str]) -> Self {
        Self {
            headers: headers.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row (missing cells are blank, extra cells ignored).
    pub fn row(&mut self, cells: Vec<String>) {
        let mut cells: Vec<String> = cells.into_iter().map(|c| clean(&c)).collect();
        cells.resize(self.headers.len(), String::new());
        self.rows.push(cells);
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table as text, columns separated by two spaces, no trailing blanks.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let header: Vec<String> = self.headers.iter().map(|h| (*h).to_owned()).collect();
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                line.push_str(cell);
                if i + 1 < row.len() {
                    line.extend(std::iter::repeat_n(' ', w - cell.chars().count()));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Escapes control characters and cuts long values.
fn clean(cell: &str) -> String {
    let mut out = String::with_capacity(cell.len());
    for (n, c) in cell.chars().enumerate() {
        if n >= MAX_CELL {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// A cell for an optional value: the value or `-`.
pub fn opt<T: std::fmt::Display>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligns_and_escapes() {
        let mut t = Table::new(&["NAME", "STATUS"]);
        t.row(vec!["plc-1".into(), "ok".into()]);
        t.row(vec!["evil\x1b[2J".into(), "unreachable".into()]);
        let text = t.render();
        assert_eq!(
            text,
            "NAME           STATUS\nplc-1          ok\nevil\\u{1b}[2J  unreachable\n"
        );
        assert_eq!(clean(&"x".repeat(100)).chars().count(), MAX_CELL + 1);
        assert_eq!(opt(None::<u8>), "-");
    }
}
