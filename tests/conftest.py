import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "tests", "configs", "tiny.yml")
sys.path.insert(0, REPO)

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
