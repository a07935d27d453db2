//! UTF-8 validation of a text message that arrives in pieces, failing as
//! soon as the bytes seen so far cannot start valid text (RFC 6455, 8.1).

/// Validates a byte stream piece by piece without keeping it: only the
/// unfinished character at the end of a piece (at most 3 bytes) is held.
#[derive(Debug, Default)]
pub(crate) struct Utf8Stream {
    pending: [u8; 4],
    pending_len: u8,
}

/// The bytes are not UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct InvalidUtf8;

impl Utf8Stream {
    /// Checks the next piece of the stream.
    pub(crate) fn feed(&mut self, mut input: &[u8]) -> Result<(), InvalidUtf8> {
        if self.pending_len > 0 {
            // Finish the character the last piece ended inside.
            let had = usize::from(self.pending_len);
            let take = (self.pending.len() - had).min(input.len());
            let mut joined = self.pending;
            joined[had..had + take].copy_from_slice(&input[..take]);
            match std::str::from_utf8(&joined[..had + take]) {
                Ok(_) => {
                    self.pending_len = 0;
                    input = &input[take..];
                }
                Err(error) if error.valid_up_to() > 0 => {
                    // The character is complete; the rest is checked below.
                    self.pending_len = 0;
                    input = &input[error.valid_up_to() - had..];
                }
                Err(error) if error.error_len().is_some() => return Err(InvalidUtf8),
                Err(_) => {
                    // Still unfinished: all of `input` fits in `pending`.
                    self.pending = joined;
                    self.pending_len = (had + take) as u8;
                    return Ok(());
                }
            }
        }
        match std::str::from_utf8(input) {
            Ok(_) => Ok(()),
            Err(error) if error.error_len().is_some() => Err(InvalidUtf8),
            Err(error) => {
                let tail = &input[error.valid_up_to()..];
                self.pending[..tail.len()].copy_from_slice(tail);
                // At most 3 bytes: a character's unfinished start.
                self.pending_len = tail.len() as u8;
                Ok(())
            }
        }
    }

    /// Ends the stream: valid only if no character is left unfinished.
    pub(crate) fn finish(&mut self) -> Result<(), InvalidUtf8> {
        let unfinished = self.pending_len > 0;
        self.pending_len = 0;
        if unfinished {
            Err(InvalidUtf8)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `bytes` split at every pair of points and compares with std.
    fn agrees_with_std(bytes: &[u8]) {
        let expected = std::str::from_utf8(bytes).is_ok();
        for i in 0..=bytes.len() {
            for j in i..=bytes.len() {
                let mut stream = Utf8Stream::default();
                let got = [&bytes[..i], &bytes[i..j], &bytes[j..]]
                    .iter()
                    .try_for_each(|piece| stream.feed(piece))
                    .and_then(|()| stream.finish())
                    .is_ok();
                assert_eq!(got, expected, "{bytes:x?} split at {i} and {j}");
            }
        }
    }

    #[test]
    fn matches_std_however_the_bytes_are_split() {
        let samples: &[&[u8]] = &[
            b"",
            b"hello",
            "κόσμε Connecté 😀".as_bytes(),
            b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited",
            b"\xf4\x90\x80\x80",
            b"\xc0\xaf",
            b"\xe0\x80\xaf",
            b"\xf0\x9f\x98",
            b"ab\xf0\x9f",
            b"\xff",
            b"\xed\x9f\xbf\xee\x80\x80",
        ];
        for sample in samples {
            agrees_with_std(sample);
        }
    }

    #[test]
    fn fails_at_the_first_impossible_byte() {
        let mut stream = Utf8Stream::default();
        assert_eq!(stream.feed(b"ok \xce"), Ok(()));
        // 0xce needs a continuation byte; 'x' cannot be one.
        assert_eq!(stream.feed(b"x"), Err(InvalidUtf8));
        // An encoding of a surrogate fails before the message ends.
        assert_eq!(Utf8Stream::default().feed(b"\xed\xa0"), Err(InvalidUtf8));
    }
}
