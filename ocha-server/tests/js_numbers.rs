//! Every number in a document is written as JavaScript writes it: Node.js
//! prints `String(x)` for a large sample of doubles, and the serialized
//! documents must hold exactly the same text, and read back as the same
//! number.
//!
//! Needs `node` on the PATH (`scripts/test.sh` installs it).

use std::io::ErrorKind;
use std::path::Path;
use std::process::Command;

use ocha_server::event::ExtraChf;

/// Random finite bit patterns: every exponent, sign and layout.
const RANDOM_BITS: usize = 100_000;
/// Prices in cents, as the API mostly sees: `n / 100`.
const PRICES: usize = 20_000;
/// Integers around 2^53, where doubles stop holding every integer.
const NEAR_2_POW_53: usize = 10_000;
/// Decimals of up to 17 digits from 1e-25 to 1e24, across the spec's layout
/// boundaries (1e21 and 1e-6), which random bit patterns rarely reach.
const DECIMALS: usize = 20_000;

/// Reads hex bit patterns, one a line, from the file named by its argument,
/// and prints `String(x)` for each double.
const NODE_SCRIPT: &str = r#"
const view = new DataView(new ArrayBuffer(8));
const lines = require("fs").readFileSync(process.argv[1], "utf8").trim().split("\n");
const out = lines.map((hex) => {
  view.setBigUint64(0, BigInt("0x" + hex));
  return String(view.getFloat64(0));
});
process.stdout.write(out.join("\n") + "\n");
"#;

/// SplitMix64: a tiny, fixed-seed generator so every run checks the same sample.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..bound`; the bias is irrelevant here.
    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }

    fn signed(&mut self, x: f64) -> f64 {
        if self.next() & 1 == 0 {
            x
        } else {
            -x
        }
    }
}

fn sample() -> Vec<f64> {
    let mut rng = SplitMix64(0x0c4a_2026);
    let mut xs = Vec::with_capacity(RANDOM_BITS + PRICES + NEAR_2_POW_53 + DECIMALS);
    while xs.len() < RANDOM_BITS {
        let x = f64::from_bits(rng.next());
        if x.is_finite() {
            xs.push(x);
        }
    }
    for _ in 0..PRICES {
        xs.push(rng.below(100_000_000) as f64 / 100.0);
    }
    for _ in 0..NEAR_2_POW_53 {
        let offset = rng.below(1 << 13) as i64 - (1 << 12);
        xs.push(rng.signed(((1i64 << 53) + offset) as f64));
    }
    for _ in 0..DECIMALS {
        let length = 1 + rng.below(17) as u32;
        let digits = rng.below(10u64.pow(length));
        let exponent = rng.below(33) as i64 - 25;
        let x: f64 = format!("{digits}e{exponent}").parse().unwrap();
        xs.push(rng.signed(x));
    }
    xs
}

/// The number as a document carries it, a surcharge inside `extra_chf`, and
/// the number read back from that document.
fn round_trip(x: f64) -> (String, f64) {
    let json = serde_json::to_string(&ExtraChf {
        s: x,
        m: 0.0,
        l: 0.0,
    })
    .unwrap();
    let number = json
        .strip_prefix(r#"{"S":"#)
        .and_then(|rest| rest.strip_suffix(r#","M":0,"L":0}"#))
        .unwrap_or_else(|| panic!("unexpected document {json}"));
    let back: ExtraChf = serde_json::from_str(&json).unwrap();
    (number.to_owned(), back.s)
}

/// `String(x)` in Node.js for each of `xs`, in one run.
fn node_strings(xs: &[f64], dir: &Path) -> Vec<String> {
    let input = dir.join("js_numbers.hex");
    let hex: Vec<String> = xs.iter().map(|x| format!("{:016x}", x.to_bits())).collect();
    std::fs::write(&input, hex.join("\n")).unwrap();
    let output = match Command::new("node")
        .arg("-e")
        .arg(NODE_SCRIPT)
        .arg(&input)
        .output()
    {
        Ok(output) => output,
        Err(e) if e.kind() == ErrorKind::NotFound => panic!(
            "this test compares with Node.js but `node` is not on the PATH: \
             install it (Debian: apt-get install nodejs) or run scripts/test.sh, which does"
        ),
        Err(e) => panic!("could not run node: {e}"),
    };
    assert!(
        output.status.success(),
        "node failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn numbers_serialize_exactly_as_javascript_prints_them_and_read_back() {
    let xs = sample();
    let expected = node_strings(&xs, Path::new(env!("CARGO_TARGET_TMPDIR")));
    assert_eq!(expected.len(), xs.len(), "node printed one line per number");

    let mismatches: Vec<String> = xs
        .iter()
        .zip(&expected)
        .filter_map(|(&x, js)| {
            let (ours, back) = round_trip(x);
            // -0 prints as 0 and reads back as 0; every other double exactly.
            let read_back = back.to_bits() == x.to_bits() || (x == 0.0 && back == 0.0);
            (ours != *js || !read_back).then(|| {
                format!(
                    "{:016x}: JavaScript {js}, ours {ours}, read back as {:016x}",
                    x.to_bits(),
                    back.to_bits()
                )
            })
        })
        .collect();
    assert!(
        mismatches.is_empty(),
        "{} of {} numbers differ from JavaScript or do not read back, first ones:\n{}",
        mismatches.len(),
        xs.len(),
        mismatches[..mismatches.len().min(20)].join("\n")
    );
}
