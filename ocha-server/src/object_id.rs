//! Product ids in MongoDB ObjectId layout, so they look exactly like the
//! ids the Ocha API hands out.
//!
//! An id is 12 bytes printed as 24 lowercase hex digits: 4 bytes of Unix
//! seconds (big-endian), 5 random bytes fixed for the process and a 3-byte
//! counter that starts at a random value.

use std::fmt::Write;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::LazyLock;

/// The process-wide generator: MongoDB draws its random bytes once per process.
static GENERATOR: LazyLock<Generator> = LazyLock::new(Generator::random);

/// Returns a fresh id for an object created at `unix_seconds`.
pub fn generate(unix_seconds: i64) -> String {
    GENERATOR.next(unix_seconds)
}

/// Whether `candidate` has the shape of an ObjectId: exactly 24 hex digits.
///
/// Upper-case digits are accepted, as MongoDB does; compare ids after
/// [`str::to_ascii_lowercase`].
pub fn is_valid(candidate: &str) -> bool {
    candidate.len() == 24 && candidate.bytes().all(|b| b.is_ascii_hexdigit())
}

struct Generator {
    process: [u8; 5],
    counter: AtomicU32,
}

impl Generator {
    fn random() -> Generator {
        Generator::with_parts(rand::random(), rand::random())
    }

    fn with_parts(process: [u8; 5], counter_start: u32) -> Generator {
        Generator {
            process,
            counter: AtomicU32::new(counter_start),
        }
    }

    fn next(&self, unix_seconds: i64) -> String {
        // The timestamp field is 32 bits wide, as in MongoDB (it wraps in 2106).
        let seconds = unix_seconds as u32;
        // 2^24 divides 2^32, so masking the wrapping 32-bit counter yields a
        // 24-bit counter that wraps cleanly.
        let count = self.counter.fetch_add(1, Ordering::Relaxed) & 0x00FF_FFFF;

        let mut bytes = [0u8; 12];
        bytes[..4].copy_from_slice(&seconds.to_be_bytes());
        bytes[4..9].copy_from_slice(&self.process);
        bytes[9..].copy_from_slice(&count.to_be_bytes()[1..]);

        bytes
            .iter()
            .fold(String::with_capacity(24), |mut hex, byte| {
                // Writing to a String cannot fail.
                let _ = write!(hex, "{byte:02x}");
                hex
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_the_object_id_layout() {
        let generator = Generator::with_parts([0xde, 0xad, 0xbe, 0xef, 0x01], 0x0a0b0c);
        assert_eq!(generator.next(0x6564_3f1a), "65643f1adeadbeef010a0b0c");
        assert_eq!(generator.next(0x6564_3f1b), "65643f1bdeadbeef010a0b0d");
    }

    #[test]
    fn counter_wraps_at_24_bits() {
        let generator = Generator::with_parts([0; 5], 0x00ff_ffff);
        assert!(generator.next(1).ends_with("ffffff"));
        assert!(generator.next(1).ends_with("000000"));
    }

    #[test]
    fn ids_from_one_process_share_their_random_bytes() {
        let a = generate(0x6564_3f1a);
        let b = generate(0x6564_3f1a);
        assert!(is_valid(&a) && a.bytes().all(|b| !b.is_ascii_uppercase()));
        assert_eq!(&a[..8], "65643f1a");
        assert_eq!(&a[..18], &b[..18]);
        // Other tests may draw ids in between, so only distinctness is certain.
        assert_ne!(a[18..], b[18..]);
    }

    #[test]
    fn validates_the_shape() {
        assert!(is_valid("65643f1adeadbeef010a0b0c"));
        assert!(is_valid("65643F1ADEADBEEF010A0B0C"));
        assert!(!is_valid("65643f1adeadbeef010a0b0"));
        assert!(!is_valid("65643f1adeadbeef010a0b0cd"));
        assert!(!is_valid("65643f1adeadbeef010a0b0g"));
        assert!(!is_valid(""));
    }
}
