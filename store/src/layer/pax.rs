//! PAX extended headers (POSIX.1-2001 `pax` format, typeflag `x`): what `write_layer`
//! emits for long names, big ids and sizes and xattrs (`SCHILY.xattr.NAME`, as GNU tar,
//! bsdtar and Go's archive/tar write them), and what `unpack_layer` reads back.

use std::io;

/// Key prefix of an xattr record.
pub(crate) const XATTR_PREFIX: &[u8] = b"SCHILY.xattr.";

/// The records of one extended header, in the order they were added.
#[derive(Default)]
pub(crate) struct Records {
    data: Vec<u8>,
}

impl Records {
    /// Appends `"<len> <key>=<value>\n"`, where `len` counts the whole record, itself included.
    pub fn add(&mut self, key: &[u8], value: &[u8]) {
        let base = key.len() + value.len() + 3;
        let mut len = base + digits(base);
        if digits(len) + base != len {
            len = base + digits(len);
        }
        self.data.extend_from_slice(len.to_string().as_bytes());
        self.data.push(b' ');
        self.data.extend_from_slice(key);
        self.data.push(b'=');
        self.data.extend_from_slice(value);
        self.data.push(b'\n');
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.data
    }
}

fn digits(mut n: usize) -> usize {
    let mut count = 1;
    while n >= 10 {
        n /= 10;
        count += 1;
    }
    count
}

/// What `unpack_layer` takes from an entry's extended header beyond what the tar crate
/// already applies (path, linkpath, size, uid, gid).
#[derive(Default, Debug)]
pub(crate) struct Extensions {
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// `mtime` with its fraction: (seconds, nanoseconds).
    pub mtime: Option<(i64, u32)>,
}

impl Extensions {
    pub fn read<R: io::Read>(entry: &mut tar::Entry<'_, R>) -> io::Result<Extensions> {
        let mut out = Extensions::default();
        let Some(records) = entry.pax_extensions()? else {
            return Ok(out);
        };
        for record in records {
            let record = record?;
            let key = record.key_bytes();
            if let Some(name) = key.strip_prefix(XATTR_PREFIX) {
                out.xattrs
                    .push((name.to_vec(), record.value_bytes().to_vec()));
            } else if key == b"mtime" {
                out.mtime = record.value().ok().and_then(parse_time);
            }
        }
        Ok(out)
    }
}

/// Parses a PAX time (`"1700000000"`, `"1700000000.5"`, `"-1.25"`) into seconds and
/// nanoseconds, rounding toward negative infinity as POSIX times do.
fn parse_time(text: &str) -> Option<(i64, u32)> {
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    let negative = int.starts_with('-');
    let secs: i64 = int.parse().ok()?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut nanos: u32 = 0;
    for b in frac.bytes().chain(std::iter::repeat(b'0')).take(9) {
        nanos = nanos * 10 + u32::from(b - b'0');
    }
    if negative && nanos > 0 {
        Some((secs - 1, 1_000_000_000 - nanos))
    } else {
        Some((secs, nanos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_length_counts_itself() {
        let mut records = Records::default();
        records.add(b"path", b"a");
        assert_eq!(records.as_bytes(), b"9 path=a\n");
        // 95 + 3 = 98 bytes before the length; with two digits it would be 100: three digits.
        let mut records = Records::default();
        let value = vec![b'x'; 91];
        records.add(b"path", &value);
        let text = String::from_utf8(records.as_bytes().to_vec()).unwrap();
        let (len, _) = text.split_once(' ').unwrap();
        assert_eq!(len.parse::<usize>().unwrap(), text.len());
    }

    #[test]
    fn parses_fractional_and_negative_times() {
        assert_eq!(parse_time("1700000000"), Some((1_700_000_000, 0)));
        assert_eq!(parse_time("12.5"), Some((12, 500_000_000)));
        assert_eq!(parse_time("-1.25"), Some((-2, 750_000_000)));
        assert_eq!(parse_time("x"), None);
    }
}
