//! Redis's glob (`stringmatchlen` in `util.c`, case-sensitive), as KEYS and SCAN MATCH use it:
//! `*`, `?`, `[abc]`, `[^a]`, `[a-c]` (ends in either order), `\x` for a literal `x`.
//!
//! A line-for-line port, quirks included, so that a pattern matches here exactly what it
//! matches in redis-server: bytes compare as C's signed `char` inside ranges, an unclosed `[`
//! takes the rest of the pattern as its set, reading one past the pattern's end sees the NUL
//! an sds string ends with, and past 1,000 nested `*` nothing matches (Redis's guard against
//! patterns built to take exponential time).

/// Whether `string` matches `pattern`.
pub fn glob_match(pattern: &[u8], string: &[u8]) -> bool {
    let mut skip_longer_matches = false;
    matches(pattern, string, &mut skip_longer_matches, 0)
}

/// The byte at `index`, or the NUL terminator past the end (Redis reads it there).
fn at(bytes: &[u8], index: usize) -> u8 {
    bytes.get(index).copied().unwrap_or(0)
}

/// C's `char` on x86-64: signed.
fn signed(byte: u8) -> i8 {
    i8::from_ne_bytes([byte])
}

fn matches(pattern: &[u8], string: &[u8], skip_longer_matches: &mut bool, nesting: u32) -> bool {
    if nesting > 1000 {
        return false;
    }
    let (mut p, mut s) = (0usize, 0usize);
    while p < pattern.len() && s < string.len() {
        match pattern[p] {
            b'*' => {
                while p < pattern.len() && at(pattern, p + 1) == b'*' {
                    p += 1;
                }
                if pattern.len() - p == 1 {
                    return true;
                }
                while s < string.len() {
                    if matches(
                        &pattern[p + 1..],
                        &string[s..],
                        skip_longer_matches,
                        nesting + 1,
                    ) {
                        return true;
                    }
                    if *skip_longer_matches {
                        return false;
                    }
                    s += 1;
                }
                *skip_longer_matches = true;
                return false;
            }
            b'?' => s += 1,
            b'[' => {
                p += 1;
                let negate = at(pattern, p) == b'^';
                if negate {
                    p += 1;
                }
                let mut matched = false;
                let c = string[s];
                loop {
                    let left = pattern.len().saturating_sub(p);
                    if at(pattern, p) == b'\\' && left >= 2 {
                        p += 1;
                        if at(pattern, p) == c {
                            matched = true;
                        }
                    } else if at(pattern, p) == b']' {
                        break;
                    } else if left == 0 {
                        // Unclosed: step back so that the loop's end lands on the pattern's end.
                        p -= 1;
                        break;
                    } else if left >= 3 && at(pattern, p + 1) == b'-' {
                        let (mut start, mut end) =
                            (signed(at(pattern, p)), signed(at(pattern, p + 2)));
                        if start > end {
                            std::mem::swap(&mut start, &mut end);
                        }
                        p += 2;
                        if (start..=end).contains(&signed(c)) {
                            matched = true;
                        }
                    } else if at(pattern, p) == c {
                        matched = true;
                    }
                    p += 1;
                }
                if negate {
                    matched = !matched;
                }
                if !matched {
                    return false;
                }
                s += 1;
            }
            byte => {
                let literal = if byte == b'\\' && pattern.len() - p >= 2 {
                    p += 1;
                    pattern[p]
                } else {
                    byte
                };
                if literal != string[s] {
                    return false;
                }
                s += 1;
            }
        }
        p += 1;
        if s == string.len() {
            while at(pattern, p) == b'*' {
                p += 1;
            }
            break;
        }
    }
    p >= pattern.len() && s == string.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_as_in_redis() {
        for (pattern, string, want) in [
            // As stringmatchlen: an empty string matches no pattern but the empty one (KEYS
            // and SCAN skip matching for a lone `*`, so they still list the empty key).
            ("*", "", false),
            ("*", "anything", true),
            ("h?llo", "hello", true),
            ("h?llo", "hllo", false),
            ("h*llo", "heeeello", true),
            ("h[ae]llo", "hallo", true),
            ("h[ae]llo", "hillo", false),
            ("h[^e]llo", "hallo", true),
            ("h[^e]llo", "hello", false),
            ("h[a-b]llo", "hbllo", true),
            ("h[b-a]llo", "hallo", true),
            ("h\\*llo", "h*llo", true),
            ("h\\*llo", "hello", false),
            ("a*", "", false),
            ("", "", true),
            ("", "a", false),
            ("a**", "a", true),
            ("[abc", "a", true),
            ("[abc", "ab", false),
            ("*a*b", "xaxb", true),
            ("\\", "\\", true),
        ] {
            assert_eq!(
                glob_match(pattern.as_bytes(), string.as_bytes()),
                want,
                "{pattern:?} {string:?}"
            );
        }
    }
}
