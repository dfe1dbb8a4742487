//! Exact values for `corestream run window-agg`: a value column holds integers or
//! floating-point numbers ([`Num`]), and the aggregates over them are computed and printed
//! without inventing or losing digits.
//!
//! Rules (shared by the job's accumulator [`ExactAcc`] and the reference model's
//! [`crate::window_model::Agg::apply`]):
//! - A field that parses as an `i64` or a `u64` is an integer; any other finite number is an
//!   `f64`.
//! - `count` is an integer. `sum` of integers only is their exact sum (`i128`: only more than
//!   2^63 values of magnitude up to 2^64 could overflow it, which no run reaches); with any float among them it is the float sum plus the exact integer sum, rounded
//!   once. `min`/`max` compare integers and floats exactly (no conversion to `f64`) and return
//!   the winning value as it was. `avg` of integers is an integer when the division is exact,
//!   else the `f64` quotient; with floats, the float sum divided by the count.
//! - Printing ([`Num`]'s `Display`): integers in full; floats in their shortest round-trip
//!   form, as Rust's `{:?}` writes them (plain decimals from 1e-4 up to below 1e16, exponent
//!   form such as `1e-7` or `1.5e300` outside that range), without a trailing `.0`, and zero
//!   as `0`. Parsing the printed text gives back the same `f64`.

use std::cmp::Ordering;
use std::fmt;

use corestream::rkyv::{Archive, Deserialize, Serialize};

/// A value read from the input or computed by an aggregate.
#[derive(Debug, Clone, Copy, Archive, Serialize, Deserialize)]
#[rkyv(crate = corestream::rkyv)]
pub enum Num {
    Int(i128),
    /// Always finite.
    Float(f64),
}

impl Num {
    /// Parses a field: an integer if it is one, else a finite `f64`; `None` if it is neither.
    pub fn parse(text: &str) -> Option<Num> {
        if let Ok(i) = text.parse::<i64>() {
            return Some(Num::Int(i128::from(i)));
        }
        if let Ok(u) = text.parse::<u64>() {
            return Some(Num::Int(i128::from(u)));
        }
        match text.parse::<f64>() {
            Ok(f) if f.is_finite() => Some(Num::Float(f)),
            _ => None,
        }
    }

    /// The nearest `f64`.
    pub fn to_f64(self) -> f64 {
        match self {
            Num::Int(i) => i as f64,
            Num::Float(f) => f,
        }
    }

    /// Exact numeric order (an integer and a float are compared without rounding either).
    pub fn cmp_exact(self, other: Num) -> Ordering {
        match (self, other) {
            (Num::Int(a), Num::Int(b)) => a.cmp(&b),
            (Num::Float(a), Num::Float(b)) => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
            (Num::Int(a), Num::Float(b)) => cmp_int_float(a, b),
            (Num::Float(a), Num::Int(b)) => cmp_int_float(b, a).reverse(),
        }
    }
}

/// `i` against the finite `f`, exactly.
fn cmp_int_float(i: i128, f: f64) -> Ordering {
    const TWO_127: f64 = 170_141_183_460_469_231_731_687_303_715_884_105_728.0;
    if f >= TWO_127 {
        return Ordering::Less;
    }
    if f < -TWO_127 {
        return Ordering::Greater;
    }
    let whole = f.trunc();
    // |whole| < 2^127 and integral, so the conversion is exact.
    match i.cmp(&(whole as i128)) {
        Ordering::Equal => 0.0f64.partial_cmp(&(f - whole)).unwrap_or(Ordering::Equal),
        unequal => unequal,
    }
}

/// Numeric equality (`Int(3) == Float(3.0)`).
impl PartialEq for Num {
    fn eq(&self, other: &Num) -> bool {
        self.cmp_exact(*other) == Ordering::Equal
    }
}

impl From<i64> for Num {
    fn from(i: i64) -> Num {
        Num::Int(i128::from(i))
    }
}

impl From<f64> for Num {
    fn from(f: f64) -> Num {
        Num::Float(f)
    }
}

impl fmt::Display for Num {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Num::Int(i) => write!(f, "{i}"),
            Num::Float(x) => {
                // Zero of either sign is `0`.
                let text = format!("{:?}", if x == 0.0 { 0.0 } else { x });
                f.write_str(text.strip_suffix(".0").unwrap_or(&text))
            }
        }
    }
}

/// The accumulator of every aggregate: what `count`, `sum`, `min`, `max` and `avg` need.
#[derive(Debug, Clone, Default, Archive, Serialize, Deserialize)]
#[rkyv(crate = corestream::rkyv)]
pub struct ExactAcc {
    pub count: u64,
    /// Sum of the integer values (cannot overflow: see the module documentation).
    pub int_sum: i128,
    /// Sum of the float values, and how many there were.
    pub float_sum: f64,
    pub floats: u64,
    pub min: Option<Num>,
    pub max: Option<Num>,
}

impl ExactAcc {
    pub fn add(&mut self, v: Num) {
        self.count += 1;
        match v {
            Num::Int(i) => self.int_sum += i,
            Num::Float(x) => {
                self.float_sum += x;
                self.floats += 1;
            }
        }
        self.min = Some(self.min.map_or(v, |m| if v.cmp_exact(m) == Ordering::Less { v } else { m }));
        self.max = Some(self.max.map_or(v, |m| if v.cmp_exact(m) == Ordering::Greater { v } else { m }));
    }

