#!/usr/bin/env bash
# One launcher for Ascend, CUDA and CPU nodes: it detects the platform, sets the platform's
# environment, brings up (or joins) a Ray cluster with one resource per device, and on the head runs
# the command once every node has joined. The same command line works on every node:
#
#   scripts/launch.sh [options] -- COMMAND [ARGS...]
#
#   # head (NODE_RANK unset or 0), then the same line on 15 more nodes with NODE_RANK=1..15 and
#   # MASTER_ADDR=<head ip> (or with --head <head ip>):
#   scripts/launch.sh --nnodes 16 -- npu-retu sft --config configs/qwen2.5-7b_sft889k_{platform}.yaml
#
# Options (environment defaults in brackets):
#   --nnodes N             nodes in the cluster; the head waits for all of them [NNODES or 1]
#   --head ADDR            join the head at ADDR as a worker [MASTER_ADDR when NODE_RANK > 0].
#                          With NODE_RANK=0 set explicitly, this node is the head even with --head.
#   --ray-port P           the head's Ray (GCS) port [RAY_PORT or 6379]
#   --devices-per-node D   NPUs/GPUs this node gives Ray [counted by npu-smi / nvidia-smi]
#   --wait-timeout S       seconds the head waits for the nodes, a worker for the head [600]
#   --ifname IF            network interface for HCCL/NCCL and gloo (*_SOCKET_IFNAME)
#   --dry-run              print what would be done and do nothing
#   -h, --help             this text
#
# Platform: NPU_RETU_PLATFORM=ascend|cuda|cpu, else `npu-smi info` works -> ascend, else
# `nvidia-smi -L` works -> cuda, else cpu. The literal text {platform} in any argument of COMMAND is
# replaced by that name. `npu-retu sft|rl` gets `cluster.launcher=ray cluster.ray_address=auto`
# appended (put your own KEY=VALUE overrides last, or set cluster.launcher yourself to opt out).
# Workers ignore COMMAND except to choose the environment (which the Ray workers on that node
# inherit), so give every node the same command.
#
# Output format (stdout with --dry-run; stderr, each line prefixed "launch: ", in a real run).
# Tests parse it, keep it stable:
#   platform: ascend|cuda|cpu
#   role: head|worker
#   devices: N
#   env: KEY=VALUE       one per variable this script sets, sorted by key (user values are kept)
#   source: PATH         each environment file sourced (Ascend toolkit / NNAL)
#   note: TEXT           why something was (not) set, warnings
#   run: ...             each step, in order; real commands shell-quoted and fully resolved
# Exit status: the command's; 2 for usage errors; 1 when the platform, the head or the nodes fail.
# PYTHON (default python3) is the interpreter used to ask Ray how many nodes are alive.
set -euo pipefail

POLL_S=5

usage() {
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
}

die_usage() {
    echo "launch: error: $*" >&2
    echo "launch: see scripts/launch.sh --help" >&2
    exit 2
}

die() {
    echo "launch: error: $*" >&2
    exit 1
}

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }

# ---- options -------------------------------------------------------------------------------------
dry_run=0
nnodes="${NNODES:-1}"
head_addr=""
ray_port="${RAY_PORT:-6379}"
devices=""
wait_timeout=600
ifname=""

set_option() {
    case "$1" in
        --nnodes) nnodes=$2 ;;
        --head) head_addr=$2 ;;
        --ray-port) ray_port=$2 ;;
        --devices-per-node) devices=$2 ;;
        --wait-timeout) wait_timeout=$2 ;;
        --ifname) ifname=$2 ;;
        *) die_usage "unknown option: $1" ;;
    esac
}

while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) dry_run=1; shift ;;
        -h | --help) usage; exit 0 ;;
        --) shift; break ;;
        --nnodes | --head | --ray-port | --devices-per-node | --wait-timeout | --ifname)
            [ $# -ge 2 ] || die_usage "$1 needs a value"
            set_option "$1" "$2"
            shift 2
            ;;
        --*=*) set_option "${1%%=*}" "${1#*=}"; shift ;;
        -*) die_usage "unknown option: $1" ;;
        *) die_usage "unexpected argument '$1' (put the command after --)" ;;
    esac
