//! Properties of the client frame parser that must hold for any input,
//! checked by the fuzz targets in `fuzz/` (built with `--cfg fuzzing`) and
//! by the unit tests below on generated streams.

use crate::frame::{Inbound, InboundError, Received};
use crate::Message;

/// What parsing found: a frame to act on, or an error.
type Step = Result<Received, InboundError>;

/// Parses `stream` cut into pieces of `piece` bytes, as a connection would
/// (going on after errors the parser recovers from).
fn parse(stream: &[u8], piece: usize, keep: bool, max_message_size: usize) -> Vec<Step> {
    let mut inbound = Inbound::new(max_message_size, keep);
    let mut steps = Vec::new();
    for mut chunk in stream.chunks(piece) {
        while !chunk.is_empty() {
            match inbound.advance(&mut chunk) {
                Ok(None) => {}
                Ok(Some(received)) => steps.push(Ok(received)),
                Err(error) => {
                    steps.push(Err(error));
                    if error == InboundError::Protocol {
                        return steps;
                    }
                }
            }
        }
    }
    steps
}

/// Parses the client byte stream in `data` (its first two bytes choose the
/// message size limit and where the stream is cut) and panics unless:
/// the result does not depend on how the stream is cut, no kept message is
/// over the limit, and keeping messages changes nothing else.
#[doc(hidden)]
pub fn client_frames(data: &[u8]) {
    let Some(([limit, cut], stream)) = data.split_first_chunk() else {
        return;
    };
    let max = usize::from(*limit) * 3;
    let whole = parse(stream, stream.len().max(1), true, max);
    let cut = parse(stream, usize::from(*cut).max(1), true, max);
    assert_eq!(whole, cut, "the result depends on how the stream is cut");
    for step in &whole {
        let len = match step {
            Ok(Received::Message(Message::Text(text))) => text.len(),
            Ok(Received::Message(Message::Binary(bytes))) => bytes.len(),
            _ => continue,
        };
        assert!(
            len <= max,
            "a message of {len} bytes passed a limit of {max}"
        );
    }
    let discarded = parse(stream, stream.len().max(1), false, max);
    let kept_without_messages: Vec<_> = whole
        .into_iter()
        .filter(|step| !matches!(step, Ok(Received::Message(_))))
        .collect();
    assert_eq!(
        discarded, kept_without_messages,
        "keeping messages changes what else is found"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small xorshift generator: reproducible inputs without a dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// A plausible client stream: masked frames of every kind, some text
    /// valid UTF-8 and some not, then a few bytes flipped at random.
    fn stream(rng: &mut Rng) -> Vec<u8> {
        let mut stream = vec![rng.below(256) as u8, rng.below(256) as u8];
        for _ in 0..rng.below(6) {
            let opcode = [0x0, 0x1, 0x2, 0x8, 0x9, 0xa, 0x3][rng.below(7) as usize];
            let fin = if rng.below(3) == 0 { 0 } else { 0x80 };
            let len = match rng.below(10) {
                0 => 126 + rng.below(400) as usize,
                _ => rng.below(20) as usize,
            };
            let payload: Vec<u8> = match rng.below(3) {
                0 => (0..len).map(|_| rng.below(256) as u8).collect(),
                _ => "é€x😀".bytes().cycle().take(len).collect(),
            };
            let mask = (rng.next() as u32).to_be_bytes();
            stream.push(fin | opcode);
            if len < 126 {
                stream.push(0x80 | len as u8);
            } else {
                stream.push(0x80 | 126);
                stream.extend_from_slice(&(len as u16).to_be_bytes());
            }
            stream.extend_from_slice(&mask);
            stream.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        }
        for _ in 0..rng.below(3) {
            if stream.len() > 2 {
                let at = 2 + rng.below(stream.len() as u64 - 2) as usize;
                stream[at] ^= 1 << rng.below(8);
            }
        }
        stream
    }

    #[test]
    fn parsing_properties_hold_on_generated_streams() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..20_000 {
            client_frames(&stream(&mut rng));
        }
    }
}
