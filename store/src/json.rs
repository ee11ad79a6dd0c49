//! Canonical JSON for everything the store hashes: object keys sorted bytewise, no
//! insignificant whitespace. oci-spec keeps annotations and labels in `HashMap`s whose
//! order changes from run to run; writing through here makes digests stable no matter
//! which serde_json features other crates switch on.

use serde::Serialize;
use serde_json::Value;

use crate::error::{Error, Result};

/// Serializes `value` canonically. `what` names it in the error.
pub fn to_canonical<T: Serialize>(value: &T, what: &str) -> Result<Vec<u8>> {
    let value = serde_json::to_value(value).map_err(|source| Error::Json {
        what: what.to_string(),
        source,
    })?;
    let mut out = Vec::with_capacity(512);
    write_value(&value, &mut out);
    Ok(out)
}

fn write_value(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_scalar(&Value::String(key.clone()), out);
                out.push(b':');
                write_value(item, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(item, out);
            }
            out.push(b']');
        }
        scalar => write_scalar(scalar, out),
    }
}

fn write_scalar(value: &Value, out: &mut Vec<u8>) {
    // Scalars never fail to serialize into a Vec.
    let _ = serde_json::to_writer(&mut *out, value);
}

/// Parses JSON bytes into `T`, naming `what` in the error.
pub fn parse<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    what: impl FnOnce() -> String,
) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|source| Error::Json {
        what: what(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn keys_come_out_sorted_at_every_level() {
        let mut map = HashMap::new();
        for key in ["zeta", "alpha", "mid", "Beta"] {
            map.insert(
                key.to_string(),
                serde_json::json!({"y": 1, "x": [true, null, "s\"q"]}),
            );
        }
        let out = String::from_utf8(to_canonical(&map, "test").unwrap()).unwrap();
        assert!(
            out.starts_with(r#"{"Beta":{"x":[true,null,"s\"q"],"y":1},"alpha""#),
            "{out}"
        );
        assert!(
            out.ends_with(r#""zeta":{"x":[true,null,"s\"q"],"y":1}}"#),
            "{out}"
        );
    }
}
