"""`load_config`: FastReID's defaults, the plugin's keys, a YAML file and command-line overrides,
checked together so that every problem comes in one message.

    from cpcl_plugin import load_config
    cfg = load_config("configs/CPCL/cuhk.yml", ["SOLVER.MAX_EPOCH", "10"])
"""
import difflib
import os

import yaml
from fastreid.config import CfgNode as CN
from fastreid.config import get_cfg

from ..errors import ConfigError
from .checks import config_problems, problem_list
from .keys import add_cpcl_config

__all__ = ["load_config"]

_MISMATCH = object()
_KINDS = {bool: "True or False", int: "an integer", float: "a number", str: "a string",
          list: "a list", tuple: "a list"}


def _as_declared(value, default):
    """`value` (decoded as yacs decodes it) for a key declared with `default`: the value itself
    where yacs accepts it (the same type, a list for a tuple or back), a float for an integer
    where a float is declared (PSEUDO.EPS 1, as users type it), else _MISMATCH. Unlike yacs, an
    empty value (None, a blank in YAML) is refused for a key that has a default: every part of
    the plugin and of FastReID reads it as that type."""
    if type(default) is float and type(value) is int:
        return float(value)
    if type(value) is type(default) or default is None or \
            {type(value), type(default)} <= {list, tuple}:
        return value
    return _MISMATCH


def _conform(node, given, prefix, where, problems):
    """Check the mapping `given` (from a YAML file or the command line) against the keys declared
    in `node`, in place: integers for float keys become floats; unknown keys and values of another
    type are taken out and described in `problems`, so that the rest can be merged and checked."""
    for key in list(given):
        full = prefix + key
        if key not in node:
            if not node.is_new_allowed():
                near = difflib.get_close_matches(key, [k for k in node if isinstance(k, str)], 1)
                problems.append(
                    f"Unknown config key {where}: {full}"
                    + (f" (did you mean {prefix}{near[0]}?)" if near else "")
                    + ". Check its spelling against cpcl_plugin/config/keys.py and FastReID's "
                      "fastreid/config/defaults.py.")
                del given[key]
            continue
        if isinstance(node[key], CN) and isinstance(given[key], dict):
            _conform(node[key], given[key], full + ".", where, problems)
            continue
        decoded = CN._decode_cfg_value(given[key])  # yacs's own reading of the text
        value = _as_declared(decoded, node[key])
        if value is _MISMATCH:
            current = node[key]
            kind = "a group of keys" if isinstance(current, CN) else \
                _KINDS.get(type(current), type(current).__name__)
            example = "" if isinstance(current, CN) or current in ("", [], ()) else \
                f", e.g. {current!r}"
            shown = "empty" if given[key] is None else repr(given[key])
            problems.append(f"{full} {where} is {shown}, but it takes {kind}{example}.")
            del given[key]
        elif value is not decoded:
            given[key] = value


def _nested(opts):
    """Command-line KEY VALUE pairs as the nested mapping a YAML file would give."""
    tree = {}
    for key, value in zip(opts[0::2], opts[1::2]):
        *parents, leaf = str(key).split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):  # A.B given a value and A.B.C too: yacs decides
                raise ConfigError(f"The command line sets both {'.'.join(parents)} and {key}; "
                                  f"set the keys of a group one by one.")
        node[leaf] = value
    return tree


def _read_yaml(config_file):
    if not os.path.isfile(config_file):
        raise ConfigError(f"Config file not found: {config_file}. Pass an existing YAML file, "
                          f"e.g. --config-file configs/CPCL/synthetic.yml.")
    try:
        loaded = CN.load_yaml_with_base(config_file)
    except FileNotFoundError as err:
        raise ConfigError(f"{config_file}: its _BASE_ file does not exist ({err.filename}); "
                          f"_BASE_ is relative to the including file.") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        raise ConfigError(f"{config_file} is not valid YAML ({getattr(err, 'problem', err)}"
                          f"{f' at line {mark.line + 1}' if mark else ''}).") from None
    except TypeError:  # load_yaml_with_base looks for _BASE_ in what an empty file gives
        loaded = None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{config_file} holds no config keys; it must be a YAML mapping such as "
                          f"configs/CPCL/synthetic.yml.")
    return loaded



def load_config(config_file="", opts=None, check=True, more_problems=None):
    """Build the full config: FastReID's defaults, the plugin's keys, the file, then `opts`.

    Raises `ConfigError` naming the file, the key and the value when something is wrong, every
    problem at once; `check=False` leaves `check_config` (device, values, combinations) to the
    caller. An integer is accepted where a float is declared (yacs alone refuses PSEUDO.EPS 1).
    `more_problems(cfg)`, when given, returns a caller's own problems (one sentence each) to
    report in the same message.
    """
    cfg = get_cfg()
    add_cpcl_config(cfg)
    if opts and len(opts) % 2:
        raise ConfigError(f"Command-line overrides must be KEY VALUE pairs; got an odd number: "
                          f"{' '.join(map(str, opts))}")
    problems = []
    sources = ([(_read_yaml(config_file), f"in {config_file}")] if config_file else []) + \
        ([(_nested(list(opts)), "on the command line")] if opts else [])
    for given, where in sources:
        _conform(cfg, given, "", where, problems)
        try:  # FastReID's merge_from_file, after the checks above
            cfg.merge_from_other_cfg(CN(given))
        except (KeyError, ValueError, TypeError, AssertionError) as err:
            raise ConfigError(f"Bad value {where}: {err}") from None
    if check:
        problems += config_problems(cfg)
        problems += more_problems(cfg) if more_problems else []
    if problems:
        raise ConfigError(problem_list(problems))
    cfg.freeze()
    return cfg
