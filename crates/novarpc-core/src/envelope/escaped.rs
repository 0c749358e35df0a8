//! A serde serializer that writes a value as compact JSON already escaped as
//! the contents of a JSON string: the inner message of the oslo envelope,
//! written once, straight into the envelope. It produces the bytes of
//! `serde_json`'s compact serializer with the envelope's escaping formatter
//! ([`super::Escaped`]), which it still uses for numbers, booleans and the
//! rarer map keys; strings, the bulk of a message, are escaped here a word at
//! a time instead of through serde_json's byte-by-byte loop. The equivalence
//! is checked by the envelope's property tests.

use serde::ser::{self, Impossible, Serialize, SerializeMap};

use super::{escape_into, find_special, unicode_escape, Escaped};

type Result<T = ()> = std::result::Result<T, serde_json::Error>;

/// The serializer: appends to `out`.
pub(super) struct Esc<'a> {
    pub(super) out: &'a mut Vec<u8>,
}

/// serde_json's serializer on the same buffer, for what is written as it writes it.
fn json(out: &mut Vec<u8>) -> serde_json::Serializer<&mut Vec<u8>, Escaped> {
    serde_json::Serializer::with_formatter(out, Escaped)
}

/// A JSON string (`"..."`), escaped twice: as JSON, then as the contents of
/// the envelope's string.
pub(super) fn write_str(out: &mut Vec<u8>, value: &str) {
    out.extend_from_slice(b"\\\"");
    let mut bytes = value.as_bytes();
    while let Some(stop) = find_special(bytes) {
        out.extend_from_slice(&bytes[..stop]);
        let escaped: &[u8] = match bytes[stop] {
            b'"' => b"\\\\\\\"",
            b'\\' => b"\\\\\\\\",
            0x08 => b"\\\\b",
            0x0c => b"\\\\f",
            b'\n' => b"\\\\n",
            b'\r' => b"\\\\r",
            b'\t' => b"\\\\t",
            byte => {
                out.push(b'\\');
                out.extend_from_slice(&unicode_escape(byte));
                bytes = &bytes[stop + 1..];
                continue;
            }
        };
        out.extend_from_slice(escaped);
        bytes = &bytes[stop + 1..];
    }
    out.extend_from_slice(bytes);
    out.extend_from_slice(b"\\\"");
}

/// A map key as serde_json writes it (quoted numbers and booleans, errors
/// for what cannot be a key): by serde_json itself, as the first key of a
/// map whose opening brace is then taken back out.
fn key_by_serde_json<T: Serialize + ?Sized>(out: &mut Vec<u8>, key: &T) -> Result {
    let at = out.len();
    {
        let mut ser = json(out);
        let mut map = ser::Serializer::serialize_map(&mut ser, None)?;
        map.serialize_key(key)?;
    }
    out.remove(at);
    Ok(())
}

fn not_raw_text() -> serde_json::Error {
    ser::Error::custom("a raw value holds its JSON text")
}

/// Scalar methods of a [`ser::Serializer`] that fail with `$error`.
macro_rules! refuse_scalars {
    ($error:expr; $($method:ident($type:ty)),* $(,)?) => {
        $(fn $method(self, _value: $type) -> Result {
            Err($error)
        })*
    };
}

fn key_must_be_a_string() -> serde_json::Error {
    ser::Error::custom("key must be a string")
}

