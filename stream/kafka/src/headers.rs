//! Record headers read without trusting them. rdkafka's own header access panics on a name
//! that is not UTF-8 (it unwraps `CStr::to_str`), and anyone may write headers to a topic a
//! daemon, a server or a command reads (a DLQ, a results topic), so names and values are read
//! through librdkafka's C API as bytes.

use rdkafka::message::BorrowedMessage;

/// A record header as stored: its name's bytes and its value (`None`: a null header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawHeader<'m> {
    pub name: &'m [u8],
    pub value: Option<&'m [u8]>,
}

/// Every header of `message`, in order.
pub fn raw_headers<'m>(message: &'m BorrowedMessage<'_>) -> Vec<RawHeader<'m>> {
    use rdkafka::bindings::{
        rd_kafka_header_cnt, rd_kafka_header_get_all, rd_kafka_headers_t, rd_kafka_message_headers,
        rd_kafka_resp_err_t,
    };
    let no_error = rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR;
    let mut list: *mut rd_kafka_headers_t = std::ptr::null_mut();
    // SAFETY: `message.ptr()` is the live librdkafka message `message` wraps; the header list
    // it hands out is owned by the message and lives as long as the borrow `'m`.
    let found = unsafe { rd_kafka_message_headers(message.ptr(), &mut list) };
    if found != no_error || list.is_null() {
        return Vec::new();
    }
    // SAFETY: `list` is the message's (non-null) header list.
    let count = unsafe { rd_kafka_header_cnt(list) };
    let mut out = Vec::with_capacity(count);
    for index in 0..count {
        let mut name: *const std::ffi::c_char = std::ptr::null();
        let mut value: *const std::ffi::c_void = std::ptr::null();
        let mut size = 0usize;
        // SAFETY: `index < count`; librdkafka points `name` and `value` into the header
        // list's own storage.
        let got = unsafe { rd_kafka_header_get_all(list, index, &mut name, &mut value, &mut size) };
        if got != no_error || name.is_null() {
            continue;
        }
        // SAFETY: header names are NUL-terminated and, like the values (`size` bytes), live in
        // the header list, which the message owns for `'m`.
        let name: &'m [u8] = unsafe { std::ffi::CStr::from_ptr(name) }.to_bytes();
        let value: Option<&'m [u8]> = (!value.is_null())
            .then(|| unsafe { std::slice::from_raw_parts(value.cast::<u8>(), size) });
        out.push(RawHeader { name, value });
    }
    out
}

/// The UTF-8 value of the first header named `name`.
pub fn header_text<'m>(headers: &[RawHeader<'m>], name: &str) -> Option<&'m str> {
    headers
        .iter()
        .find(|h| h.name == name.as_bytes())
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
}
