"""Every way a training run is launched, in one place: FastReID's launcher (`--num-gpus`,
`--num-machines`; one plain process by default), torchrun, or SLURM's srun. `launch_run` is the
entry point (cpcl_plugin/train.py's `cli` calls it); `detect_environment_launch` tells whether
torchrun or srun started this process, from the variables they set. Joining a process group
touches FastReID's internals, so that step is compat/launching.py's.

How a torchrun or srun process is recognised (the first rule that applies decides):

1. torchrun (or anything that sets its variables): RANK and WORLD_SIZE are set. LOCAL_RANK,
   LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT must be set too; GROUP_RANK, when set, is the node.
   torchrun's variables win over SLURM's, so `srun torchrun ...` is a torchrun launch.
2. SLURM: SLURM_PROCID and SLURM_NTASKS are set, SLURM_NTASKS > 1, and SLURM_STEP_ID is set
   (the process is a task of an `srun` step; a batch script or a login shell inside an allocation
   sees the allocation's SLURM_NTASKS but is one process). SLURM_LOCALID and SLURM_NODEID must be
   set; the master address is MASTER_ADDR, else the first host of SLURM_STEP_NODELIST (else
   SLURM_JOB_NODELIST); the port is MASTER_PORT, else 20000 + SLURM_JOB_ID % 20000. The local
   world size comes from SLURM_STEP_TASKS_PER_NODE, SLURM_TASKS_PER_NODE or
   SLURM_NTASKS_PER_NODE, where one is set.
3. Otherwise, and whenever the environment's world size is 1 (`torchrun --nproc_per_node 1`, a
   single SLURM task), this is no environment launch: the process runs as a plain one.
"""
import contextlib
import dataclasses
import datetime
import errno
import os
import re
import socket
import sys
from urllib.parse import urlparse
from typing import Optional

import torch
import torch.distributed as dist
from fastreid.engine import launch as fastreid_launch
from torch.multiprocessing import ProcessExitedException

from ..compat import dist_backend, join_process_group, leave_process_group
from ..config import load_config
from ..errors import ConfigError, DatasetError

__all__ = ["EnvironmentLaunch", "LaunchError", "Rank0Failed", "detect_environment_launch",
           "environment_process_group", "gpu_shortage", "launch_run", "launcher_conflict",
           "parse_slurm_hostlist", "parse_slurm_tasks_per_node", "resolve_dist_url",
           "run_on_rank0_first", "without_launch_variables"]

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                      "MASTER_PORT")
# The variables that make a process one rank of a launch (see the rules above).
_LAUNCH_TRIGGERS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK",
                    "SLURM_PROCID", "SLURM_STEP_ID")
DEFAULT_MASTER_PORT = 29500  # torch's, when SLURM gives no job id to derive one from
# Rank 0's preflight may build datasets and run a pretraining recipe (minutes), longer than
# NCCL's default 10-minute collective timeout; the other ranks wait for it this long.
PREFLIGHT_TIMEOUT = datetime.timedelta(hours=12)


class LaunchError(ConfigError):
    """Launch variables that contradict each other or miss a part; the message says which."""


class Rank0Failed(RuntimeError):
    """Raised on the other ranks when rank 0's part of `run_on_rank0_first` failed (rank 0 says
    why); `exit_status` is what rank 0 exits with."""

    def __init__(self, exit_status):
        super().__init__(f"rank 0 failed (exit status {exit_status})")
        self.exit_status = exit_status


@dataclasses.dataclass(frozen=True)
class EnvironmentLaunch:
    """This process's place in a launch by torchrun or SLURM."""
    launcher: str  # "torchrun" or "SLURM"
    rank: int
    world_size: int
    local_rank: int
    local_world_size: Optional[int]  # None where SLURM does not say
    node_rank: int  # any number that is the same for the ranks of one machine, only those
    master_addr: str
    master_port: int

    def torch_environment(self):
        """The variables torch's env:// initialisation reads (and LOCAL_RANK/LOCAL_WORLD_SIZE,
        which libraries read too)."""
        env = {"RANK": self.rank, "WORLD_SIZE": self.world_size, "LOCAL_RANK": self.local_rank,
               "MASTER_ADDR": self.master_addr, "MASTER_PORT": self.master_port}
        if self.local_world_size is not None:
            env["LOCAL_WORLD_SIZE"] = self.local_world_size
        return {name: str(value) for name, value in env.items()}


