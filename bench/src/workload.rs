//! What each request is: the command mix, keys and values, pre-encoded.
//!
//! Every command of the mix is encoded once, up front, into a template. A request is a copy of
//! its template with random key digits written in place, so the load loop never formats or
//! allocates.

use crate::request::encode_command;

/// Placeholder for a random key (`key:` plus zero-padded digits) in a `--mix` command.
pub const KEY_PLACEHOLDER: &str = "__key__";
/// Placeholder for the value (`--value-size` bytes) in a `--mix` command.
pub const VALUE_PLACEHOLDER: &str = "__value__";

/// One command of the mix.
#[derive(Debug, Clone)]
pub struct Command {
    /// Name used in reports: the command as written, upper-cased first word (`GET`, `HASH 100 x`).
    pub name: String,
    /// Relative weight in the mix.
    pub weight: u32,
    /// The encoded request, with key digits to be overwritten.
    template: Vec<u8>,
    /// Offsets of the key digit runs inside `template`.
    key_slots: Vec<usize>,
}

/// The weighted set of commands a run sends.
#[derive(Debug, Clone)]
pub struct Mix {
    pub commands: Vec<Command>,
    total_weight: u64,
    /// Digits in a key number (keys are `key:` plus this many digits).
    key_digits: usize,
    keyspace: u64,
}

impl Mix {
    /// Parses `GET=90,SET=9,HASH 100 x=1`. A command without arguments gets the usual ones for
    /// its name (`GET key`, `SET key value`, ...); `__key__` and `__value__` may be written
    /// anywhere. Weights default to 1.
    pub fn parse(spec: &str, keyspace: u64, value_size: usize) -> Result<Mix, String> {
        if keyspace == 0 {
            return Err("--keyspace must be at least 1".into());
        }
        let key_digits = (keyspace - 1).max(1).to_string().len();
        let value = make_value(value_size);
        let mut commands: Vec<Command> = Vec::new();
        for entry in spec.split(',') {
            let entry = entry.trim();
            if entry.is_empty() {
                continue;
            }
            let (text, weight) = match entry.rsplit_once('=') {
                Some((text, weight)) if weight.trim().parse::<u32>().is_ok() => {
                    (text.trim(), weight.trim().parse::<u32>().unwrap_or(1))
                }
                _ => (entry, 1),
            };
            let mut words: Vec<String> = text.split_whitespace().map(str::to_string).collect();
            if words.is_empty() {
                return Err(format!("empty command in --mix entry {entry:?}"));
            }
            words[0] = words[0].to_ascii_uppercase();
            let name = words.join(" ");
            if words.len() == 1 {
                words.extend(default_arguments(&words[0]).iter().map(|s| s.to_string()));
            }
            if commands.iter().any(|c| c.name == name) {
                return Err(format!("command {name:?} appears twice in --mix"));
            }
            let (template, key_slots) = build_template(&words, key_digits, &value);
            commands.push(Command {
                name,
                weight,
                template,
                key_slots,
            });
        }
        let total_weight: u64 = commands.iter().map(|c| u64::from(c.weight)).sum();
        if commands.is_empty() || total_weight == 0 {
            return Err(format!(
                "--mix {spec:?} has no command with a weight above 0"
            ));
        }
        Ok(Mix {
            commands,
            total_weight,
            key_digits,
            keyspace,
        })
    }

    /// Picks a command index by weight.
    pub fn pick(&self, rng: &mut Rng) -> usize {
        if self.commands.len() == 1 {
            return 0;
        }
        let mut ticket = rng.below(self.total_weight);
        for (index, command) in self.commands.iter().enumerate() {
            let weight = u64::from(command.weight);
            if ticket < weight {
                return index;
            }
            ticket -= weight;
        }
        self.commands.len() - 1
    }

    /// Appends one request for `command` to `out`, with fresh random keys.
    pub fn write_request(&self, command: usize, out: &mut Vec<u8>, rng: &mut Rng) {
        let command = &self.commands[command];
        let start = out.len();
        out.extend_from_slice(&command.template);
        for &slot in &command.key_slots {
            let key = rng.below(self.keyspace);
            write_digits(&mut out[start + slot..start + slot + self.key_digits], key);
        }
    }
}

/// The arguments a bare command name gets.
fn default_arguments(name: &str) -> &'static [&'static str] {
    match name {
        "GET" | "DEL" | "EXISTS" | "INCR" | "DECR" | "STRLEN" | "TTL" | "TYPE" => {
            &[KEY_PLACEHOLDER]
        }
        "SET" | "APPEND" | "GETSET" => &[KEY_PLACEHOLDER, VALUE_PLACEHOLDER],
        "INCRBY" | "DECRBY" => &[KEY_PLACEHOLDER, "1"],
        "ECHO" => &[VALUE_PLACEHOLDER],
        _ => &[],
    }
}

