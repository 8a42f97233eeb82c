//! INCRBYFLOAT's arithmetic, as redis-server does it on x86-64: C's `long double` (the x87
//! 80-bit format: a 64-bit significand), parsed by `strtold`, added with one rounding, and
//! printed with `"%.17Lf"` less its trailing zeros. An `f64` would answer `0.1 + 0.2` with
//! `0.30000000000000004`; Redis answers `0.3`, so the value is carried exactly: a 64-bit
//! significand and a binary exponent, every rounding done on exact big integers (to nearest,
//! ties to even, as the FPU and glibc's `printf` do).

use num_bigint::BigUint;

/// The exponent of the lowest significand bit of the smallest subnormal `long double`.
const EXPONENT_MIN: i64 = -16445;
/// The exponent of the lowest significand bit of the largest finite `long double`.
const EXPONENT_MAX: i64 = 16320;
/// Redis's `MAX_LONG_DOUBLE_CHARS`: longer input is not a float to `string2ld`.
const INPUT_MAX: usize = 5 * 1024;

/// A `long double` value: `±significand × 2^exponent`, or an infinity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LongDouble {
    Finite {
        negative: bool,
        significand: u64,
        exponent: i64,
    },
    Infinite {
        negative: bool,
    },
}

/// An exact rational `±numerator / denominator`, before rounding.
struct Exact {
    negative: bool,
    numerator: BigUint,
    denominator: BigUint,
}

impl Exact {
    /// Rounds to the nearest `long double` (ties to even); past the largest finite value it is
    /// an infinity, below half the smallest subnormal a (signed) zero.
    fn round(self) -> LongDouble {
        let Exact {
            negative,
            numerator,
            denominator,
        } = self;
        if numerator == BigUint::ZERO {
            return LongDouble::Finite {
                negative,
                significand: 0,
                exponent: 0,
            };
        }
        // Scale by 2^-exponent so that the quotient has 64 bits, or fewer for a subnormal.
        let estimate = i64::try_from(numerator.bits()).unwrap_or(i64::MAX)
            - i64::try_from(denominator.bits()).unwrap_or(i64::MAX)
            - 64;
        let mut exponent = estimate.max(EXPONENT_MIN);
        let divide = |exponent: i64| {
            let (n, d) = if exponent >= 0 {
                (numerator.clone(), &denominator << exponent as u64)
            } else {
                (&numerator << exponent.unsigned_abs(), denominator.clone())
            };
            (&n / &d, &n % &d, d)
        };
        let (mut quotient, mut remainder, mut divisor) = divide(exponent);
        // The estimate can be one short: then the quotient has 65 bits.
        if quotient.bits() > 64 {
            exponent += 1;
            (quotient, remainder, divisor) = divide(exponent);
        }
        let twice = &remainder << 1u8;
        let round_up = twice > divisor || (twice == divisor && quotient.bit(0));
        if round_up {
            quotient += 1u8;
            if quotient.bits() > 64 {
                quotient >>= 1u8;
                exponent += 1;
            }
        }
        if exponent > EXPONENT_MAX {
            return LongDouble::Infinite { negative };
        }
        let significand = quotient.iter_u64_digits().next().unwrap_or(0);
        LongDouble::Finite {
            negative,
            significand,
            exponent,
        }
    }
}

impl LongDouble {
    /// What Redis's `string2ld` accepts, as `strtold` parses it: the whole input (a NUL byte
    /// included) must be a decimal or hexadecimal float or an infinity, with no leading space;
    /// NaN, and a value too large or so small that it rounds to zero, are refused.
    pub fn parse(input: &[u8]) -> Option<LongDouble> {
        if input.is_empty() || input.len() >= INPUT_MAX {
            return None;
        }
        let (negative, body) = match input.split_first() {
            Some((b'-', rest)) => (true, rest),
            Some((b'+', rest)) => (false, rest),
            _ => (false, input),
        };
        let lower = body.to_ascii_lowercase();
        if lower == b"inf" || lower == b"infinity" {
            return Some(LongDouble::Infinite { negative });
        }
        let exact = match lower.strip_prefix(b"0x") {
            Some(hex) => parse_positional(negative, hex, 16)?,
            None => parse_positional(negative, &lower, 10)?,
        };
        let nonzero = exact.numerator != BigUint::ZERO;
        match exact.round() {
            // ERANGE: an overflow, or an underflow all the way to zero.
            LongDouble::Infinite { .. } => None,
            LongDouble::Finite { significand: 0, .. } if nonzero => None,
            value => Some(value),
        }
    }

