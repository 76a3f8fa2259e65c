import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "tests", "configs", "tiny.yml")
sys.path.insert(0, REPO)
# The feature distributions and benchmark modules that tests share with benchmarks/.
sys.path.insert(1, os.path.join(REPO, "benchmarks"))

import cpcl_plugin  # noqa: E402,F401  (applies the FastReID compat patches first)


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


def run_tool(script, *args, timeout=600):
    """Run tools/<script> in a fresh process from the repository root; returns the
    CompletedProcess (text output captured)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, os.path.join(REPO, "tools", script), *args],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)


def run_train_net(*args, timeout=600):
    """Run tools/train_net.py in a fresh process; returns the CompletedProcess."""
    return run_tool("train_net.py", *args, timeout=timeout)


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
