//! The bytes a cache key is hashed from: a compact, canonical encoding of JSON's data model,
//! written by a serde `Serializer` (so a request is encoded without building a tree and
//! without JSON's text: no escaping, no number formatting), or from a `serde_json::Value`
//! with its object keys sorted (the same bytes for the same JSON).
//!
//! Both writers map serde's data model onto JSON's the way serde_json does (an `Option` is its
//! value or null, a unit variant is its name, a newtype variant is a one-member object,
//! integers are unsigned when not negative, non-finite floats are null). The serializer
//! writes a struct's fields in declaration order and a map's entries in the map's order
//! (serde_json's `Map` is sorted unless its `preserve_order` feature is on); the `Value`
//! writer sorts every object. The encoding, per value:
//!
//! | JSON | bytes |
//! |---|---|
//! | null | `n` |
//! | true, false | `t`, `f` |
//! | integer ≥ 0, < 0 | `u` + u64 LE, `i` + i64 LE (outside 64 bits: `U` u128 LE, `I` i128 LE) |
//! | float | `d` + the f64's bits LE (an f32 widened first) |
//! | string | `s` + length as u64 LE + UTF-8 bytes |
//! | array | `[` + elements + `]` |
//! | object | `{` + (key, value)… + `}` (keys as strings; a struct's fields in declaration order, a map's in its own order) |
//!
//! Every value is self-delimiting and none starts with `]` or `}`, so the encoding is
//! unambiguous without element counts (which a serializer does not always know up front).
//! Fixed-width little-endian numbers and u64 lengths make it the same on every platform.
//! It must not change once released: a changed encoding changes every key (old entries of a
//! shared cache are then simply missed).

use serde::ser::{self, Serialize};
use serde_json::Value;

/// Why a value could not be encoded (only a `Serialize` implementation that fails itself).
#[derive(Debug)]
pub(super) struct KeyError(String);

impl std::fmt::Display for KeyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for KeyError {}

impl ser::Error for KeyError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        KeyError(msg.to_string())
    }
}

/// Appends the encoding of `value` to `out`.
pub(super) fn encode<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) -> Result<(), KeyError> {
    value.serialize(Encoder { out })
}

/// Appends the encoding of a JSON value, object members in key order.
pub(super) fn encode_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Null => out.push(b'n'),
        Value::Bool(b) => out.push(if *b { b't' } else { b'f' }),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                unsigned(out, u);
            } else if let Some(i) = n.as_i64() {
                signed(out, i);
            } else {
                float(out, n.as_f64().unwrap_or(f64::NAN));
            }
        }
        Value::String(s) => string(out, s),
        Value::Array(items) => {
            out.push(b'[');
            for item in items {
                encode_value(out, item);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            out.push(b'{');
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            members.sort_unstable_by(|a, b| a.0.cmp(b.0));
            for (key, value) in members {
                string(out, key);
                encode_value(out, value);
            }
            out.push(b'}');
        }
    }
}

fn unsigned(out: &mut Vec<u8>, v: u64) {
    out.push(b'u');
    out.extend_from_slice(&v.to_le_bytes());
}

fn signed(out: &mut Vec<u8>, v: i64) {
    if let Ok(u) = u64::try_from(v) {
        return unsigned(out, u);
    }
    out.push(b'i');
    out.extend_from_slice(&v.to_le_bytes());
}

fn float(out: &mut Vec<u8>, v: f64) {
    // JSON has no NaN or infinity; serde_json turns them into null.
    if !v.is_finite() {
        return out.push(b'n');
    }
    out.push(b'd');
    out.extend_from_slice(&v.to_bits().to_le_bytes());
}

fn string(out: &mut Vec<u8>, s: &str) {
    out.push(b's');
    out.extend_from_slice(&u64::try_from(s.len()).unwrap_or(u64::MAX).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// The serializer: writes each value as it is visited.
struct Encoder<'a> {
    out: &'a mut Vec<u8>,
}

/// An array or object being written; `close` is its last byte, and `variant` says whether
/// it sits inside a one-member object (a tuple or struct variant) that needs closing too.
struct Compound<'a> {
    out: &'a mut Vec<u8>,
    close: u8,
    variant: bool,
}

impl Compound<'_> {
    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), KeyError> {
        value.serialize(Encoder { out: self.out })
    }

    fn end(self) -> Result<(), KeyError> {
        self.out.push(self.close);
        if self.variant {
            self.out.push(b'}');
        }
        Ok(())
    }
}

