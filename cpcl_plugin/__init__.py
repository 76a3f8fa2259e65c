"""CPCL (Cross-modal Prototypical Contrastive Learning) for weakly supervised text-based person
retrieval, as a FastReID plugin. Importing the package makes FastReID 1.4 importable on current
Python/torch/numpy (see `compat`) and registers the plugin's meta-architecture, backbones, text
encoders and datasets in FastReID's registries."""
import importlib.util
import sys

if importlib.util.find_spec("torch") is None:  # not the project's environment at all
    raise ImportError(f"cpcl_plugin needs torch, which this interpreter ({sys.executable}) does "
                      f"not have: run the project with .venv/bin/python (made by `make install` "
                      f"in the cpcl-plugin checkout; or `source .venv/bin/activate` first), or "
                      f"install it into this interpreter's environment with `pip install -e .`.")
if importlib.util.find_spec("fastreid") is None:
    raise ImportError("cpcl_plugin needs FastReID, which is not installed: run "
                      "`pip install --no-deps fastreid==1.4.0` (its metadata pins torch 1.13, "
                      "hence --no-deps), or `make install` in the cpcl-plugin checkout.")

from . import compat  # noqa: E402

compat.apply()

from .errors import ConfigError, DatasetError  # noqa: E402
from .config import add_cpcl_config, load_config  # noqa: E402
from . import data, modeling, evaluation, engine  # noqa: E402,F401
from .engine import CPCLTrainer  # noqa: E402
from .evaluation import t2i_metrics  # noqa: E402

__version__ = "0.1.0"
__all__ = ["add_cpcl_config", "load_config", "CPCLTrainer", "ConfigError", "DatasetError",
           "t2i_metrics", "compat"]
