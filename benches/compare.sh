#!/usr/bin/env bash
# Load comparison: edgecache against nginx proxy_cache and Varnish on this machine, in one run.
#
#   cargo build --release
#   bash benches/compare.sh                      # 3 interleaved rounds of every row, pinned
#   ROWS="hit-1k pass-1k" ROUNDS=1 bash benches/compare.sh
#
# Needs nginx, varnishd, wrk, h2load (Debian: nghttp2-client), openssl, curl, taskset,
# python3. Everything listens on loopback ports from BASE_PORT; results and logs land in
# target/compare-<time>/ (results.tsv, summary.md).
#
# Like for like: one origin (nginx serving files) for all; edgecache `threads` = nginx
# `worker_processes` = THREADS; Varnish with its defaults (it has no such knob). Both
# edgecache and nginx default to 1,000 requests per client connection, after which wrk and
# h2load reconnect (or, for h2load, stop using the connection): both are raised here. With
# ACCESS_LOG=1 every proxy writes an access log to a file (nginx: its default combined format,
# edgecache: its default JSON lines; Varnish logs through varnishncsa, not run here). The
# contenders `edgecache-log` and `nginx-log` are second instances that always log, so that
#   CONTENDERS="edgecache edgecache-log nginx nginx-log" ROWS=hit-1k bash benches/compare.sh
# measures what the log costs each in one run, logged and unlogged side by side. Rounds are
# interleaved (every contender for a row, then the next row) so all see the same machine noise;
# the summary shows medians and ratios within this run only.
#
# The contender `pingora` is pingora's HTTP proxy with nothing added (benches/pingora_alone.rs,
# built here with `cargo bench --no-run`): it runs the pass-1k row only, and shows what part of
# the pass-through cost is pingora's own request loop:
#   CONTENDERS="edgecache pingora nginx" ROWS=pass-1k bash benches/compare.sh
#
# Rows:
#   hit-1k, hit-64k   cached object, wrk 1 thread, CONNECTIONS connections
#   pass-1k           origin says no-store: every request goes to the origin
#   miss-1k           a new URL each request (cacheable, so stored and evicted)
#   miss-html-1k      the same with 1 KiB of HTML, client without Accept-Encoding: all store it
#                     as is (edgecache compresses a coding only once a client accepts it)
#   miss-html-br-1k   the same, client sends Accept-Encoding: gzip, br (a browser): edgecache
#                     stores identity and brotli, nginx gzips it on the way, Varnish stores gzip
#   gzip-html         100 KiB HTML page, client sends Accept-Encoding: gzip (nginx compresses
#                     each hit at level 1; Varnish and edgecache store gzip)
#   h2-hit-1k         1 KiB hit over HTTP/2 + TLS 1.3, h2load -t1 -c64 -m10 (no Varnish: no TLS)
#   mem-1k            resident memory (PSS) added per cached 1 KiB object: 10,000 objects after
#                     1,000 to warm up, measured first while the processes are fresh
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${EDGECACHE_BIN:-$ROOT/target/release/edgecache}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-4}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-1}
ACCESS_LOG=${ACCESS_LOG:-0}
MODE=${MODE:-pinned}            # pinned: servers on SERVER_CPUS, load on CLIENT_CPUS; unpinned
SERVER_CPUS=${SERVER_CPUS:-0}
CLIENT_CPUS=${CLIENT_CPUS:-1}
ROWS=${ROWS:-"mem-1k hit-1k hit-64k pass-1k miss-1k miss-html-1k miss-html-br-1k gzip-html h2-hit-1k"}
CONTENDERS=${CONTENDERS:-"edgecache nginx varnish"}
BASE_PORT=${BASE_PORT:-19080}
OUT=${OUT:-$ROOT/target/compare-$(date +%Y%m%d-%H%M%S)}

ORIGIN_PORT=$BASE_PORT
declare -A PORT=([edgecache]=$((BASE_PORT + 1)) [nginx]=$((BASE_PORT + 2)) [varnish]=$((BASE_PORT + 3))
  [edgecache-log]=$((BASE_PORT + 4)) [nginx-log]=$((BASE_PORT + 5)) [pingora]=$((BASE_PORT + 6)))
