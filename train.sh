#!/usr/bin/env bash
# The main job, in Docker or not:
#   docker run --gpus all -v DATA:/data IMAGE train.sh --dataset cars --M 8
#   ./train.sh --dataset cub --M 8 --gpus 0,1          # outside Docker
#   ./train.sh --dataset digits --M 2 --crop 32 ...     # the offline digits, a quick check
#
# 1. prepares the LMDBs if missing: DATA/lmdb/<dataset>/ from the official download unpacked in
#    DATA/<dataset>/ (CUB: the folder holding images.txt; CARS: cars_annos.mat; SOP:
#    Ebay_train.txt; In-shop: Eval/list_eval_partition.txt; digits: written offline);
#    DATA = $ABE_DATA, else /data when it exists, else ./data
# 2. fetches and checks WEIGHTS/bvlc_googlenet.caffemodel if missing, for the paper's datasets
#    (cub, cars, sop, inshop): if no mirror serves it, one line says how to get it and nothing
#    trains (--from-scratch trains without it, deliberately); digits train from scratch;
#    WEIGHTS = $ABE_WEIGHTS, else ./weights
# 3. generates the network and trains (tools/train.py; every option not listed here is passed
#    to it: --M, --embed-dim, --lambda-div, --max-iter, --eval-every, --gpus, --base-lr,
#    --batch (global, over all GPUs), --iter-size, --device-mem, --seed, ...)
# 4. evaluates the best-Recall@1 snapshot and writes RUNS/<name>/ (RUNS = $ABE_RUNS, else ./runs,
#    which is the /runs volume in the image): config.json, the prototxts, history.csv,
#    recall.json (final Recall@K), features.npz, curves.png, self_pairs.png, attention.png,
#    retrievals.png (+ retrievals_learners.png), embedding_map.png
# Nothing else is written, so the repository (or an Apptainer image) may be read-only when DATA,
# RUNS and WEIGHTS are elsewhere. Relative ABE_* folders are taken from the calling directory.
#
# Own options: --dataset NAME (required), --name RUN (default <dataset>-<date>), --raw DIR,
# --lmdb-dir DIR, --size N (LMDB image side, default 256), --bbox (CUB/CARS cropped to their
# bounding boxes, LMDBs in DATA/lmdb/<dataset>_bbox/), --resume (continue runs/<name>;
# needs --name), --from-scratch (no fetch, no pretrained weights; also passed to train.py).
# An existing runs/<name> is never overwritten: --resume continues it, --start-over (passed to
# train.py) moves it to runs/<name>.previous-N first.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
for var in ABE_DATA ABE_RUNS ABE_WEIGHTS; do
  [ -z "${!var:-}" ] || export "$var=$(realpath -m -- "${!var}")"
done
cd "$repo"
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
export GLOG_minloglevel=${GLOG_minloglevel:-2}

die() { echo "train.sh: error: $*" >&2; exit 2; }
fail() { echo "train.sh: error: $*" >&2; exit 1; }  # the environment, not the command

# In the image train.sh is the entry point, so `docker run IMAGE train.sh --dataset ...` arrives
# here with its own name first.
[ "${1:-}" = train.sh ] && shift
dataset="" name="" raw="" lmdb_dir="" size=256 bbox=() resume=0 scratch=0 start_over=0 own_weights=0
passthrough=()
while [ $# -gt 0 ]; do
  case "$1" in
    --dataset) [ $# -ge 2 ] || die "--dataset needs a value"; dataset=$2; shift 2 ;;
    --name) [ $# -ge 2 ] || die "--name needs a value"; name=$2; shift 2 ;;
    --raw) [ $# -ge 2 ] || die "--raw needs a value"; raw=$2; shift 2 ;;
    --lmdb-dir) [ $# -ge 2 ] || die "--lmdb-dir needs a value"; lmdb_dir=$2; shift 2 ;;
    --size) [ $# -ge 2 ] || die "--size needs a value"; size=$2; shift 2 ;;
    --bbox) bbox=(--bbox); shift ;;
    --resume) resume=1; shift ;;
    --from-scratch) scratch=1; shift ;;
    --start-over) start_over=1; passthrough+=("$1"); shift ;;
    --init-weights) own_weights=1; passthrough+=("$1"); shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) passthrough+=("$1"); shift ;;
  esac
done
case "$dataset" in
  cub|cars|sop|inshop|digits) ;;
  "") die "--dataset is required (cub, cars, sop, inshop or digits)" ;;
  *) die "unknown dataset '$dataset' (cub, cars, sop, inshop or digits)" ;;