done
[ $# -gt 0 ] || die_usage "no command after --"

{ is_uint "$nnodes" && [ "$nnodes" -ge 1 ]; } || die_usage "--nnodes / NNODES must be an integer >= 1, got '$nnodes'"
{ is_uint "$ray_port" && [ "$ray_port" -ge 1 ] && [ "$ray_port" -le 65535 ]; } ||
    die_usage "--ray-port / RAY_PORT must be a port in 1..65535, got '$ray_port'"
is_uint "$wait_timeout" || die_usage "--wait-timeout must be whole seconds, got '$wait_timeout'"
[ -z "$devices" ] || is_uint "$devices" || die_usage "--devices-per-node must be an integer >= 0, got '$devices'"
[ -z "${NODE_RANK:-}" ] || is_uint "$NODE_RANK" || die_usage "NODE_RANK must be an integer >= 0, got '$NODE_RANK'"

# ---- role ----------------------------------------------------------------------------------------
if [ -n "$head_addr" ]; then
    if [ "${NODE_RANK:-}" = "0" ]; then role="head"; else role="worker"; fi
elif [ "${NODE_RANK:-0}" -gt 0 ]; then
    [ -n "${MASTER_ADDR:-}" ] || die_usage "NODE_RANK=$NODE_RANK but no head address: pass --head ADDR or set MASTER_ADDR"
    head_addr=$MASTER_ADDR
    role="worker"
else
    role="head"
fi

# ---- platform and devices ------------------------------------------------------------------------
if [ -n "${NPU_RETU_PLATFORM:-}" ]; then
    case "$NPU_RETU_PLATFORM" in
        ascend | cuda | cpu) platform=$NPU_RETU_PLATFORM ;;
        *) die_usage "NPU_RETU_PLATFORM must be ascend, cuda or cpu, got '$NPU_RETU_PLATFORM'" ;;
    esac
elif npu-smi info >/dev/null 2>&1; then
    platform=ascend
elif nvidia-smi -L >/dev/null 2>&1; then
    platform=cuda
else
    platform=cpu
fi

if [ -z "$devices" ]; then
    case "$platform" in
        ascend)
            smi_out=$(npu-smi info -l 2>/dev/null) || die "platform ascend but 'npu-smi info -l' failed; pass --devices-per-node"
            # "	Total Count                    : 8"
            devices=$(awk -F: '/Total Count/ { gsub(/[[:space:]]/, "", $2); print $2; exit }' <<<"$smi_out")
            is_uint "$devices" || die "could not read 'Total Count' from 'npu-smi info -l'; pass --devices-per-node"
            ;;
        cuda)
            smi_out=$(nvidia-smi -L 2>/dev/null) || die "platform cuda but 'nvidia-smi -L' failed; pass --devices-per-node"
            devices=$(grep -c '^GPU ' <<<"$smi_out" || true)
            ;;
        cpu) devices=0 ;;
    esac
    if [ "$platform" != cpu ] && [ "$devices" -eq 0 ]; then
        die "no devices found on this $platform node; pass --devices-per-node"
    fi
fi

# ---- the command ---------------------------------------------------------------------------------
command=()
for arg in "$@"; do
    command+=("${arg//"{platform}"/$platform}")
done

