#!/usr/bin/env bash
# Runs one apd_jax decomposition on every host of a Cloud TPU pod slice.
#
#   scripts/launch_tpu_pod.sh TPU_NAME ZONE WORKDIR [CONFIG] [FLAGS...]
#
# e.g.
#   scripts/launch_tpu_pod.sh my-v4-32 us-central2-b /mnt/runs/tms_40_10 \
#       configs/tms_40_10.py --config.mesh.component=2
#
# Copies this checkout to ~/apd_jax on every host, installs it with
# jax[tpu], and starts `python -m apd_jax.main --multihost` on all hosts at
# once: jax.distributed.initialize() finds the other hosts itself. WORKDIR
# must be one directory that every host sees at the same path (NFS, or a GCS
# bucket mounted with gcsfuse): all hosts write their checkpoint shards
# there, and process 0 writes the logs and figures. Running the same command
# again resumes from the latest checkpoint (e.g. after a preemption).
# Set APD_SKIP_INSTALL=1 to skip the copy and install.
set -euo pipefail

if [[ $# -lt 3 ]]; then
  sed -n '2,17p' "$0"
  exit 2
fi
TPU_NAME=$1
ZONE=$2
WORKDIR=$3
CONFIG=${4:-configs/tms_40_10.py}
shift $(( $# < 4 ? $# : 4 ))
ssh_all() {
  gcloud compute tpus tpu-vm ssh "${TPU_NAME}" --zone="${ZONE}" \
      --worker=all --command="$1"
}

if [[ "${APD_SKIP_INSTALL:-0}" != 1 ]]; then
  cd "$(dirname "$0")/.."
  ssh_all "mkdir -p ~/apd_jax"
  gcloud compute tpus tpu-vm scp --recurse --zone="${ZONE}" --worker=all \
      apd_jax configs scripts pyproject.toml setup.cfg README.md \
      "${TPU_NAME}:~/apd_jax/"
  ssh_all "cd ~/apd_jax && pip install -q -U 'jax[tpu]' && pip install -q -e ."
fi
ssh_all "cd ~/apd_jax && python -m apd_jax.main --multihost \
    --config=${CONFIG} --workdir=${WORKDIR} $*"