def _split_outside_brackets(text):
    """`text` split at the commas that are not inside [...]."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def _expand_host_pattern(pattern, hostlist):
    """Every host name of one pattern such as 'node[01-03,07]' or 'rack[1-2]-n[1-2]' (several
    bracket groups expand as a product, as SLURM does), zero padding kept."""
    open_at = pattern.find("[")
    if open_at < 0:
        if "]" in pattern:
            raise LaunchError(f"The SLURM host list '{hostlist}' has a ']' without its '['.")
        return [pattern]
    close_at = pattern.find("]", open_at)
    if close_at < 0:
        raise LaunchError(f"The SLURM host list '{hostlist}' has a '[' without its ']'.")
    prefix, ranges, rest = pattern[:open_at], pattern[open_at + 1:close_at], pattern[close_at + 1:]
    values = []
    for item in ranges.split(","):
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", item.strip())
        if not match:
            raise LaunchError(f"The SLURM host list '{hostlist}' has '{item}' in brackets, "
                              f"where a number or a range like 01-03 belongs.")
        first, last = match.group(1), match.group(2) or match.group(1)
        if int(last) < int(first):
            raise LaunchError(f"The SLURM host list '{hostlist}' has the range {item}, which "
                              f"ends before it starts.")
        values += [str(n).zfill(len(first)) for n in range(int(first), int(last) + 1)]
    return [prefix + value + tail for value in values
            for tail in _expand_host_pattern(rest, hostlist)]


def parse_slurm_hostlist(hostlist):
    """The host names of a SLURM host list in its compressed form, in order:
    'node[01-03,07],gpu5' -> ['node01', 'node02', 'node03', 'node07', 'gpu5']."""
    hosts = []
    for pattern in _split_outside_brackets(hostlist.strip()):
        if pattern.strip():
            hosts += _expand_host_pattern(pattern.strip(), hostlist)
    if not hosts:
        raise LaunchError(f"The SLURM host list '{hostlist}' names no host.")
    return hosts


def parse_slurm_tasks_per_node(tasks_per_node):
    """The task count of each node from SLURM's compressed form: '4(x2),3' -> [4, 4, 3]."""
    counts = []
    for item in tasks_per_node.split(","):
        match = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", item.strip())
        if not match:
            raise LaunchError(f"SLURM's tasks per node '{tasks_per_node}' has '{item}', where a "
                              f"count like 4 or 4(x2) belongs.")
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    return counts


def _whole_number(environ, name):
    value = environ[name]
    try:
        return int(value)
    except ValueError:
        raise LaunchError(f"The environment variable {name}={value!r} is not a whole "
                          f"number.") from None


def _require(environ, names, launcher, found):
    """LaunchError unless every variable in `names` is set; `found` says what made this process
    look launched by `launcher`."""
    missing = [name for name in names if not environ.get(name)]
    if missing:
        one = len(missing) == 1
        raise LaunchError(f"{found}, as {launcher} does, but {', '.join(missing)} "
                          f"{'is' if one else 'are'} not: start the processes with {launcher}, or "
                          f"set {'it' if one else 'them'} too.")


def _torchrun_launch(environ):
    _require(environ, TORCHRUN_VARIABLES, "torchrun", "RANK and WORLD_SIZE are set")
    rank, world_size, local_rank, local_world_size = (
        _whole_number(environ, name) for name in TORCHRUN_VARIABLES[:4])
    # torchrun numbers the ranks of a node contiguously, so its first rank (rank - local_rank)
    # names the node, whatever the process counts of the other nodes.
    node_rank = _whole_number(environ, "GROUP_RANK") if environ.get("GROUP_RANK") else \
        rank - local_rank
    return EnvironmentLaunch("torchrun", rank, world_size, local_rank, local_world_size, node_rank,
                             environ["MASTER_ADDR"], _whole_number(environ, "MASTER_PORT"))


