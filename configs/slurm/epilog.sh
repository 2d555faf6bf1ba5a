#!/usr/bin/env bash
# flopledger Slurm epilog: remove the GPU files the prolog (prolog.sh) wrote for this
# job, so GPU time after the job is no longer charged to it.
#
# Install as (or call from) the node's Epilog; it runs as root after the job ends.
# Removes every file in $FLOPLEDGER_SLURM_DIR (default /run/flopledger/slurm) whose
# first line is $SLURM_JOB_ID; a file a later job's prolog already rewrote is kept.
set -euo pipefail

dir="${FLOPLEDGER_SLURM_DIR:-/run/flopledger/slurm}"
job="${SLURM_JOB_ID:?SLURM_JOB_ID is not set}"
[[ -d "$dir" ]] || exit 0

for f in "$dir"/*; do
  [[ -f "$f" ]] || continue  # also the unexpanded glob of an empty directory
  first=""
  IFS= read -r first < "$f" || true  # a file without a final newline still has line 1
  if [[ "$first" == "$job" ]]; then
    rm -f "$f"
  fi
done