/// The rest of a [`ser::Serializer`] whose input can only be a string: its
/// types, and compound and empty values, each failing with `$error`.
macro_rules! refuse_others {
    ($error:expr) => {
        type Ok = ();
        type Error = serde_json::Error;
        type SerializeSeq = Impossible<(), serde_json::Error>;
        type SerializeTuple = Impossible<(), serde_json::Error>;
        type SerializeTupleStruct = Impossible<(), serde_json::Error>;
        type SerializeTupleVariant = Impossible<(), serde_json::Error>;
        type SerializeMap = Impossible<(), serde_json::Error>;
        type SerializeStruct = Impossible<(), serde_json::Error>;
        type SerializeStructVariant = Impossible<(), serde_json::Error>;

        fn serialize_bytes(self, _value: &[u8]) -> Result {
            Err($error)
        }
        fn serialize_none(self) -> Result {
            Err($error)
        }
        fn serialize_some<T: Serialize + ?Sized>(self, _value: &T) -> Result {
            Err($error)
        }
        fn serialize_unit(self) -> Result {
            Err($error)
        }
        fn serialize_unit_struct(self, _name: &'static str) -> Result {
            Err($error)
        }
        fn serialize_newtype_variant<T: Serialize + ?Sized>(
            self,
            _name: &'static str,
            _index: u32,
            _variant: &'static str,
            _value: &T,
        ) -> Result {
            Err($error)
        }
        fn serialize_seq(self, _len: Option<usize>) -> Result<Self::SerializeSeq> {
            Err($error)
        }
        fn serialize_tuple(self, _len: usize) -> Result<Self::SerializeTuple> {
            Err($error)
        }
        fn serialize_tuple_struct(
            self,
            _name: &'static str,
            _len: usize,
        ) -> Result<Self::SerializeTupleStruct> {
            Err($error)
        }
        fn serialize_tuple_variant(
            self,
            _name: &'static str,
            _index: u32,
            _variant: &'static str,
            _len: usize,
        ) -> Result<Self::SerializeTupleVariant> {
            Err($error)
        }
        fn serialize_map(self, _len: Option<usize>) -> Result<Self::SerializeMap> {
            Err($error)
        }
        fn serialize_struct(
            self,
            _name: &'static str,
            _len: usize,
        ) -> Result<Self::SerializeStruct> {
            Err($error)
        }
        fn serialize_struct_variant(
            self,
            _name: &'static str,
            _index: u32,
            _variant: &'static str,
            _len: usize,
        ) -> Result<Self::SerializeStructVariant> {
            Err($error)
        }
    };
}

/// Calls `$callback!` with the booleans' and numbers' serializer methods
/// (and any others given), so the two serializers that hand these to
/// serde_json list them once.
macro_rules! with_scalars {
    ($callback:ident $(, $method:ident($type:ty))* $(,)?) => {
        $callback!(
            serialize_bool(bool),
            serialize_i8(i8),
            serialize_i16(i16),
            serialize_i32(i32),
            serialize_i64(i64),
            serialize_i128(i128),
            serialize_u8(u8),
            serialize_u16(u16),
            serialize_u32(u32),
            serialize_u64(u64),
            serialize_u128(u128),
            serialize_f32(f32),
            serialize_f64(f64),
            $($method($type),)*
        );
    };
}

macro_rules! by_serde_json {
    ($($method:ident($type:ty)),* $(,)?) => {
        $(fn $method(self, value: $type) -> Result {
            ser::Serializer::$method(&mut json(self.out), value)
        })*
    };
}

impl<'a> ser::Serializer for Esc<'a> {
    type Ok = ();
    type Error = serde_json::Error;
    type SerializeSeq = Compound<'a>;
    type SerializeTuple = Compound<'a>;
    type SerializeTupleStruct = Compound<'a>;
    type SerializeTupleVariant = Compound<'a>;
    type SerializeMap = Compound<'a>;
    type SerializeStruct = StructCompound<'a>;
    type SerializeStructVariant = Compound<'a>;

    with_scalars!(by_serde_json, serialize_bytes(&[u8]));

    fn serialize_char(self, value: char) -> Result {
        write_str(self.out, value.encode_utf8(&mut [0; 4]));
        Ok(())
    }

    fn serialize_str(self, value: &str) -> Result {
        write_str(self.out, value);
        Ok(())
    }

    fn serialize_none(self) -> Result {
        self.serialize_unit()
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result {
        value.serialize(self)
    }

    fn serialize_unit(self) -> Result {
        self.out.extend_from_slice(b"null");
        Ok(())
    }

    fn serialize_unit_struct(self, _name: &'static str) -> Result {
        self.serialize_unit()
    }

    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result {
        self.serialize_str(variant)
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result {
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result {
        self.out.push(b'{');
        write_str(self.out, variant);
        self.out.push(b':');
        value.serialize(Esc { out: self.out })?;
        self.out.push(b'}');
        Ok(())
    }

    fn serialize_seq(self, _len: Option<usize>) -> Result<Compound<'a>> {
        Ok(Compound::open(self.out, b"[", b"]"))
    }

    fn serialize_tuple(self, len: usize) -> Result<Compound<'a>> {
        self.serialize_seq(Some(len))
    }

    fn serialize_tuple_struct(self, _name: &'static str, len: usize) -> Result<Compound<'a>> {
        self.serialize_seq(Some(len))
    }

    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Compound<'a>> {
        Ok(Compound::variant(self.out, variant, b":[", b"]}"))
    }

    fn serialize_map(self, _len: Option<usize>) -> Result<Compound<'a>> {
        Ok(Compound::open(self.out, b"{", b"}"))
    }

