//! A validating reader for GGUF headers (metadata and tensor directory).
//!
//! Model files come from users and the internet. Before any loader trusts a header, this pass
//! walks it with bounded reads: every count and length is checked against what is left of the
//! file before anything is allocated, and tensor shapes and offsets must fit inside the file.
//! Scalar metadata is kept, and so are the tokenizer's arrays (`tokenizer.ggml.*`); other arrays
//! are skipped with their length recorded. A truncated, foreign or hostile file gives a
//! [`GgufError`] naming the problem.

use std::collections::BTreeMap;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

const MAGIC: [u8; 4] = *b"GGUF";
/// Far above any real model (Llama 405B has ~1,100 tensors, vocabularies are ~250k entries).
const MAX_TENSORS: u64 = 1 << 20;
const MAX_KVS: u64 = 1 << 16;
const MAX_STRING: u64 = 16 << 20;
const MAX_DIMS: u32 = 4;

#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("not a GGUF file (it starts with {0:02x?}, not “GGUF”)")]
    BadMagic([u8; 4]),
    #[error("GGUF version {0} is not supported (versions 2 and 3 are)")]
    Version(u32),
    #[error("the file ends early, inside {0}: it is truncated or was not fully downloaded")]
    Truncated(&'static str),
    #[error("implausible header: {0}")]
    Implausible(String),
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// A metadata value, as kept by the validator.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Int(i64),
    Uint(u64),
    Float(f64),
    Bool(bool),
    String(String),
    /// Arrays are skipped; only their element type and length are kept...
    Array {
        item_type: u32,
        len: u64,
    },
    /// ...except the tokenizer's (`tokenizer.ggml.*`), which the tokenizer is built from.
    Strings(Vec<String>),
    Ints(Vec<i64>),
    Floats(Vec<f64>),
}

impl Value {
    pub fn as_str(&self) -> Option<&str> {
        if let Value::String(s) = self {
            Some(s)
        } else {
            None
        }
    }
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::Uint(v) => Some(v),
            Value::Int(v) if v >= 0 => Some(v as u64),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    pub dims: Vec<u64>,
    /// The ggml type id.
    pub ggml_type: u32,
    /// Offset from the start of the tensor data section.
    pub offset: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone)]
pub struct Header {
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    /// Where tensor data starts in the file.
    pub data_offset: u64,
    pub file_size: u64,
}

impl Header {
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }
    pub fn str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }
    pub fn u64(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(Value::as_u64)
    }
    pub fn parameter_count(&self) -> u64 {
        self.tensors
            .iter()
            .map(|t| t.dims.iter().product::<u64>())
            .sum()
    }
}

/// The name of a ggml type and its block layout (elements per block, bytes per block), for the
/// types that exist in released GGUF files. `None` for ids this build does not know.
pub fn ggml_type(id: u32) -> Option<(&'static str, u64, u64)> {
    Some(match id {
        0 => ("F32", 1, 4),
        1 => ("F16", 1, 2),
        2 => ("Q4_0", 32, 18),
        3 => ("Q4_1", 32, 20),
        6 => ("Q5_0", 32, 22),
        7 => ("Q5_1", 32, 24),
        8 => ("Q8_0", 32, 34),
        9 => ("Q8_1", 32, 36),
        10 => ("Q2_K", 256, 84),
        11 => ("Q3_K", 256, 110),
        12 => ("Q4_K", 256, 144),
        13 => ("Q5_K", 256, 176),
        14 => ("Q6_K", 256, 210),
        15 => ("Q8_K", 256, 292),
        16 => ("IQ2_XXS", 256, 66),
        17 => ("IQ2_XS", 256, 74),
        18 => ("IQ3_XXS", 256, 98),
        19 => ("IQ1_S", 256, 50),
        20 => ("IQ4_NL", 32, 18),
        21 => ("IQ3_S", 256, 110),
        22 => ("IQ2_S", 256, 82),
        23 => ("IQ4_XS", 256, 136),
        24 => ("I8", 1, 1),
        25 => ("I16", 1, 2),
        26 => ("I32", 1, 4),
        27 => ("I64", 1, 8),
        28 => ("F64", 1, 8),
        29 => ("IQ1_M", 256, 56),
        30 => ("BF16", 1, 2),
        _ => return None,
    })
}

