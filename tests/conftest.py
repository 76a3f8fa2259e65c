import collections
import os
import subprocess
import sys

# One OpenMP thread per process, set before numpy and torch are imported and inherited by every
# process a test starts: `make test` runs two workers on two cores, where more threads wait on
# each other instead of helping, and runs compared by their parameter digests need one thread
# count (float sums depend on it).
os.environ["OMP_NUM_THREADS"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from filelock import FileLock  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "tests", "configs", "tiny.yml")
# The shipped flip and padding, plus random erasing (drawn from Python's `random`), and a loader
# worker (seeded from torch's generator): every source of randomness a resumed run must repeat.
AUGMENT = ["INPUT.REA.ENABLED", "True", "DATALOADER.NUM_WORKERS", "1"]
sys.path.insert(0, REPO)
# The feature distributions and benchmark modules that tests share with benchmarks/.
sys.path.insert(1, os.path.join(REPO, "benchmarks"))

import cpcl_plugin  # noqa: E402,F401  (applies the FastReID compat patches first)
from cpcl_plugin.train import cli  # noqa: E402


# Files in the order `make test`'s two workers take them up (--dist loadfile): the longest first,
# so that neither worker is left with a long file at the end, and the two files that make the
# shared runs first, one on each worker, so that neither waits for the other's run. The order
# changes only how long the suite takes; the other files follow in their usual order.
LONGEST_FIRST = ["test_launch.py", "test_tools.py", "test_train_net.py", "test_datasets.py",
                 "test_quality.py", "test_training_guards.py", "test_pretrained.py"]


def pytest_collection_modifyitems(items):
    def rank(item):
        name = os.path.basename(str(item.fspath))
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)
    items.sort(key=rank)  # stable: each file's tests keep their order


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    """One dataset root for the whole session: the tiny synthetic set is generated once."""
    return str(tmp_path_factory.mktemp("datasets"))


@pytest.fixture
def tiny_cfg(data_root, tmp_path):
    """A function returning the tiny test config with extra KEY VALUE overrides."""
    from cpcl_plugin import load_config

    def make(*opts):
        return load_config(TINY, ["DATASETS.ROOT", data_root, "OUTPUT_DIR", str(tmp_path / "out"),
                                  *opts])
    return make


def run_python(*argv, timeout=600):
    """Run `python *argv` in a fresh process from the repository root; returns the
    CompletedProcess (text output captured)."""
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def run_tool(script, *args, timeout=600):
    """Run tools/<script> in a fresh process; returns the CompletedProcess."""
    return run_python(os.path.join(REPO, "tools", script), *args, timeout=timeout)


def run_train_net(*args, timeout=600):
    """Run tools/train_net.py in a fresh process; returns the CompletedProcess."""
    return run_tool("train_net.py", *args, timeout=timeout)


def run_cli_in_process(capfd, *args):
    """The training command line run in this process, for mistakes it finds before any worker
    starts (nothing is launched, no logging set up): a CompletedProcess of its exit status and
    what it printed. Saves a process start (about 5 s of imports) per case."""
    capfd.readouterr()
    status = cli(list(args))
    out, err = capfd.readouterr()
    return subprocess.CompletedProcess(list(args), status, out, err)


def made_once(tmp_path_factory, name, make):
    """The folder `name` that `make(folder)` fills, run once per test session: `make test` runs
    the files on two xdist workers (--dist loadfile), and the first worker to ask makes it while
    the other waits, then both read it. Returns (folder, what make returned then, as text).
    Each worker has a data_root of its own: the synthetic data are the same bytes in each (the
    generator is seeded), so a run made with one worker's root serves the other's tests."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the workers' common folder
    folder, made = root / name, root / f"{name}.made"
    with FileLock(str(root / f"{name}.lock")):
        if not made.exists():
            folder.mkdir(exist_ok=True)
            made.write_text(make(folder))
    return folder, made.read_text()


TrainedRun = collections.namedtuple("TrainedRun", ["out", "log"])


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, data_root):
    """A tiny model trained by tools/train_net.py for three epochs with augmentation, one
    checkpoint an epoch: shared by the tests that only read what a run leaves (resume, eval-only,
    the tools); none of them writes into its folder. `log`: what the run printed."""
    def train(out):
        proc = run_train_net("--config-file", TINY, "DATASETS.ROOT", data_root, "OUTPUT_DIR",
                             str(out), "SOLVER.MAX_EPOCH", "3", *AUGMENT)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout + proc.stderr
    return TrainedRun(*made_once(tmp_path_factory, "trained", train))


@pytest.fixture(scope="session")
def two_process_run(tmp_path_factory, data_root):
    """One epoch of FastReID's launcher's 2-process gloo run (--num-gpus 2), one thread each (as
    every process of the suite): its output folder, shared by the tests that compare ranks and
    launchers. A second such run starts beside it at the same time, with default settings as
    well (no --dist-url): the two must not meet each other's processes; its output folder is
    this one's name + "-beside"."""
    def train(out):
        beside = out.with_name(out.name + "-beside")
        procs = []
        for folder in (out, beside):
            with open(folder.with_name(folder.name + ".err"), "w") as err:
                procs.append(subprocess.Popen(
                    [sys.executable, os.path.join(REPO, "tools", "train_net.py"), "--config-file",
                     TINY, "--num-gpus", "2", "DATASETS.ROOT", data_root, "OUTPUT_DIR",
                     str(folder), "SOLVER.MAX_EPOCH", "1"], cwd=REPO, stdout=subprocess.DEVNULL,
                    stderr=err, env={**os.environ, "PYTHONUNBUFFERED": "1"}))
        try:
            statuses = [proc.wait(timeout=600) for proc in procs]
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
        for folder, status in zip((out, beside), statuses):
            assert status == 0, folder.with_name(folder.name + ".err").read_text()[-3000:]
        return ""
    return made_once(tmp_path_factory, "launcher", train)[0]


def market1501_reference(dist, q_pids, g_pids, q_cams, g_cams, ranks=(1, 5, 10)):
    """CMC at `ranks`, mAP and mINP (fractions) by the Market-1501 protocol, written out plainly:
    per query, gallery items of its identity and camera are left out, queries without a match are
    skipped; CMC at k is whether a match is within the first k, AP the mean precision at each
    match, INP #matches / rank of the last match."""
    hits_at, aps, inps = [], [], []
    for i in range(len(dist)):
        order = np.argsort(dist[i], kind="stable")
        keep = ~((g_pids[order] == q_pids[i]) & (g_cams[order] == q_cams[i]))
        match = (g_pids[order] == q_pids[i])[keep]
        if not match.any():
            continue
        pos = np.flatnonzero(match)
        hits_at.append([pos[0] < k for k in ranks])
        aps.append(np.mean([(n + 1) / (p + 1) for n, p in enumerate(pos)]))
        inps.append(len(pos) / (pos[-1] + 1))
    return np.mean(hits_at, axis=0), np.mean(aps), np.mean(inps)