impl<'a> ser::Serializer for Encoder<'a> {
    type Ok = ();
    type Error = KeyError;
    type SerializeSeq = Compound<'a>;
    type SerializeTuple = Compound<'a>;
    type SerializeTupleStruct = Compound<'a>;
    type SerializeTupleVariant = Compound<'a>;
    type SerializeMap = Compound<'a>;
    type SerializeStruct = Compound<'a>;
    type SerializeStructVariant = Compound<'a>;

    fn serialize_bool(self, v: bool) -> Result<(), KeyError> {
        self.out.push(if v { b't' } else { b'f' });
        Ok(())
    }
    fn serialize_i8(self, v: i8) -> Result<(), KeyError> {
        self.serialize_i64(i64::from(v))
    }
    fn serialize_i16(self, v: i16) -> Result<(), KeyError> {
        self.serialize_i64(i64::from(v))
    }
    fn serialize_i32(self, v: i32) -> Result<(), KeyError> {
        self.serialize_i64(i64::from(v))
    }
    fn serialize_i64(self, v: i64) -> Result<(), KeyError> {
        signed(self.out, v);
        Ok(())
    }
    fn serialize_i128(self, v: i128) -> Result<(), KeyError> {
        if let Ok(v) = i64::try_from(v) {
            return self.serialize_i64(v);
        }
        if let Ok(v) = u64::try_from(v) {
            return self.serialize_u64(v);
        }
        self.out.push(b'I');
        self.out.extend_from_slice(&v.to_le_bytes());
        Ok(())
    }
    fn serialize_u8(self, v: u8) -> Result<(), KeyError> {
        self.serialize_u64(u64::from(v))
    }
    fn serialize_u16(self, v: u16) -> Result<(), KeyError> {
        self.serialize_u64(u64::from(v))
    }
    fn serialize_u32(self, v: u32) -> Result<(), KeyError> {
        self.serialize_u64(u64::from(v))
    }
    fn serialize_u64(self, v: u64) -> Result<(), KeyError> {
        unsigned(self.out, v);
        Ok(())
    }
    fn serialize_u128(self, v: u128) -> Result<(), KeyError> {
        if let Ok(v) = u64::try_from(v) {
            return self.serialize_u64(v);
        }
        self.out.push(b'U');
        self.out.extend_from_slice(&v.to_le_bytes());
        Ok(())
    }
    fn serialize_f32(self, v: f32) -> Result<(), KeyError> {
        self.serialize_f64(f64::from(v))
    }
    fn serialize_f64(self, v: f64) -> Result<(), KeyError> {
        float(self.out, v);
        Ok(())
    }
    fn serialize_char(self, v: char) -> Result<(), KeyError> {
        string(self.out, v.encode_utf8(&mut [0; 4]));
        Ok(())
    }
    fn serialize_str(self, v: &str) -> Result<(), KeyError> {
        string(self.out, v);
        Ok(())
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<(), KeyError> {
        // As serde_json: an array of numbers.
        self.out.push(b'[');
        for &byte in v {
            unsigned(self.out, u64::from(byte));
        }
        self.out.push(b']');
        Ok(())
    }
    fn serialize_none(self) -> Result<(), KeyError> {
        self.serialize_unit()
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), KeyError> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), KeyError> {
        self.out.push(b'n');
        Ok(())
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<(), KeyError> {
        self.serialize_unit()
    }
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<(), KeyError> {
        self.serialize_str(variant)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<(), KeyError> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), KeyError> {
        self.out.push(b'{');
        string(self.out, variant);
        value.serialize(Encoder {
            out: &mut *self.out,
        })?;
        self.out.push(b'}');
        Ok(())
    }
    fn serialize_seq(self, _len: Option<usize>) -> Result<Compound<'a>, KeyError> {
        self.out.push(b'[');
        Ok(Compound {
            out: self.out,
            close: b']',
            variant: false,
        })
    }
    fn serialize_tuple(self, len: usize) -> Result<Compound<'a>, KeyError> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        len: usize,
    ) -> Result<Compound<'a>, KeyError> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Compound<'a>, KeyError> {
        self.out.push(b'{');
        string(self.out, variant);
        self.out.push(b'[');
        Ok(Compound {
            out: self.out,
            close: b']',
            variant: true,
        })
    }
    fn serialize_map(self, _len: Option<usize>) -> Result<Compound<'a>, KeyError> {
        self.out.push(b'{');
        Ok(Compound {
            out: self.out,
            close: b'}',
            variant: false,
        })
    }
    fn serialize_struct(self, _name: &'static str, len: usize) -> Result<Compound<'a>, KeyError> {
        self.serialize_map(Some(len))
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Compound<'a>, KeyError> {
        self.out.push(b'{');
        string(self.out, variant);
        self.out.push(b'{');
        Ok(Compound {
            out: self.out,
            close: b'}',
            variant: true,
        })
    }
}