pub fn read_header(path: &Path) -> Result<Header, GgufError> {
    let file = std::fs::File::open(path)?;
    let file_size = file.metadata()?.len();
    let mut r = Bounded {
        inner: BufReader::new(file),
        pos: 0,
        size: file_size,
    };

    let mut magic = [0u8; 4];
    r.exact(&mut magic, "the file signature")?;
    if magic != MAGIC {
        return Err(GgufError::BadMagic(magic));
    }
    let version = r.u32("the version")?;
    if !(2..=3).contains(&version) {
        return Err(GgufError::Version(version));
    }
    let tensor_count = r.u64("the tensor count")?;
    let kv_count = r.u64("the metadata count")?;
    if tensor_count > MAX_TENSORS || tensor_count > file_size {
        return Err(GgufError::Implausible(format!("{tensor_count} tensors")));
    }
    if kv_count > MAX_KVS || kv_count > file_size {
        return Err(GgufError::Implausible(format!(
            "{kv_count} metadata entries"
        )));
    }

    let mut metadata = BTreeMap::new();
    for _ in 0..kv_count {
        let key = r.string("a metadata key")?;
        let value_type = r.u32("a metadata type")?;
        let keep = key.starts_with("tokenizer.ggml.");
        let value = r.value(value_type, keep)?;
        metadata.insert(key, value);
    }

    let mut tensors = Vec::with_capacity(tensor_count as usize);
    for _ in 0..tensor_count {
        let name = r.string("a tensor name")?;
        let n_dims = r.u32("a tensor's dimension count")?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(GgufError::Implausible(format!(
                "tensor {name} has {n_dims} dimensions"
            )));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(r.u64("a tensor dimension")?);
        }
        let type_id = r.u32("a tensor type")?;
        let offset = r.u64("a tensor offset")?;
        let elements = dims
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .filter(|&n| n > 0 && n <= file_size * 8);
        let Some(elements) = elements else {
            return Err(GgufError::Implausible(format!(
                "tensor {name} has shape {dims:?}"
            )));
        };
        let (type_name, block, block_bytes) = ggml_type(type_id).ok_or_else(|| {
            GgufError::Implausible(format!("tensor {name} has unknown type {type_id}"))
        })?;
        if elements % block != 0 {
            return Err(GgufError::Implausible(format!(
                "tensor {name}: {elements} elements is not a whole number of {type_name} blocks"
            )));
        }
        let bytes = elements / block * block_bytes;
        tensors.push(TensorInfo {
            name,
            dims,
            ggml_type: type_id,
            offset,
            bytes,
        });
    }

    let alignment = metadata
        .get("general.alignment")
        .and_then(Value::as_u64)
        .unwrap_or(32);
    if alignment == 0 || !alignment.is_power_of_two() || alignment > 1 << 16 {
        return Err(GgufError::Implausible(format!("alignment {alignment}")));
    }
    let data_offset = r.pos.div_ceil(alignment) * alignment;
    for t in &tensors {
        let end = data_offset
            .checked_add(t.offset)
            .and_then(|s| s.checked_add(t.bytes));
        match end {
            Some(end) if end <= file_size => {}
            _ => {
                return Err(GgufError::Truncated("the tensor data"));
            }
        }
    }
    Ok(Header {
        version,
        metadata,
        tensors,
        data_offset,
        file_size,
    })
}

/// A reader that knows how much of the file is left, so no length read from the file can make
/// it allocate or skip past the end.
struct Bounded<R> {
    inner: R,
    pos: u64,
    size: u64,
}

impl<R: Read + Seek> Bounded<R> {
    fn left(&self) -> u64 {
        self.size.saturating_sub(self.pos)
    }

