"""Strict configs (issue #14): unknown keys, wrong types, booleans, value checks, the real
defaults in --help, optional nested configs, tuple flags, JSON files."""

import argparse
import dataclasses
import json
import re
import typing

import pytest

from rlhf_jax.config_args import (add_config_flags, build_config, config_from_args, config_to_dict,
                                  read_config_file)
from rlhf_jax.config_checks import ConfigError, at_least, check, in_range, multiple_of, one_of, positive
from rlhf_jax.config_values import format_default, parse_text, split_optional
from rlhf_jax.lora import ALL_LINEAR, LoraConfig
from rlhf_jax.rollout import SamplingConfig
from rlhf_jax.sharding import MeshConfig
from rlhf_jax.train import PPOConfig, RewardConfig, SFTConfig


@dataclasses.dataclass(frozen=True, kw_only=True)
class Opt:
    """A test-local optimizer config (the train configs' checks belong to their own module)."""

    learning_rate: float = 1e-3
    """Peak learning rate."""
    steps: int = 10
    """Updates."""

    def __post_init__(self):
        positive(self, "learning_rate")
        at_least(self, "steps", 1, integer=True)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Job:
    """A test-local config with every kind of field."""

    name: str = "job"
    """Name."""
    verbose: bool = False
    """Talk."""
    margin: float | None = None
    """Optional number."""
    lora: LoraConfig | None = None
    """Optional nested config, off by default."""
    sampling: SamplingConfig = SamplingConfig(max_new_tokens=32)
    """Nested config whose class has a required field."""
    opt: Opt = Opt(learning_rate=0.5)
    """Nested config whose default differs from its class's."""


def parse(cls, argv, config=None, tmp_path=None):
    parser = argparse.ArgumentParser()
    add_config_flags(parser, cls)
    file = None
    if config is not None:
        file = tmp_path / "run.json"
        file.write_text(json.dumps(config))
    return config_from_args(cls, parser.parse_args(argv), config_file=None if file is None else str(file))


def test_unknown_key_names_the_closest_key_and_the_class(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'rnak' in LoraConfig \(at LoraConfig.rnak\); "
                                          r"did you mean 'rank'\?"):
        build_config(LoraConfig, {"rnak": 16})
    with pytest.raises(ConfigError) as info:
        parse(SFTConfig, [], {"optim": {"learnig_rate": 1e-3}}, tmp_path)
    assert str(info.value) == (f"{tmp_path / 'run.json'}: unknown key 'learnig_rate' in OptimConfig "
                               "(at SFTConfig.optim.learnig_rate); did you mean 'learning_rate'?")
    with pytest.raises(ConfigError, match="unknown key 'zzz' in Opt .*valid keys: learning_rate, steps"):
        build_config(Opt, {"zzz": 1})


@pytest.mark.parametrize("cls,values,message", [
    (LoraConfig, {"rank": "16"}, 'LoraConfig.rank must be an integer, got "16"'),
    (LoraConfig, {"rank": True}, "LoraConfig.rank must be an integer, got true"),  # bool is not an int
    (LoraConfig, {"rank": 8.0}, "LoraConfig.rank must be an integer, got 8.0"),
    (LoraConfig, {"targets": "q_proj"}, 'LoraConfig.targets must be a list of strings, got "q_proj"'),
    (LoraConfig, {"dropout": None}, "LoraConfig.dropout must be a number, got null"),
    (SamplingConfig, {"max_new_tokens": 4, "eos_ids": [1, "2"]},
     'SamplingConfig.eos_ids[1] must be an integer, got "2"'),
    (SamplingConfig, {}, "SamplingConfig.max_new_tokens is required (an integer)"),
    (Job, {"lora": 5}, "Job.lora must be an object of LoraConfig fields or null, got 5"),
    (Job, {"sampling": None}, "Job.sampling must be an object of SamplingConfig fields, got null"),
    (Job, {"verbose": 1}, "Job.verbose must be a boolean (true/false, 1/0, yes/no), got 1"),
    (Job, {"verbose": "ture"}, 'Job.verbose must be a boolean (true/false, 1/0, yes/no), got "ture"'),
    # What used to crash deep inside ("not all arguments converted during string formatting"):
    (SFTConfig, {"optim": {"learning_rate": "1e-3"}}, 'SFTConfig.optim.learning_rate must be a number, got "1e-3"'),
])
def test_wrong_types_name_field_type_and_value(cls, values, message):
    with pytest.raises(ConfigError) as info:
        build_config(cls, values)
    assert str(info.value) == message


