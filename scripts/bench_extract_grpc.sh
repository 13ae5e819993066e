#!/usr/bin/env bash
# The gRPC (h2c) case of scripts/bench_extract.sh: `shadowtap extract` against tshark on the same
# capture of real grpcio traffic (the lab model service; 9 unary calls in 10, 1 server-streaming),
# in the same run. Times
#   shadowtap extract FILE -o /dev/null                 (exchanges with gRPC messages split out)
#   tshark -d tcp.port==PORT,http2 -Y grpc -T fields -e grpc.message_length
#   tshark ... with the .proto loaded and protobuf fields as fields (-e pbf.lab.model.InferResponse.id)
# and prints calls/s for each and the ratios.
# Usage: scripts/bench_extract_grpc.sh [CAPTURE PORT]  (env: BENCH_CALLS=20000 BENCH_CONNS=4,
#        BENCH_CPU=1 BENCH_ROUNDS=3, BENCH_KEEP=copy.pcap)
# Needs root (tcpdump on lo). Goal (issue 15): >= tshark -Y grpc; >= 2x tshark decoding protobuf.
set -euo pipefail
[ -n "${BENCH_TRACE:-}" ] && set -x
cd "$(dirname "$0")/.."
calls=${BENCH_CALLS:-20000}
conns=${BENCH_CONNS:-4}
work=$(mktemp -d)
chmod 755 "$work"
server_pid= tcpdump_pid=
cleanup() {
  [ -n "$tcpdump_pid" ] && kill "$tcpdump_pid" 2>/dev/null || true
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
py=.venv/bin/python

"$py" -c 'import sys; sys.path.insert(0, "."); from tests.support.grpc_lab import compile_protos; from pathlib import Path; compile_protos(Path(sys.argv[1]))' "$work/protos"
if [ $# -ge 2 ]; then
  capture=$1 port=$2
else
  capture=$work/grpc.pcap
  "$py" scripts/bench_grpc_load.py serve "$work" "$work/port" &
  server_pid=$!
  for _ in $(seq 100); do [ -s "$work/port" ] && break; sleep 0.1; done
  port=$(cat "$work/port")
  tcpdump -i lo -U -s 0 -B 65536 -w "$capture" "tcp port $port" 2>"$work/tcpdump.err" &
  tcpdump_pid=$!
  sleep 1
  "$py" scripts/bench_grpc_load.py load "$work" "$port" "$calls" "$conns"
  sleep 1
  kill "$tcpdump_pid"; wait "$tcpdump_pid" 2>/dev/null || true; tcpdump_pid=
  kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=
  grep -h "dropped by kernel" "$work/tcpdump.err" || true
fi
[ -n "${BENCH_KEEP:-}" ] && cp "$capture" "$BENCH_KEEP"
echo "gRPC capture: $capture ($(du -h "$capture" | cut -f1)), port $port"

cpu=${BENCH_CPU:-1}
rounds=${BENCH_ROUNDS:-3}
proto_uat="uat:protobuf_search_paths:\"$work/protos/\",\"TRUE\""
for r in $(seq "$rounds"); do
  /usr/bin/time -f "%e %U %S %M" -o "$work/st.$r.time" taskset -c "$cpu" \
    .venv/bin/shadowtap extract "$capture" -j 1 -o "$work/st.jsonl" 2>"$work/st.err"
  /usr/bin/time -f "%e %U %S %M" -o "$work/ts.$r.time" taskset -c "$cpu" \
    tshark -r "$capture" -d "tcp.port==$port,http2" -Y grpc -T fields -e grpc.message_length \
    >"$work/ts.out" 2>/dev/null
  /usr/bin/time -f "%e %U %S %M" -o "$work/tp.$r.time" taskset -c "$cpu" \
    tshark -r "$capture" -d "tcp.port==$port,http2" -o "$proto_uat" -o protobuf.preload_protos:TRUE -o protobuf.pbf_as_hf:TRUE \
    -Y grpc -T fields -e pbf.lab.model.InferResponse.id >"$work/tp.out" 2>/dev/null
done
st_n=$(wc -l < "$work/st.jsonl")
st_grpc=$(grep -c '"grpc"' "$work/st.jsonl" || true)
ts_n=$(wc -l < "$work/ts.out")
tp_ids=$(grep -c . "$work/tp.out" || true)

python3 - "$work" "$rounds" "$st_n" "$st_grpc" "$ts_n" "$tp_ids" <<'PY'
import sys
work, rounds, st_n, st_grpc, ts_n, tp_ids = sys.argv[1], int(sys.argv[2]), *map(int, sys.argv[3:7])
def best(tool):
    runs = [tuple(map(float, open(f"{work}/{tool}.{r}.time").read().split())) for r in range(1, rounds + 1)]
    return min(r[0] for r in runs), min(r[1] + r[2] for r in runs), max(r[3] for r in runs) / 1024
sw, sc, sr = best("st")
tw, tc, tr = best("ts")
pw, pc, pr = best("tp")
# One call is one exchange for shadowtap and one tshark packet line with gRPC in it or more: the
# rates are of the same file, so the ratio of wall times is the ratio of calls/s.
print(f"shadowtap extract : {st_n} exchanges ({st_grpc} gRPC calls); best wall {sw:.2f} s = {st_grpc/sw:,.0f} calls/s; CPU {sc:.2f} s; peak RSS {sr:.0f} MB")
print(f"tshark -Y grpc    : {ts_n} packet lines; best wall {tw:.2f} s = {st_grpc/tw:,.0f} calls/s; CPU {tc:.2f} s; peak RSS {tr:.0f} MB")
print(f"tshark + protobuf : {tp_ids} lines with a decoded field; best wall {pw:.2f} s = {st_grpc/pw:,.0f} calls/s; CPU {pc:.2f} s")
print(f"ratio shadowtap/tshark -Y grpc: wall {tw/sw:.2f}x, CPU {tc/sc:.2f}x (goal >= 1x); "
      f"shadowtap/tshark decoding protobuf: wall {pw/sw:.2f}x, CPU {pc/sc:.2f}x (goal >= 2x)")
PY
