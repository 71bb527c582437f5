#!/usr/bin/env bash
# Hit ratio at equal memory: one Zipf-distributed request sequence replayed through edgecache,
# nginx proxy_cache and Varnish, each given the same cache size, and simulated with an exact LRU
# and with Belady's offline optimum (the bound no online cache can beat).
#
#   cargo build --release
#   bash benches/hitratio.sh                       # 20,000 objects of 8 KiB, α = 0.9, 16 MiB
#   ALPHA=0.7 bash benches/hitratio.sh
#
# Knobs: OBJECTS, SIZE (bytes), CACHE_MIB, REQUESTS, ALPHA, BASE_PORT. Needs nginx, varnishd,
# python3, curl. The origin's access log counts what each cache fetched; the hit ratio is
# 1 - fetched / requests. nginx enforces `max_size` lazily (its cache manager runs now and
# then), so it holds more than the budget during the run: its cache directory's size is
# printed next to its figure. The simulations hold CACHE_MIB / SIZE objects with no per-object
# overhead; a real cache also spends memory on keys, headers and bookkeeping.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${EDGECACHE_BIN:-$ROOT/target/release/edgecache}
OBJECTS=${OBJECTS:-20000}
SIZE=${SIZE:-8192}
CACHE_MIB=${CACHE_MIB:-16}
REQUESTS=${REQUESTS:-60000}
ALPHA=${ALPHA:-0.9}
BASE_PORT=${BASE_PORT:-19180}
OUT=${OUT:-$ROOT/target/hitratio-$(date +%Y%m%d-%H%M%S)}
ORIGIN=$BASE_PORT
declare -A PORT=([edgecache]=$((BASE_PORT + 1)) [nginx]=$((BASE_PORT + 2)) [varnish]=$((BASE_PORT + 3)))
NGINX_CACHE=/dev/shm/edgecache-hitratio-nginx-$BASE_PORT

# shellcheck source=benches/common.sh
. "$ROOT/benches/common.sh"
HINT="apt-get install nginx varnish" require_tools nginx varnishd python3 curl
require_free_ports "$ORIGIN" "${PORT[@]}"
mkdir -p "$OUT/www/o" "$OUT/varnish"
cd "$OUT"

cat > zipf.py <<'PY'
"""Zipf request sequences, their replay over HTTP, and LRU / Belady simulations."""
import bisect, collections, http.client, random, sys, threading

def sequence(objects, requests, alpha, seed=42):
    weights = [1 / (rank ** alpha) for rank in range(1, objects + 1)]
    total, acc, cdf = sum(weights), 0.0, []
    for w in weights:
        acc += w / total
        cdf.append(acc)
    rand = random.Random(seed)
    order = list(range(objects))
    rand.shuffle(order)  # popularity unrelated to the object's name
    return [order[min(bisect.bisect(cdf, rand.random()), objects - 1)] for _ in range(requests)]

def replay(port, seq, workers=8):
    errors = []
    def run(part):
        conn = http.client.HTTPConnection("127.0.0.1", port)
        for obj in part:
            conn.request("GET", f"/o/{obj}")
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                errors.append(resp.status)
    threads = [threading.Thread(target=run, args=(seq[i::workers],)) for i in range(workers)]
    for t in threads: t.start()
    for t in threads: t.join()
    return len(errors)

def lru(seq, slots):
    cache, misses = collections.OrderedDict(), 0
    for obj in seq:
        if obj in cache:
            cache.move_to_end(obj)
            continue
        misses += 1
        cache[obj] = True
        if len(cache) > slots:
            cache.popitem(last=False)
    return misses

def belady(seq, slots):
    uses = collections.defaultdict(collections.deque)
    for i, obj in enumerate(seq):
        uses[obj].append(i)
    cache, misses, heap_next = set(), 0, {}
    import heapq
    heap = []
    for i, obj in enumerate(seq):
        uses[obj].popleft()
        nxt = uses[obj][0] if uses[obj] else float("inf")
        if obj not in cache:
            misses += 1
            if len(cache) >= slots:
                while True:
                    neg, victim = heapq.heappop(heap)
                    if victim in cache and heap_next[victim] == -neg:
                        cache.remove(victim)
                        break
            cache.add(obj)
        heap_next[obj] = nxt
        heapq.heappush(heap, (-nxt, obj))
    return misses

