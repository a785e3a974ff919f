#!/usr/bin/env bash
# Bring up a one-node SLURM cluster on this machine for CI (needs root; Debian or Ubuntu):
# slurm-wlm and munge from the distribution, one node with this machine's CPUs and memory,
# one GPU GRES backed by /dev/null, no accounting database. The config goes to
# /etc/slurm/slurm.conf because the job-step plugin drops SLURM_CONF from the environment.
# Idempotent: a running cluster with this config is left alone.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
    echo "slurm setup: must run as root (it installs packages and starts daemons)" >&2
    exit 1
fi
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
fi

host=$(hostname -s)
cpus=$(nproc)
memory_mb=$(($(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024 - 512))

mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /etc/munge /run/munge /var/lib/munge /var/log/munge
if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
chmod 0700 /etc/munge && chmod 0400 /etc/munge/munge.key

cat > /etc/slurm/slurm.conf.new <<EOF
# One-node CI cluster written by .ci/slurm/setup.sh
ClusterName=revunet-ci
SlurmctldHost=${host}
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
GresTypes=gpu
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
# Finished jobs stay visible to squeue for an hour: the workflow polls job states with squeue,
# and run.sh checks every job of the run (9 minutes or more) at its end. With 300 s the first
# jobs had aged out before that check (CI of stop 20).
MinJobAge=3600
ReturnToService=2
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmdSpoolDir=/var/spool/slurmd
StateSaveLocation=/var/spool/slurmctld
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
NodeName=${host} CPUs=${cpus} RealMemory=${memory_mb} Gres=gpu:ci:1 State=UNKNOWN
PartitionName=ci Nodes=${host} Default=YES MaxTime=INFINITE State=UP
EOF
# a typed GPU ("ci"): jobs may ask for any GPU (--gpus=1) or for this model (--gpus=ci:1)
echo "NodeName=${host} Name=gpu Type=ci File=/dev/null" > /etc/slurm/gres.conf.new

changed=0
for file in slurm.conf gres.conf; do
    if ! cmp -s "/etc/slurm/${file}.new" "/etc/slurm/${file}"; then
        mv "/etc/slurm/${file}.new" "/etc/slurm/${file}"
        changed=1
    else
        rm "/etc/slurm/${file}.new"
    fi
done

if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    runuser -u munge -- /usr/sbin/munged
fi
running() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
if [ "$changed" = 1 ]; then
    # a new config: restart the daemons this script started (known by their pid files)
    for pidfile in /run/slurmctld.pid /run/slurmd.pid; do
        if running "$pidfile"; then kill "$(cat "$pidfile")"; fi
    done
    sleep 2
fi
running /run/slurmctld.pid || slurmctld
running /run/slurmd.pid || slurmd

for _ in $(seq 60); do
    state=$(sinfo --noheader --nodes="$host" --format=%T 2>/dev/null || true)
    if [ "$state" = idle ] || [ "$state" = mixed ]; then
        echo "slurm: node ${host} is ${state} (${cpus} CPUs, ${memory_mb} MB, gres gpu:ci:1 on /dev/null)"
        exit 0
    fi
    if [ "$state" = down ] || [ "$state" = drained ] || [ "$state" = "down*" ]; then
        scontrol update nodename="$host" state=resume 2>/dev/null || true
    fi
    sleep 1
done
echo "slurm setup: node ${host} did not become idle (state: ${state:-none})" >&2
tail -n 20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2 || true
exit 1
