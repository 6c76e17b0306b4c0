"""Where a process stands in a SLURM job started with ``srun``, one task per GPU: its rank, the world size, its
local rank and the rendezvous address, from SLURM's variables alone (as Lightning's SLURM environment reads them).

    SLURM_PROCID   rank                 SLURM_NTASKS   world size          SLURM_LOCALID  local rank
    SLURM_NODELIST the job's hosts, compressed (gpu[01-04,07]): the first one is the master
    SLURM_JOB_ID   the master port is derived from it (MASTER_PORT wins when set), so every task computes the same
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass

from adet.errors import LaunchError

REQUIRED = ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_NODELIST", "SLURM_JOB_ID")
PORT_RANGE = (15000, 35000)


@dataclass
class SlurmTask:
    rank: int
    world_size: int
    local_rank: int
    tasks_on_this_node: int
    master_addr: str
    master_port: int

    @property
    def dist_url(self) -> str:
        return f"tcp://{self.master_addr}:{self.master_port}"


def under_srun(env: dict[str, str] | None = None) -> bool:
    """Started by ``srun`` (a job step): SLURM sets the step id only there, not in the batch script itself."""
    env = os.environ if env is None else env
    return all(k in env for k in REQUIRED) and ("SLURM_STEP_ID" in env or "SLURM_STEPID" in env)


def expand_nodelist(nodelist: str) -> list[str]:
    """``gpu[01-04,07],cpu3`` -> ``["gpu01", "gpu02", "gpu03", "gpu04", "gpu07", "cpu3"]`` (zero padding kept)."""
    hosts: list[str] = []
    for prefix, ranges, plain in re.findall(r"([^,\[]+)\[([^\]]+)\]|([^,\[\]]+)", nodelist):
        if plain:
            hosts.append(plain)
            continue
        for part in ranges.split(","):
            first, _, last = part.partition("-")
            if not (first.isdigit() and (not last or last.isdigit())):
                raise LaunchError(f"SLURM_NODELIST {nodelist}: cannot read the range [{part}]")
            for number in range(int(first), int(last or first) + 1):
                hosts.append(f"{prefix}{number:0{len(first)}d}")
    if not hosts:
        raise LaunchError(f"SLURM_NODELIST {nodelist!r}: no host in it")
    return hosts


def first_host(nodelist: str) -> str:
    """The master host: ``scontrol show hostnames`` when it is on PATH (SLURM's own reading), else our parser."""
    scontrol = shutil.which("scontrol")
    if scontrol is not None:
        try:
            done = subprocess.run([scontrol, "show", "hostnames", nodelist], capture_output=True, text=True,
                                  timeout=20)
            names = done.stdout.split()
            if done.returncode == 0 and names:
                return names[0]
        except (OSError, subprocess.TimeoutExpired):
            pass
    return expand_nodelist(nodelist)[0]


def tasks_per_node(env: dict[str, str]) -> int:
    """This node's task count: SLURM_NTASKS_PER_NODE, else this node's entry of SLURM_TASKS_PER_NODE ("4(x2),2")."""
    if env.get("SLURM_NTASKS_PER_NODE", "").isdigit():
        return int(env["SLURM_NTASKS_PER_NODE"])
    counts = []
    for entry in env.get("SLURM_TASKS_PER_NODE", "").split(","):
        match = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", entry.strip())
        if match:
            counts += [int(match.group(1))] * int(match.group(2) or 1)
    node = int(env.get("SLURM_NODEID", 0))
    return counts[node] if node < len(counts) else int(env["SLURM_NTASKS"])


def slurm_task(env: dict[str, str] | None = None) -> SlurmTask:
    """This task's place in the job; a LaunchError saying what to fix when it was not started as one."""
    env = dict(os.environ if env is None else env)
    missing = [k for k in REQUIRED if k not in env]
    if missing:
        raise LaunchError(f"--launcher slurm: {', '.join(missing)} not set: this is not a SLURM job step; submit "
                          "with sbatch (see tools/slurm/train.sbatch)")
    if not under_srun(env):
        raise LaunchError("--launcher slurm: started without srun (SLURM_STEP_ID is not set): in the batch script "
                          "run `srun python tools/train_net.py ...`, one task per GPU (#SBATCH --ntasks-per-node = "
                          "GPUs per node)")
    try:
        rank, world_size, local_rank = (int(env[k]) for k in ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"))
    except ValueError:
        raise LaunchError("--launcher slurm: SLURM_PROCID, SLURM_NTASKS and SLURM_LOCALID must be integers") from None
    if env.get("MASTER_PORT", "").isdigit():
        port = int(env["MASTER_PORT"])
    elif env["SLURM_JOB_ID"].isdigit():
        port = PORT_RANGE[0] + int(env["SLURM_JOB_ID"]) % (PORT_RANGE[1] - PORT_RANGE[0])
    else:
        raise LaunchError(f"--launcher slurm: SLURM_JOB_ID {env['SLURM_JOB_ID']!r} is not a number; set MASTER_PORT")
    master = env.get("MASTER_ADDR") or first_host(env["SLURM_NODELIST"])
    return SlurmTask(rank, world_size, local_rank, tasks_per_node(env), master, port)


def check_gpus_per_node(task: SlurmTask, device: str, num_gpus: int, gpus_visible: int) -> None:
    """One task per GPU: more tasks on a node than its visible GPUs, or --num-gpus saying otherwise, is an error."""
    if num_gpus not in (1, task.tasks_on_this_node):
        raise LaunchError(f"--num-gpus {num_gpus} but SLURM runs {task.tasks_on_this_node} task(s) on this node; "
                          "with --launcher slurm each task is one process: set #SBATCH --ntasks-per-node to the GPUs "
                          "per node and leave --num-gpus out")
    # A task seeing one GPU was bound to it by SLURM (--gpus-per-task); otherwise each task takes GPU LOCALID.
    if device.startswith("cuda") and gpus_visible > 1 and task.tasks_on_this_node != gpus_visible:
        raise LaunchError(f"SLURM runs {task.tasks_on_this_node} task(s) on this node, which has {gpus_visible} "
                          "GPUs: one task per GPU, set #SBATCH --ntasks-per-node equal to --gpus-per-node")
