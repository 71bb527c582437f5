//! IP addresses as text, IPv4 without the formatting machinery: one is written for every
//! forwarded request (`X-Forwarded-For`) and every access-log line.

use std::net::IpAddr;

/// The usual text form of an address (`192.0.2.1`, `2001:db8::1`).
pub enum IpText {
    /// Dotted decimal, at most 15 bytes.
    V4([u8; 15], usize),
    /// Anything else, formatted by the standard library.
    Other(String),
}

impl IpText {
    /// The text form of `ip`.
    pub fn of(ip: IpAddr) -> IpText {
        let IpAddr::V4(v4) = ip else {
            return IpText::Other(ip.to_string());
        };
        let mut text = [0u8; 15];
        let mut len = 0;
        for (i, octet) in v4.octets().into_iter().enumerate() {
            if i > 0 {
                text[len] = b'.';
                len += 1;
            }
            if octet >= 100 {
                text[len] = b'0' + octet / 100;
                len += 1;
            }
            if octet >= 10 {
                text[len] = b'0' + octet / 10 % 10;
                len += 1;
            }
            text[len] = b'0' + octet % 10;
            len += 1;
        }
        IpText::V4(text, len)
    }

    /// The text as bytes, for output buffers.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            IpText::V4(text, len) => &text[..*len],
            IpText::Other(text) => text.as_bytes(),
        }
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        match self {
            IpText::V4(text, len) => std::str::from_utf8(&text[..*len]).unwrap_or_default(),
            IpText::Other(text) => text,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_read_as_the_standard_library_writes_them() {
        let addresses: [IpAddr; 8] = [
            [0, 0, 0, 0].into(),
            [9, 10, 99, 100].into(),
            [255, 254, 109, 1].into(),
            [192, 168, 1, 20].into(),
            [10, 0, 0, 1].into(),
            [255, 255, 255, 255].into(),
            "::1".parse().unwrap(),
            "2001:db8::7".parse().unwrap(),
        ];
        for ip in addresses {
            assert_eq!(IpText::of(ip).as_str(), ip.to_string());
            assert_eq!(IpText::of(ip).as_bytes(), ip.to_string().as_bytes());
        }
    }
}
