//! Profile match patterns: case-insensitive, `*` for any run of characters, `[abc]` for one of
//! the listed characters; everything else literal. Matching is bounded (no backtracking
//! explosion: a dynamic-programming pass over pattern × text, both capped in length).

/// Longest pattern accepted, in characters.
pub const MAX_PATTERN_CHARS: usize = 128;
/// Longest text compared (identity values are capped at 255 characters anyway).
const MAX_TEXT_CHARS: usize = 512;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Any,
    Char(char),
    Set(Vec<char>),
}

/// A compiled pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    text: String,
    tokens: Vec<Token>,
}

impl Pattern {
    /// Compiles `text`, or says what is wrong with it.
    pub fn new(text: &str) -> Result<Pattern, String> {
        if text.chars().count() > MAX_PATTERN_CHARS {
            return Err(format!(
                "pattern longer than {MAX_PATTERN_CHARS} characters"
            ));
        }
        let mut tokens = Vec::new();
        let mut chars = text.chars().flat_map(char::to_lowercase);
        while let Some(c) = chars.next() {
            match c {
                '*' => {
                    if tokens.last() != Some(&Token::Any) {
                        tokens.push(Token::Any);
                    }
                }
                '[' => {
                    let mut set = Vec::new();
                    loop {
                        match chars.next() {
                            Some(']') if !set.is_empty() => break,
                            Some(']') => return Err(format!("{text:?}: empty [] set")),
                            Some(c) => set.push(c),
                            None => return Err(format!("{text:?}: '[' without ']'")),
                        }
                    }
                    tokens.push(Token::Set(set));
                }
                c => tokens.push(Token::Char(c)),
            }
        }
        Ok(Pattern {
            text: text.to_owned(),
            tokens,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Characters that must match exactly (a measure of specificity).
    pub fn literal_len(&self) -> usize {
        self.tokens.iter().filter(|t| **t != Token::Any).count()
    }

    /// True when the whole of `text` matches (case-insensitive, outer whitespace ignored).
    pub fn matches(&self, text: &str) -> bool {
        let text: Vec<char> = text
            .trim()
            .chars()
            .flat_map(char::to_lowercase)
            .take(MAX_TEXT_CHARS + 1)
            .collect();
        if text.len() > MAX_TEXT_CHARS {
            return false;
        }
        // reach[j]: the tokens so far can consume exactly text[..j].
        let mut reach = vec![false; text.len() + 1];
        reach[0] = true;
        for token in &self.tokens {
            let mut next = vec![false; text.len() + 1];
            match token {
                Token::Any => {
                    let mut on = false;
                    for j in 0..=text.len() {
                        on |= reach[j];
                        next[j] = on;
                    }
                }
                Token::Char(c) => {
                    for j in 0..text.len() {
                        next[j + 1] = reach[j] && text[j] == *c;
                    }
                }
                Token::Set(set) => {
                    for j in 0..text.len() {
                        next[j + 1] = reach[j] && set.contains(&text[j]);
                    }
                }
            }
            reach = next;
        }
        reach[text.len()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_case_insensitively() {
        let p = Pattern::new("TM2[24]1*").unwrap();
        assert!(p.matches("TM221CE24T"));
        assert!(p.matches("tm241ce40t"));
        assert!(!p.matches("TM251MESE"));
        assert!(!p.matches("xTM221"));
        assert!(Pattern::new("*").unwrap().matches(""));
        assert!(Pattern::new("a*b*c").unwrap().matches("aXXbYYc"));
        assert!(!Pattern::new("a*b*c").unwrap().matches("aXXbYY"));
        assert!(Pattern::new("Siemens").unwrap().matches(" siemens "));
        assert_eq!(Pattern::new("TM2[24]1*").unwrap().literal_len(), 5);
        assert!(Pattern::new("a[").is_err());
        assert!(Pattern::new("a[]").is_err());
        assert!(Pattern::new(&"x".repeat(200)).is_err());
        // Pathological input stays cheap and bounded.
        let p = Pattern::new(&"*a".repeat(60)).unwrap();
        assert!(!p.matches(&"a".repeat(59)));
        assert!(!p.matches(&"b".repeat(10_000)));
    }
}
