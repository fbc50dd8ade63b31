//! Push-based content-defined chunking (FastCDC 2020) of large normalized files.

use fastcdc::v2020::FastCDC;

/// attic's parameters (min 16 / avg 64 / max 256 KiB): small enough that a local change costs a
/// few chunks, large enough that per-object overhead stays low.
pub const CHUNK_MIN: usize = 16 * 1024;
pub const CHUNK_AVG: usize = 64 * 1024;
pub const CHUNK_MAX: usize = 256 * 1024;
/// Files up to this size are one blob; larger files are chunked.
pub const CHUNK_THRESHOLD: usize = CHUNK_MAX;

/// Cuts a stream into chunks. A cut is only made once [`CHUNK_MAX`] bytes are buffered (or the
/// stream ended), so the chunks do not depend on how the stream was fed.
#[derive(Default)]
pub struct Chunker {
    buf: Vec<u8>,
}

impl Chunker {
    /// Add bytes; `emit` receives every chunk that became final.
    pub fn feed<E>(
        &mut self,
        data: &[u8],
        emit: &mut impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        self.buf.extend_from_slice(data);
        let mut start = 0;
        while self.buf.len() - start >= CHUNK_MAX {
            let len = cut(&self.buf[start..]);
            emit(&self.buf[start..start + len])?;
            start += len;
        }
        self.buf.drain(..start);
        Ok(())
    }

    /// End of stream: emit what is left.
    pub fn finish<E>(mut self, emit: &mut impl FnMut(&[u8]) -> Result<(), E>) -> Result<(), E> {
        let mut start = 0;
        while start < self.buf.len() {
            let len = cut(&self.buf[start..]);
            emit(&self.buf[start..start + len])?;
            start += len;
        }
        self.buf.clear();
        Ok(())
    }
}

/// Length of the first chunk of `data`.
fn cut(data: &[u8]) -> usize {
    if data.len() <= CHUNK_MIN {
        return data.len();
    }
    let cdc = FastCDC::new(data, CHUNK_MIN, CHUNK_AVG, CHUNK_MAX);
    cdc.cut(0, data.len()).1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(data: &[u8], feed: usize) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut c = Chunker::default();
        let mut emit = |b: &[u8]| -> Result<(), ()> {
            out.push(b.to_vec());
            Ok(())
        };
        for piece in data.chunks(feed) {
            c.feed(piece, &mut emit).unwrap();
        }
        c.finish(&mut emit).unwrap();
        out
    }

    #[test]
    fn chunking_is_independent_of_feeding_and_local_edits_stay_local() {
        let mut data = Vec::new();
        let mut x = 0x1234_5678u32;
        for _ in 0..3_000_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            data.push(x as u8);
        }
        let a = chunks(&data, 1 << 20);
        assert_eq!(a, chunks(&data, 4097));
        assert_eq!(a.concat(), data);
        assert!(a.iter().all(|c| c.len() <= CHUNK_MAX));
        assert!(a.len() > 10);

        let mut edited = data.clone();
        edited[1_500_000] ^= 0xff;
        let b = chunks(&edited, 65536);
        let differing = b.iter().filter(|c| !a.contains(c)).count();
        assert!(differing <= 2, "{differing} chunks changed for one byte");
    }
}
