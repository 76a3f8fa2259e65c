"""load_config and check_config: values out of range, types, unknown keys and backbone depths are
refused before anything is built, every problem of a config in one message."""
import glob
import os

import pytest
from fastreid.config import get_cfg

from conftest import REPO, TINY
from cpcl_plugin import ConfigError, load_config
from cpcl_plugin.compat import backbone_depths
from cpcl_plugin.config import RANGES, add_cpcl_config
from cpcl_plugin.config.checks import _in_range


def _error(*opts, config_file=TINY):
    with pytest.raises(ConfigError) as info:
        load_config(config_file, list(opts))
    return str(info.value)


def _leaves(node, prefix=""):
    for key, value in node.items():
        if hasattr(value, "items"):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def test_every_numeric_key_of_the_plugin_has_a_range_its_default_satisfies():
    fastreid = dict(_leaves(get_cfg()))
    plugin = {k: v for k, v in _leaves(add_cpcl_config(get_cfg())) if k not in fastreid}
    numeric = {k for k, v in plugin.items() if type(v) in (int, float)}
    assert numeric and numeric <= set(RANGES), numeric - set(RANGES)
    everything = dict(_leaves(add_cpcl_config(get_cfg())))
    for key, rule in RANGES.items():
        rule = rule[0] if isinstance(rule, tuple) else rule
        assert _in_range(everything[key], rule), (key, everything[key], rule)


def test_every_shipped_config_loads():
    files = [f for pattern in ("configs/*.yml", "configs/CPCL/*.yml", "tests/configs/*.yml",
                               "benchmarks/configs/*.yml")
             for f in glob.glob(os.path.join(REPO, pattern))]
    assert len(files) >= 8
    for f in files:
        load_config(f, ["MODEL.DEVICE", "cpu"])  # the GPU configs say cuda


def test_every_problem_is_reported_at_once_with_its_range():
    message = _error("PSEUDO.EPS", "0.0", "PSEUDO.K1", "0", "PSEUDO.K2", "0",
                     "SOLVER.MAX_EPOHC", "3", "SOLVER.BASE_LR", "abc",
                     "MODEL.BACKBONE.NAME", "build_osnet_backbone", "SOLVER.CHECKPOINT_PERIOD", "0")
    lines = message.splitlines()
    assert lines[0] == "The config has 7 problems:"
    expected = [
        "Unknown config key on the command line: SOLVER.MAX_EPOHC (did you mean "
        "SOLVER.MAX_EPOCH?)",
        "SOLVER.BASE_LR on the command line is 'abc', but it takes a number",
        "PSEUDO.EPS is 0.0; it must be in (0, 1)",
        "PSEUDO.K1 is 0; it must be >= 1.",
        "PSEUDO.K2 is 0; it must be >= 1.",
        "SOLVER.CHECKPOINT_PERIOD is 0; it must be >= 1.",
        "MODEL.BACKBONE.DEPTH '50x' is not a depth of build_osnet_backbone; it accepts x1_0, "
        "x0_75, x0_5, x0_25.",
    ]
    for needle in expected:
        assert sum(needle in line for line in lines[1:]) == 1, (needle, message)
    # One problem: its sentence alone, as the tools print it.
    assert _error("PSEUDO.MIN_SAMPLES", "0") == "PSEUDO.MIN_SAMPLES is 0; it must be >= 1."
    assert "PSEUDO.K2 40 exceeds PSEUDO.K1 30" in _error("PSEUDO.K1", "30", "PSEUDO.K2", "40")


def test_batches_split_into_identities_only_under_pk_batches():
    assert "must be a multiple of PSEUDO.NUM_INSTANCES 4" in _error(
        "SOLVER.IMS_PER_BATCH", "6", "PSEUDO.NUM_INSTANCES", "4")
    # Shuffled batches (PSEUDO.PK_BATCHES False) do not split a batch into identities.
    cfg = load_config(TINY, ["SOLVER.IMS_PER_BATCH", "6", "PSEUDO.NUM_INSTANCES", "4",
                             "PSEUDO.PK_BATCHES", "False"])
    assert cfg.SOLVER.IMS_PER_BATCH == 6 and not cfg.PSEUDO.PK_BATCHES