impl ser::SerializeSeq for Compound<'_> {
    type Ok = ();
    type Error = KeyError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), KeyError> {
        self.element(value)
    }
    fn end(self) -> Result<(), KeyError> {
        Compound::end(self)
    }
}

impl ser::SerializeTuple for Compound<'_> {
    type Ok = ();
    type Error = KeyError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), KeyError> {
        self.element(value)
    }
    fn end(self) -> Result<(), KeyError> {
        Compound::end(self)
    }
}

impl ser::SerializeTupleStruct for Compound<'_> {
    type Ok = ();
    type Error = KeyError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), KeyError> {
        self.element(value)
    }
    fn end(self) -> Result<(), KeyError> {
        Compound::end(self)
    }
}

impl ser::SerializeTupleVariant for Compound<'_> {
    type Ok = ();
    type Error = KeyError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), KeyError> {
        self.element(value)
    }
    fn end(self) -> Result<(), KeyError> {
        Compound::end(self)
    }
}

impl ser::SerializeMap for Compound<'_> {
    type Ok = ();
    type Error = KeyError;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), KeyError> {
        // JSON keys are strings; serde_json writes other keys (numbers, bools, unit variants)
        // as strings too, which is not needed here: any self-delimiting encoding of the key
        // keeps the object unambiguous.
        self.element(key)
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), KeyError> {
        self.element(value)
    }
    fn end(self) -> Result<(), KeyError> {
        Compound::end(self)
    }
}

impl ser::SerializeStruct for Compound<'_> {
    type Ok = ();
    type Error = KeyError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), KeyError> {
        string(self.out, key);
        self.element(value)
    }
    fn end(self) -> Result<(), KeyError> {
        Compound::end(self)
    }
}

impl ser::SerializeStructVariant for Compound<'_> {
    type Ok = ();
    type Error = KeyError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), KeyError> {
        string(self.out, key);
        self.element(value)
    }
    fn end(self) -> Result<(), KeyError> {
        Compound::end(self)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A JSON value encodes alike through the serializer and through the `Value` writer
    /// (serde_json's maps are sorted in this build).
    #[test]
    fn serializer_and_value_writer_agree() {
        let value = serde_json::json!({
            "type": "object",
            "properties": {"b": {"type": "integer"}, "a": {"minimum": -3, "x": 1.5}},
            "list": [true, false, null, "héllo \"quoted\"\n", 18_446_744_073_709_551_615_u64, [], {}],
        });
        let mut direct = Vec::new();
        encode(&mut direct, &value).unwrap();
        let mut written = Vec::new();
        encode_value(&mut written, &value);
        assert_eq!(direct, written);
    }

    /// Values that serde_json would write alike encode alike; different ones differ.
    #[test]
    fn follows_json_data_model() {
        let bytes = |v: &dyn erased::Encode| {
            let mut out = Vec::new();
            v.encode(&mut out);
            out
        };
        assert_eq!(bytes(&Some(5_u32)), bytes(&5_i64));
        assert_eq!(bytes(&None::<u8>), bytes(&()));
        assert_eq!(bytes(&f32::NAN), bytes(&()));
        assert_ne!(bytes(&vec!["ab"]), bytes(&vec!["a", "b"]));
        assert_ne!(bytes(&1_u8), bytes(&1.0_f64));
        assert_eq!(bytes(&-2_i8), bytes(&serde_json::json!(-2)));
    }

    mod erased {
        pub(super) trait Encode {
            fn encode(&self, out: &mut Vec<u8>);
        }
        impl<T: serde::Serialize> Encode for T {
            fn encode(&self, out: &mut Vec<u8>) {
                super::encode(out, self).unwrap();
            }
        }
    }
}
