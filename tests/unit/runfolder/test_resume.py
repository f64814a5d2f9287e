"""--resume continues the same experiment, or refuses before anything is written."""
from __future__ import annotations

import pytest

from conftest import TINY
from fedmpi.config import dump_config, load_config
from fedmpi.errors import ConfigError
from fedmpi.runfolder.resume import should_resume


def folder(tmp_path, *sets):
    cfg = load_config(TINY, [f"output.dir={tmp_path}", "name=r", *sets])
    cfg.run_dir.mkdir(parents=True)
    (cfg.run_dir / "config.yaml").write_text(dump_config(cfg))
    (cfg.run_dir / "checkpoint.pt").write_bytes(b"ck")
    return cfg


def test_resumable_keys_may_change(tmp_path):
    folder(tmp_path)
    new = load_config(TINY, [f"output.dir={tmp_path}", "name=r", "federation.rounds=9", "output.progress=true"])
    assert should_resume(new, "yes") is True


def test_any_other_change_is_one_error_naming_old_and_new(tmp_path):
    folder(tmp_path)
    new = load_config(TINY, [f"output.dir={tmp_path}", "name=r", "train.lr=0.1", "method.name=lora"])
    with pytest.raises(ConfigError, match=r"method.name: 'full' -> 'lora'.*train.lr: 0.003 -> 0.1"):
        should_resume(new, "yes")


def test_no_checkpoint(tmp_path, capsys):
    cfg = load_config(TINY, [f"output.dir={tmp_path}", "name=none"])
    with pytest.raises(ConfigError, match="no checkpoint to resume .*the folder does not exist"):
        should_resume(cfg, "yes")
    assert should_resume(cfg, "auto") is False
    assert "--resume-or-start: no checkpoint in" in capsys.readouterr().err
    assert should_resume(cfg, "no") is False