# `npu-retu SUB ...` or `python -m npu_retu SUB ...`
subcommand=""
if [ "${command[0]##*/}" = npu-retu ] && [ ${#command[@]} -ge 2 ]; then
    subcommand=${command[1]}
elif [[ ${command[0]##*/} == python* ]] && [ ${#command[@]} -ge 4 ] &&
    [ "${command[1]}" = -m ] && [ "${command[2]}" = npu_retu ]; then
    subcommand=${command[3]}
fi

case "$subcommand" in
    sft | rl)
        # The Ray driver reserves one bundle per device of the cluster and starts a worker on each.
        has_launcher=0
        has_address=0
        for arg in "${command[@]}"; do
            case "$arg" in
                cluster.launcher=*) has_launcher=1 ;;
                cluster.ray_address=*) has_address=1 ;;
            esac
        done
        [ "$has_launcher" -eq 1 ] || command+=(cluster.launcher=ray)
        [ "$has_address" -eq 1 ] || command+=(cluster.ray_address=auto)
        ;;
esac

# ---- environment ---------------------------------------------------------------------------------
declare -A env_set=()
notes=()
sources=()

set_default() { # KEY VALUE: keep the user's value when there is one
    local current="${!1:-}"
    env_set[$1]="${current:-$2}"
}

alloc_conf_rule() { # KEY: expandable segments for SFT only
    local key=$1 current="${!1:-}"
    case "$subcommand" in
        sft)
            set_default "$key" "expandable_segments:True"
            notes+=("$key=${env_set[$key]} for 'npu-retu sft': no rollout engine to put to sleep, and expandable segments cut fragmentation from variable-length batches")
            ;;
        rl | pipeline | demo | experiment)
            notes+=("$key not set: 'npu-retu $subcommand' runs RL with a sleeping vLLM rollout engine, and vLLM / vllm-ascend sleep mode does not work with expandable_segments:True")
            if [[ $current == *expandable_segments:True* ]]; then
                notes+=("warning: $key=$current from your environment breaks the rollout engine's sleep mode; unset it")
            fi
            ;;
        *)
            notes+=("$key not set: expandable segments are set for 'npu-retu sft' only")
            ;;
    esac
}

case "$platform" in
    ascend)
        toolkit_env="${ASCEND_TOOLKIT_HOME:-/usr/local/Ascend/ascend-toolkit}/set_env.sh"
        nnal_env="${ASCEND_NNAL_HOME:-/usr/local/Ascend/nnal}/atb/set_env.sh"
        [ ! -f "$toolkit_env" ] || sources+=("$toolkit_env")
        [ ! -f "$nnal_env" ] || sources+=("$nnal_env")
        [ ${#sources[@]} -gt 0 ] || notes+=("no CANN set_env.sh found at $toolkit_env; set ASCEND_TOOLKIT_HOME if CANN lives elsewhere")
        # A 128-NPU job spends minutes in HCCL link setup and first-step compilation: the
        # defaults (120 s connect) kill it before it starts.
        set_default HCCL_CONNECT_TIMEOUT 1800
        set_default HCCL_EXEC_TIMEOUT 1800
        set_default HCCL_IF_BASE_PORT 64000
        set_default TASK_QUEUE_ENABLE 2
        set_default CPU_AFFINITY_CONF 1
        alloc_conf_rule PYTORCH_NPU_ALLOC_CONF
        if [ -n "$ifname" ]; then
            env_set[HCCL_SOCKET_IFNAME]=$ifname
            env_set[GLOO_SOCKET_IFNAME]=$ifname
        fi
        ray_resources=("--resources={\"NPU\": $devices}")
        ;;
    cuda)
        set_default TORCH_NCCL_ASYNC_ERROR_HANDLING 1
        set_default NCCL_DEBUG WARN
        alloc_conf_rule PYTORCH_CUDA_ALLOC_CONF
        if [ -n "$ifname" ]; then
            env_set[NCCL_SOCKET_IFNAME]=$ifname
            env_set[GLOO_SOCKET_IFNAME]=$ifname
        fi
        ray_resources=("--num-gpus=$devices")
        ;;
    cpu)
        set_default OMP_WAIT_POLICY PASSIVE
        [ -z "$ifname" ] || env_set[GLOO_SOCKET_IFNAME]=$ifname
        ray_resources=()
        ;;
esac

if [ "$role" = head ]; then
    ray_start=(ray start --head "--port=$ray_port" --disable-usage-stats)
else
    ray_start=(ray start "--address=$head_addr:$ray_port")
    notes+=("worker node: the command runs on the head only; this node serves Ray until the head stops")
fi
ray_start+=("${ray_resources[@]+"${ray_resources[@]}"}")
[ "$role" = head ] || ray_start+=(--block)

# ---- report --------------------------------------------------------------------------------------
say() {
    if [ "$dry_run" -eq 1 ]; then echo "$*"; else echo "launch: $*" >&2; fi
}

