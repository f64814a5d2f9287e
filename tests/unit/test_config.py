"""Config loading: overrides, types, and one clear error per kind of bad input."""
from __future__ import annotations

import pytest

from fedmpi.config import ConfigError, load_config

from conftest import TINY


def test_overrides_are_typed_and_nested():
    cfg = load_config(TINY, ["federation.rounds=7", "train.lr=0.5", "method.name=lora", "method.target_modules=[query,key]",
                             "network.profile=mobile", "data.max_train_samples=null"])
    assert cfg.federation.rounds == 7 and isinstance(cfg.federation.rounds, int)
    assert cfg.train.lr == 0.5
    assert cfg.method.target_modules == ["query", "key"]
    assert cfg.network.profile == "mobile"
    assert cfg.data.max_train_samples is None


@pytest.mark.parametrize("override, needle", [
    ("federation.roundz=3", "unknown config key 'federation.roundz' (did you mean 'federation.rounds'?)"),
    ("modle.name=x", "unknown config key 'modle'"),
    ("method.name=lorra", "unknown method.name 'lorra' (did you mean 'lora'?)"),
    ("algorithm=fedprox", "unknown algorithm 'fedprox'"),
    ("network.up_mbps=0", "network.up_mbps must be > 0, got 0"),
    ("network.down_mbps=-5", "network.down_mbps must be > 0"),
    ("federation.clients_per_round=99", "federation.clients_per_round (99) > federation.num_clients (6)"),
    ("federation.rounds=abc", "config key 'federation.rounds' expects an integer, got 'abc'"),
    ("network.clock=wallclock", "unknown network.clock 'wallclock'"),
    ("method.r=4", "config key 'method.r' does not apply to method.name 'full': it is an option of 'lora' and "
                   "'federa'"),
    ("options.prune_ratio=0.5", "config key 'options.prune_ratio' does not apply to algorithm 'fedavg': it is an "
                                 "option of 'sfprompt'"),
    ("options.bogus=1", "unknown config key 'options.bogus' for algorithm 'fedavg'"),
    ("train.lr=.nan", "config key 'train.lr' must be a finite number"),
])
def test_bad_input_names_the_problem(override, needle):
    with pytest.raises(ConfigError) as exc:
        load_config(TINY, [override])
    assert needle in str(exc.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_set_without_equals():
    with pytest.raises(ConfigError, match="--set expects key=value"):
        load_config(TINY, ["federation.rounds"])


def test_options_come_from_the_chosen_entry_and_round_trip():
    from fedmpi.config import config_from_dict

    cfg = load_config(TINY, ["algorithm=sfprompt", "options.prune_ratio=0.25", "method.name=full",
                             "model.num_layers=3"])
    assert type(cfg.options).__name__ == "SFPromptOptions" and cfg.options.prune_ratio == 0.25
    again = config_from_dict(cfg.to_dict())  # config.yaml of a run reads back to the same config
    assert again == cfg


def test_resume_may_change_only_declared_keys():
    from fedmpi.config import resume_changes

    old = load_config(TINY)
    assert resume_changes(old, load_config(TINY, ["federation.rounds=9", "output.progress=true"])) == []
    assert resume_changes(old, load_config(TINY, ["train.lr=0.1", "model.name=minilm"])) == ["model.name", "train.lr"]