def test_types_that_are_accepted():
    lc = build_config(LoraConfig, {"alpha": 16, "targets": ["q_proj", "v_proj"]})
    assert lc == LoraConfig(alpha=16.0, targets=("q_proj", "v_proj")) and type(lc.alpha) is float
    job = build_config(Job, {"lora": {"rank": 4}, "sampling": {"top_k": None}, "verbose": "Yes", "margin": 2})
    assert job.lora == LoraConfig(rank=4) and job.sampling == SamplingConfig(max_new_tokens=32)
    assert job.verbose is True and job.margin == 2.0
    assert build_config(Job, {"sampling": SamplingConfig(max_new_tokens=3)}).sampling.max_new_tokens == 3


@pytest.mark.parametrize("text,value", [("true", True), ("FALSE", False), ("Yes", True), ("no", False),
                                        ("1", True), ("0", False), (" true ", True)])
def test_boolean_words(text, value):
    assert parse(Job, ["--verbose", text]).verbose is value


@pytest.mark.parametrize("text", ["ture", "on", "off", "2", "", "y"])
def test_other_boolean_words_are_refused(text):
    with pytest.raises(ConfigError) as info:
        parse(Job, ["--verbose", text])
    assert str(info.value) == f"--verbose must be a boolean (true/false, 1/0, yes/no), got {json.dumps(text)}"


def test_ture_on_a_real_command_flag():
    with pytest.raises(ConfigError, match=r'^--run.tensorboard must be a boolean .*got "ture"$'):
        parse(SFTConfig, ["--run.tensorboard", "ture"])
    assert parse(SFTConfig, ["--run.tensorboard", "FALSE"]).run.tensorboard is False


def test_negative_learning_rate_and_other_values_are_refused():
    # A negative number after a flag needs "=" (argparse reads "-1e-3" as an option).
    with pytest.raises(ConfigError) as info:
        parse(Job, ["--opt.learning_rate=-1e-3"])
    assert str(info.value) == "Job.opt: Opt.learning_rate must be > 0, got -0.001"
    assert parse(Job, ["--opt.learning_rate", "2e-3"]).opt.learning_rate == 0.002
    with pytest.raises(ConfigError, match="^LoraConfig.alpha must be > 0, got -1.0$"):
        build_config(LoraConfig, {"alpha": -1})
    with pytest.raises(ConfigError, match=r"^SamplingConfig.top_p must be in \(0, 1\], got 0.0$"):
        SamplingConfig(max_new_tokens=4, top_p=0.0)
    with pytest.raises(ConfigError, match=r"^MeshConfig.fsdp must be an integer >= 1, or -1 \(fill\), got 0$"):
        MeshConfig(fsdp=0)
    with pytest.raises(ConfigError, match="^--opt.steps must be an integer, got \"16.0\"$"):
        parse(Job, ["--opt.steps", "16.0"])


@dataclasses.dataclass(frozen=True, kw_only=True)
class Checked:
    """Fields for the helpers."""

    a: typing.Any = 1.0
    """Any value."""
    b: typing.Any = 2
    """Any value."""


@pytest.mark.parametrize("call,value,message", [
    (lambda c: positive(c, "a"), 0.0, "Checked.a must be > 0, got 0.0"),
    (lambda c: positive(c, "a"), float("nan"), "Checked.a must be a number > 0, got nan"),
    (lambda c: positive(c, "a"), "1e-3", "Checked.a must be a number > 0, got '1e-3'"),
    (lambda c: positive(c, "a"), True, "Checked.a must be a number > 0, got True"),
    (lambda c: at_least(c, "a", 1, integer=True), 1.5, "Checked.a must be an integer >= 1, got 1.5"),
    (lambda c: at_least(c, "a", 1, optional=True), 0, "Checked.a must be >= 1 or None, got 0"),
    (lambda c: in_range(c, "a", 0, 1, high_open=True), 1.0, "Checked.a must be in [0, 1), got 1.0"),
    (lambda c: in_range(c, "a", 0, 1, low_open=True), 0, "Checked.a must be in (0, 1], got 0"),
    (lambda c: one_of(c, "a", ("x", "y")), "z", "Checked.a must be one of 'x', 'y', got 'z'"),
    (lambda c: one_of(c, "a", (0, 1)), False, "Checked.a must be one of 0, 1, got False"),
    (lambda c: multiple_of(c, "a", "b"), 5, "Checked.a must be a multiple of b (2), got 5"),
    (lambda c: check(c, "a", False, "non-empty"), (), "Checked.a must be non-empty, got ()"),
])
def test_check_helpers_raise_one_line(call, value, message):
    with pytest.raises(ConfigError) as info:
        call(Checked(a=value))
    assert str(info.value) == message and isinstance(info.value, ValueError)


