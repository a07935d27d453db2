//! Numbers as JavaScript prints them, so documents match the Ocha API's byte
//! for byte: `JSON.stringify` writes a number as `Number.prototype.toString`
//! does (ECMA-262, "Number::toString", radix 10), which differs from Rust and
//! serde_json: `2`, not `2.0`; `0.000001`, not `1e-6`; `1e+21`, not `1e21`.

use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

/// Writes `value` as a JSON number token spelled as JavaScript spells it.
///
/// JSON has no NaN or infinity: a non-finite number is written as `null`, as
/// both serde_json and `JSON.stringify` do. Documents built from JSON never
/// hold one (serde_json refuses `1e400` rather than read it as infinity).
pub fn serialize<S: Serializer>(value: &f64, serializer: S) -> Result<S::Ok, S::Error> {
    if !value.is_finite() {
        return serializer.serialize_f64(*value);
    }
    RawValue::from_string(to_js_string(*value))
        .map_err(S::Error::custom)?
        .serialize(serializer)
}

/// Reads any JSON number.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    f64::deserialize(deserializer)
}

/// ECMAScript's Number::toString(x) in radix 10, for a finite `x`.
///
/// The digits come from [`shortest_digits`]; the layout rules below are the
/// spec's steps 6 to 10.
fn to_js_string(x: f64) -> String {
    debug_assert!(x.is_finite(), "{x} is not finite");
    // Also turns -0 into "0", as the spec does.
    if x == 0.0 {
        return "0".to_owned();
    }
    let (digits, n) = shortest_digits(x.abs());
    let k = digits.len() as i32;

    let mut out = String::with_capacity(digits.len() + 24);
    if x < 0.0 {
        out.push('-');
    }
    if k <= n && n <= 21 {
        // A whole number up to 21 digits: 10000000000000000, 1e+21 beyond.
        out.push_str(&digits);
        out.push_str(&"0".repeat((n - k) as usize));
    } else if 0 < n && n <= 21 {
        // The decimal point falls inside the digits: 123.456.
        let (whole, fraction) = digits.split_at(n as usize);
        out.push_str(whole);
        out.push('.');
        out.push_str(fraction);
    } else if -6 < n && n <= 0 {
        // Small, but not below 1e-6: 0.000001.
        out.push_str("0.");
        out.push_str(&"0".repeat(n.unsigned_abs() as usize));
        out.push_str(&digits);
    } else {
        // Exponent form, always signed: 1e+21, 1.5e-7.
        let (first, rest) = digits.split_at(1);
        out.push_str(first);
        if !rest.is_empty() {
            out.push('.');
            out.push_str(rest);
        }
        out.push_str(if n - 1 > 0 { "e+" } else { "e-" });
        out.push_str(&(n - 1).unsigned_abs().to_string());
    }
    out
}

