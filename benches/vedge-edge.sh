# Sourced by the peer benchmarks (hit-peers.sh, collapse-peers.sh): starts vedge with the contract
# the peer harness (../shared/bench-peers) expects of an edge, so every benchmark measures the same
# edge. /live/* -> slow counting origin (9001), the rest -> static origin (9000); manifests 2 s,
# segments 1 d (vedge's defaults); no access log, as the peers' nginx edge has `access_log off`.
#
#   start_vedge BIN PORT LOG      # sets VEDGE to its pid; exits if it did not start

start_vedge() {
  local bin=$1 port=$2 log=$3
  "$bin" serve --listen 127.0.0.1:"$port" --origin http://127.0.0.1:9000 \
      --route /live/=http://127.0.0.1:9001 --ram-size 2GiB --log warn > "$log" 2>&1 &
  VEDGE=$!
  sleep 0.5
  kill -0 "$VEDGE" || { echo "vedge did not start:"; cat "$log"; exit 1; }
}