    fn serialize_struct(self, name: &'static str, _len: usize) -> Result<StructCompound<'a>> {
        if name == serde_json_raw_token() {
            return Ok(StructCompound::Raw(self.out));
        }
        Ok(StructCompound::Fields(Compound::open(self.out, b"{", b"}")))
    }

    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Compound<'a>> {
        Ok(Compound::variant(self.out, variant, b":{", b"}}"))
    }
}

/// The struct name by which serde_json's `RawValue` asks its serializer to
/// write its text as it is.
fn serde_json_raw_token() -> &'static str {
    "$serde_json::private::RawValue"
}

/// An array or object being written.
pub(super) struct Compound<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
    close: &'static [u8],
}

impl<'a> Compound<'a> {
    fn open(out: &'a mut Vec<u8>, open: &[u8], close: &'static [u8]) -> Self {
        out.extend_from_slice(open);
        Compound {
            out,
            first: true,
            close,
        }
    }

    /// A variant's value: `{"variant"` then `open` ... `close`.
    fn variant(out: &'a mut Vec<u8>, variant: &str, open: &[u8], close: &'static [u8]) -> Self {
        out.push(b'{');
        write_str(out, variant);
        Compound::open(out, open, close)
    }

    fn comma(&mut self) {
        if !std::mem::replace(&mut self.first, false) {
            self.out.push(b',');
        }
    }

    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result {
        self.comma();
        value.serialize(Esc { out: self.out })
    }

    fn field<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) -> Result {
        self.comma();
        write_str(self.out, key);
        self.out.push(b':');
        value.serialize(Esc { out: self.out })
    }

    fn close(self) -> Result {
        self.out.extend_from_slice(self.close);
        Ok(())
    }
}

/// The element-by-element compounds (arrays, tuples, tuple structs and
/// variants) are one and the same here.
macro_rules! elements {
    ($($trait:ident::$method:ident),* $(,)?) => {
        $(impl ser::$trait for Compound<'_> {
            type Ok = ();
            type Error = serde_json::Error;
            fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Result {
                self.element(value)
            }
            fn end(self) -> Result {
                self.close()
            }
        })*
    };
}

elements!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field,
);

impl ser::SerializeMap for Compound<'_> {
    type Ok = ();
    type Error = serde_json::Error;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result {
        self.comma();
        key.serialize(KeyEsc { out: self.out })
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result {
        self.out.push(b':');
        value.serialize(Esc { out: self.out })
    }
    fn end(self) -> Result {
        self.close()
    }
}

impl ser::SerializeStructVariant for Compound<'_> {
    type Ok = ();
    type Error = serde_json::Error;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> Result {
        self.field(key, value)
    }
    fn end(self) -> Result {
        self.close()
    }
}

/// A struct being written, or serde_json's raw value (its text, escaped once).
pub(super) enum StructCompound<'a> {
    Fields(Compound<'a>),
    Raw(&'a mut Vec<u8>),
}

impl ser::SerializeStruct for StructCompound<'_> {
    type Ok = ();
    type Error = serde_json::Error;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> Result {
        match self {
            StructCompound::Fields(fields) => fields.field(key, value),
            StructCompound::Raw(out) => value.serialize(RawText { out }),
        }
    }
    fn end(self) -> Result {
        match self {
            StructCompound::Fields(fields) => fields.close(),
            StructCompound::Raw(_) => Ok(()),
        }
    }
}

/// Takes a raw value's JSON text and writes it escaped once (it is JSON
/// already), as serde_json's raw fragments go through [`Escaped`].
struct RawText<'a> {
    out: &'a mut Vec<u8>,
}