    pub fn merge(&mut self, other: &ExactAcc) {
        self.count += other.count;
        self.int_sum += other.int_sum;
        self.float_sum += other.float_sum;
        self.floats += other.floats;
        for v in [other.min, other.max].into_iter().flatten() {
            self.min = Some(self.min.map_or(v, |m| if v.cmp_exact(m) == Ordering::Less { v } else { m }));
            self.max = Some(self.max.map_or(v, |m| if v.cmp_exact(m) == Ordering::Greater { v } else { m }));
        }
    }

    pub fn sum(&self) -> Num {
        if self.floats == 0 {
            Num::Int(self.int_sum)
        } else {
            Num::Float(self.int_sum as f64 + self.float_sum)
        }
    }

    pub fn avg(&self) -> Num {
        let count = i128::from(self.count.max(1));
        if self.floats == 0 && self.int_sum % count == 0 {
            Num::Int(self.int_sum / count)
        } else {
            Num::Float(self.sum().to_f64() / count as f64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acc(values: &[&str]) -> ExactAcc {
        let mut a = ExactAcc::default();
        for v in values {
            a.add(Num::parse(v).unwrap());
        }
        a
    }

    #[test]
    fn integers_up_to_u64_max_stay_integers() {
        let max = Num::parse("18446744073709551615").unwrap();
        assert!(matches!(max, Num::Int(v) if v == i128::from(u64::MAX)), "{max:?}");
        assert_eq!(max.to_string(), "18446744073709551615");
        assert!(matches!(Num::parse("-9223372036854775808"), Some(Num::Int(v)) if v == i128::from(i64::MIN)));
        assert!(matches!(Num::parse("18446744073709551616"), Some(Num::Float(_))));
    }

    #[test]
    fn printed_values_are_exact_and_shortest() {
        let p = |s: &str| Num::parse(s).unwrap().to_string();
        assert_eq!(p("-1e-7"), "-1e-7");
        assert_eq!(p("123456789.123456789"), "123456789.12345679");
        assert_eq!(p("1.5e300"), "1.5e300");
        assert_eq!(p("9007199254740993"), "9007199254740993", "above 2^53, still exact");
        assert_eq!(p("-9223372036854775808"), "-9223372036854775808");
        assert_eq!(p("2.5"), "2.5");
        assert_eq!(p("3.0"), "3");
        assert_eq!(p("-0.0"), "0");
        assert_eq!(p("1e15"), "1000000000000000");
        assert_eq!(p("0.1"), "0.1");
        for s in ["-1e-7", "123456789.123456789", "1.5e300", "0.30000000000000004", "2.2250738585072014e-308"] {
            let x: f64 = s.parse().unwrap();
            assert_eq!(Num::Float(x).to_string().parse::<f64>().unwrap(), x, "{s} round-trips");
        }
        assert_eq!(Num::parse("NaN"), None);
        assert_eq!(Num::parse("1e400"), None);
        assert_eq!(Num::parse("x"), None);
    }

    #[test]
    fn aggregates_are_exact() {
        let a = acc(&["-1e-7"]);
        assert_eq!((a.min.unwrap().to_string(), a.max.unwrap().to_string()), ("-1e-7".into(), "-1e-7".into()));
        let big = acc(&["9223372036854775807", "9223372036854775807", "1"]);
        assert_eq!(big.sum().to_string(), "18446744073709551615", "no overflow, no rounding");
        assert_eq!(big.max.unwrap().to_string(), "9223372036854775807");
        assert_eq!(acc(&["9007199254740993", "1"]).sum().to_string(), "9007199254740994");
        assert_eq!(acc(&["1", "2", "3"]).avg().to_string(), "2");
        assert_eq!(acc(&["1", "2"]).avg().to_string(), "1.5");
        assert_eq!(acc(&["1", "1", "2"]).avg().to_string(), "1.3333333333333333");
        assert_eq!(acc(&["1", "0.5"]).sum().to_string(), "1.5");
        // An integer above 2^53 against the float it rounds to: compared exactly.
        let mixed = acc(&["9007199254740993", "9007199254740992.0"]);
        assert_eq!(mixed.max.unwrap().to_string(), "9007199254740993");
        assert_eq!(mixed.min.unwrap().to_string(), "9007199254740992");
        assert_eq!(acc(&["-2", "-1.5"]).min.unwrap().to_string(), "-2");
        assert_eq!(acc(&["1.5e300", "7"]).max.unwrap().to_string(), "1.5e300");
        let mut merged = acc(&["5", "0.25"]);
        merged.merge(&acc(&["-3"]));
        assert_eq!(
            (merged.count, merged.sum().to_string(), merged.min.unwrap().to_string()),
            (3, "2.25".into(), "-3".into())
        );
    }

    #[test]
    fn order_is_exact_between_integers_and_floats() {
        let i = |v: i128| Num::Int(v);
        let f = Num::Float;
        assert_eq!(i(1).cmp_exact(f(1.5)), Ordering::Less);
        assert_eq!(i(2).cmp_exact(f(1.5)), Ordering::Greater);
        assert_eq!(i(-2).cmp_exact(f(-1.5)), Ordering::Less);
        assert_eq!(i(-1).cmp_exact(f(-1.5)), Ordering::Greater);
        assert_eq!(i(3).cmp_exact(f(3.0)), Ordering::Equal);
        assert_eq!(i(i128::MAX).cmp_exact(f(1e300)), Ordering::Less);
        assert_eq!(i(i128::MIN).cmp_exact(f(-1e300)), Ordering::Greater);
        assert_eq!(f(0.5).cmp_exact(i(0)), Ordering::Greater);
    }
}
