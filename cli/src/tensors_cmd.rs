//! `kvr tensors ls`: what a safetensors file holds.

use std::path::PathBuf;

use clap::Subcommand;
use kvr::tensors::TensorFile;

use crate::report::human_bytes;
use crate::stdout::out;

#[derive(Subcommand)]
pub enum TensorsCommand {
    /// List a safetensors file's tensors (name, dtype, shape, file offset, bytes) and metadata.
    ///
    /// Works on any safetensors file. The padding tensors (`__kvr_pad_*`) that keep the data
    /// of kvr's 4 KiB-aligned files aligned are hidden unless --all.
    Ls {
        /// The safetensors file.
        path: PathBuf,
        /// Also list the padding tensors of aligned kvr files.
        #[arg(long)]
        all: bool,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// One listed tensor.
#[derive(serde::Serialize)]
struct Item<'a> {
    name: &'a str,
    dtype: &'static str,
    shape: &'a [u64],
    /// File offset of the first byte.
    offset: u64,
    bytes: u64,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    padding: bool,
}

pub fn run(cmd: &TensorsCommand) -> kvr::Result<u8> {
    let TensorsCommand::Ls { path, all, json } = cmd;
    let f = TensorFile::open(path)?;
    let mut items: Vec<Item> = f
        .tensors()
        .iter()
        .map(|t| Item {
            name: &t.name,
            dtype: t.dtype.name(),
            shape: &t.shape,
            offset: t.offset,
            bytes: t.len,
            padding: false,
        })
        .collect();
    if *all {
        items.extend(f.padding().iter().map(|t| Item {
            name: &t.name,
            dtype: t.dtype.name(),
            shape: &t.shape,
            offset: t.offset,
            bytes: t.len,
            padding: true,
        }));
        // File order; a padding tensor follows the (possibly empty) tensors at its offset.
        items.sort_by_key(|i| (i.offset, i.bytes > 0 && !i.padding, i.padding));
    }
    let hidden = if *all { 0 } else { f.padding().len() };
    if *json {
        let meta: serde_json::Map<String, serde_json::Value> = f
            .metadata()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone().into()))
            .collect();
        let out = serde_json::json!({
            "path": path.display().to_string(),
            "file_bytes": f.file_len(),
            "data_start": f.data_start(),
            "padding_hidden": hidden,
            "metadata": meta,
            "tensors": items,
        });
        out!("{}", serde_json::to_string_pretty(&out).unwrap())?;
        return Ok(0);
    }
    let data: u64 = f.tensors().iter().map(|t| t.len).sum();
    out!(
        "{}: {} tensors, {} of tensor data, file {} bytes, data starts at byte {}{}",
        path.display(),
        f.len(),
        human_bytes(data),
        f.file_len(),
        f.data_start(),
        if hidden > 0 {
            format!(" ({hidden} padding tensors hidden, --all shows them)")
        } else {
            String::new()
        }
    )?;
    if !f.metadata().is_empty() {
        out!("metadata:")?;
        for (k, v) in f.metadata() {
            out!("  {k} = {}", v.escape_debug())?;
        }
    }
    if items.is_empty() {
        return Ok(0);
    }
    let w = items.iter().map(|i| i.name.len()).max().unwrap_or(4).max(4);
    out!(
        "{:<w$}  {:<10} {:<20} {:>14} {:>14}",
        "name",
        "dtype",
        "shape",
        "offset",
        "bytes"
    )?;
    for i in &items {
        let shape = format!(
            "[{}]",
            i.shape
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
        out!(
            "{:<w$}  {:<10} {:<20} {:>14} {:>14}",
            i.name,
            i.dtype,
            shape,
            i.offset,
            i.bytes
        )?;
    }
    Ok(0)
}
