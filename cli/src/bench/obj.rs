//! Object tier benchmark: async store and load batches with N requests in flight, next to
//! the same number of plain concurrent HTTP PUTs and GETs of the same bytes to the same
//! server in the same run (the limit: persistent connections, no SDK, no signing).
//!
//! First an untimed pass of a few objects warms the server up. Then per block size and
//! in-flight count both clients are set up once and kept for all runs, as an engine keeps
//! its store open: one `ObjStore` (its connections and its pool of request bodies) and one
//! HTTP agent (its persistent connections) with a receive buffer per thread, written once;
//! an untimed wave of N objects goes through both. Per run: `bytes / block` blocks go to
//! the store in one `submit_store` batch; one `submit_load` batch reads them back (checked)
//! and the bytes are compared. N threads PUT the same objects' bytes (block header and
//! payload) to other names with a plain HTTP/1.1 client and GET them back, and PUT them once
//! more to yet other names with `If-None-Match: *`, the conditional request a publish-once
//! store sends (a server checks for the name first, which costs it). kvr goes first in even
//! runs, the plain client in odd ones.
//!
//! Client and server share this machine's cores, and a CPU-bound server's speed wanders
//! from run to run by more than the clients differ; so the bench also reports each
//! client's own CPU time per request (the process's user + system time across each timed
//! phase, in which only that client runs): the cost kvr adds, measured without the
//! server's noise. Everything goes
//! under `URL/kvr-bench-<pid>/` and is removed at the end. The server must take unsigned
//! requests (SeaweedFS without identities does: `scripts/seaweedfs.sh start`).

use std::io::Read;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kvr::obj::maintenance::Bucket;
use kvr::{Key, LoadRequest, ObjConfig, ObjStore, StoreRequest};

use super::{progress, BenchArgs};
use crate::report::{Row, Timing};

/// Removes the benchmark's objects on drop, also on errors.
struct Cleanup(Option<Bucket>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(b) = &self.0 {
            let _ = b.gc(None, 0);
        }
    }
}

fn key(block: u64, n_in_flight: usize, run: usize, i: usize) -> Key {
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&block.to_le_bytes());
    seed[8..16].copy_from_slice(&(n_in_flight as u64).to_le_bytes());
    seed[16..24].copy_from_slice(&(run as u64).to_le_bytes());
    seed[24..].copy_from_slice(&(i as u64).to_le_bytes());
    Key(xxhash_rust::xxh3::xxh3_128(&seed).to_le_bytes())
}

struct Setup<'a> {
    endpoint: &'a str,
    url: String,
    block: usize,
    n: usize,
    in_flight: usize,
    run: usize,
}

impl Setup<'_> {
    /// kvr's store for this block size and in-flight count (keys differ per run).
    fn open_store(&self) -> kvr::Result<ObjStore> {
        let namespace = format!("kvr-{}-{}", self.block, self.in_flight);
        let mut c = ObjConfig::new(&self.url, namespace);
        c.endpoint = Some(self.endpoint.to_string());
        c.concurrency = self.in_flight;
        ObjStore::open(&c)
    }
}

/// The plain client: one agent (a pool of persistent connections) and a receive buffer per
/// thread, both kept across runs, the buffers written once so that no GET pays for
/// faulting its buffer in (kvr's load destination is resident too).
struct RawClient {
    agent: ureq::Agent,
    buffers: Vec<Mutex<Vec<u8>>>,
}

impl RawClient {
    fn new(in_flight: usize, block: usize) -> RawClient {
        // Room for the block header too, which is far smaller than this.
        let room = block + (64 << 10);
        let buffers = (0..in_flight)
            .map(|_| {
                let mut b = vec![1u8; room];
                b.clear();
                Mutex::new(b)
            })
            .collect();
        let agent = ureq::AgentBuilder::new()
            .max_idle_connections_per_host(in_flight)
            .timeout(Duration::from_secs(60))
            .build();
        RawClient { agent, buffers }
    }
}

/// This process's user + system CPU time, seconds (every thread's).
fn process_cpu_s() -> f64 {
    // SAFETY: all-zero bytes are a valid `rusage` (integers and timevals).
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid, writable rusage; RUSAGE_SELF cannot fail with a valid pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(u.ru_utime) + secs(u.ru_stime)
}