def test_check_helpers_pass_good_values():
    c = Checked(a=4, b=2)
    results = [positive(c, "a"), at_least(c, "a", 4, integer=True), in_range(c, "a", 0, 4),
               in_range(c, "a", 4, 5, high_open=True), multiple_of(c, "a", "b"), check(c, "a", True, "x"),
               at_least(Checked(a=None), "a", 1, optional=True), one_of(Checked(a="y"), "a", ("x", "y"))]
    assert results == [None] * 8  # no ConfigError: every bound is inclusive unless opened


def _shown_default(action):
    m = re.search(r"\((default(?: when on)?): (.*)\)$", action.help.replace("%%", "%"), re.S)
    assert m, action.help
    return m.group(1), m.group(2)


def _parent(instance, path):
    """The config holding ``path``'s field in the default ``instance``; a nested config that is
    None there is replaced by its class's default instance (what turning it on gives)."""
    for key in path[:-1]:
        instance = getattr(instance, key) or split_optional(typing.get_type_hints(type(instance))[key])[0]()
    return instance


def _leaves(cls, prefix=()):
    for f in dataclasses.fields(cls):
        hint = split_optional(typing.get_type_hints(cls)[f.name])[0]
        if dataclasses.is_dataclass(hint):
            yield from _leaves(hint, prefix + (f.name,))
        else:
            yield prefix + (f.name,)


@pytest.mark.parametrize("cls", [SFTConfig, RewardConfig, PPOConfig])
def test_help_shows_the_real_default_of_every_field(cls):
    parser = argparse.ArgumentParser()
    add_config_flags(parser, cls)
    default = cls()
    seen = set()
    for action in parser._actions:
        if not action.option_strings or action.option_strings == ["-h", "--help"]:
            continue
        path = tuple(action.option_strings[0][2:].split("."))
        if path[-1] in ("on", "off"):  # --NAME.on / --NAME.off: the shown state is the default's
            value = default
            for key in path[:-1]:
                value = value if value is None else getattr(value, key)
            assert _shown_default(action) == ("default", "off" if value is None else "on")
            continue
        seen.add(path)
        parent = _parent(default, path)
        hint = typing.get_type_hints(type(parent))[path[-1]]
        expected = getattr(parent, path[-1])
        under_off = any(getattr(_parent(default, path[:i + 1]), path[i]) is None for i in range(len(path) - 1))
        label, shown = _shown_default(action)
        assert label == ("default when on" if under_off else "default"), path
        assert parse_text(shown, hint, "--" + ".".join(path)) == expected, (path, shown, expected)
    assert seen == set(_leaves(cls))


def test_help_defaults_of_the_issue():
    for cls, flag, shown in ((SFTConfig, "--optim.learning_rate", "0.001"),
                             (PPOConfig, "--sampling.max_new_tokens", "32"),
                             (SFTConfig, "--lora.rank", "8"), (Job, "--opt.learning_rate", "0.5")):
        parser = argparse.ArgumentParser()
        add_config_flags(parser, cls)
        action = next(a for a in parser._actions if flag in a.option_strings)
        assert _shown_default(action)[1] == shown
    assert "(default when on: 8)" in next(a.help for a in parser._actions if "--lora.rank" in a.option_strings)


