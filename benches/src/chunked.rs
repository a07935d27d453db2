//! An incremental decoder of HTTP/1.1's chunked transfer coding (RFC 9112,
//! section 7.1), for the `--sse` readers' response bodies: bytes go in as
//! the socket gives them, cut anywhere, and the chunks' data comes out as
//! slices of them, never copied.

/// Where the decoder is in the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// In a chunk's size: its value so far and how many hex digits.
    Size {
        size: u64,
        digits: u8,
    },
    /// After the size, in extensions (ignored) until CR.
    Extension {
        size: u64,
    },
    /// After the size line's CR.
    SizeLf {
        size: u64,
    },
    /// In a chunk's data, with this many bytes to go.
    Data {
        left: u64,
    },
    /// After a chunk's data: its CR, then its LF.
    DataCr,
    DataLf,
    /// After the last chunk, in the trailer section: at the start of a line
    /// or not; then the LF of a line's CR.
    Trailer {
        line_start: bool,
    },
    TrailerLf {
        line_start: bool,
    },
    /// The body is over.
    Done,
}

/// The decoder; see the module documentation.
#[derive(Debug)]
pub(crate) struct Chunked {
    state: State,
}

impl Default for Chunked {
    fn default() -> Chunked {
        Chunked {
            state: State::Size { size: 0, digits: 0 },
        }
    }
}

/// More hex digits than a size of this many bits has is an attack or a bug.
const MAX_SIZE_DIGITS: u8 = 16;

impl Chunked {
    /// Decodes `input`, the next bytes of the body, handing each piece of
    /// chunk data to `data` as it goes. Fails on a malformed body, or with
    /// `data`'s error; bytes after the body's end are an error too.
    pub(crate) fn decode<'a>(
        &mut self,
        mut input: &'a [u8],
        mut data: impl FnMut(&'a [u8]) -> Result<(), String>,
    ) -> Result<(), String> {
        while let Some((&byte, rest)) = input.split_first() {
            if let State::Data { left } = self.state {
                let take = input.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                let (piece, rest) = input.split_at(take);
                data(piece)?;
                let left = left - take as u64;
                self.state = if left == 0 {
                    State::DataCr
                } else {
                    State::Data { left }
                };
                input = rest;
                continue;
            }
            self.state = self.step(byte)?;
            input = rest;
        }
        Ok(())
    }

    /// Whether the whole body, the last chunk and the trailers, has arrived.
    pub(crate) fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// The state after `byte`, anywhere but in chunk data.
    fn step(&self, byte: u8) -> Result<State, String> {
        let bad = |what: &str| Err(format!("chunked body: {what} ({byte:#04x})"));
        Ok(match self.state {
            State::Size { size, digits } => match (byte as char).to_digit(16) {
                Some(_) if digits == MAX_SIZE_DIGITS => return bad("chunk size too long"),
                Some(digit) => State::Size {
                    size: (size << 4) | u64::from(digit),
                    digits: digits + 1,
                },
                None if digits == 0 => return bad("no chunk size"),
                None if byte == b'\r' => State::SizeLf { size },
                None if matches!(byte, b';' | b' ' | b'\t') => State::Extension { size },
                None => return bad("bad chunk size"),
            },
            State::Extension { size } if byte == b'\r' => State::SizeLf { size },
            State::Extension { size } => State::Extension { size },
            State::SizeLf { size: 0 } if byte == b'\n' => State::Trailer { line_start: true },
            State::SizeLf { size } if byte == b'\n' => State::Data { left: size },
            State::SizeLf { .. } => return bad("no LF after the chunk size"),
            State::Data { .. } => unreachable!("data is taken whole by decode"),
            State::DataCr if byte == b'\r' => State::DataLf,
            State::DataCr => return bad("no CR after the chunk data"),
            State::DataLf if byte == b'\n' => State::Size { size: 0, digits: 0 },
            State::DataLf => return bad("no LF after the chunk data"),
            State::Trailer { line_start } if byte == b'\r' => State::TrailerLf { line_start },
            State::Trailer { .. } => State::Trailer { line_start: false },
            State::TrailerLf { line_start: true } if byte == b'\n' => State::Done,
            State::TrailerLf { line_start: false } if byte == b'\n' => {
                State::Trailer { line_start: true }
            }
            State::TrailerLf { .. } => return bad("no LF in the trailers"),
            State::Done => return bad("bytes after the body"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `pieces` in order; the data, and whether the body ended.
    fn decode<'a>(pieces: impl IntoIterator<Item = &'a [u8]>) -> Result<(Vec<u8>, bool), String> {
        let mut chunked = Chunked::default();
        let mut out = Vec::new();
        for piece in pieces {
            chunked.decode(piece, |data| {
                out.extend_from_slice(data);
                Ok(())
            })?;
        }
        Ok((out, chunked.is_done()))
    }

    const BODY: &[u8] = b"5\r\nhello\r\n1A;name=value\r\n abcdefghijklmnopqrstuvwxy\r\n\
                          0\r\nx-trailer: 1\r\n\r\n";
    const DATA: &[u8] = b"hello abcdefghijklmnopqrstuvwxy";

    #[test]
    fn a_body_cut_anywhere_decodes_the_same() {
        assert_eq!(decode([BODY]), Ok((DATA.to_vec(), true)));
        for cut in 0..=BODY.len() {
            let (a, b) = BODY.split_at(cut);
            assert_eq!(decode([a, b]), Ok((DATA.to_vec(), true)), "cut at {cut}");
        }
        assert_eq!(decode(BODY.chunks(1)), Ok((DATA.to_vec(), true)));
    }

    #[test]
    fn the_body_ends_with_the_last_chunk_and_its_trailers() {
        assert_eq!(
            decode([b"3\r\nabc\r\n".as_slice()]),
            Ok((b"abc".to_vec(), false))
        );
        assert_eq!(decode([b"0\r\n".as_slice()]), Ok((Vec::new(), false)));
        assert_eq!(decode([b"0\r\n\r\n".as_slice()]), Ok((Vec::new(), true)));
        assert!(decode([b"0\r\n\r\nmore".as_slice()]).is_err());
    }

    #[test]
    fn malformed_bodies_fail() {
        for bad in [
            b"\r\n".as_slice(),
            b"g\r\n",
            b"3\n",
            b"3\r\nabcd",
            b"3\r\nabc\n",
            b"11111111111111111\r\n",
        ] {
            assert!(decode([bad]).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
