#!/usr/bin/env python3
"""What publishing one 64 KiB block costs a FUSE file system, by protocol.

Replays, single-threaded, the per-block system calls of fio's new-file-per-block write and of
the fs store's named-temp-file protocols on a mounted directory, and reports per block the
wall time and the CPU time the file system's own processes spent (for GlusterFS: the FUSE
client and the brick; pass their pids). On a machine whose cores the server shares, that CPU
is what bounds throughput with many writers.

    scripts/fuse-publish-cost.py DIR BLOCKS PID[,PID...]

Protocols (each block: a 4 KiB header page and 64 KiB of payload, one O_DIRECT pwritev):
  fio         open(O_CREAT|O_EXCL) + pwritev + close
  kvr         open(temp) + pwritev + link(temp, final) + close + unlink(temp)
              (the store today; close and unlink run off the store's path on FUSE)
  kvr-flock   the same plus flock + fstat of the temp file (the store before the writer lock)
  link-only   kvr without the unlink (what the temp name's removal costs)
  in-place    open(final, O_CREAT|O_EXCL, mode 0) + pwritev + fchmod(0644) + close (a block
              created under its final name, marked complete by its mode)
"""
import fcntl
import mmap
import os
import sys
import time

BLOCK = 64 << 10
HEADER = 4096


def cpu_seconds(pids):
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / tick


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    root, blocks = sys.argv[1], int(sys.argv[2])
    pids = [int(p) for p in sys.argv[3].split(",")]
    buf = mmap.mmap(-1, HEADER + BLOCK)  # page-aligned, as O_DIRECT needs
    buf.write(os.urandom(HEADER + BLOCK))
    view = memoryview(buf)
    iov = [view[:HEADER], view[HEADER:]]
    create = os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_DIRECT

    def fio(d, i):
        fd = os.open(f"{d}/f{i}", create, 0o644)
        os.pwritev(fd, iov, 0)
        os.close(fd)

    def kvr(d, i, lock=False, unlink=True):
        temp = f"{d}/.t{i}.tmp"
        fd = os.open(temp, create, 0o644)
        if lock:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.fstat(fd)
        os.pwritev(fd, iov, 0)
        os.link(temp, f"{d}/k{i}.kvb")
        os.close(fd)
        if unlink:
            os.unlink(temp)

    def in_place(d, i):
        fd = os.open(f"{d}/k{i}.kvb", create, 0)
        os.pwritev(fd, iov, 0)
        os.fchmod(fd, 0o644)
        os.close(fd)

    protocols = [
        ("fio", fio),
        ("kvr", kvr),
        ("kvr-flock", lambda d, i: kvr(d, i, lock=True)),
        ("link-only", lambda d, i: kvr(d, i, unlink=False)),
        ("in-place", in_place),
    ]
    os.makedirs(root, exist_ok=False)
    print(f"{'protocol':10s} {'wall ms/block':>14s} {'fs CPU ms/block':>16s}")
    for rnd in range(2):
        for name, step in protocols:
            d = f"{root}/{name}-{rnd}"
            os.mkdir(d)
            c0, t0 = cpu_seconds(pids), time.perf_counter()
            for i in range(blocks):
                step(d, i)
            t1, c1 = time.perf_counter(), cpu_seconds(pids)
            print(f"{name:10s} {(t1 - t0) / blocks * 1e3:14.3f} {(c1 - c0) / blocks * 1e3:16.3f}")


if __name__ == "__main__":
    main()