declare -A TLS_PORT=([edgecache]=$((BASE_PORT + 11)) [nginx]=$((BASE_PORT + 12))
  [edgecache-log]=$((BASE_PORT + 14)) [nginx-log]=$((BASE_PORT + 15)))
NGINX_CACHE=/dev/shm/edgecache-compare-nginx-$BASE_PORT

# shellcheck source=benches/common.sh
. "$ROOT/benches/common.sh"
HINT="apt-get install nginx varnish wrk nghttp2-client" require_tools nginx varnishd wrk h2load openssl curl taskset python3
require_free_ports "$ORIGIN_PORT" "${PORT[@]}" "${TLS_PORT[@]}"
mkdir -p "$OUT/www" "$OUT/varnish"
cd "$OUT"

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# Command prefixes that pin servers and load generators (taskset execs, so `$!` is the server).
SERVER_PIN=() CLIENT_PIN=()
if [ "$MODE" = pinned ]; then SERVER_PIN=(taskset -c "$SERVER_CPUS"); CLIENT_PIN=(taskset -c "$CLIENT_CPUS"); fi
client_cmd() { "${CLIENT_PIN[@]}" "$@"; }


# --- content -------------------------------------------------------------------------------
python3 - "$OUT/www" <<'PY'
import os, random, sys
root = sys.argv[1]
rand = random.Random(7)
def noise(n):  # incompressible bytes, so no proxy gains from compressing
    return bytes(rand.getrandbits(8) for _ in range(n))
open(os.path.join(root, "small"), "wb").write(noise(1024))
open(os.path.join(root, "medium"), "wb").write(noise(64 * 1024))
words = "edge cache origin proxy header body request response stale fresh vary purge".split()
page = ["<!doctype html><html><head><title>page</title></head><body>"]
while sum(map(len, page)) < 100 * 1024:
    page.append("<p>" + " ".join(rand.choice(words) for _ in range(40)) + "</p>\n")
open(os.path.join(root, "page.html"), "w").write("".join(page)[: 100 * 1024])
open(os.path.join(root, "small.html"), "w").write("".join(page)[:1024])
PY
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost \
  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
  -keyout key.pem -out cert.pem 2>/dev/null

# --- origin --------------------------------------------------------------------------------
cat > origin.conf <<EOF
worker_processes 1;
daemon off;
pid $OUT/origin.pid;
error_log $OUT/origin.err warn;
events { worker_connections 16384; }
http {
  access_log off;
  keepalive_requests 1000000000;
  default_type application/octet-stream;
  types { text/html html; }
  server {
    listen 127.0.0.1:$ORIGIN_PORT backlog=4096;
    root $OUT/www;
    location / { add_header Cache-Control "public, max-age=3600"; }
    location /nostore/ { alias $OUT/www/; add_header Cache-Control "no-store"; }
    location /fresh/ { try_files /small =404; add_header Cache-Control "public, max-age=3600"; }
    location /fresh-html/ { try_files /small.html =404; add_header Cache-Control "public, max-age=3600"; }
  }
}
EOF
"${SERVER_PIN[@]}" nginx -c "$OUT/origin.conf" & PIDS+=($!)
wait_for "http://127.0.0.1:$ORIGIN_PORT/small"

# --- contenders ----------------------------------------------------------------------------
declare -A SERVER_PID
# Whether contender $1 writes an access log: the `-log` instances always, the others with ACCESS_LOG=1.
logs() { [ "$ACCESS_LOG" = 1 ] || [ "${1%-log}" != "$1" ]; }

start_edgecache() { # [name: edgecache or edgecache-log]
  local who=${1:-edgecache}
  cat > "$who.toml" <<EOF
[server]
listen = ["127.0.0.1:${PORT[$who]}"]
listen_tls = ["127.0.0.1:${TLS_PORT[$who]}"]
threads = $THREADS
max_requests_per_connection = 1000000
access_log = $(logs "$who" && echo true || echo false)
access_log_path = "$OUT/$who-access.log"
[cache]
max_memory = "2GiB"
[[site]]
hosts = ["localhost", "127.0.0.1"]
default = true
origins = ["127.0.0.1:$ORIGIN_PORT"]
tls_cert = "$OUT/cert.pem"
tls_key = "$OUT/key.pem"
EOF
  "${SERVER_PIN[@]}" "$BIN" --config "$OUT/$who.toml" >"$who.out" 2>&1 & PIDS+=($!)
  SERVER_PID[$who]=$!
}

