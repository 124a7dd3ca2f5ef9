#!/usr/bin/env bash
# Bring a Ray cluster for raft up on machines you have, and take it down.
#
#   cluster/raft-cluster.sh head   [--ip IP] [--cpus N] [--gpus N] [--port 6379] [--dashboard-port 8265]
#   cluster/raft-cluster.sh worker HEAD_IP[:PORT] [--ip IP] [--cpus N] [--gpus N]
#   cluster/raft-cluster.sh local  [--workers 2] [--head-cpus 2] [--worker-cpus 1] [--port 6390] [--dashboard-port 8275]
#   cluster/raft-cluster.sh down   # stops every Ray process on this machine
#
# head/worker: run on each machine, head first; every machine needs the same Python env with
# raft installed (pip install -e . or your image). `local` starts a head and N worker nodes
# on this one machine (separate raylets, separate node ids): the test suite's multi-node
# cluster, and a way to try multi-node behaviour on a laptop.
#
# Secure by default: Ray's token authentication is on (the head generates ~/.ray/auth_token
# if it has none; copy that file to every worker and every machine that submits jobs), and
# the dashboard / Jobs API listens on the node's private IP only, never 0.0.0.0.
set -euo pipefail

die() { echo "raft-cluster: $*" >&2; exit 2; }

private_ip() {
  # The first address `hostname -I` lists: on cloud VMs and LANs, the private interface.
  hostname -I 2>/dev/null | awk '{print $1}'
}

need_ray() { command -v ray >/dev/null || die "'ray' is not on PATH: activate the env raft is installed in"; }

ensure_token() {
  # Token auth stays on: RAY_AUTH_MODE=token for everything this script starts.
  export RAY_AUTH_MODE=token
  if [[ -z "${RAY_AUTH_TOKEN:-}" && ! -s "${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}" ]]; then
    if [[ "$1" == generate ]]; then
      ray get-auth-token --generate >/dev/null
      echo "raft-cluster: generated a new auth token in ~/.ray/auth_token (copy it to workers and clients)"
    else
      die "no Ray auth token here: copy the head node's ~/.ray/auth_token to $HOME/.ray/auth_token (or set RAY_AUTH_TOKEN)"
    fi
  fi
}

resources_args() {  # --cpus/--gpus → ray start flags
  local cpus="$1" gpus="$2" out=()
  [[ -n "$cpus" ]] && out+=("--num-cpus=$cpus")
  [[ -n "$gpus" ]] && out+=("--num-gpus=$gpus")
  echo "${out[@]:-}"
}

cmd_head() {
  local ip="" cpus="" gpus="" port=6379 dashboard_port=8265
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --ip) ip="$2"; shift 2 ;;
      --cpus) cpus="$2"; shift 2 ;;
      --gpus) gpus="$2"; shift 2 ;;
      --port) port="$2"; shift 2 ;;
      --dashboard-port) dashboard_port="$2"; shift 2 ;;
      *) die "head: unknown option $1" ;;
    esac
  done
  ip="${ip:-$(private_ip)}"
  [[ -n "$ip" ]] || die "head: cannot tell this machine's private IP; pass --ip"
  need_ray
  ensure_token generate
  # shellcheck disable=SC2046
  # Idle workers (with torch/transformers already imported) live 10 minutes instead of 1 s,
  # so the next run or search trial reuses them (see raft/resources.py).
  ray start --head --node-ip-address="$ip" --port="$port" \
    --dashboard-host="$ip" --dashboard-port="$dashboard_port" \
    --system-config='{"idle_worker_killing_time_threshold_ms": 600000}' \
    $(resources_args "$cpus" "$gpus") --disable-usage-stats
  echo "raft-cluster: head up. Workers join with: cluster/raft-cluster.sh worker $ip:$port"
  echo "raft-cluster: submit jobs with: raft submit jobs/X.yaml --address http://$ip:$dashboard_port"
}

cmd_worker() {
  [[ $# -ge 1 ]] || die "worker: give the head's address, e.g. cluster/raft-cluster.sh worker 10.0.0.1:6379"
  local head="$1"; shift
  local ip="" cpus="" gpus="" extra=()
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --ip) ip="$2"; shift 2 ;;
      --cpus) cpus="$2"; shift 2 ;;
      --gpus) gpus="$2"; shift 2 ;;
      --ray-start-args) read -r -a extra <<<"$2"; shift 2 ;;  # e.g. ports for many nodes on one machine
      *) die "worker: unknown option $1" ;;
    esac
  done
  [[ "$head" == *:* ]] || head="$head:6379"
  ip="${ip:-$(private_ip)}"
  need_ray
  ensure_token require
  # shellcheck disable=SC2046
  ray start --address="$head" --node-ip-address="$ip" $(resources_args "$cpus" "$gpus") \
    --disable-usage-stats "${extra[@]}"
}

cmd_local() {
  local workers=2 head_cpus=2 worker_cpus=1 port=6390 dashboard_port=8275
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --workers) workers="$2"; shift 2 ;;
      --head-cpus) head_cpus="$2"; shift 2 ;;
      --worker-cpus) worker_cpus="$2"; shift 2 ;;
      --port) port="$2"; shift 2 ;;
      --dashboard-port) dashboard_port="$2"; shift 2 ;;
      *) die "local: unknown option $1" ;;
    esac
  done
  cmd_head --ip 127.0.0.1 --cpus "$head_cpus" --port "$port" --dashboard-port "$dashboard_port"
  local i
  for ((i = 1; i <= workers; i++)); do
    # Raylets that share a machine need ports of their own, and temp dirs of their own: in a
    # shared one, each node's runtime-env agent would unpack job working dirs over the others'.
    cmd_worker "127.0.0.1:$port" --ip 127.0.0.1 --cpus "$worker_cpus" --ray-start-args \
      "--temp-dir=/tmp/raft-node-$port-$i --dashboard-agent-listen-port=$((dashboard_port + 100 + i)) --min-worker-port=$((11000 + 1000 * i)) --max-worker-port=$((11999 + 1000 * i))"
  done
  echo "raft-cluster: local cluster of $((workers + 1)) nodes up at 127.0.0.1:$port (Jobs API http://127.0.0.1:$dashboard_port)"
}

case "${1:-}" in
  head) shift; cmd_head "$@" ;;
  worker) shift; cmd_worker "$@" ;;
  local) shift; cmd_local "$@" ;;
  down) need_ray; ray stop --force ;;
  *) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