if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "files":
        root, objects, size = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
        for i in range(objects):
            with open(f"{root}/{i}", "wb") as f:
                f.write((f"object {i} " * (size // 8 + 1)).encode()[:size])
    elif cmd == "seq":
        objects, requests, alpha = int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
        print("\n".join(map(str, sequence(objects, requests, alpha))))
    elif cmd == "replay":
        seq = [int(x) for x in open(sys.argv[3])]
        print(f"errors={replay(int(sys.argv[2]), seq)}")
    elif cmd == "simulate":
        seq, slots = [int(x) for x in open(sys.argv[2])], int(sys.argv[3])
        for name, fn in (("LRU (sim)", lru), ("optimum", belady)):
            misses = fn(seq, slots)
            print(f"{name:<10} {len(seq):>8} {misses:>8} {1 - misses / len(seq):>9.4f}")
PY
python3 zipf.py files "$OUT/www/o" "$OBJECTS" "$SIZE"
python3 zipf.py seq "$OBJECTS" "$REQUESTS" "$ALPHA" > seq.txt

cat > origin.conf <<EOF
worker_processes 1;
daemon off;
pid $OUT/origin.pid;
error_log $OUT/origin.err warn;
events { worker_connections 4096; }
http {
  log_format uri '\$request_uri';
  access_log $OUT/origin.log uri;
  default_type text/plain;
  server {
    listen 127.0.0.1:$ORIGIN;
    root $OUT/www;
    location / { add_header Cache-Control "public, max-age=86400"; }
  }
}
EOF
cat > nginx.conf <<EOF
worker_processes 1;
daemon off;
pid $OUT/nginx.pid;
error_log $OUT/nginx.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  proxy_cache_path $NGINX_CACHE levels=1:2 keys_zone=hr:8m max_size=${CACHE_MIB}m inactive=1d use_temp_path=off;
  upstream origin { server 127.0.0.1:$ORIGIN; keepalive 16; }
  server {
    listen 127.0.0.1:${PORT[nginx]};
    location / { proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_cache hr; }
  }
}
EOF
cat > edgecache.toml <<EOF
[server]
listen = ["127.0.0.1:${PORT[edgecache]}"]
threads = 2
access_log = false
[cache]
max_memory = "${CACHE_MIB}MiB"
[[site]]
hosts = ["127.0.0.1"]
default = true
origins = ["127.0.0.1:$ORIGIN"]
EOF
nginx -c "$OUT/origin.conf" & PIDS+=($!)
nginx -c "$OUT/nginx.conf" & PIDS+=($!)
varnishd -F -a "127.0.0.1:${PORT[varnish]}" -b "127.0.0.1:$ORIGIN" -s "malloc,${CACHE_MIB}m" -n "$OUT/varnish" >varnish.out 2>&1 & PIDS+=($!)
"$BIN" --config "$OUT/edgecache.toml" >edgecache.out 2>&1 & PIDS+=($!)
for who in edgecache nginx varnish; do wait_for "http://127.0.0.1:${PORT[$who]}/ready"; done

echo "objects=$OBJECTS size=$SIZE cache=${CACHE_MIB}MiB requests=$REQUESTS alpha=$ALPHA"
printf '%-10s %8s %8s %9s\n' who requests fetched hit_ratio
for who in edgecache nginx varnish; do
  : > origin.log
  kill -USR1 "$(cat origin.pid)"; sleep 0.3
  errors=$(python3 zipf.py replay "${PORT[$who]}" seq.txt)
  sleep 0.5
  fetched=$(grep -c '^/o/' origin.log || true)
  note=""
  [ "$who" = nginx ] && note="   (cache directory: $(du -sk "$NGINX_CACHE" | cut -f1) KiB)"
  printf '%-10s %8s %8s %9s   %s%s\n' "$who" "$REQUESTS" "$fetched" \
    "$(python3 -c "print(f'{1 - $fetched / $REQUESTS:.4f}')")" "$errors" "$note"
done
python3 zipf.py simulate seq.txt $((CACHE_MIB * 1024 * 1024 / SIZE))