    fn exact(&mut self, buf: &mut [u8], what: &'static str) -> Result<(), GgufError> {
        if (buf.len() as u64) > self.left() {
            return Err(GgufError::Truncated(what));
        }
        self.inner.read_exact(buf).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => GgufError::Truncated(what),
            _ => GgufError::Io(e),
        })?;
        self.pos += buf.len() as u64;
        Ok(())
    }

    fn skip(&mut self, n: u64, what: &'static str) -> Result<(), GgufError> {
        if n > self.left() {
            return Err(GgufError::Truncated(what));
        }
        self.inner.seek(SeekFrom::Current(n as i64))?;
        self.pos += n;
        Ok(())
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, GgufError> {
        let mut b = [0u8; 4];
        self.exact(&mut b, what)?;
        Ok(u32::from_le_bytes(b))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, GgufError> {
        let mut b = [0u8; 8];
        self.exact(&mut b, what)?;
        Ok(u64::from_le_bytes(b))
    }

    fn string(&mut self, what: &'static str) -> Result<String, GgufError> {
        let len = self.u64(what)?;
        if len > MAX_STRING || len > self.left() {
            return Err(GgufError::Implausible(format!(
                "a {len}-byte string in {what}"
            )));
        }
        let mut buf = vec![0u8; len as usize];
        self.exact(&mut buf, what)?;
        // Invalid UTF-8 is kept readable rather than refused: names are informational.
        Ok(String::from_utf8(buf)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
    }

    /// Reads one value. Arrays are skipped unless `keep_arrays`; kept ones are read item by
    /// item, each bounded by the bytes left in the file.
    fn value(&mut self, value_type: u32, keep_arrays: bool) -> Result<Value, GgufError> {
        const WHAT: &str = "a metadata value";
        let mut b8 = [0u8; 8];
        Ok(match value_type {
            0 | 1 | 7 => {
                self.exact(&mut b8[..1], WHAT)?;
                match value_type {
                    0 => Value::Uint(b8[0] as u64),
                    1 => Value::Int(b8[0] as i8 as i64),
                    _ => Value::Bool(b8[0] != 0),
                }
            }
            2 | 3 => {
                self.exact(&mut b8[..2], WHAT)?;
                let v = u16::from_le_bytes([b8[0], b8[1]]);
                if value_type == 2 {
                    Value::Uint(v as u64)
                } else {
                    Value::Int(v as i16 as i64)
                }
            }
            4..=6 => {
                self.exact(&mut b8[..4], WHAT)?;
                let v = u32::from_le_bytes([b8[0], b8[1], b8[2], b8[3]]);
                match value_type {
                    4 => Value::Uint(v as u64),
                    5 => Value::Int(v as i32 as i64),
                    _ => Value::Float(f32::from_bits(v) as f64),
                }
            }
            10..=12 => {
                self.exact(&mut b8, WHAT)?;
                let v = u64::from_le_bytes(b8);
                match value_type {
                    10 => Value::Uint(v),
                    11 => Value::Int(v as i64),
                    _ => Value::Float(f64::from_bits(v)),
                }
            }
            8 => Value::String(self.string(WHAT)?),
            9 => {
                let item_type = self.u32(WHAT)?;
                let len = self.u64(WHAT)?;
                if len > self.left() {
                    return Err(GgufError::Implausible(format!("an array of {len} items")));
                }
                if keep_arrays && matches!(item_type, 8 | 0..=6 | 10..=12) {
                    let mut items = Vec::with_capacity(len.min(1 << 20) as usize);
                    for _ in 0..len {
                        items.push(self.value(item_type, false)?);
                    }
                    return Ok(match item_type {
                        8 => Value::Strings(
                            items
                                .into_iter()
                                .map(|v| {
                                    if let Value::String(s) = v {
                                        s
                                    } else {
                                        String::new()
                                    }
                                })
                                .collect(),
                        ),
                        6 | 12 => Value::Floats(
                            items
                                .into_iter()
                                .map(|v| if let Value::Float(f) = v { f } else { 0.0 })
                                .collect(),
                        ),
                        _ => Value::Ints(
                            items
                                .into_iter()
                                .map(|v| match v {
                                    Value::Int(i) => i,
                                    Value::Uint(u) => u as i64,
                                    _ => 0,
                                })
                                .collect(),
                        ),
                    });
                }
                let fixed = match item_type {
                    0 | 1 | 7 => Some(1),
                    2 | 3 => Some(2),
                    4..=6 => Some(4),
                    10..=12 => Some(8),
                    _ => None,
                };
                match fixed {
                    Some(size) => self.skip(len * size, WHAT)?,
                    None if item_type == 8 => {
                        for _ in 0..len {
                            let n = self.u64(WHAT)?;
                            if n > MAX_STRING {
                                return Err(GgufError::Implausible(format!(
                                    "a {n}-byte string in an array"
                                )));
                            }
                            self.skip(n, WHAT)?;
                        }
                    }
                    None => {
                        return Err(GgufError::Implausible(format!(
                            "array of value type {item_type}"
                        )));
                    }
                }
                Value::Array { item_type, len }
            }
            other => {
                return Err(GgufError::Implausible(format!(
                    "metadata value type {other}"
                )));
            }
        })
    }
}