start_nginx() { # [name: nginx or nginx-log]
  local who=${1:-nginx} log_line="access_log off;"
  rm -rf "$(nginx_cache "$who")"
  logs "$who" && log_line="access_log $OUT/$who-access.log combined;"
  cat > "$who.conf" <<EOF
worker_processes $THREADS;
daemon off;
pid $OUT/$who.pid;
error_log $OUT/$who.err warn;
events { worker_connections 16384; }
http {
  $log_line
  keepalive_requests 1000000000;
  proxy_cache_path $(nginx_cache "$who") levels=1:2 keys_zone=edge:64m max_size=2g inactive=1d use_temp_path=off;
  upstream origin { server 127.0.0.1:$ORIGIN_PORT; keepalive 64; }
  gzip on;
  gzip_comp_level 1;
  gzip_types text/html;
  server {
    listen 127.0.0.1:${PORT[$who]} backlog=4096;
    listen 127.0.0.1:${TLS_PORT[$who]} ssl http2 backlog=4096;
    ssl_certificate $OUT/cert.pem;
    ssl_certificate_key $OUT/key.pem;
    ssl_protocols TLSv1.3;
    location / {
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_cache edge;
    }
  }
}
EOF
  "${SERVER_PIN[@]}" nginx -c "$OUT/$who.conf" & PIDS+=($!)
  SERVER_PID[$who]=$!
}
nginx_cache() { echo "$NGINX_CACHE${1#nginx}"; }
start_edgecache-log() { start_edgecache edgecache-log; }
start_nginx-log() { start_nginx nginx-log; }

start_varnish() {
  cat > varnish.vcl <<EOF
vcl 4.1;
backend origin { .host = "127.0.0.1"; .port = "$ORIGIN_PORT"; }
sub vcl_backend_response {
  if (beresp.http.content-type ~ "text/html") { set beresp.do_gzip = true; }
}
EOF
  "${SERVER_PIN[@]}" varnishd -F -a "127.0.0.1:${PORT[varnish]}" -f "$OUT/varnish.vcl" -s malloc,2g \
    -n "$OUT/varnish" >varnish.out 2>&1 & PIDS+=($!)
  SERVER_PID[varnish]=$!
}

