#!/usr/bin/env bash
# Storage benchmarks: vedge-storage next to fio on the same file, same block size, O_DIRECT.
# Usage: benches/storage/run.sh /path/to/scratch/dir   (needs ~10 GiB free)
# Results were copied by hand into benches/results/storage.md.
set -euo pipefail
DIR=${1:-/tmp/vedge-bench}
mkdir -p "$DIR"
F="$DIR/store"
TOTAL=$((2 << 30))     # bytes written per run
SECS=15
cargo build --release -p vedge-storage --example bench
BENCH=target/release/examples/bench
for BS in 1048576 4194304; do
  for ENG in uring psync; do
    if [ $ENG = uring ]; then R=32; else R=4; fi
    echo "== vedge $ENG bs=$BS readers=$R"
    $BENCH throughput "$F" $ENG $BS $TOTAL $R $SECS
  done
  SZ=$(stat -c %s "$F")
  BSK=$((BS / 1024))k
  echo "== fio bs=$BSK on $F ($SZ bytes)"
  fio --name=w-psync --filename="$F" --rw=write --bs=$BSK --direct=1 --ioengine=psync --numjobs=4 --offset_increment=$((TOTAL / 4)) --size=$((TOTAL / 4)) --group_reporting | grep -E "WRITE:"
  fio --name=w-uring --filename="$F" --size=$TOTAL --rw=write --bs=$BSK --direct=1 --ioengine=io_uring --iodepth=8 | grep -E "WRITE:"
  fio --name=r-psync --filename="$F" --size=$TOTAL --rw=randread --bs=$BSK --direct=1 --ioengine=psync --numjobs=4 --time_based --runtime=$SECS --group_reporting | grep -E "READ:"
  fio --name=r-uring --filename="$F" --size=$TOTAL --rw=randread --bs=$BSK --direct=1 --ioengine=io_uring --iodepth=32 --time_based --runtime=$SECS | grep -E "READ:"
done
echo "== 1M objects: index RAM and open times"
$BENCH objects "$DIR/objects" uring 1000000