    /// The sum, rounded once; `None` for NaN (infinities of opposite signs).
    pub fn add(&self, other: &LongDouble) -> Option<LongDouble> {
        match (self, other) {
            (LongDouble::Infinite { negative: a }, LongDouble::Infinite { negative: b }) => {
                (a == b).then(|| self.clone())
            }
            (LongDouble::Infinite { .. }, _) => Some(self.clone()),
            (_, LongDouble::Infinite { .. }) => Some(other.clone()),
            (
                LongDouble::Finite {
                    negative: a_negative,
                    significand: a,
                    exponent: a_exponent,
                },
                LongDouble::Finite {
                    negative: b_negative,
                    significand: b,
                    exponent: b_exponent,
                },
            ) => {
                let base = (*a_exponent).min(*b_exponent);
                let a = BigUint::from(*a) << (a_exponent - base) as u64;
                let b = BigUint::from(*b) << (b_exponent - base) as u64;
                let (negative, magnitude) = if a_negative == b_negative {
                    (*a_negative, a + b)
                } else if a >= b {
                    (*a_negative, a - b)
                } else {
                    (*b_negative, b - a)
                };
                // x + (-x) is +0 when rounding to nearest.
                let negative = negative && magnitude != BigUint::ZERO;
                let (numerator, denominator) = if base >= 0 {
                    (magnitude << base as u64, BigUint::from(1u8))
                } else {
                    (magnitude, BigUint::from(1u8) << base.unsigned_abs())
                };
                Some(
                    Exact {
                        negative,
                        numerator,
                        denominator,
                    }
                    .round(),
                )
            }
        }
    }

    pub fn is_finite(&self) -> bool {
        matches!(self, LongDouble::Finite { .. })
    }

    /// Redis's `ld2string(.., LD_STR_HUMAN)` of a finite value: `"%.17Lf"`, then trailing zeros
    /// and a trailing point removed, and `-0` written `0`.
    pub fn to_human(&self) -> String {
        let LongDouble::Finite {
            negative,
            significand,
            exponent,
        } = self
        else {
            return if matches!(self, LongDouble::Infinite { negative: true }) {
                "-inf".into()
            } else {
                "inf".into()
            };
        };
        let scaled = BigUint::from(*significand) * BigUint::from(10u8).pow(17);
        let hundred_quadrillionths = if *exponent >= 0 {
            scaled << *exponent as u64
        } else {
            let divisor = BigUint::from(1u8) << exponent.unsigned_abs();
            let (quotient, remainder) = (&scaled / &divisor, &scaled % &divisor);
            let twice = remainder << 1u8;
            if twice > divisor || (twice == divisor && quotient.bit(0)) {
                quotient + 1u8
            } else {
                quotient
            }
        };
        let digits = format!("{hundred_quadrillionths:0>18}");
        let (whole, fraction) = digits.split_at(digits.len() - 17);
        let fraction = fraction.trim_end_matches('0');
        let mut text = String::with_capacity(digits.len() + 2);
        if *negative {
            text.push('-');
        }
        text.push_str(whole);
        if !fraction.is_empty() {
            text.push('.');
            text.push_str(fraction);
        }
        if text == "-0" {
            text.remove(0);
        }
        text
    }
}