impl ser::Serializer for RawText<'_> {
    fn serialize_str(self, value: &str) -> Result {
        escape_into(self.out, value.as_bytes()).map_err(serde_json::Error::io)
    }

    refuse_scalars!(
        not_raw_text();
        serialize_bool(bool),
        serialize_i8(i8),
        serialize_i16(i16),
        serialize_i32(i32),
        serialize_i64(i64),
        serialize_u8(u8),
        serialize_u16(u16),
        serialize_u32(u32),
        serialize_u64(u64),
        serialize_f32(f32),
        serialize_f64(f64),
        serialize_char(char),
    );
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
    ) -> Result {
        Err(not_raw_text())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _value: &T,
    ) -> Result {
        Err(not_raw_text())
    }
    refuse_others!(not_raw_text());
}

/// A map key: strings escaped here, anything else as serde_json writes keys.
struct KeyEsc<'a> {
    out: &'a mut Vec<u8>,
}

macro_rules! key_by_serde_json {
    ($($method:ident($type:ty)),* $(,)?) => {
        $(fn $method(self, value: $type) -> Result {
            key_by_serde_json(self.out, &value)
        })*
    };
}

impl ser::Serializer for KeyEsc<'_> {
    with_scalars!(key_by_serde_json, serialize_char(char));

    fn serialize_str(self, value: &str) -> Result {
        write_str(self.out, value);
        Ok(())
    }

    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result {
        write_str(self.out, variant);
        Ok(())
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result {
        value.serialize(self)
    }

    refuse_others!(key_must_be_a_string());
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use serde::Serialize;

    use super::*;

    /// What serde_json writes with the envelope's formatter: the reference.
    fn reference<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        value.serialize(&mut json(&mut out))?;
        Ok(out)
    }

    fn escaped<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        value.serialize(Esc { out: &mut out })?;
        Ok(out)
    }

    #[derive(Serialize)]
    struct Unit;

    #[derive(Serialize)]
    struct Newtype(String);

    #[derive(Serialize)]
    enum Shape {
        Empty,
        Named(String),
        Pair(i32, f64),
        Boxed { side: u8, label: Option<char> },
    }

    #[derive(Serialize)]
    struct Everything {
        text: String,
        int: i64,
        wide: i128,
        float: f64,
        single: f32,
        flag: bool,
        letter: char,
        maybe: Option<u16>,
        unit: (),
        unit_struct: Unit,
        newtype: Newtype,
        shapes: Vec<Shape>,
        tuple: (u8, String),
        by_number: BTreeMap<i32, String>,
        by_flag: BTreeMap<bool, u8>,
        by_text: BTreeMap<String, Vec<u8>>,
        #[serde(with = "serde_bytes_like")]
        bytes: Vec<u8>,
        raw: Box<serde_json::value::RawValue>,
    }

    mod serde_bytes_like {
        pub fn serialize<S: serde::Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(bytes)
        }
    }

    proptest! {
        #[test]
        fn writes_what_serde_json_writes(
            text in any::<String>(),
            int in any::<i64>(),
            wide in any::<i128>(),
            float in any::<f64>(),
            single in any::<f32>(),
            flag in any::<bool>(),
            letter in any::<char>(),
            maybe in any::<Option<u16>>(),
            label in any::<Option<char>>(),
            by_number in proptest::collection::btree_map(any::<i32>(), ".*", 0..3),
            by_text in proptest::collection::btree_map(".*", any::<Vec<u8>>(), 0..3),
            bytes in any::<Vec<u8>>(),
        ) {
            let value = Everything {
                text: text.clone(),
                int,
                wide,
                float,
                single,
                flag,
                letter,
                maybe,
                unit: (),
                unit_struct: Unit,
                newtype: Newtype(text.clone()),
                shapes: vec![
                    Shape::Empty,
                    Shape::Named(text.clone()),
                    Shape::Pair(int as i32, float),
                    Shape::Boxed { side: 3, label },
                ],
                tuple: (7, text.clone()),
                by_number,
                by_flag: BTreeMap::from([(flag, 1)]),
                by_text,
                bytes,
                raw: serde_json::value::to_raw_value(&(text, float)).unwrap(),
            };
            prop_assert_eq!(escaped(&value).unwrap(), reference(&value).unwrap());
        }
    }

    #[test]
    fn keys_that_are_no_strings_fail_as_in_serde_json() {
        let by_list = BTreeMap::from([(vec![1], 1)]);
        assert!(reference(&by_list).is_err());
        assert!(escaped(&by_list).is_err());
        let by_float = BTreeMap::from([(1u8, 1.5f64)]);
        assert_eq!(escaped(&by_float).unwrap(), reference(&by_float).unwrap());
    }
}
