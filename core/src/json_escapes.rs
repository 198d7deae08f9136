//! A work-around for arrow-json 59, which decodes a UTF-16 surrogate pair escape wrongly when
//! its high half has bit 6 set: it combines the halves with `|` instead of `+`, so
//! `"\ud840\udc00"` (U+20000) comes out as U+10000. The fast path decodes pairs right; records
//! that go through arrow-json have their pair escapes replaced by the UTF-8 they stand for
//! first, so a value never depends on which path its micro-batch took.

use std::borrow::Cow;

/// `record` with every `\uD8xx\uDCxx` pair escape inside a string replaced by its character in
/// UTF-8; everything else (other escapes, lone surrogates, bytes outside strings) unchanged.
pub(crate) fn decode_surrogate_pairs(record: &[u8]) -> Cow<'_, [u8]> {
    if !record.windows(2).any(|w| w == b"\\u") {
        return Cow::Borrowed(record);
    }
    let mut out = Vec::with_capacity(record.len());
    let mut in_string = false;
    let mut at = 0;
    while at < record.len() {
        let b = record[at];
        if !in_string {
            in_string = b == b'"';
            out.push(b);
            at += 1;
            continue;
        }
        match b {
            b'"' => {
                in_string = false;
                out.push(b);
                at += 1;
            }
            b'\\' => {
                if let Some(c) = surrogate_pair_at(&record[at..]) {
                    let mut buffer = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buffer).as_bytes());
                    at += 12;
                } else {
                    let end = (at + 2).min(record.len());
                    out.extend_from_slice(&record[at..end]);
                    at = end;
                }
            }
            _ => {
                out.push(b);
                at += 1;
            }
        }
    }
    Cow::Owned(out)
}

/// The character of a `\uD8xx\uDCxx` escape pair at the start of `bytes`.
fn surrogate_pair_at(bytes: &[u8]) -> Option<char> {
    let hex = |from: usize| -> Option<u32> {
        let digits = bytes.get(from..from + 4)?;
        if !digits.iter().all(u8::is_ascii_hexdigit) {
            return None;
        }
        u32::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
    };
    if bytes.get(..2)? != b"\\u" || bytes.get(6..8)? != b"\\u" {
        return None;
    }
    let (high, low) = (hex(2)?, hex(8)?);
    if !(0xD800..0xDC00).contains(&high) || !(0xDC00..0xE000).contains(&low) {
        return None;
    }
    char::from_u32(0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_become_utf8_and_everything_else_stays() {
        let text = |b: &[u8]| String::from_utf8(decode_surrogate_pairs(b).into_owned()).unwrap();
        assert_eq!(text(br#"{"a":"\ud840\udc00"}"#), "{\"a\":\"\u{20000}\"}");
        assert_eq!(
            text(br#"{"a":"x\ud83d\ude00y"}"#),
            "{\"a\":\"x\u{1F600}y\"}"
        );
        // An escaped backslash before `u` is not an escape; lone halves and other escapes
        // are left for the JSON decoder to judge.
        for same in [
            br#"{"a":"\\ud840\\udc00"}"#.as_slice(),
            br#"{"a":"\ud800"}"#,
            br#"{"a":"\udc00\ud800"}"#,
            br#"{"a":"\u00e9\n\""}"#,
            br#"{"\ud840":1}"#,
        ] {
            assert_eq!(text(same), String::from_utf8(same.to_vec()).unwrap());
        }
        assert!(matches!(decode_surrogate_pairs(b"{}"), Cow::Borrowed(_)));
    }
}