esac
if [ -n "${ABE_DATA:-}" ]; then data=$ABE_DATA
elif [ -d /data ]; then data=/data
else data=$repo/data
fi
raw=${raw:-$data/$dataset}
lmdb_dir=${lmdb_dir:-$data/lmdb/$dataset${bbox:+_bbox}}
[[ "$size" =~ ^[1-9][0-9]*$ ]] || die "--size must be a positive integer, got '$size'"
[ "$resume" = 0 ] || [ -n "$name" ] || die "--resume needs --name of the run to continue"
case "$name" in
  */*|.|..) die "--name must be a plain folder name under runs/, got '$name'" ;;
esac
name=${name:-$dataset-$(date +%Y%m%d-%H%M%S)}
runs=${ABE_RUNS:-$repo/runs}
run=$runs/$name
# Checked before anything is prepared or fetched; the marks are abe.train.run_folder's.
if [ "$resume" = 0 ] && [ "$start_over" = 0 ] \
    && { [ -e "$run/config.json" ] || [ -e "$run/history.csv" ] || [ -e "$run/snapshots" ]; }; then
  die "$run already holds a run: continue it with --resume, or pass --start-over to move it" \
      "to $run.previous-N and start a new run there"
fi
[ "$scratch" = 0 ] || [ "$resume" = 0 ] || die "--from-scratch cannot change a run being resumed"
[ "$scratch" = 0 ] || passthrough+=(--from-scratch)

# 1. pretrained weights (before the LMDBs, which can take hours)
export ABE_WEIGHTS=${ABE_WEIGHTS:-$repo/weights}   # tools/train.py looks there too
weights=$ABE_WEIGHTS/bvlc_googlenet.caffemodel
if [ "$dataset" != digits ] && [ ! -f "$weights" ] && [ "$scratch" = 0 ] && [ "$resume" = 0 ] \
    && [ "$own_weights" = 0 ]; then
  echo "train.sh: fetching the ImageNet GoogLeNet weights into $weights"
  if fetched=$("$PY" weights/fetch_googlenet.py --out "$weights" 2>&1 >/dev/null); then
    echo "train.sh: weights ${fetched##*fetch_googlenet: }"
  else
    fail "no ImageNet weights for a $dataset run (${fetched##*fetch_googlenet: error: }); pass" \
         "--from-scratch to train without them deliberately (far below the paper's results)"
  fi
fi

# 2. LMDBs
if [ "$dataset" = inshop ]; then test_splits=(query gallery); else test_splits=(test); fi
missing=0
for split in train "${test_splits[@]}"; do
  [ -d "$lmdb_dir/${split}_lmdb" ] || missing=1
done
if [ "$missing" = 1 ]; then
  [ "$dataset" = digits ] || [ -d "$raw" ] || die "no LMDBs in $lmdb_dir and no dataset in $raw"
  echo "train.sh: preparing LMDBs in $lmdb_dir from $raw" >&2
  "$PY" data_prep/make_lmdb.py --dataset "$dataset" --root "$raw" --out "$lmdb_dir" --size "$size" \
    "${bbox[@]}"
fi
if [ "$dataset" = inshop ]; then
  test_args=(--query-lmdb "$lmdb_dir/query_lmdb" --gallery-lmdb "$lmdb_dir/gallery_lmdb")
else
  test_args=(--test-lmdb "$lmdb_dir/test_lmdb")
fi

# 3. train
if [ "$resume" = 1 ]; then
  "$PY" tools/train.py --run-dir "$run" --resume "${passthrough[@]}"
else
  "$PY" tools/train.py --run-dir "$run" --dataset "$dataset" --train-lmdb "$lmdb_dir/train_lmdb" \
    "${test_args[@]}" "${passthrough[@]}"
fi

# 4. evaluate the best snapshot, plot
best=$run/snapshots/best.caffemodel
"$PY" tools/eval_recall.py --deploy "$run/deploy.prototxt" --weights "$best" "${test_args[@]}" \
  --dataset "$dataset" --save-features "$run/features.npz" --json > "$run/recall.json.partial"
mv "$run/recall.json.partial" "$run/recall.json"
"$PY" tools/eval_recall.py --features "$run/features.npz" --dataset "$dataset"
"$PY" tools/plot_curves.py "$run" > /dev/null
if grep -q '"learner1/embedding"' "$run/deploy.prototxt"; then
  "$PY" tools/plot_self_pairs.py --features "$run/features.npz" --out "$run/self_pairs.png" > /dev/null
fi
if grep -q 'learner0/attention' "$run/deploy.prototxt"; then
  first_test=${test_args[1]}
  "$PY" tools/plot_attention.py --deploy "$run/deploy.prototxt" --weights "$best" \
    --test-lmdb "$first_test" --out "$run/attention.png" > /dev/null
fi
"$PY" tools/plot_retrievals.py --features "$run/features.npz" "${test_args[@]}" \
  --out "$run/retrievals.png" > /dev/null
"$PY" tools/plot_embedding_map.py --features "$run/features.npz" --out "$run/embedding_map.png" \
  > /dev/null
echo "train.sh: done; report in $run/ (recall.json, history.csv, curves.png, self_pairs.png," \
  "attention.png, retrievals.png, embedding_map.png)"
