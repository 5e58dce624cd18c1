"""Config: defaults from the contract, --set typing, options pass-through, unknown keys, task defaults."""

import pytest

from treerpo_core.config import Config, ConfigError


def test_contract_defaults():
    cfg = Config()
    assert (cfg.tree.l_min, cfg.tree.h_th, cfg.tree.entropy_top, cfg.tree.max_depth) == (150, 1.0, 20, 7)
    assert (cfg.sampling.temperature, cfg.sampling.top_p, cfg.sampling.top_k) == (0.6, 0.85, 25)
    assert (cfg.loss.eps_low, cfg.loss.eps_high, cfg.loss.ratio, cfg.loss.aggregate) == (0.2, 0.2, "token", "token_mean")
    assert cfg.model.name == "smollm2-135m" and cfg.task.name == "arithmetic" and cfg.optim.lr == 1e-6


def test_set_is_typed_by_the_field():
    cfg = Config.load(overrides=["tree.l_min=16", "tree.h_th=0.5", "train.grad_checkpointing=true",
                                 "task.limit=10", "optim.lr=3e-5", "model.name=tiny-random"])
    assert cfg.tree.l_min == 16 and isinstance(cfg.tree.l_min, int)
    assert cfg.tree.h_th == 0.5 and cfg.train.grad_checkpointing is True
    assert cfg.task.limit == 10 and cfg.optim.lr == 3e-5 and cfg.model.name == "tiny-random"
    assert Config.load(overrides=["task.limit=null"]).task.limit is None
    assert Config.load(overrides=["tree.h_th=1"]).tree.h_th == 1.0


def test_wrong_type_is_an_error_naming_the_key():
    with pytest.raises(ConfigError, match="tree.l_min"):
        Config.load(overrides=["tree.l_min=many"])
    with pytest.raises(ConfigError, match="train.grad_checkpointing"):
        Config.load(overrides=["train.grad_checkpointing=maybe"])


def test_unknown_key_names_it_and_its_closest_match():
    with pytest.raises(ConfigError) as info:
        Config.load(overrides=["tree.hth=0.5"])
    assert "tree.hth" in str(info.value) and "tree.h_th" in str(info.value)
    with pytest.raises(ConfigError, match="unknown config key 'trees.l_min'"):
        Config.load(overrides=["trees.l_min=3"])


def test_options_pass_through_untyped():
    cfg = Config.load(overrides=["verifier.options.case_sensitive=false", "task.options.source=olympiads",
                                 "model.options.revision=main"])
    assert cfg.verifier.options == {"case_sensitive": False}
    assert cfg.task.options == {"source": "olympiads"} and cfg.model.options == {"revision": "main"}


def test_yaml_file_then_set_last_wins(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("tree:\n  l_min: 32\n  h_th: 2.0\nrun:\n  max_steps: 7\n")
    cfg = Config.load(f, overrides=["tree.h_th=0.7"])
    assert (cfg.tree.l_min, cfg.tree.h_th, cfg.run.max_steps) == (32, 0.7, 7)


def test_yaml_unknown_key_and_missing_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("sampling:\n  temprature: 0.5\n")
    with pytest.raises(ConfigError, match="sampling.temperature"):
        Config.load(f)
    with pytest.raises(ConfigError, match="does not exist"):
        Config.load(tmp_path / "missing.yaml")


def test_task_defaults_never_override_explicit_keys():
    cfg = Config.load(overrides=["tree.l_min=99"])
    cfg.apply_defaults("tree", {"l_min": 8, "s_min": 60}, source="task arithmetic")
    assert cfg.tree.l_min == 99 and cfg.tree.s_min == 60
    # a later explicit --set still wins over the task default
    cfg.set("tree.s_min=70")
    assert cfg.tree.s_min == 70


def test_saved_config_reloads_identically(tmp_path):
    cfg = Config.load(overrides=["tree.mode=flat", "verifier.options.k=3"])
    cfg.save(tmp_path / "config.yaml")
    assert Config.load(tmp_path / "config.yaml").to_dict() == cfg.to_dict()
