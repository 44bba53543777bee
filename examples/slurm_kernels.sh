#!/bin/bash
# conetool kernels on several nodes with SLURM: one torchrun per node, one process per GPU, all
# writing into one store on a file system that every node mounts at the same path.
#
#   sbatch examples/slurm_kernels.sh /shared/runs/resnet20 /shared/stores/resnet20
#
# The checkpoints (with their conetool.toml) and the store must be on that shared file system.
# A job stopped by its time limit, a dead node or scancel leaves a valid store: submit the same
# command again and only the missing kernels are computed. For a switch sweep, replace the last
# line's "kernels CKPTS" by e.g. "switch --at 0,100,500,1000,2000,4000".
#
#SBATCH --job-name=conetool-kernels
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1          # one torchrun per node; it starts one process per GPU
#SBATCH --gpus-per-node=4            # or --gres=gpu:4 on clusters that count GPUs that way
#SBATCH --cpus-per-task=16
#SBATCH --time=02:00:00
#SBATCH --output=conetool-kernels-%j.out

set -euo pipefail

CKPTS=${1:?usage: sbatch examples/slurm_kernels.sh CKPTS STORE}
STORE=${2:?usage: sbatch examples/slurm_kernels.sh CKPTS STORE}
GPUS_PER_NODE=${SLURM_GPUS_ON_NODE:-4}

# The first node of the allocation hosts the rendezvous (any free port on it will do).
HEAD_NODE=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
RDZV_PORT=${RDZV_PORT:-29500}

# torchrun gives each process one CPU thread unless told otherwise; share the node's CPUs.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( SLURM_CPUS_PER_TASK / GPUS_PER_NODE ))}

# Activate the environment where conetool is installed here if the job does not inherit it,
# e.g. source ~/venvs/conetool/bin/activate

srun --kill-on-bad-exit=1 torchrun \
    --nnodes "$SLURM_NNODES" \
    --nproc-per-node "$GPUS_PER_NODE" \
    --rdzv-id "$SLURM_JOB_ID" \
    --rdzv-backend c10d \
    --rdzv-endpoint "$HEAD_NODE:$RDZV_PORT" \
    -m conetool kernels "$CKPTS" --store "$STORE"