/// Throughput (GB/s) and client CPU per request (us) of one timed phase.
#[derive(Clone, Copy)]
struct Phase {
    gbps: f64,
    cpu_us: f64,
}

/// Times `phase`, which moves `bytes` in `requests` requests.
fn timed(
    bytes: usize,
    requests: usize,
    phase: impl FnOnce() -> kvr::Result<()>,
) -> kvr::Result<Phase> {
    let cpu = process_cpu_s();
    let t = Instant::now();
    phase()?;
    let elapsed = t.elapsed().as_secs_f64();
    Ok(Phase {
        gbps: bytes as f64 / elapsed / 1e9,
        cpu_us: (process_cpu_s() - cpu) * 1e6 / requests.max(1) as f64,
    })
}

/// One kvr run: (store, load).
fn kvr_run(store: &ObjStore, s: &Setup, src: &[u8], dst: &mut [u8]) -> kvr::Result<(Phase, Phase)> {
    let (block, n) = (s.block, s.n);
    let k = |i| key(block as u64, s.in_flight, s.run, i);
    let stores: Vec<StoreRequest> = (0..n)
        .map(|i| StoreRequest {
            key: k(i),
            src: src[i * block..].as_ptr(),
            len: block,
        })
        .collect();
    let bytes = n * block;
    let store_phase = timed(bytes, n, || {
        // SAFETY: `src` outlives the job, which is waited for and dropped in this closure.
        let job = unsafe { store.submit_store(&stores) };
        job.wait(None)?;
        (0..n).try_for_each(|i| {
            job.item(i)
                .map(drop)
                .map_err(|e| e.context("obj bench store"))
        })
    })?;
    let base = dst.as_mut_ptr();
    let loads: Vec<LoadRequest> = (0..n)
        .map(|i| LoadRequest {
            key: k(i),
            // SAFETY: i * block < n * block <= dst's length.
            dst: unsafe { base.add(i * block) },
            len: block,
        })
        .collect();
    let load_phase = timed(bytes, n, || {
        // SAFETY: `dst` outlives the job (dropped in this closure) and is not touched until
        // it completes.
        let job = unsafe { store.submit_load(&loads) };
        job.wait(None)?;
        (0..n).try_for_each(|i| {
            job.item(i)
                .map(drop)
                .map_err(|e| e.context("obj bench load"))
        })
    })?;
    if dst[..n * block] != src[..n * block] {
        return Err(kvr::err!(
            Internal,
            "obj bench: loaded bytes differ from stored"
        ));
    }
    Ok((store_phase, load_phase))
}

/// `n` requests of `block` bytes over one thread per buffer of `raw` (its in-flight
/// count), sharing its agent; each thread has a buffer of its own.
fn raw_requests(
    raw: &RawClient,
    n: usize,
    block: usize,
    request: impl Fn(usize, &mut Vec<u8>) -> kvr::Result<()> + Sync,
) -> kvr::Result<Phase> {
    let next = AtomicUsize::new(0);
    let (next, request) = (&next, &request);
    timed(n * block, n, || {
        std::thread::scope(|sc| {
            let workers: Vec<_> = raw
                .buffers
                .iter()
                .map(|buffer| {
                    sc.spawn(move || {
                        let mut buffer = buffer.lock().unwrap_or_else(|e| e.into_inner());
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            if i >= n {
                                return Ok(());
                            }
                            request(i, &mut buffer)?;
                        }
                    })
                })
                .collect();
            workers
                .into_iter()
                .try_for_each(|w| w.join().expect("raw HTTP worker panicked"))
        })
    })
}

fn http_err(what: &str, url: &str, e: ureq::Error) -> kvr::Error {
    kvr::err!(Unavailable, "raw HTTP {what} {url}: {e}")
}