def _is_slurm_step_task(environ):
    return bool(environ.get("SLURM_PROCID") and environ.get("SLURM_NTASKS")
                and environ.get("SLURM_STEP_ID")) and _whole_number(environ, "SLURM_NTASKS") > 1


def _slurm_launch(environ):
    nodelist_name = next((name for name in ("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST")
                          if environ.get(name)), "SLURM_STEP_NODELIST")
    _require(environ, ["SLURM_LOCALID", "SLURM_NODEID"]
             + ([] if environ.get("MASTER_ADDR") else [nodelist_name]), "srun",
             "SLURM_PROCID, SLURM_NTASKS and SLURM_STEP_ID are set")
    node_rank = _whole_number(environ, "SLURM_NODEID")
    tasks_name = next((name for name in ("SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE",
                                         "SLURM_NTASKS_PER_NODE") if environ.get(name)), None)
    counts = parse_slurm_tasks_per_node(environ[tasks_name]) if tasks_name else []
    # SLURM_NTASKS_PER_NODE is one count for every node.
    local_world_size = counts[0] if tasks_name == "SLURM_NTASKS_PER_NODE" else \
        (counts[node_rank] if node_rank < len(counts) else None)
    master_addr = environ.get("MASTER_ADDR") or parse_slurm_hostlist(environ[nodelist_name])[0]
    if environ.get("MASTER_PORT"):
        master_port = _whole_number(environ, "MASTER_PORT")
    elif environ.get("SLURM_JOB_ID"):
        # One port per job, so that two jobs sharing a node do not meet at the same address.
        master_port = 20000 + _whole_number(environ, "SLURM_JOB_ID") % 20000
    else:
        master_port = DEFAULT_MASTER_PORT
    return EnvironmentLaunch("SLURM", _whole_number(environ, "SLURM_PROCID"),
                             _whole_number(environ, "SLURM_NTASKS"),
                             _whole_number(environ, "SLURM_LOCALID"), local_world_size,
                             node_rank, master_addr, master_port)


def detect_environment_launch(environ=None):
    """The `EnvironmentLaunch` that torchrun's or SLURM's variables in `environ` (default:
    os.environ) describe, or None for a process that is no rank of such a launch, or the only one
    (the rules are in this module's docstring). Raises `LaunchError` for variables that are
    incomplete or not numbers."""
    environ = os.environ if environ is None else environ
    if environ.get("RANK") and environ.get("WORLD_SIZE"):
        launch = _torchrun_launch(environ)
    elif _is_slurm_step_task(environ):
        launch = _slurm_launch(environ)
    else:
        return None
    if launch.world_size <= 1:
        return None
    if not 0 <= launch.rank < launch.world_size:
        raise LaunchError(f"{launch.launcher} gives this process rank {launch.rank}, outside a "
                          f"world of {launch.world_size} processes.")
    return launch


def launcher_conflict(launch, num_gpus, num_machines):
    """The sentence saying that FastReID's launcher flags and an environment launch were both
    given, or None when they were not."""
    if launch is None or (num_gpus <= 1 and num_machines <= 1):
        return None
    flags = " ".join(f"{flag} {value}" for flag, value in
                     (("--num-gpus", num_gpus), ("--num-machines", num_machines)) if value > 1)
    return (f"{launch.launcher} started this process as one of {launch.world_size}, and {flags} "
            f"asks FastReID's launcher to start processes too: use one or the other (with "
            f"{launch.launcher}, leave out --num-gpus and --num-machines).")


def gpu_shortage(launch, visible_gpus):
    """The sentence saying that this process has no GPU of its own among the `visible_gpus` it
    sees (its GPU is the one numbered by its local rank, as FastReID's DDP wrapping assumes), or
    None when it has one."""
    if launch.local_rank < visible_gpus:
        return None
    return (f"{launch.launcher} gives this process local rank {launch.local_rank}, but it sees "
            f"{visible_gpus} GPU{'' if visible_gpus == 1 else 's'}: start one process per GPU, "
            f"each seeing all of its machine's GPUs (under SLURM: --gres=gpu:N, not "
            f"--gpus-per-task), or set MODEL.DEVICE cpu.")