def test_null_plus_nested_flag_turns_the_config_on(tmp_path):
    assert parse(PPOConfig, [], {"policy_lora": None}, tmp_path).policy_lora is None
    cfg = parse(PPOConfig, ["--policy_lora.rank", "16"], {"policy_lora": None}, tmp_path)
    assert cfg.policy_lora == LoraConfig(rank=16)  # LoraConfig's class defaults + the flag
    assert parse(PPOConfig, ["--policy_lora.on"], {"policy_lora": None}, tmp_path).policy_lora == LoraConfig()
    assert parse(PPOConfig, ["--policy_lora.off"]).policy_lora is None
    assert parse(PPOConfig, ["--critic_lora.alpha", "4"]).critic_lora == LoraConfig(rank=8, alpha=4.0)
    # Off by default (SFT: full fine-tuning): a field flag or --lora.on turns it on.
    assert parse(SFTConfig, []).lora is None
    assert parse(SFTConfig, ["--lora.rank", "4"]).lora == LoraConfig(rank=4)
    assert parse(SFTConfig, ["--lora.on"]).lora == LoraConfig()
    assert parse(SFTConfig, ["--run.mesh.fsdp", "2"]).run.mesh == MeshConfig(fsdp=2)  # two levels down
    cfg = parse(SFTConfig, ["--lora.alpha", "2"], {"lora": {"rank": 4}}, tmp_path)  # JSON and flags merge
    assert cfg.lora == LoraConfig(rank=4, alpha=2.0)
    with pytest.raises(ConfigError, match="^--policy_lora.off contradicts --policy_lora.rank: drop one of them$"):
        parse(PPOConfig, ["--policy_lora.off", "--policy_lora.rank", "4"])
    with pytest.raises(ConfigError, match="run.json: SFTConfig.optim must be an object of OptimConfig fields, "
                                          "got null"):
        parse(SFTConfig, ["--optim.learning_rate", "1"], {"optim": None}, tmp_path)  # not optional
    with pytest.raises(SystemExit):  # argparse: the two switches exclude each other
        parse(PPOConfig, ["--policy_lora.on", "--policy_lora.off"])


def test_targets_as_comma_list_or_json_list():
    assert parse(SFTConfig, ["--lora.targets", "q_proj, v_proj"]).lora.targets == ("q_proj", "v_proj")
    assert parse(SFTConfig, ["--lora.targets", '["attn/c_proj", "mlp_{1,2}"]']).lora.targets == (
        "attn/c_proj", "mlp_{1,2}")
    with pytest.raises(ConfigError, match=r"^SFTConfig.lora: LoraConfig.targets\[0\] must be a regular "
                                          r"expression, got '\(q_proj'"):
        parse(SFTConfig, ["--lora.targets", "(q_proj"])
    with pytest.raises(ConfigError, match="LoraConfig.targets must be a non-empty tuple"):
        parse(SFTConfig, ["--lora.targets", ""])
    with pytest.raises(ConfigError, match=r'^--lora.targets must be a list of strings, got "\[\\"a\\","$'):
        parse(SFTConfig, ["--lora.targets", '["a",'])
    assert parse(PPOConfig, ["--sampling.eos_ids", "2,3"]).sampling.eos_ids == (2, 3)
    assert parse(PPOConfig, ["--sampling.eos_ids", "null"]).sampling.eos_ids is None


@pytest.mark.parametrize("value,tp", [(ALL_LINEAR, tuple[str, ...]), ((), tuple[str, ...]),
                                      (("a,b", " c"), tuple[str, ...]), (None, int | None), (1e-8, float),
                                      (True, bool), ("kaiming", str), ((1, 2), tuple[int, ...])])
def test_defaults_written_as_flag_text_read_back(value, tp):
    assert parse_text(format_default(value), tp, "--x") == value


def test_config_files(tmp_path):
    path = tmp_path / "c.json"
    with pytest.raises(ConfigError, match=f"^{tmp_path / 'nope.json'}: cannot read: No such file"):
        read_config_file(str(tmp_path / "nope.json"))
    path.write_text('{"batch_size": 4,\n "batch_size": 8}')
    with pytest.raises(ConfigError, match="key 'batch_size' appears twice"):
        read_config_file(str(path))
    path.write_text('{"batch_size": 4,\n oops}')
    with pytest.raises(ConfigError, match=f"^{path}:2: bad JSON"):
        read_config_file(str(path))
    path.write_text("[1]")
    with pytest.raises(ConfigError, match="must hold a JSON object"):
        read_config_file(str(path))


def test_a_configs_own_value_error_becomes_one_line_config_error():
    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Odd:
        n: int = 1
        """A number."""

        def __post_init__(self):
            if self.n % 2 == 0:
                raise ValueError(f"n must be odd,\n   got {self.n}")

    with pytest.raises(ConfigError, match="^n must be odd, got 2$"):
        build_config(Odd, {"n": 2})


@pytest.mark.parametrize("config", [
    SFTConfig(), RewardConfig(), PPOConfig(),
    PPOConfig(policy_lora=None, sampling=SamplingConfig(max_new_tokens=8, eos_ids=(1, 2)), value_clip_eps=None)])
def test_config_json_round_trip(config):
    assert build_config(type(config), config_to_dict(config)) == config