/// One raw run: (PUT, GET, conditional PUT) of the same bytes kvr moves (block header +
/// payload).
fn raw_run(raw: &RawClient, s: &Setup, src: &[u8]) -> kvr::Result<(Phase, Phase, Phase)> {
    let (block, n) = (s.block, s.n);
    let agent = &raw.agent;
    let kvr::obj::ObjUrl { bucket, prefix } = kvr::obj::ObjUrl::parse(&s.url)?;
    let object_url = |ns: &str, i: usize| {
        let name = kvr::obj::object_path(ns, &key(block as u64, s.in_flight, s.run, i));
        format!("{}/{bucket}/{prefix}/{name}", s.endpoint)
    };
    let ns = format!("raw-{block}-{}-{}", s.in_flight, s.run);
    let url = |i: usize| object_url(&ns, i);
    let conditional_ns = format!("raw-inm-{block}-{}-{}", s.in_flight, s.run);
    let payload = |i: usize| &src[i * block..(i + 1) * block];
    let headers: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            let p = payload(i);
            let k = key(block as u64, s.in_flight, s.run, i);
            let spec = kvr::TensorSpec::bytes(block as u64);
            kvr::fs::format::encode_header(&k.0, block as u64, kvr::fs::format::checksum(p), &spec)
        })
        .collect();
    let put = |u: String, i: usize, conditional: bool| {
        let h = &headers[i];
        let body = h.as_slice().chain(payload(i));
        let mut request = agent
            .put(&u)
            .set("Content-Length", &(h.len() + block).to_string());
        if conditional {
            request = request.set("If-None-Match", "*");
        }
        request.send(body).map_err(|e| http_err("PUT", &u, e))?;
        Ok(())
    };
    let put_phase = raw_requests(raw, n, block, |i, _| put(url(i), i, false))?;
    let get_phase = raw_requests(raw, n, block, |i, body| {
        let u = url(i);
        let resp = agent.get(&u).call().map_err(|e| http_err("GET", &u, e))?;
        body.clear();
        resp.into_reader()
            .read_to_end(body)
            .map_err(|e| kvr::Error::io(format!("raw HTTP GET {u}"), e))?;
        if body.len() != headers[i].len() + block {
            return Err(kvr::err!(
                Internal,
                "raw HTTP GET {u}: {} bytes",
                body.len()
            ));
        }
        Ok(())
    })?;
    let conditional_put_phase = raw_requests(raw, n, block, |i, _| {
        put(object_url(&conditional_ns, i), i, true)
    })?;
    Ok((put_phase, get_phase, conditional_put_phase))
}

/// One untimed store, load, PUT and GET pass of a few objects at the first size and
/// in-flight count: a freshly started server answers its first requests more slowly (in
/// this bench kvr's loads came first and paid it: their first run cost the server 10-20% more
/// CPU per GET than the runs after), and both clients open their connections here.
fn warm_up(
    endpoint: &str,
    url: &str,
    blocks: &[u64],
    in_flight: &[usize],
    src: &[u8],
    dst: &mut [u8],
) -> kvr::Result<()> {
    let (Some(&block), Some(&in_flight)) = (blocks.first(), in_flight.first()) else {
        return Ok(());
    };
    let block = block as usize;
    let setup = Setup {
        endpoint,
        url: url.to_string(),
        block,
        n: (src.len() / block).clamp(1, 64),
        in_flight: in_flight.max(1),
        run: usize::MAX,
    };
    kvr_run(&setup.open_store()?, &setup, src, dst)?;
    raw_run(&RawClient::new(setup.in_flight, block), &setup, src)?;
    Ok(())
}

