//! Human-readable sizes (`"256MiB"`) and durations (`"5s"`, `"1m 30s"`) in the config file.
//!
//! Each type deserializes from a string (or, for sizes, a plain integer of bytes) and fails with
//! a message naming the accepted forms, so a typo is reported at the offending key.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// A byte count written as `"256MiB"`, `"16 MB"`, `"512KiB"` or a bare integer of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// The size in bytes, saturated to `usize` on 32-bit targets.
    pub fn as_usize(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }
}

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        bytesize::ByteSize::from_str(text.trim())
            .map(|size| ByteSize(size.as_u64()))
            .map_err(|_| {
                format!("invalid size {text:?}: expected e.g. \"256MiB\", \"16MB\" or a number of bytes")
            })
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SizeVisitor;
        impl Visitor<'_> for SizeVisitor {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size such as \"256MiB\" or a number of bytes")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                v.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_any(SizeVisitor)
    }
}

/// A duration written as `"5s"`, `"250ms"`, `"1m 30s"` or `"2h"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl FromStr for HumanDuration {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        humantime::parse_duration(text.trim())
            .map(HumanDuration)
            .map_err(|e| {
                format!("invalid duration {text:?} ({e}): expected e.g. \"5s\", \"250ms\", \"1m 30s\"")
            })
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_binary_and_decimal_units() {
        assert_eq!("256MiB".parse::<ByteSize>().unwrap().0, 256 << 20);
        assert_eq!("16 MB".parse::<ByteSize>().unwrap().0, 16_000_000);
        assert_eq!("512".parse::<ByteSize>().unwrap().0, 512);
        assert!("lots".parse::<ByteSize>().is_err());
    }

    #[test]
    fn durations_parse_compound_forms() {
        assert_eq!("5s".parse::<HumanDuration>().unwrap().0, Duration::from_secs(5));
        assert_eq!(
            "1m 30s".parse::<HumanDuration>().unwrap().0,
            Duration::from_secs(90)
        );
        assert_eq!(
            "250ms".parse::<HumanDuration>().unwrap().0,
            Duration::from_millis(250)
        );
        assert!("soon".parse::<HumanDuration>().is_err());
    }
}
