//! Writes a small safetensors file from a transposed (strided) matrix, then reads it back
//! lazily. Usage: `cargo run --example tensors_demo -- [path] [--align]`; the file is left in
//! place so other readers (e.g. Python `safetensors`) can open it. With `--read` it only lists
//! an existing file (e.g. one written by Python).

use kvr::tensors::{Dtype, TensorFile, TensorIn, WriteOptions};

fn main() -> kvr::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let path = args
        .iter()
        .find(|a| !a.starts_with("--"))
        .cloned()
        .unwrap_or_else(|| "kv.safetensors".into());
    let align = args.iter().any(|a| a == "--align");
    if !args.iter().any(|a| a == "--read") {
        write_demo(&path, align)?;
    }
    let f = TensorFile::open(path.as_ref())?;
    for t in f.tensors() {
        println!(
            "{} {} {:?} at offset {} ({} bytes)",
            t.name, t.dtype, t.shape, t.offset, t.len
        );
    }
    for (k, v) in f.metadata() {
        println!("metadata {k} = {v}");
    }
    Ok(())
}

fn write_demo(path: &str, align: bool) -> kvr::Result<()> {
    // A 2x3 row-major f32 matrix, written as its 3x2 transpose without copying it first.
    let m: Vec<u8> = [1f32, 2., 3., 4., 5., 6.]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    let ids: Vec<u8> = [10i64, 11].iter().flat_map(|x| x.to_le_bytes()).collect();
    kvr::tensors::write(
        path.as_ref(),
        &[
            TensorIn {
                name: "k_t",
                dtype: Dtype::F32,
                shape: &[3, 2],
                strides: Some(&[1, 3]),
                data: &m,
                offset: 0,
            },
            TensorIn::contiguous("block_ids", Dtype::I64, &[2], &ids),
        ],
        &[("writer", "kvr")],
        WriteOptions {
            align_4k: align,
            sync: true,
        },
    )?;
    Ok(())
}