pub fn bench(args: &BenchArgs) -> kvr::Result<(Vec<Row>, Vec<Timing>)> {
    let endpoint = args
        .endpoint
        .clone()
        .or_else(|| std::env::var("KVR_S3_TEST_ENDPOINT").ok())
        .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok())
        .ok_or_else(|| {
            kvr::Error::invalid(
                "--tier obj needs --endpoint (or KVR_S3_TEST_ENDPOINT / AWS_ENDPOINT_URL); \
                 scripts/seaweedfs.sh start runs a local server",
            )
        })?;
    let endpoint = endpoint.trim_end_matches('/').to_string();
    let url = format!(
        "{}/kvr-bench-{}",
        args.obj_url.trim_end_matches('/'),
        std::process::id()
    );
    let mut cleanup_cfg = ObjConfig::new(&url, "-");
    cleanup_cfg.endpoint = Some(endpoint.clone());
    let _cleanup = Cleanup(Some(Bucket::open(&cleanup_cfg)?));
    let max_block = *args.block_size.iter().max().expect("clap gives one size");
    let total = args.bytes.max(max_block) as usize;
    let mut src = vec![0u8; total];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for c in src.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
    }
    // Resident, as an engine's (pinned) buffers are: the first timed load would otherwise
    // pay a page fault per 4 KiB of the destination, a cost the raw GETs do not have.
    let mut dst = vec![1u8; total];
    warm_up(
        &endpoint,
        &url,
        &args.block_size,
        &args.in_flight,
        &src,
        &mut dst,
    )?;
    let steps = args.block_size.len() * args.in_flight.len() * args.runs;
    let pb = progress(steps as u64, "obj");
    let (mut rows, mut timings) = (Vec::new(), Vec::new());
    for &block in &args.block_size {
        for &in_flight in &args.in_flight {
            if in_flight == 0 {
                return Err(kvr::Error::invalid("--in-flight values must be at least 1"));
            }
            let (mut ks, mut kl, mut rp, mut rg, mut rc) = (vec![], vec![], vec![], vec![], vec![]);
            let blocks = (total / block as usize).max(1);
            let setup = |run, n| Setup {
                endpoint: &endpoint,
                url: url.clone(),
                block: block as usize,
                n,
                in_flight,
                run,
            };
            // Both clients in the state a running engine's would be in: connections open,
            // kvr's request bodies allocated, the plain client's buffers resident.
            let wave = setup(usize::MAX - 1, blocks.min(in_flight));
            let store = wave.open_store()?;
            let raw = RawClient::new(in_flight, block as usize);
            kvr_run(&store, &wave, &src, &mut dst)?;
            raw_run(&raw, &wave, &src)?;
            for run in 0..args.runs {
                let setup = setup(run, blocks);
                // Which client goes first alternates: the server's speed drifts during a
                // run (a fresh SeaweedFS gets faster over its first minutes), and a fixed
                // order would hand that drift to one side.
                let ((s, l), (p, g, c)) = if run % 2 == 0 {
                    let k = kvr_run(&store, &setup, &src, &mut dst)?;
                    (k, raw_run(&raw, &setup, &src)?)
                } else {
                    let r = raw_run(&raw, &setup, &src)?;
                    (kvr_run(&store, &setup, &src, &mut dst)?, r)
                };
                for (list, phase) in [(&mut ks, s), (&mut kl, l), (&mut rp, p), (&mut rg, g)] {
                    list.push(phase);
                }
                rc.push(c);
                pb.inc(1);
            }
            let gbps = |v: &[Phase]| v.iter().map(|p| p.gbps).collect::<Vec<_>>();
            let (ks_gbps, kl_gbps) = (gbps(&ks), gbps(&kl));
            for (op, kvr, limit, name) in [
                (
                    "store",
                    &ks_gbps,
                    &rp,
                    "raw HTTP PUT, same bytes, same in flight",
                ),
                (
                    "store",
                    &ks_gbps,
                    &rc,
                    "raw HTTP PUT If-None-Match: *, as kvr's publish-once store",
                ),
                (
                    "load",
                    &kl_gbps,
                    &rg,
                    "raw HTTP GET, same bytes, same in flight",
                ),
            ] {
                rows.push(Row::new(
                    "obj",
                    op,
                    block,
                    in_flight,
                    kvr,
                    &gbps(limit),
                    name,
                ));
            }
            let size = crate::report::human_bytes(block);
            for (what, phases) in [
                ("kvr store", &ks),
                ("raw HTTP PUT If-None-Match: *", &rc),
                ("kvr load", &kl),
                ("raw HTTP GET", &rg),
            ] {
                let cpu: Vec<f64> = phases.iter().map(|p| p.cpu_us).collect();
                timings.push(Timing::new(
                    "obj",
                    &format!("client CPU per request, {size} x {in_flight} in flight, {what}"),
                    &cpu,
                ));
            }
        }
    }
    pb.finish_and_clear();
    Ok((rows, timings))
}
