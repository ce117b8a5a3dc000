//! Element types of tensor files: every dtype the `safetensors` format (crate 0.8) knows, with
//! stable numeric codes for the C ABI (`KVR_DTYPE_*`).

use crate::{err, Result};

/// One element type. The discriminant is the C code (`KVR_DTYPE_*`), stable across versions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Dtype {
    /// Boolean, one byte.
    Bool = 1,
    /// Unsigned 8-bit integer.
    U8 = 2,
    /// Signed 8-bit integer.
    I8 = 3,
    /// Unsigned 16-bit integer.
    U16 = 4,
    /// Signed 16-bit integer.
    I16 = 5,
    /// Unsigned 32-bit integer.
    U32 = 6,
    /// Signed 32-bit integer.
    I32 = 7,
    /// Unsigned 64-bit integer.
    U64 = 8,
    /// Signed 64-bit integer.
    I64 = 9,
    /// IEEE half precision.
    F16 = 10,
    /// bfloat16.
    BF16 = 11,
    /// IEEE single precision.
    F32 = 12,
    /// IEEE double precision.
    F64 = 13,
    /// FP8 E4M3.
    F8E4M3 = 14,
    /// FP8 E5M2.
    F8E5M2 = 15,
    /// FP8 E8M0 (MX scale).
    F8E8M0 = 16,
    /// FP8 E4M3 FNUZ.
    F8E4M3Fnuz = 17,
    /// FP8 E5M2 FNUZ.
    F8E5M2Fnuz = 18,
    /// Complex with two f32 parts (8 bytes).
    C64 = 19,
    /// MX FP4, 4 bits, packed two per byte.
    F4 = 20,
    /// MX FP6 E2M3, 6 bits, packed.
    F6E2M3 = 21,
    /// MX FP6 E3M2, 6 bits, packed.
    F6E3M2 = 22,
}

/// Every dtype, in code order.
pub const ALL_DTYPES: [Dtype; 22] = [
    Dtype::Bool,
    Dtype::U8,
    Dtype::I8,
    Dtype::U16,
    Dtype::I16,
    Dtype::U32,
    Dtype::I32,
    Dtype::U64,
    Dtype::I64,
    Dtype::F16,
    Dtype::BF16,
    Dtype::F32,
    Dtype::F64,
    Dtype::F8E4M3,
    Dtype::F8E5M2,
    Dtype::F8E8M0,
    Dtype::F8E4M3Fnuz,
    Dtype::F8E5M2Fnuz,
    Dtype::C64,
    Dtype::F4,
    Dtype::F6E2M3,
    Dtype::F6E3M2,
];

impl Dtype {
    /// The C code (`KVR_DTYPE_*`).
    pub fn code(self) -> u32 {
        self as u32
    }

    /// The dtype of a C code; `Unsupported` for unknown codes.
    pub fn from_code(code: u32) -> Result<Dtype> {
        ALL_DTYPES
            .iter()
            .copied()
            .find(|d| d.code() == code)
            .ok_or_else(|| {
                err!(
                    Unsupported,
                    "unsupported dtype code {code} (known: 1..={})",
                    ALL_DTYPES.len()
                )
            })
    }

    /// Bits per element (4 and 6 for the packed MX types).
    pub fn bits(self) -> u64 {
        self.to_st().bitsize() as u64
    }

    /// Bytes per element for byte-sized types; `None` for the packed sub-byte types.
    pub fn byte_size(self) -> Option<usize> {
        let b = self.bits();
        (b % 8 == 0).then_some((b / 8) as usize)
    }