fn build_template(words: &[String], key_digits: usize, value: &[u8]) -> (Vec<u8>, Vec<usize>) {
    let key: Vec<u8> = format!("key:{}", "0".repeat(key_digits)).into_bytes();
    let args: Vec<&[u8]> = words
        .iter()
        .map(|w| match w.as_str() {
            KEY_PLACEHOLDER => key.as_slice(),
            VALUE_PLACEHOLDER => value,
            other => other.as_bytes(),
        })
        .collect();
    let mut template = Vec::new();
    encode_command(&mut template, &args);
    // Find where each key's digits landed: re-encode prefix by prefix.
    let mut key_slots = Vec::new();
    let mut prefix = Vec::new();
    prefix.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for (word, arg) in words.iter().zip(&args) {
        prefix.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        if word == KEY_PLACEHOLDER {
            key_slots.push(prefix.len() + "key:".len());
        }
        prefix.extend_from_slice(arg);
        prefix.extend_from_slice(b"\r\n");
    }
    debug_assert_eq!(prefix, template);
    (template, key_slots)
}

/// A printable, non-repeating-looking value of `size` bytes.
fn make_value(size: usize) -> Vec<u8> {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut rng = Rng::new(0x5eed);
    (0..size)
        .map(|_| ALPHABET[rng.below(ALPHABET.len() as u64) as usize])
        .collect()
}

/// Writes `value` as zero-padded decimal filling `out`.
fn write_digits(out: &mut [u8], mut value: u64) {
    for byte in out.iter_mut().rev() {
        *byte = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// A small, fast generator (SplitMix64): keys, command picks and Poisson gaps need speed and
/// spread, not cryptographic quality.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..bound` (bound > 0), by multiply-shift.
    pub fn below(&mut self, bound: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(bound)) >> 64) as u64
    }

    /// Uniform in (0, 1].
    pub fn unit_open_closed(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::encode_command;

    #[test]
    fn parses_weights_and_defaults() {
        let mix = Mix::parse("GET=90,SET=9,HASH 100 x=1", 1000, 4).unwrap();
        let names: Vec<_> = mix
            .commands
            .iter()
            .map(|c| (c.name.as_str(), c.weight))
            .collect();
        assert_eq!(names, [("GET", 90), ("SET", 9), ("HASH 100 x", 1)]);
        let mut rng = Rng::new(1);
        let mut out = Vec::new();
        mix.write_request(2, &mut out, &mut rng);
        let mut expected = Vec::new();
        encode_command(&mut expected, &["HASH", "100", "x"]);
        assert_eq!(out, expected);
    }

    #[test]
    fn writes_keys_in_place() {
        let mix = Mix::parse("get", 1000, 3).unwrap();
        let mut rng = Rng::new(7);
        for _ in 0..100 {
            let mut out = Vec::new();
            mix.write_request(0, &mut out, &mut rng);
            let text = String::from_utf8(out).unwrap();
            assert!(
                text.starts_with("*2\r\n$3\r\nGET\r\n$7\r\nkey:"),
                "{text:?}"
            );
            let digits = &text[text.len() - 5..text.len() - 2];
            assert!(digits.bytes().all(|b| b.is_ascii_digit()), "{text:?}");
        }
        let set = Mix::parse("SET", 10, 5).unwrap();
        let mut out = Vec::new();
        set.write_request(0, &mut out, &mut rng);
        assert!(out.starts_with(b"*3\r\n$3\r\nSET\r\n$5\r\nkey:"));
        let mut shape = Vec::new();
        encode_command(&mut shape, &["SET", "key:0", "vvvvv"]);
        assert_eq!(out.len(), shape.len());
    }

    #[test]
    fn picks_by_weight() {
        let mix = Mix::parse("PING=3,ECHO=1", 10, 1).unwrap();
        let mut rng = Rng::new(3);
        let mut counts = [0u32; 2];
        for _ in 0..40_000 {
            counts[mix.pick(&mut rng)] += 1;
        }
        assert!((29_000..31_000).contains(&counts[0]), "{counts:?}");
    }

    #[test]
    fn rejects_empty_and_duplicate() {
        assert!(Mix::parse("", 10, 1).is_err());
        assert!(Mix::parse("GET=0", 10, 1).is_err());
        assert!(Mix::parse("GET,get", 10, 1).is_err());
    }
}
