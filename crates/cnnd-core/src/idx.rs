//! The IDX file format of MNIST and Fashion-MNIST (unsigned bytes), as bytes in memory:
//! checking a header and locating the payload. Reading and decompressing files is the
//! caller's.
//!
//! Owns: the format. Pure.

use anyhow::{anyhow, bail};

/// One parsed IDX file of unsigned bytes: its dimensions and its payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Idx {
    pub dims: Vec<usize>,
    /// Offset of the payload in the buffer.
    pub offset: usize,
}

/// Checks an IDX header (`0x00 0x00 0x08 ndims`, then `ndims` big-endian u32 dimensions) and
/// that the payload is exactly as long as the dimensions say. `what` names the file in errors.
pub fn parse_idx(buf: &[u8], expected_ndims: usize, what: &str) -> anyhow::Result<Idx> {
    if buf.len() < 4 {
        bail!(
            "{what}: truncated IDX file ({} bytes, no header)",
            buf.len()
        );
    }
    if buf[0] != 0 || buf[1] != 0 {
        bail!(
            "{what}: not an IDX file (magic {:02x} {:02x} {:02x} {:02x})",
            buf[0],
            buf[1],
            buf[2],
            buf[3]
        );
    }
    if buf[2] != 0x08 {
        bail!(
            "{what}: IDX element type 0x{:02x} is not unsigned byte (0x08)",
            buf[2]
        );
    }
    let ndims = buf[3] as usize;
    if ndims != expected_ndims {
        bail!("{what}: IDX file has {ndims} dimensions, expected {expected_ndims}");
    }
    let offset = 4 + 4 * ndims;
    if buf.len() < offset {
        bail!("{what}: truncated IDX header ({} bytes)", buf.len());
    }
    let dims: Vec<usize> = (0..ndims)
        .map(|i| {
            let b = &buf[4 + 4 * i..8 + 4 * i];
            u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize
        })
        .collect();
    let want = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| anyhow!("{what}: IDX dimensions {dims:?} overflow"))?;
    let have = buf.len() - offset;
    if have < want {
        bail!("{what}: truncated: dimensions {dims:?} need {want} bytes of data but only {have} follow the header");
    }
    if have > want {
        bail!(
            "{what}: corrupt: {} unexpected bytes after the {want} bytes of dimensions {dims:?}",
            have - want
        );
    }
    Ok(Idx { dims, offset })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idx_header_errors_are_clear() {
        let mut good = vec![0, 0, 8, 1, 0, 0, 0, 3];
        good.extend([1, 2, 3]);
        let idx = parse_idx(&good, 1, "f").unwrap();
        assert_eq!(idx.dims, vec![3]);
        assert_eq!(idx.offset, 8);
        let e = parse_idx(&good[..9], 1, "some/path")
            .unwrap_err()
            .to_string();
        assert!(e.contains("some/path") && e.contains("truncated"), "{e}");
        let e = parse_idx(&[0x1f, 0x8b, 8, 0], 1, "f")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not an IDX file"), "{e}");
        let e = parse_idx(&good, 3, "f").unwrap_err().to_string();
        assert!(e.contains("dimensions"), "{e}");
        let mut long = good.clone();
        long.push(0);
        assert!(parse_idx(&long, 1, "f")
            .unwrap_err()
            .to_string()
            .contains("unexpected"));
        let e = parse_idx(&[0, 0, 0x0d, 1], 1, "f").unwrap_err().to_string();
        assert!(e.contains("element type"), "{e}");
    }
}