    /// The name in a safetensors header ("F32", "F8_E4M3", ...).
    pub fn name(self) -> &'static str {
        match self {
            Dtype::Bool => "BOOL",
            Dtype::U8 => "U8",
            Dtype::I8 => "I8",
            Dtype::U16 => "U16",
            Dtype::I16 => "I16",
            Dtype::U32 => "U32",
            Dtype::I32 => "I32",
            Dtype::U64 => "U64",
            Dtype::I64 => "I64",
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
            Dtype::F32 => "F32",
            Dtype::F64 => "F64",
            Dtype::F8E4M3 => "F8_E4M3",
            Dtype::F8E5M2 => "F8_E5M2",
            Dtype::F8E8M0 => "F8_E8M0",
            Dtype::F8E4M3Fnuz => "F8_E4M3FNUZ",
            Dtype::F8E5M2Fnuz => "F8_E5M2FNUZ",
            Dtype::C64 => "C64",
            Dtype::F4 => "F4",
            Dtype::F6E2M3 => "F6_E2M3",
            Dtype::F6E3M2 => "F6_E3M2",
        }
    }

    /// The dtype of a safetensors header name (exact case: "BF16", not "bf16");
    /// `InvalidArgument` for names kvr does not know.
    pub fn from_name(name: &str) -> Result<Dtype> {
        ALL_DTYPES
            .iter()
            .copied()
            .find(|d| d.name() == name)
            .ok_or_else(|| err!(InvalidArgument, "unknown safetensors dtype {name:?}"))
    }

    /// The `safetensors` crate's dtype.
    pub fn to_st(self) -> safetensors::Dtype {
        use safetensors::Dtype as S;
        match self {
            Dtype::Bool => S::BOOL,
            Dtype::U8 => S::U8,
            Dtype::I8 => S::I8,
            Dtype::U16 => S::U16,
            Dtype::I16 => S::I16,
            Dtype::U32 => S::U32,
            Dtype::I32 => S::I32,
            Dtype::U64 => S::U64,
            Dtype::I64 => S::I64,
            Dtype::F16 => S::F16,
            Dtype::BF16 => S::BF16,
            Dtype::F32 => S::F32,
            Dtype::F64 => S::F64,
            Dtype::F8E4M3 => S::F8_E4M3,
            Dtype::F8E5M2 => S::F8_E5M2,
            Dtype::F8E8M0 => S::F8_E8M0,
            Dtype::F8E4M3Fnuz => S::F8_E4M3FNUZ,
            Dtype::F8E5M2Fnuz => S::F8_E5M2FNUZ,
            Dtype::C64 => S::C64,
            Dtype::F4 => S::F4,
            Dtype::F6E2M3 => S::F6_E2M3,
            Dtype::F6E3M2 => S::F6_E3M2,
        }
    }

    /// kvr's dtype for the `safetensors` crate's one; `Unsupported` for a dtype newer than kvr.
    pub fn from_st(d: safetensors::Dtype) -> Result<Dtype> {
        ALL_DTYPES
            .iter()
            .copied()
            .find(|k| k.to_st() == d)
            .ok_or_else(|| err!(Unsupported, "dtype {d:?} is not supported by kvr"))
    }
}

impl std::fmt::Display for Dtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_names_and_crate_dtypes_round_trip() {
        let mut names = std::collections::HashSet::new();
        for (i, d) in ALL_DTYPES.iter().enumerate() {
            assert_eq!(d.code(), i as u32 + 1);
            assert_eq!(Dtype::from_code(d.code()).unwrap(), *d);
            assert_eq!(Dtype::from_st(d.to_st()).unwrap(), *d);
            assert_eq!(Dtype::from_name(d.name()).unwrap(), *d);
            // The header name is what the crate serializes.
            assert_eq!(format!("{}", d.to_st()), d.name());
            assert!(names.insert(d.name()));
        }
        assert_eq!(
            Dtype::from_code(0).unwrap_err().kind(),
            crate::ErrorKind::Unsupported
        );
        assert!(Dtype::from_code(23).is_err());
        for bad in ["bf16", "Q4", "", "U8 "] {
            let e = Dtype::from_name(bad).unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::InvalidArgument, "{bad:?}");
        }
        assert_eq!(Dtype::F4.byte_size(), None);
        assert_eq!(Dtype::C64.byte_size(), Some(8));
        assert_eq!(Dtype::BF16.byte_size(), Some(2));
    }
}