/// The spec's digits `s` (k of them, as text) and exponent `n` of a positive
/// finite `x`, where `x = s × 10^(n−k)`: the fewest digits that read back as
/// `x`, and of those the closest to `x`, the even one on a tie.
///
/// Rust's `{:e}` gives the fewest digits and the closest, but does not break
/// ties to even: 1765635362649415.25 prints as …415.3 where JavaScript, like
/// the spec, has …415.2. So the same number of digits is also rounded from
/// the exact value, which breaks ties to even, and wins when it reads back as
/// `x` (a tie's even side may not, next to a power of two, where doubles are
/// closer together below).
fn shortest_digits(x: f64) -> (String, i32) {
    let shortest = format!("{x:e}");
    let k = shortest.find('e').expect("`{:e}` writes an exponent")
        - usize::from(shortest.contains('.'));
    let nearest = format!("{x:.*e}", k - 1);
    let chosen = if nearest != shortest && nearest.parse() == Ok(x) {
        nearest
    } else {
        shortest
    };
    let (mantissa, exponent) = chosen.split_once('e').expect("`{:e}` writes an exponent");
    let exponent: i32 = exponent.parse().expect("`{:e}` writes a decimal exponent");
    (mantissa.replace('.', ""), exponent + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each pair is a number and `String(number)` in Node.js 20.
    fn assert_prints(cases: &[(f64, &str)]) {
        for &(x, js) in cases {
            assert_eq!(to_js_string(x), js, "{x:e}");
        }
    }

    #[test]
    fn whole_numbers_have_no_fraction_up_to_21_digits() {
        assert_prints(&[
            (1.0, "1"),
            (2.0, "2"),
            (-3.0, "-3"),
            (100.0, "100"),
            (1e16, "10000000000000000"),
            (9_007_199_254_740_991.0, "9007199254740991"),
            (9_007_199_254_740_992.0, "9007199254740992"),
            (-9_007_199_254_740_994.0, "-9007199254740994"),
            (18_446_744_073_709_551_616.0, "18446744073709552000"),
            (123_456_789_012_345_680_000.0, "123456789012345680000"),
            // The largest double below 1e21, and 1e21.
            (
                f64::from_bits(1e21f64.to_bits() - 1),
                "999999999999999900000",
            ),
            (1e21, "1e+21"),
            (1.5e21, "1.5e+21"),
        ]);
    }

    #[test]
    fn zero_has_no_sign() {
        assert_prints(&[(0.0, "0"), (-0.0, "0")]);
    }

    #[test]
    fn fractions_use_a_point_down_to_a_millionth() {
        assert_prints(&[
            (6.5, "6.5"),
            (0.1, "0.1"),
            (0.1 + 0.2, "0.30000000000000004"),
            (-1.25, "-1.25"),
            (123.456, "123.456"),
            (1e-6, "0.000001"),
            (0.000_001_234, "0.000001234"),
            (-0.000_001_5, "-0.0000015"),
            (1e-7, "1e-7"),
            (1.5e-7, "1.5e-7"),
            // The largest double below 1e-6.
            (
                f64::from_bits(1e-6f64.to_bits() - 1),
                "9.999999999999997e-7",
            ),
            (123e-20, "1.23e-18"),
        ]);
    }

    #[test]
    fn extremes_use_exponent_form() {
        assert_prints(&[
            (f64::MAX, "1.7976931348623157e+308"),
            (f64::MIN, "-1.7976931348623157e+308"),
            (f64::MIN_POSITIVE, "2.2250738585072014e-308"),
            (5e-324, "5e-324"),
            (-5e-324, "-5e-324"),
            (1e300, "1e+300"),
        ]);
    }

    #[test]
    fn ties_between_shortest_digits_go_to_the_even_one() {
        assert_prints(&[
            // Exactly halfway between …415.2 and …415.3, both as short.
            // (Sums, not literals: the fractions are exact in binary.)
            (1_765_635_362_649_415.0 + 0.25, "1765635362649415.2"),
            (-1_765_635_362_649_415.0 - 0.25, "-1765635362649415.2"),
            (272_456_860_044_358.0 + 0.125, "272456860044358.12"),
            (26_424_816_963_004.0 + 0.5625, "26424816963004.562"),
            // Halfway with the even side above.
            (1_765_635_362_649_415.0 + 0.75, "1765635362649415.8"),
        ]);
    }

    /// A number written and read through this module.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Price(#[serde(with = "crate::event::js_number")] f64);

    fn json(x: f64) -> String {
        serde_json::to_string(&Price(x)).unwrap()
    }

    #[test]
    fn serializes_as_a_bare_json_number() {
        assert_eq!(json(4.0), "4");
        assert_eq!(json(1e-6), "0.000001");
        assert_eq!(json(1e21), "1e+21");
        // As in JSON.stringify.
        assert_eq!(json(f64::NAN), "null");
        assert_eq!(json(f64::NEG_INFINITY), "null");
    }

    #[test]
    fn reads_back_the_number_it_wrote() {
        // serde_json's default parser may land one double off with many
        // digits or a far exponent (6.503898175408194e-258 read as …195);
        // JSON.parse never does, hence serde_json's float_roundtrip feature.
        for x in [0.1 + 0.2, 6.503898175408194e-258, 1e21, 5e-324, f64::MAX] {
            let back: Price = serde_json::from_str(&json(x)).unwrap();
            assert_eq!(back.0.to_bits(), x.to_bits(), "{}", json(x));
        }
    }
}