shell_quote() { # one argument as a shell word: bare when safe, --opt='value' for option values
    local a=$1
    if [[ $a =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
        printf '%s' "$a"
    elif [[ $a =~ ^(--?[A-Za-z0-9_.-]+=)(.*)$ ]]; then
        printf "%s'%s'" "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]//\'/\'\\\'\'}"
    else
        printf "'%s'" "${a//\'/\'\\\'\'}"
    fi
}

say_run() {
    local line="" a
    for a in "$@"; do line+=" $(shell_quote "$a")"; done
    say "run:$line"
}

say "platform: $platform"
say "role: $role"
say "devices: $devices"
while IFS= read -r key; do
    [ -n "$key" ] && say "env: $key=${env_set[$key]}"
done < <(printf '%s\n' "${!env_set[@]}" | LC_ALL=C sort)
for f in "${sources[@]+"${sources[@]}"}"; do say "source: $f"; done
for n in "${notes[@]+"${notes[@]}"}"; do say "note: $n"; done

# ---- run -----------------------------------------------------------------------------------------
count_alive_nodes() {
    "${PYTHON:-python3}" -c 'import ray; ray.init(address="auto", logging_level="ERROR", log_to_driver=False); print(sum(1 for n in ray.nodes() if n["Alive"]))' 2>/dev/null | tail -n 1
}

head_reachable() {
    # shellcheck disable=SC2016  # $0 and $1 belong to the inner bash
    timeout 5 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$head_addr" "$ray_port" 2>/dev/null
}

stop_ray() {
    local rc=$?
    echo "launch: stopping Ray on this node" >&2
    ray stop >/dev/null 2>&1 || true
    exit "$rc"
}

if [ "$role" = head ]; then
    say_run "${ray_start[@]}"
    [ "$nnodes" -le 1 ] ||
        say "run: wait until $nnodes nodes are alive in the Ray cluster (ray.nodes() every ${POLL_S} s, at most ${wait_timeout} s)"
    say_run "${command[@]}"
else
    say "run: wait until the head $head_addr:$ray_port accepts connections (every ${POLL_S} s, at most ${wait_timeout} s)"
    say_run "${ray_start[@]}"
fi
[ "$dry_run" -eq 0 ] || exit 0

# Sourced only now, so that --dry-run has no side effects. CANN's set_env.sh reads unset variables
# (LD_LIBRARY_PATH, ...), which `set -u` would turn into an error. Our variables are exported after
# it, so they are exactly the ones printed above.
for f in "${sources[@]+"${sources[@]}"}"; do
    set +u
    # shellcheck source=/dev/null
    source "$f"
    set -u
done
for key in "${!env_set[@]}"; do export "$key=${env_set[$key]}"; done

if [ "$role" = head ]; then
    "${ray_start[@]}"
    trap 'exit 130' INT
    trap 'exit 143' TERM
    trap stop_ray EXIT # set only after our own `ray start` worked: never stop someone else's cluster

    if [ "$nnodes" -gt 1 ]; then
        SECONDS=0
        while :; do
            alive=$(count_alive_nodes || true)
            is_uint "${alive:-}" || alive=0
            [ "$alive" -lt "$nnodes" ] || break
            if [ "$SECONDS" -ge "$wait_timeout" ]; then
                die "only $alive of $nnodes nodes joined the Ray cluster within ${wait_timeout} s (--wait-timeout); check that the workers reach this node on port $ray_port"
            fi
            echo "launch: $alive of $nnodes nodes alive, waiting" >&2
            sleep "$POLL_S"
        done
        echo "launch: all $nnodes nodes alive" >&2
    fi
    # Not exec: the EXIT trap must run `ray stop` after the command, and its status is ours.
    "${command[@]}"
else
    SECONDS=0
    until head_reachable; do
        if [ "$SECONDS" -ge "$wait_timeout" ]; then
            die "the Ray head at $head_addr:$ray_port did not answer within ${wait_timeout} s (--wait-timeout)"
        fi
        sleep "$POLL_S"
    done
    # --block: stay in the cluster until the head's `ray stop` takes it down; `ray start --block`
    # stops this node's Ray processes itself when it ends.
    "${ray_start[@]}"
fi