start_pingora() {
  local bin
  # Every message is read (leaving early would fail cargo's last write and, with pipefail, the run).
  bin=$(cd "$ROOT" && cargo bench --no-run --bench pingora_alone --message-format=json 2>"$OUT/pingora-build.log" |
    python3 -c 'import json, sys
found = [m["executable"] for m in map(json.loads, sys.stdin)
         if m.get("executable") and m["target"]["name"] == "pingora_alone"]
print(found[-1] if found else "")') || true
  [ -n "$bin" ] || { echo "could not build benches/pingora_alone.rs: see $OUT/pingora-build.log" >&2; exit 1; }
  "${SERVER_PIN[@]}" "$bin" "127.0.0.1:${PORT[pingora]}" "127.0.0.1:$ORIGIN_PORT" >pingora.out 2>&1 & PIDS+=($!)
  SERVER_PID[pingora]=$!
}

# All processes of a contender (for CPU and memory): the server and its children (workers).
pids_of() { local root=${SERVER_PID[$1]}; echo "$root" $(pgrep -P "$root"); }
cpu_ticks() { local t=0; for p in $(pids_of "$1"); do [ -r "/proc/$p/stat" ] && t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo $t; }
pss_kib() { local t=0; for p in $(pids_of "$1"); do [ -r "/proc/$p/smaps_rollup" ] && t=$((t + $(awk '/^Pss:/{print $2}' "/proc/$p/smaps_rollup"))); done; echo $t; }

for who in $CONTENDERS; do "start_$who"; done
for who in $CONTENDERS; do wait_for "http://127.0.0.1:${PORT[$who]}/small"; done
HZ=$(getconf CLK_TCK)

unique_urls_script() { # prefix file: a wrk script asking for a new URL each request
  cat > "$2" <<EOF
-- a new URL for each request: $1<run>-<n>
local n = 0
local run = tostring(os.time()) .. tostring(math.random(1e9))
request = function()
  n = n + 1
  return wrk.format("GET", "$1" .. run .. "-" .. n)
end
EOF
}
unique_urls_script /fresh/ unique.lua
unique_urls_script /fresh-html/ unique-html.lua

# One measurement: prints "req_per_s p99_ms server_cpu_us_per_request".
measure() { # contender row
  local who=$1 row=$2 port=${PORT[$1]} path header=() out rps p99 n
  case $row in
    hit-1k) path=/small ;;
    hit-64k) path=/medium ;;
    pass-1k) path=/nostore/small ;;
    gzip-html) path=/page.html; header=(-H "Accept-Encoding: gzip") ;;
    miss-1k|miss-html-1k) path=/ ;;
    miss-html-br-1k) path=/; header=(-H "Accept-Encoding: gzip, br") ;;
    h2-hit-1k) path=/small ;;
  esac
  if [ "${row#miss-}" = "$row" ]; then  # warm the cache
    for _ in 1 2 3; do curl -s -o /dev/null "${header[@]}" "http://127.0.0.1:$port$path"; done
  fi
  # Access logs the previous runs wrote are flushed to disk now, not during this run: the
  # kernel's writeback would otherwise charge one contender's log to whoever runs next.
  sync
  local before; before=$(cpu_ticks "$who")
  if [ "$row" = h2-hit-1k ]; then
    curl -sk -o /dev/null "https://127.0.0.1:${TLS_PORT[$who]}$path"
    out=$(client_cmd h2load -t1 -c"$CONNECTIONS" -m10 -D "$DURATION" "https://127.0.0.1:${TLS_PORT[$who]}$path" 2>&1)
    rps=$(echo "$out" | awk '/^finished in/{gsub(",", "", $4); print $4}')
    n=$(echo "$out" | awk '/^requests:/{print $8}')
    p99=-
  else
    local script=()
    [ "$row" = miss-1k ] && script=(-s unique.lua)
    [ "${row#miss-html}" != "$row" ] && script=(-s unique-html.lua)
    out=$(client_cmd wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency "${script[@]}" "${header[@]}" "http://127.0.0.1:$port$path" 2>&1)
    rps=$(echo "$out" | awk '/^Requests\/sec/{print $2}')
    n=$(echo "$out" | awk '/requests in/{print $1}')
    p99=$(echo "$out" | awk '$1 == "99%" {v = $2; if (v ~ /us$/) {sub("us", "", v); v /= 1000} else if (v ~ /ms$/) {sub("ms", "", v)} else if (v ~ /s$/) {sub("s", "", v); v *= 1000}; print v}')
  fi
  local after; after=$(cpu_ticks "$who")
  local cpu_us=$(( (after - before) * 1000000 / HZ ))
  echo "${rps%.*} ${p99:--} $(( cpu_us / (n > 0 ? n : 1) ))"
}

# Memory: PSS added by 10,000 new cached 1 KiB objects (for nginx, with its tmpfs cache files).
fetch_new_objects() { # port count
  python3 - "$1" "$2" <<'PY'
import http.client, sys, time
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]))
run = time.time_ns()
for i in range(int(sys.argv[2])):
    c.request("GET", f"/fresh/mem-{run}-{i}")
    c.getresponse().read()
PY
}
cache_dir_kib() { if [ "${1%-log}" = nginx ]; then du -sk "$(nginx_cache "$1")" | cut -f1; else echo 0; fi; }
measure_memory() { # contender
  local who=$1 before after
  fetch_new_objects "${PORT[$who]}" 1000
  sleep 1
  before=$(( $(pss_kib "$who") + $(cache_dir_kib "$who") ))
  fetch_new_objects "${PORT[$who]}" 10000
  sleep 1
  after=$(( $(pss_kib "$who") + $(cache_dir_kib "$who") ))
  echo "$(( (after - before) * 1024 / 10000 )) - -"
}