def test_an_integer_is_accepted_where_a_float_is_declared(tmp_path):
    config = tmp_path / "ints.yml"
    config.write_text(f"_BASE_: {TINY}\nPSEUDO:\n  OPLM:\n    THRESHOLD: 0\n"
                      f"MODEL:\n  CPCL:\n    CROSS_WEIGHT: 2\n")
    cfg = load_config(str(config), ["MODEL.CPCL.ITC_WEIGHT", "3", "SOLVER.BASE_LR", "1"])
    for value, expected in ((cfg.PSEUDO.OPLM.THRESHOLD, 0.0), (cfg.MODEL.CPCL.CROSS_WEIGHT, 2.0),
                            (cfg.MODEL.CPCL.ITC_WEIGHT, 3.0), (cfg.SOLVER.BASE_LR, 1.0)):
        assert type(value) is float and value == expected


@pytest.mark.parametrize("yaml_text, opts, needle", [
    ("SOLVER:\n  MAX_EPOCH: 2.5\n", [],
     "SOLVER.MAX_EPOCH in {file} is 2.5, but it takes an integer, e.g. 120."),
    ("", ["PSEUDO.ENABLED", "yes"],
     "PSEUDO.ENABLED on the command line is 'yes', but it takes True or False, e.g. True."),
    ("", ["PSEUDO.EPS", "[0.5]"],
     "PSEUDO.EPS on the command line is '[0.5]', but it takes a number"),
    ("PSEUDO: 3\n", [], "PSEUDO in {file} is 3, but it takes a group of keys."),
    ("PSEUDO:\n  EPS:\n", [], "PSEUDO.EPS in {file} is empty, but it takes a number"),
    ("MODEL:\n  CLIPP:\n    ARCH: RN50\n", [],
     "Unknown config key in {file}: MODEL.CLIPP (did you mean MODEL.CLIP?)."),
])
def test_a_value_of_another_type_names_key_value_and_type(tmp_path, yaml_text, opts, needle):
    config = tmp_path / "bad.yml"
    config.write_text(f"_BASE_: {TINY}\n{yaml_text}")
    assert _error(*opts, config_file=str(config)).startswith(needle.format(file=config))


def test_files_that_are_not_yaml_configs_are_named(tmp_path):
    broken, empty = tmp_path / "broken.yml", tmp_path / "empty.yml"
    broken.write_text("SOLVER:\n  MAX_EPOCH: [1,\n")
    empty.write_text("")
    assert _error(config_file=str(broken)).startswith(f"{broken} is not valid YAML (")
    assert _error(config_file=str(empty)) == (f"{empty} holds no config keys; it must be a YAML "
                                              f"mapping such as configs/CPCL/synthetic.yml.")


def test_backbone_depths_are_read_from_the_builders():
    assert backbone_depths("build_osnet_backbone") == ("x1_0", "x0_75", "x0_5", "x0_25")
    assert backbone_depths("build_resnet_backbone") == ("18x", "34x", "50x", "101x")
    # ResNeXt's second table lacks 152x, which therefore fails to build.
    assert backbone_depths("build_resnext_backbone") == ("50x", "101x")
    assert "B1g2" in backbone_depths("build_repvgg_backbone")  # a table bound to a name
    assert backbone_depths("build_openclip_backbone") is None  # reads no depth
    cfg = load_config(TINY, ["MODEL.BACKBONE.NAME", "build_osnet_backbone",
                             "MODEL.BACKBONE.DEPTH", "x0_25", "MODEL.BACKBONE.PRETRAIN", "False"])
    from fastreid.modeling.backbones import build_backbone
    assert type(build_backbone(cfg)).__name__ == "OSNet"
