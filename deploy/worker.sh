#!/bin/sh
# One shard of a migration: copy this worker's share of a vault's archives into S3, with the
# catalog, jobs and cache inside the copy process (SRC glacier://REGION/VAULT: no FUSE, no
# privileges). Settings from the environment:
#   VAULT, DEST (s3://BUCKET[/PREFIX]), SHARDS (N, the number of workers)   required
#   SHARD (K/N)     default: from AWS_BATCH_JOB_ARRAY_INDEX or JOB_COMPLETION_INDEX (0-based) + 1
#   AWS_REGION      default us-east-1
#   CACHE_DIR, CACHE_SIZE, TIER, BUDGET, MAX_JOBS, STORAGE_CLASS   the cache's and copy's settings
#   MANIFEST        default $CACHE_DIR/manifest-K-of-N.jsonl; MANIFEST_DEST: an s3:// folder
#                   it is uploaded to when the copy ends
# Exit status: the copy's (0 only when every archive of the shard is in S3, verified).
set -eu
: "${VAULT:?set VAULT}" "${DEST:?set DEST (s3://BUCKET[/PREFIX])}" "${SHARDS:?set SHARDS}"
index="${AWS_BATCH_JOB_ARRAY_INDEX:-${JOB_COMPLETION_INDEX:-0}}"
# AWS Batch array jobs: --shard $((AWS_BATCH_JOB_ARRAY_INDEX + 1))/N;
# Kubernetes Indexed Jobs: --shard $((JOB_COMPLETION_INDEX + 1))/N.
SHARD="${SHARD:-$((index + 1))/$SHARDS}"
region="${AWS_REGION:-us-east-1}"
cache_dir="${CACHE_DIR:-/var/cache/glacierfs}"
k="${SHARD%/*}"
manifest="${MANIFEST:-$cache_dir/manifest-$k-of-$SHARDS.jsonl}"
opts="cache_dir=$cache_dir,cache_size=${CACHE_SIZE:-50G},tier=${TIER:-Bulk}"
[ -n "${BUDGET:-}" ] && opts="$opts,budget=$BUDGET"
[ -n "${MAX_JOBS:-}" ] && opts="$opts,max_jobs=$MAX_JOBS"
mkdir -p "$cache_dir"
# The vault's inventory is waited for (hours for a new one); the copy then runs its shard.
rc=0
glacierfs copy -r --shard "$SHARD" --storage-class "${STORAGE_CLASS:-DEEP_ARCHIVE}" \
    --manifest "$manifest" -o "$opts" "glacier://$region/$VAULT" "$DEST" || rc=$?
if [ -n "${MANIFEST_DEST:-}" ] && [ -s "$manifest" ]; then
    python3 - "$manifest" "$MANIFEST_DEST" <<'PY' || rc=1
import sys, boto3
src, dest = sys.argv[1], sys.argv[2]
bucket, _, prefix = dest[len("s3://"):].partition("/")
key = (prefix.rstrip("/") + "/" if prefix else "") + src.rsplit("/", 1)[-1]
boto3.client("s3").upload_file(src, bucket, key)
PY
fi
exit "$rc"