@contextlib.contextmanager
def without_launch_variables():
    """os.environ without the variables that make a process a rank of a launch, for child
    processes that must run on their own (restored on exit)."""
    hidden = {name: os.environ.pop(name) for name in _LAUNCH_TRIGGERS if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(hidden)


def run_on_rank0_first(task, timeout=PREFLIGHT_TIMEOUT):
    """`task()` on global rank 0 while the other ranks of the initialised process group wait;
    returns rank 0's result on every rank (it must pickle). When `task` raises on rank 0, the
    exception goes on there and the others raise `Rank0Failed` instead of waiting: exit status 2
    for an error whose class says `one_sentence` (ConfigError, DatasetError), 1 for any other."""
    # A gloo group of its own: objects travel through the CPU whichever the backend, and the wait
    # may outlast the default group's timeout.
    group = dist.new_group(backend="gloo", timeout=timeout)
    try:
        outcome = [None]
        if dist.get_rank() == 0:
            try:
                outcome = [("done", task())]
            except BaseException as err:
                status = 2 if getattr(err, "one_sentence", False) else 1
                dist.broadcast_object_list([("failed", status)], src=0, group=group)
                raise
        dist.broadcast_object_list(outcome, src=0, group=group)
        kind, value = outcome[0]
        if kind == "failed":
            raise Rank0Failed(value)
        return value
    finally:
        dist.destroy_process_group(group)


@contextlib.contextmanager
def environment_process_group(launch):
    """Join, for the ``with`` block, the process group that torchrun's or SLURM's variables
    describe (`launch`: an `EnvironmentLaunch`), through env:// initialisation and the same steps
    as FastReID's launcher's worker; yields the backend's name."""
    os.environ.update(launch.torch_environment())  # what env:// reads; SLURM sets none of it
    backend = dist_backend()
    join_process_group(backend, "env://", launch.world_size, launch.rank, launch.local_rank,
                       launch.node_rank)
    try:
        yield backend
    finally:
        leave_process_group()


def configured_device(args):
    """MODEL.DEVICE of the command line's config, or "" where the config has a problem (rank 0's
    preflight then reports it; the backend chosen meanwhile is the same on every rank)."""
    try:
        return load_config(args.config_file, args.opts, check=False).MODEL.DEVICE
    except ConfigError:
        return ""


@contextlib.contextmanager
def machine_threads_for_children():
    """os.environ with one OpenMP / MKL thread per core this process may use, for child processes
    that work while the launch's other ranks wait (torchrun sets OMP_NUM_THREADS=1 for the ranks
    themselves); restored on exit."""
    cores = str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                else os.cpu_count() or 1)
    saved = {name: os.environ.get(name) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    os.environ.update(dict.fromkeys(saved, cores))
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _preflight_alone(preflight, args, world_size):
    """`preflight` as a process of its own: a pretraining recipe's run (a child training process)
    must not take itself for a rank of this launch, and may use every core, the other ranks
    waiting meanwhile. Returns nothing (the config stays here)."""
    with without_launch_variables(), machine_threads_for_children():
        preflight(args, world_size)


def _run_as_environment_rank(args, launch, preflight, worker):
    """The rank `launch` describes (torchrun's or SLURM's process): join the process group, let
    rank 0 run the preflight while the others wait, then `worker(args)` in this process. Returns
    the exit status."""
    conflict = launcher_conflict(launch, args.num_gpus, args.num_machines)
    if conflict:
        if launch.rank == 0:  # every rank finds it; one says it
            print(f"error: {conflict}", file=sys.stderr)
        return 2
    # Read by dist_backend(): gloo for CPU runs. Every rank reads the config for it, as the
    # backend is chosen before rank 0's preflight can say anything.
    os.environ["CPCL_DEVICE"] = configured_device(args)
    if dist_backend() == "nccl":
        shortage = gpu_shortage(launch, torch.cuda.device_count())
        if shortage:
            print(f"error: {shortage}", file=sys.stderr)
            return 2
    args.environment_launch = launch  # for the log's first lines
    with environment_process_group(launch):
        try:
            run_on_rank0_first(lambda: _preflight_alone(preflight, args, launch.world_size))
        except (ConfigError, DatasetError) as err:  # rank 0
            print(f"error: {err}", file=sys.stderr)
            return 2
        except Rank0Failed as failed:  # the other ranks: rank 0 said why
            return failed.exit_status
        try:
            worker(args)
        except SystemExit as exit_:  # the worker already said why
            return exit_.code
    return 0


def resolve_dist_url(dist_url, num_machines, machine_rank):
    """The address FastReID's launcher's processes meet at. "auto" becomes a free local port
    (one machine only), so that runs side by side never meet each other; a tcp:// port that is
    already taken on machine 0 stops the launch with a LaunchError saying so, before any process
    starts (it would otherwise die in a traceback, or join another run's processes)."""
    if dist_url == "auto":
        if num_machines > 1:
            raise LaunchError(f"--dist-url auto picks a port on one machine only; with "
                              f"--num-machines {num_machines}, give every machine --dist-url "
                              f"tcp://<machine 0's address>:<free port>.")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            return f"tcp://127.0.0.1:{sock.getsockname()[1]}"
    url = urlparse(dist_url)
    if url.scheme == "tcp" and machine_rank == 0 and url.port:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            # As torch's store binds: a port held only by connections of a run that just ended
            # (TIME_WAIT) is free, one with a listener is not.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("", url.port))
            except OSError as err:
                if err.errno != errno.EADDRINUSE:
                    raise
                raise LaunchError(f"--dist-url {dist_url}: port {url.port} is already in use on "
                                  f"this machine (another run?); use --dist-url auto to pick a "
                                  f"free port.") from None
    return dist_url


def launch_run(args, preflight, worker):
    """Run `worker(args)` in every process of the launch that the command line `args` (FastReID's
    launcher flags, config_file, opts) and the environment describe; returns the exit status.
    `preflight(args, world_size)` checks the config, data and weights once, before any worker
    starts (in this process, or on rank 0 of a torchrun or SLURM launch while the others wait),
    and returns the config. `worker` must be a module-level function (the launcher pickles it);
    it ends with SystemExit(2) after saying why a config or data error stopped it."""
    try:
        environment_launch = detect_environment_launch()
    except ConfigError as err:  # incomplete launch variables
        print(f"error: {err}", file=sys.stderr)
        return 2
    if environment_launch is not None:
        return _run_as_environment_rank(args, environment_launch, preflight, worker)
    try:
        several = args.num_gpus * args.num_machines > 1
        pick_port = several and args.dist_url == "auto" and args.num_machines == 1
        if several and not pick_port:
            # A taken port, or auto across machines: said before a preflight of minutes.
            resolve_dist_url(args.dist_url, args.num_machines, args.machine_rank)
        cfg = preflight(args, args.num_gpus * args.num_machines)
        if pick_port:  # after the preflight, so the port is still free; each process logs it
            args.dist_url = resolve_dist_url("auto", 1, args.machine_rank)
    except (ConfigError, DatasetError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    # Read by the launcher's worker (compat/launching.py) to pick gloo for CPU runs.
    os.environ["CPCL_DEVICE"] = cfg.MODEL.DEVICE
    try:
        fastreid_launch(worker, args.num_gpus, num_machines=args.num_machines,
                        machine_rank=args.machine_rank, dist_url=args.dist_url, args=(args,))
    except SystemExit as exit_:  # the single-process case: the worker already said why
        return exit_.code
    except ProcessExitedException as err:  # a launched worker exited; the launcher stopped the rest
        if err.exit_code != 2:  # 2: the worker has already said why, naming its rank
            rank = args.machine_rank * args.num_gpus + err.error_index
            how = f"was killed by {err.signal_name}" if err.signal_name else \
                f"exited with status {err.exit_code}"
            log = os.path.join(cfg.OUTPUT_DIR, "log.txt" + (f".rank{rank}" if rank else ""))
            print(f"error: the process of rank {rank} (pid {err.error_pid}) {how}; the other "
                  f"processes were stopped. Its log: {log}.", file=sys.stderr)
        return err.exit_code if err.exit_code > 0 else 128 - err.exit_code
    return 0
