#!/usr/bin/env bash
# flopledger Slurm prolog: record which job holds each GPU of this node, so the agent
# can charge GPU time to the job even when it cannot read the job's environment.
#
# Install as (or call from) the node's Prolog; it runs as root before the job starts.
# For every GPU of the job it writes <dir>/<gpu> atomically (temp file + mv):
#   line 1: the job id; then user=, account=, name= (SLURM_JOB_USER/_ACCOUNT/_NAME).
# dir: $FLOPLEDGER_SLURM_DIR, default /run/flopledger/slurm (the agent's
# [attribution] slurm_job_dir). GPUs: SLURM_JOB_GPUS, else SLURM_STEP_GPUS, else
# CUDA_VISIBLE_DEVICES; the first two hold physical indices, while a job's
# CUDA_VISIBLE_DEVICES is renumbered from 0 when cgroups constrain devices.
# A non-zero exit drains the node: it fails only when the directory is unwritable.
set -euo pipefail

dir="${FLOPLEDGER_SLURM_DIR:-/run/flopledger/slurm}"
job="${SLURM_JOB_ID:?SLURM_JOB_ID is not set}"
gpus="${SLURM_JOB_GPUS:-${SLURM_STEP_GPUS:-${CUDA_VISIBLE_DEVICES:-}}}"
[[ -n "$gpus" ]] || exit 0

clean() { local v="${1//$'\n'/ }"; printf '%s' "${v//$'\r'/ }"; }  # one line per key

mkdir -p "$dir"
IFS=',' read -ra list <<< "$gpus"
for gpu in "${list[@]}"; do
  gpu="${gpu//[[:space:]]/}"
  # An index or a GPU-<uuid>; anything else (MIG-..., a path) is not a file name here.
  [[ "$gpu" =~ ^([0-9]+|GPU-[0-9a-fA-F-]+)$ ]] || continue
  tmp="$(mktemp "$dir/.$gpu.XXXXXX")"
  printf '%s\nuser=%s\naccount=%s\nname=%s\n' "$job" "$(clean "${SLURM_JOB_USER:-}")" \
    "$(clean "${SLURM_JOB_ACCOUNT:-}")" "$(clean "${SLURM_JOB_NAME:-}")" > "$tmp"
  chmod 0644 "$tmp"  # mktemp makes 0600; the agent may not run as root
  mv -f "$tmp" "$dir/$gpu"
done