printf 'round\trow\tcontender\treq_per_s\tp99_ms\tcpu_us_per_req\n' > results.tsv
log "$OUT: mode=$MODE threads=$THREADS access_log=$ACCESS_LOG rounds=$ROUNDS duration=${DURATION}s"
for round in $(seq "$ROUNDS"); do
  for row in $ROWS; do
    [ "$row" = mem-1k ] && [ "$round" -gt 1 ] && continue
    for who in $CONTENDERS; do
      [ "$row" = h2-hit-1k ] && [ -z "${TLS_PORT[$who]:-}" ] && continue
      [ "$who" = pingora ] && [ "$row" != pass-1k ] && continue  # it caches nothing
      if [ "$row" = mem-1k ]; then result=$(measure_memory "$who"); else result=$(measure "$who" "$row"); fi
      read -r rps p99 cpu <<<"$result"
      printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$row" "$who" "$rps" "$p99" "$cpu" >> results.tsv
      log "round $round $row $who: $rps $([ "$row" = mem-1k ] && echo "bytes/object" || echo "req/s, p99 $p99 ms, ${cpu} µs CPU/request")"
    done
  done
done

python3 - results.tsv > summary.md <<'PY'
import csv, statistics, sys
rows = {}
for r in csv.DictReader(open(sys.argv[1]), delimiter="\t"):
    rows.setdefault(r["row"], {}).setdefault(r["contender"], []).append(r)
def med(rs, k):
    vals = [float(r[k]) for r in rs if r[k] not in ("-", "")]
    return statistics.median(vals) if vals else None
print("| row | edgecache | nginx | Varnish | edgecache / nginx | edgecache / Varnish |")
print("|---|---|---|---|---|---|")
for row, by in rows.items():
    unit = " B/object" if row == "mem-1k" else ""
    cells, value = [], {}
    for who in ("edgecache", "nginx", "varnish"):
        rs = by.get(who)
        if not rs:
            cells.append("—"); continue
        v = med(rs, "req_per_s"); value[who] = v
        if row == "mem-1k":
            cells.append(f"{v:,.0f}{unit}")
        else:
            p99, cpu = med(rs, "p99_ms"), med(rs, "cpu_us_per_req")
            extra = [f"p99 {p99:.1f} ms"] if p99 is not None else []
            extra.append(f"{cpu:.0f} µs CPU")
            cells.append(f"{v/1000:.1f}k ({', '.join(extra)})")
    ratio = lambda o: f"{value['edgecache']/value[o]:.2f}×" if value.get("edgecache") and value.get(o) else "—"
    print(f"| {row} | {' | '.join(cells)} | {ratio('nginx')} | {ratio('varnish')} |")
alone = rows.get("pass-1k", {})
if "pingora" in alone:
    rate = {who: med(rs, "req_per_s") for who, rs in alone.items()}
    div = lambda a, b: f"{rate[a]/rate[b]:.2f}×" if rate.get(a) and rate.get(b) else "—"
    print()
    print("| row | pingora alone | pingora alone / nginx | edgecache / pingora alone |")
    print("|---|---|---|---|")
    print(f"| pass-1k | {rate['pingora']/1000:.1f}k ({med(alone['pingora'], 'cpu_us_per_req'):.0f} µs CPU) "
          f"| {div('pingora', 'nginx')} | {div('edgecache', 'pingora')} |")
if any(who.endswith("-log") for by in rows.values() for who in by):
    print()
    print("| row | edgecache logging | edgecache / itself unlogged | nginx logging | nginx / itself unlogged | edgecache / nginx, both logging |")
    print("|---|---|---|---|---|---|")
    for row, by in rows.items():
        if row == "mem-1k":
            continue
        rate = {who: med(rs, "req_per_s") for who, rs in by.items()}
        div = lambda a, b: f"{rate[a]/rate[b]:.2f}×" if rate.get(a) and rate.get(b) else "—"
        cell = lambda who: f"{rate[who]/1000:.1f}k (p99 {med(by[who], 'p99_ms') or 0:.1f} ms, {med(by[who], 'cpu_us_per_req'):.0f} µs CPU)" if rate.get(who) else "—"
        print(f"| {row} | {cell('edgecache-log')} | {div('edgecache-log', 'edgecache')} | {cell('nginx-log')} | {div('nginx-log', 'nginx')} | {div('edgecache-log', 'nginx-log')} |")
PY
cat summary.md
log "results in $OUT"