/// A decimal (`radix` 10: `digits[.digits][e[±]digits]`, a power of ten) or hexadecimal
/// (`radix` 16, after `0x`: `hexdigits[.hexdigits][p[±]digits]`, a power of two) float, at
/// least one digit before the exponent, which is decimal either way.
fn parse_positional(negative: bool, text: &[u8], radix: u32) -> Option<Exact> {
    let (exponent_mark, digit_power) = if radix == 16 { (b'p', 4) } else { (b'e', 1) };
    let (mantissa, exponent) = match memchr::memchr(exponent_mark, text) {
        Some(at) => (&text[..at], Some(&text[at + 1..])),
        None => (text, None),
    };
    let (whole, fraction) = match memchr::memchr(b'.', mantissa) {
        Some(at) => (&mantissa[..at], &mantissa[at + 1..]),
        None => (mantissa, &b""[..]),
    };
    let all_digits = |part: &[u8]| part.iter().all(|&c| char::from(c).is_digit(radix));
    if whole.len() + fraction.len() == 0 || !all_digits(whole) || !all_digits(fraction) {
        return None;
    }
    let mut power = -digit_power * i64::try_from(fraction.len()).ok()?;
    if let Some(exponent) = exponent {
        let (sign, digits) = match exponent.split_first() {
            Some((b'-', rest)) => (-1, rest),
            Some((b'+', rest)) => (1, rest),
            _ => (1, exponent),
        };
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        // Past ±100,000 the value is infinite or zero whatever the digits: saturate there.
        let value = digits
            .iter()
            .try_fold(0i64, |value, digit| {
                let next = value * 10 + i64::from(digit - b'0');
                (next <= 100_000).then_some(next)
            })
            .unwrap_or(100_000);
        power += sign * value;
    }
    let numerator = BigUint::parse_bytes(&[whole, fraction].concat(), radix)?;
    let one = || BigUint::from(1u8);
    // Far outside the range (2^-16445 to 2^16384) the answer is known without a huge power:
    // log2(10) is taken as 3.321, close enough at this distance.
    let power_bits = if radix == 16 {
        power
    } else {
        power * 3321 / 1000
    };
    let magnitude_bits = i64::try_from(numerator.bits()).ok()? + power_bits;
    let (numerator, denominator) = if numerator == BigUint::ZERO {
        (numerator, one())
    } else if magnitude_bits > 17_000 {
        (one() << 17_000u32, one())
    } else if magnitude_bits < -17_000 {
        (one(), one() << 17_000u32)
    } else if radix == 16 && power >= 0 {
        (numerator << power.unsigned_abs(), one())
    } else if radix == 16 {
        (numerator, one() << power.unsigned_abs())
    } else if power >= 0 {
        (
            numerator * BigUint::from(10u8).pow(u32::try_from(power).ok()?),
            one(),
        )
    } else {
        (
            numerator,
            BigUint::from(10u8).pow(u32::try_from(-power).ok()?),
        )
    };
    Some(Exact {
        negative,
        numerator,
        denominator,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(a: &str, b: &str) -> String {
        let a = LongDouble::parse(a.as_bytes()).expect("a");
        let b = LongDouble::parse(b.as_bytes()).expect("b");
        a.add(&b).expect("not NaN").to_human()
    }

    #[test]
    fn sums_print_as_redis_prints_them() {
        // tests/redis_diff.rs checks these and more against redis-server itself.
        for (a, b, want) in [
            ("0.1", "0.2", "0.3"),
            ("10.5", "0.1", "10.6"),
            ("0", "3.0e3", "3000"),
            ("5.0e3", "-2.0e2", "4800"),
            ("1", "-1", "0"),
            ("-1", "0.5", "-0.5"),
            ("0", "1e-18", "0"),
            ("0", "-1e-18", "0"),
            ("1.5", "0", "1.5"),
            ("0x10", "1", "17"),
            ("12345678901234567890", "1", "12345678901234567891"),
        ] {
            assert_eq!(sum(a, b), want, "{a} + {b}");
        }
    }

    #[test]
    fn parse_refuses_what_string2ld_refuses() {
        for bad in [
            &b""[..],
            b" 1",
            b"1 ",
            b"abc",
            b"1e",
            b"nan",
            b"1e99999",
            b"1e-99999",
            b".",
            b"--1",
        ] {
            assert_eq!(LongDouble::parse(bad), None, "{bad:?}");
        }
        for good in [
            &b"1"[..],
            b"-1.5",
            b"+2",
            b".5",
            b"5.",
            b"1e3",
            b"inf",
            b"-Infinity",
        ] {
            assert!(LongDouble::parse(good).is_some(), "{good:?}");
        }
        assert_eq!(LongDouble::parse(b"1\0junk"), None);
    }

    #[test]
    fn infinities_and_nan() {
        let inf = LongDouble::parse(b"inf").unwrap();
        let minus = LongDouble::parse(b"-inf").unwrap();
        assert!(!inf
            .add(&LongDouble::parse(b"1").unwrap())
            .unwrap()
            .is_finite());
        assert_eq!(inf.add(&minus), None);
    }
}
