"""torchrun and SLURM launches of tools/train_net.py: the environment's variables read right, and a
2-process run of each ending on FastReID's launcher's parameters."""
import os
import socket
import subprocess
import sys

import pytest

from conftest import REPO, TINY, run_cli_in_process
from test_train_net import _digests

from cpcl_plugin.engine.launch import (EnvironmentLaunch, LaunchError, detect_environment_launch,
                                       gpu_shortage, launcher_conflict, parse_slurm_hostlist,
                                       parse_slurm_tasks_per_node, resolve_dist_url)
from cpcl_plugin.train import cli

TRAIN_NET = os.path.join(REPO, "tools", "train_net.py")
ONE_EPOCH = ["SOLVER.MAX_EPOCH", "1"]
TORCHRUN = {"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
            "GROUP_RANK": "0", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"}
SLURM = {"SLURM_PROCID": "5", "SLURM_NTASKS": "6", "SLURM_LOCALID": "1", "SLURM_NODEID": "2",
         "SLURM_STEP_ID": "0", "SLURM_STEP_NODELIST": "node[07-08],gpu[1-2]",
         "SLURM_JOB_NODELIST": "node[01-09],gpu[1-2]", "SLURM_TASKS_PER_NODE": "2(x2),1(x2)",
         "SLURM_JOB_ID": "123456"}


@pytest.mark.parametrize("hostlist, hosts", [
    ("localhost", ["localhost"]),
    ("node[01-03,07],gpu5", ["node01", "node02", "node03", "node07", "gpu5"]),
    ("gpu[9-11]", ["gpu9", "gpu10", "gpu11"]),
    ("rack[1-2]-n[1,3]", ["rack1-n1", "rack1-n3", "rack2-n1", "rack2-n3"]),
    ("a,b-1.cluster", ["a", "b-1.cluster"]),
])
def test_slurm_host_lists_expand(hostlist, hosts):
    assert parse_slurm_hostlist(hostlist) == hosts


@pytest.mark.parametrize("hostlist, needle", [
    ("node[01-03", "'[' without its ']'"), ("node[3-1]", "ends before it starts"),
    ("node[a-b]", "'a-b' in brackets"), ("", "names no host"),
])
def test_bad_slurm_host_lists_are_named(hostlist, needle):
    with pytest.raises(LaunchError, match=needle.replace("[", r"\[")):
        parse_slurm_hostlist(hostlist)


def test_slurm_tasks_per_node_expand():
    assert parse_slurm_tasks_per_node("4(x2),3") == [4, 4, 3]
    assert parse_slurm_tasks_per_node("2") == [2]
    with pytest.raises(LaunchError, match="'4x2'"):
        parse_slurm_tasks_per_node("4x2")


def test_torchrun_variables_are_read():
    assert detect_environment_launch(TORCHRUN) == EnvironmentLaunch(
        "torchrun", rank=1, world_size=4, local_rank=1, local_world_size=2, node_rank=0,
        master_addr="10.0.0.1", master_port=29500)
    # Without GROUP_RANK, a node is named by its first rank (torchrun numbers a node's ranks
    # contiguously), which stays unique when nodes run different numbers of processes.
    other_node = dict(TORCHRUN, RANK="3", GROUP_RANK="")
    assert detect_environment_launch(other_node).node_rank == 2
    two_then_four = [dict(TORCHRUN, RANK=str(r), LOCAL_RANK=str(r - first),
                          LOCAL_WORLD_SIZE=str(size), WORLD_SIZE="6", GROUP_RANK="")
                     for first, size in ((0, 2), (2, 4)) for r in range(first, first + size)]
    nodes = [detect_environment_launch(env).node_rank for env in two_then_four]
    assert nodes == [0, 0, 2, 2, 2, 2]


def test_slurm_variables_are_read():
    launch = detect_environment_launch(SLURM)
    assert launch == EnvironmentLaunch("SLURM", rank=5, world_size=6, local_rank=1,
                                       local_world_size=1, node_rank=2, master_addr="node07",
                                       master_port=20000 + 123456 % 20000)
    assert launch.torch_environment()["MASTER_PORT"] == "23456"
    given = dict(SLURM, MASTER_ADDR="10.0.0.9", MASTER_PORT="29400", SLURM_STEP_NODELIST="",
                 SLURM_TASKS_PER_NODE="", SLURM_NTASKS_PER_NODE="2")
    launch = detect_environment_launch(given)
    assert (launch.master_addr, launch.master_port) == ("10.0.0.9", 29400)
    assert launch.local_world_size == 2
    assert detect_environment_launch(dict(SLURM, SLURM_STEP_NODELIST="")).master_addr == "node01"


def test_torchrun_wins_over_slurm():
    assert detect_environment_launch(dict(SLURM, **TORCHRUN)).launcher == "torchrun"


@pytest.mark.parametrize("environ", [
    {},
    dict(SLURM, SLURM_NTASKS="1", SLURM_PROCID="0"),  # an interactive srun: one task
    {k: v for k, v in SLURM.items() if k != "SLURM_STEP_ID"},  # a batch script or login shell
    dict(TORCHRUN, RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1"),
])
def test_single_processes_are_plain_runs(environ):
    assert detect_environment_launch(environ) is None


@pytest.mark.parametrize("environ, needle", [
    ({"RANK": "0", "WORLD_SIZE": "2"}, "but LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_"),
    (dict(TORCHRUN, MASTER_PORT="http"), "MASTER_PORT='http' is not a whole number"),
    (dict(SLURM, SLURM_STEP_NODELIST="", SLURM_JOB_NODELIST=""), "SLURM_STEP_NODELIST is not:"),
    (dict(TORCHRUN, RANK="4"), "rank 4, outside a world of 4"),
])
def test_incomplete_launch_variables_are_named(environ, needle):
    with pytest.raises(LaunchError, match=needle):
        detect_environment_launch(environ)


def test_launcher_flags_under_torchrun_are_refused():
    launch = detect_environment_launch(TORCHRUN)
    assert launcher_conflict(launch, num_gpus=1, num_machines=1) is None
    assert launcher_conflict(None, num_gpus=4, num_machines=2) is None
    sentence = launcher_conflict(launch, num_gpus=4, num_machines=1)
    assert sentence == ("torchrun started this process as one of 4, and --num-gpus 4 asks "
                        "FastReID's launcher to start processes too: use one or the other (with "
                        "torchrun, leave out --num-gpus and --num-machines).")


def test_a_process_without_its_gpu_is_told_why():
    launch = detect_environment_launch(SLURM)  # local rank 1
    assert gpu_shortage(launch, visible_gpus=2) is None
    assert gpu_shortage(launch, visible_gpus=1) == (
        "SLURM gives this process local rank 1, but it sees 1 GPU: start one process per GPU, "
        "each seeing all of its machine's GPUs (under SLURM: --gres=gpu:N, not --gpus-per-task), "
        "or set MODEL.DEVICE cpu.")


@pytest.mark.parametrize("rank", [0, 1])
def test_launcher_flags_under_srun_end_in_one_sentence(monkeypatch, capsys, rank):
    for name, value in dict(SLURM, SLURM_PROCID=str(rank)).items():
        monkeypatch.setenv(name, value)
    assert cli(["--config-file", TINY, "--num-gpus", "2"]) == 2
    said = "error: " + launcher_conflict(detect_environment_launch(), 2, 1) + "\n"
    # Every rank finds it; one says it.
    assert capsys.readouterr().err == (said if rank == 0 else "")


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run_processes(commands, out_dir, timeout=300):
    """Run [(argv, extra environment)] side by side from the repository root, one thread each
    (as every process of the suite: conftest), their output in files (a full pipe would stall a
    process); returns [(exit status, stdout, stderr)]."""
    out_dir.mkdir(parents=True, exist_ok=True)
    procs = []
    try:
        for i, (argv, extra_env) in enumerate(commands):
            with open(out_dir / f"{i}.out", "w") as out, open(out_dir / f"{i}.err", "w") as err:
                env = dict(os.environ, PYTHONUNBUFFERED="1", **extra_env)
                procs.append(subprocess.Popen(argv, stdout=out, stderr=err, cwd=REPO, env=env))
        statuses = [proc.wait(timeout=timeout) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    return [(status, (out_dir / f"{i}.out").read_text(), (out_dir / f"{i}.err").read_text())
            for i, status in enumerate(statuses)]


def _slurm_step(args, out_dir):
    """The two tasks of an `srun --nodes 2 --ntasks 2` step, as SLURM would start them, both on
    this machine: each is task 0 of its node (FastReID's per-machine group has one rank)."""
    port = str(_free_port())
    return _run_processes([([sys.executable, TRAIN_NET, *args],
                            {"SLURM_PROCID": str(rank), "SLURM_NTASKS": "2", "SLURM_LOCALID": "0",
                             "SLURM_NODEID": str(rank), "SLURM_STEP_ID": "0",
                             "SLURM_STEP_NODELIST": "localhost", "SLURM_TASKS_PER_NODE": "1(x2)",
                             "SLURM_JOB_ID": "77", "MASTER_PORT": port}) for rank in range(2)],
                          out_dir)


@pytest.fixture(scope="module")
def launcher_digest(two_process_run):
    """The final parameter digest of FastReID's launcher's 2-process run of one epoch."""
    out = two_process_run
    log1 = (out / "log.txt.rank1").read_text()
    assert "Launched by FastReID's launcher: rank 1 of 2 (local rank 1 of 2), gloo, --dist-url " \
           "tcp://127.0.0.1:" in log1
    digest = _digests((out / "log.txt").read_text())["0"]
    assert _digests(log1)["1"] == digest
    return digest


def test_two_runs_side_by_side_with_default_settings_meet_at_ports_of_their_own(
        two_process_run, launcher_digest):
    # Started together, without --dist-url (FastReID's default is one fixed port per user).
    ports = set()
    for out in (two_process_run, two_process_run.with_name(two_process_run.name + "-beside")):
        log0, log1 = (out / "log.txt").read_text(), (out / "log.txt.rank1").read_text()
        assert _digests(log0) == {"0": launcher_digest} and _digests(log1) == {"1": launcher_digest}
        [line] = [ln for ln in log1.splitlines() if "Launched by FastReID's launcher" in ln]
        ports.add(line.rsplit(":", 1)[1])
    assert len(ports) == 2


def test_a_taken_port_or_an_auto_address_across_machines_is_refused_in_one_sentence():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for host in ("127.0.0.1", "localhost"):
            with pytest.raises(LaunchError, match=rf"--dist-url tcp://{host}:{port}: port {port} "
                               r"is already in use on this machine \(another run\?\); use "
                               r"--dist-url auto to pick a free port\."):
                resolve_dist_url(f"tcp://{host}:{port}", num_machines=1, machine_rank=0)
        # Only machine 0 opens the port: another machine's rank is not judged by this one.
        assert resolve_dist_url(f"tcp://10.0.0.1:{port}", 2, 1) == f"tcp://10.0.0.1:{port}"
    with pytest.raises(LaunchError, match="with --num-machines 3, give every machine --dist-url"):
        resolve_dist_url("auto", num_machines=3, machine_rank=0)
    auto = resolve_dist_url("auto", 1, 0)
    assert auto.startswith("tcp://127.0.0.1:") and int(auto.rsplit(":", 1)[1]) > 0


def test_a_run_asked_to_meet_at_a_taken_port_stops_before_starting_processes(capfd, data_root,
                                                                              tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run_cli_in_process(capfd, "--config-file", TINY, "--num-gpus", "2", "--dist-url",
                                  f"tcp://127.0.0.1:{port}", "DATASETS.ROOT", data_root,
                                  "OUTPUT_DIR", str(tmp_path / "out"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == (f"error: --dist-url tcp://127.0.0.1:{port}: port {port} is "
                                   f"already in use on this machine (another run?); use "
                                   f"--dist-url auto to pick a free port.")


def _assert_both_ranks_end_on(out, digest, launch_lines):
    """Both ranks' final digest is `digest`; their logs name the launcher, rank and local rank
    (as FastReID's comm helpers see them) as `launch_lines` say."""
    log0, log1 = (out / "log.txt").read_text(), (out / "log.txt.rank1").read_text()
    assert _digests(log0) == {"0": digest} and _digests(log1) == {"1": digest}
    assert launch_lines[0] in log0 and launch_lines[1] in log1


def test_torchrun_ends_on_the_launchers_parameters(launcher_digest, data_root, tmp_path):
    out = tmp_path / "torchrun"
    port = str(_free_port())
    [(status, _, stderr)] = _run_processes(
        [([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", port, TRAIN_NET, "--config-file", TINY, "DATASETS.ROOT", data_root,
           "OUTPUT_DIR", str(out), *ONE_EPOCH], {})], tmp_path / "console")
    assert status == 0, stderr[-3000:]
    _assert_both_ranks_end_on(out, launcher_digest, [
        f"Launched by torchrun: rank {rank} of 2 (local rank {rank} of 2), gloo, master "
        f"127.0.0.1:{port}" for rank in range(2)])


def test_srun_tasks_end_on_the_launchers_parameters(launcher_digest, data_root, tmp_path):
    out = tmp_path / "slurm"
    tasks = _slurm_step(["--config-file", TINY, "DATASETS.ROOT", data_root,
                         "OUTPUT_DIR", str(out), *ONE_EPOCH], tmp_path / "console")
    assert [status for status, _, _ in tasks] == [0, 0], tasks[0][2][-3000:] + tasks[1][2][-3000:]
    _assert_both_ranks_end_on(out, launcher_digest, [
        f"Launched by SLURM: rank {rank} of 2 (local rank 0 of 1), gloo, master localhost:"
        for rank in range(2)])


def test_a_data_error_under_srun_ends_every_task_in_one_sentence(tmp_path):
    root = tmp_path / "no-such-root"
    tasks = _slurm_step(["--config-file", TINY, "DATASETS.ROOT", str(root), "OUTPUT_DIR",
                         str(tmp_path / "out"), "DATASETS.NAMES", '("CUHKPEDES",)',
                         "DATASETS.TESTS", '("CUHKPEDES",)'], tmp_path / "console")
    (status0, _, stderr0), (status1, _, stderr1) = tasks
    assert (status0, status1) == (2, 2), stderr0[-3000:] + stderr1[-3000:]
    lines = [line for line in stderr0.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr0
    assert "reid_raw.json" in lines[0]
    assert "error" not in stderr1 and "Traceback" not in stderr1, stderr1  # rank 0 said why


def test_rank0_checks_before_training_give_their_children_every_core(monkeypatch):
    from cpcl_plugin.engine.launch import machine_threads_for_children
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # as torchrun sets it for the ranks
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    cores = str(len(os.sched_getaffinity(0)))
    with machine_threads_for_children():
        assert os.environ["OMP_NUM_THREADS"] == os.environ["MKL_NUM_THREADS"] == cores
    assert os.environ["OMP_NUM_THREADS"] == "1" and "MKL_NUM_THREADS" not in os.environ
