//! Tensor file benchmark (release mode):
//! `cargo run --release --example tensors_bench -- [dir]` (default dir: $TMPDIR or /tmp).
//!
//! 1. Writes a 1 GiB file of 1000 F16 tensors (512x1024 each, 4 KiB-aligned), then times
//!    open + get of one tensor (page cache warm and after evicting the file with
//!    POSIX_FADV_DONTNEED).
//! 2. `read_into` of every tensor into a pre-faulted 1 GiB buffer, warm and cold, against a
//!    plain memcpy of 1 GiB; run fio on the same file for comparison (printed command).
//! 3. Write throughput of one 256 MiB F16 tensor: contiguous, a row slice with step 2 (runs of
//!    32 KiB, like KV blocks of a bigger cache), and a transpose (element-wise gather).
//!
//! Prints medians. Removes its files at the end unless KVR_BENCH_KEEP is set.
//! KVR_BENCH_WDIR (e.g. /dev/shm) puts the write test's file elsewhere.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kvr::tensors::{Dtype, TensorFile, TensorIn, WriteOptions};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn evict(path: &Path) {
    let f = std::fs::File::open(path).unwrap();
    f.sync_all().unwrap();
    // SAFETY: plain fadvise on a valid fd.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
}

fn gbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e9
}

fn main() {
    let dir = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("kvr-tensors-bench"));
    std::fs::create_dir_all(&dir).unwrap();
    let big = dir.join("bench_1000.safetensors");
    let (n, rows, cols) = (1000usize, 512u64, 1024u64);
    let tbytes = (rows * cols * 2) as usize;
    let src: Vec<u8> = (0..tbytes).map(|i| (i * 31 % 251) as u8).collect();
    let names: Vec<String> = (0..n).map(|i| format!("layer.{i}.kv")).collect();
    let shape = [rows, cols];
    let tensors: Vec<TensorIn> = names
        .iter()
        .map(|nm| TensorIn::contiguous(nm, Dtype::F16, &shape, &src))
        .collect();
    let t = Instant::now();
    let len = kvr::tensors::write(
        &big,
        &tensors,
        &[("bench", "1")],
        WriteOptions {
            align_4k: true,
            sync: true,
        },
    )
    .unwrap();
    println!(
        "write 1000 tensors, {:.2} GiB, aligned, fsync: {:.2} GB/s",
        len as f64 / (1u64 << 30) as f64,
        gbps(len, t.elapsed())
    );

    // 1. open + get one tensor.
    for (label, cold) in [("warm", false), ("cold (file evicted)", true)] {
        let mut times = Vec::new();
        for i in 0..31 {
            if cold {
                evict(&big);
            }
            let t = Instant::now();
            let f = TensorFile::open(&big).unwrap();
            let r = f.get(Some(&names[(i * 37) % n])).unwrap();
            std::hint::black_box(r.data.as_ptr());
            times.push(t.elapsed().as_secs_f64() * 1e6);
        }
        println!(
            "open + get one of 1000 tensors, {label}: median {:.0} us",
            median(times)
        );
    }

    // 2. read_into vs memcpy.
    let mut dst = vec![0u8; n * tbytes];
    dst.iter_mut().step_by(4096).for_each(|b| *b = 1); // pre-fault
    let f = TensorFile::open(&big).unwrap();
    for (label, cold) in [("warm", false), ("cold", true)] {
        let mut rates = Vec::new();
        for _ in 0..5 {
            if cold {
                evict(&big);
            }
            let t = Instant::now();
            for (i, nm) in names.iter().enumerate() {
                f.read_into(Some(nm), &mut dst[i * tbytes..(i + 1) * tbytes])
                    .unwrap();
            }
            rates.push(gbps((n * tbytes) as u64, t.elapsed()));
        }
        println!(
            "read_into all 1000 tensors (1000 MiB), {label}: median {:.2} GB/s",
            median(rates)
        );
    }
    let mut memsrc = vec![0u8; n * tbytes];
    memsrc.iter_mut().step_by(4096).for_each(|b| *b = 2);
    let mut rates = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        dst.copy_from_slice(&memsrc);
        std::hint::black_box(dst.as_ptr());
        rates.push(gbps(dst.len() as u64, t.elapsed()));
    }
    println!("memcpy 1000 MiB: median {:.2} GB/s", median(rates));
    // The zero-copy path for comparison: touching every mapped byte once, warm.
    let mut rates = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let mut acc = 0u64;
        for nm in &names {
            let r = f.get(Some(nm)).unwrap();
            acc += r.data.iter().step_by(64).map(|&b| b as u64).sum::<u64>();
        }
        std::hint::black_box(acc);
        rates.push(gbps((n * tbytes) as u64, t.elapsed()));
    }
    println!(
        "zero-copy get + read every cache line, warm: median {:.2} GB/s",
        median(rates)
    );
    drop(f);
    drop(dst);
    drop(memsrc);
    println!(
        "fio for comparison: fio --name=r --filename={} --rw=read --bs=1M --numjobs=1 --ioengine=psync --direct=1 (and --direct=0)",
        big.display()
    );

    // 3. Write throughput: contiguous vs strided.
    let (r2, c2) = (8192u64, 16384u64); // 256 MiB of F16
    let base: Vec<u8> = (0..(r2 * c2 * 2 * 2) as usize)
        .map(|i| (i % 253) as u8)
        .collect(); // 512 MiB: room for a step-2 row slice
                    // KVR_BENCH_WDIR=/dev/shm isolates the gather cost from the disk.
    let wdir = std::env::var_os("KVR_BENCH_WDIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| dir.clone());
    let out = wdir.join("bench_w.safetensors");
    let tshape = [c2, r2];
    let shape2 = [r2, c2];
    let cases: [(&str, TensorIn); 3] = [
        (
            "contiguous",
            TensorIn::contiguous("x", Dtype::F16, &shape2, &base[..(r2 * c2 * 2) as usize]),
        ),
        (
            "row slice, step 2",
            TensorIn {
                name: "x",
                dtype: Dtype::F16,
                shape: &shape2,
                strides: Some(&[2 * c2 as i64, 1]),
                data: &base,
                offset: 0,
            },
        ),
        (
            "transpose",
            TensorIn {
                name: "x",
                dtype: Dtype::F16,
                shape: &tshape,
                strides: Some(&[1, c2 as i64]),
                data: &base,
                offset: 0,
            },
        ),
    ];
    for sync in [false, true] {
        for (label, t) in &cases {
            let mut rates = Vec::new();
            for _ in 0..5 {
                let _ = std::fs::remove_file(&out);
                let start = Instant::now();
                let len = kvr::tensors::write(
                    &out,
                    &[*t],
                    &[],
                    WriteOptions {
                        align_4k: true,
                        sync,
                    },
                )
                .unwrap();
                rates.push(gbps(len, start.elapsed()));
            }
            println!(
                "write 256 MiB F16 tensor, {label}, {}: median {:.2} GB/s",
                if sync { "fsync" } else { "no fsync" },
                median(rates)
            );
        }
    }
    // Open cost depends on the header, not on the data: one 256 MiB tensor.
    let mut times = Vec::new();
    for _ in 0..31 {
        let t = Instant::now();
        let f = TensorFile::open(&out).unwrap();
        std::hint::black_box(f.get(None).unwrap().data.as_ptr());
        times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    println!(
        "open + get, one 256 MiB tensor, warm: median {:.0} us",
        median(times)
    );
    let _ = std::fs::remove_file(&out);
    if std::env::var_os("KVR_BENCH_KEEP").is_none() {
        let _ = std::fs::remove_file(&big);
    }
}
