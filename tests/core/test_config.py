"""Typed config: defaults -> YAML -> command line, with errors that name the bad key and value."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import yaml

from polar_rl.config import (
    ALGORITHMS,
    AgentConfig,
    Config,
    ConfigError,
    EnvConfig,
    TrackingConfig,
    leaf_fields,
)
from polar_rl.config_sources import (
    add_config_arguments,
    config_help,
    load_config,
    overrides_from_args,
    save_config,
)

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def write(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def raises(match_all: list[str]):
    """Context manager: ConfigError whose message contains every string in ``match_all``."""

    class _Ctx:
        def __enter__(self):
            self._cm = pytest.raises(ConfigError)
            self.info = self._cm.__enter__()
            return self.info

        def __exit__(self, *exc):
            handled = self._cm.__exit__(*exc)
            msg = str(self.info.value)
            for s in match_all:
                assert s in msg, f"{s!r} not in error message {msg!r}"
            return handled

    return _Ctx()


# ----------------------------------------------------------------------------------------------
# defaults and schema
# ----------------------------------------------------------------------------------------------


def test_defaults_match_the_spec():
    c = load_config()
    assert c == Config() == Config.from_dict({})
    assert (c.model.name, c.model.device, c.model.dtype) == ("smollm2-135m", "cpu", "float32")
    assert (c.task.name, c.task.eval_split, c.task.eval_limit) == ("arc_easy", "val", None)
    assert (c.env.loop_runs, c.env.reward, c.env.compute_penalty, c.env.n_envs) == (2, "margin", 0.1, 16)
    assert c.env.always_execute == [] and c.env.obs_logit_lens is True and c.env.obs_pooled is False
    assert (c.agent.algo, c.agent.net_arch, c.agent.n_steps, c.agent.batch_size) == ("maskable_ppo", [64, 64], 64, 256)
    assert (c.training.total_timesteps, c.training.best_metric) == (30000, "eval/score")
    assert (c.tracking.mode, c.tracking.project) == ("offline", "polar-rl")
    assert (c.seed, c.output_dir, c.run_name) == (None, "runs", None)
    assert c.rollout_size == 16 * 64
    assert set(ALGORITHMS) == {"ppo", "maskable_ppo", "a2c"}


def test_mutable_defaults_are_not_shared():
    a, b = Config(), Config()
    a.agent.net_arch.append(8)
    a.tracking.tags.append("x")
    assert b.agent.net_arch == [64, 64] and b.tracking.tags == []


def test_every_field_has_help_and_a_cli_option():
    parser = argparse.ArgumentParser()
    keys = add_config_arguments(parser)
    assert len(keys) == len(Config().to_flat_dict()) == len(set(keys))
    text = parser.format_help()
    for key in keys:
        assert f"--{key}" in text
    for key, _, f in leaf_fields():
        assert (f.description or "").strip(), f"{key} has no help text"
    for name, f in Config.model_fields.items():
        assert (f.description or "").strip(), f"section {name} has no help text"
    helptext = config_help()
    assert "--env.compute_penalty float" in helptext and "(default: 0.1)" in helptext


# ----------------------------------------------------------------------------------------------
# precedence and overrides
# ----------------------------------------------------------------------------------------------


def test_precedence_default_yaml_cli(tmp_path):
    path = write(tmp_path, "env:\n  compute_penalty: 0.2\n  n_envs: 8\nagent:\n  n_steps: 32\n")
    from_yaml = load_config(path)
    assert from_yaml.env.compute_penalty == 0.2 and from_yaml.env.n_envs == 8
    both = load_config(path, ["--env.compute_penalty", "0.05"])
    assert both.env.compute_penalty == 0.05  # CLI beats YAML
    assert both.env.n_envs == 8 and both.agent.n_steps == 32  # YAML beats defaults
    assert both.env.wrong_penalty == 0.0 and both.agent.batch_size == 256  # defaults otherwise


def test_override_forms_and_value_parsing():
    c = load_config(
        overrides=[
            "--env.compute_penalty", "0.05",
            "--agent.net_arch", "[128,128]",
            "--seed=3",
            "--tracking.mode", "disabled",
            "--env.obs_pooled=true",
            "--env.max_loops", "null",
            "--agent.learning_rate", "1e-4",  # PyYAML alone would read this as a string
            "--env.wrong_penalty", "-0.0",
            "--run_name", "2024",  # string fields keep the text as typed
            "--tracking.tags", "[a, b]",
            "--agent.kwargs.clip_range", "0.1",
            "--env.always-execute", "[0, 29]",  # dashes work like underscores
        ]
    )
    assert c.env.compute_penalty == 0.05
    assert c.agent.net_arch == [128, 128]
    assert c.seed == 3
    assert c.tracking.mode == "disabled"
    assert c.env.obs_pooled is True
    assert c.env.max_loops is None
    assert c.agent.learning_rate == pytest.approx(1e-4) and isinstance(c.agent.learning_rate, float)
    assert c.run_name == "2024"
    assert c.tracking.tags == ["a", "b"]
    assert c.agent.kwargs == {"clip_range": 0.1}
    assert c.env.always_execute == [0, 29]


def test_later_override_wins():
    assert load_config(overrides=["--seed", "1", "--seed=2"]).seed == 2


def test_argparse_integration_goes_through_overrides(tmp_path):
    path = write(tmp_path, "env:\n  n_envs: 8\n  compute_penalty: 0.3\n")
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    add_config_arguments(parser)
    args = parser.parse_args(["--config", str(path), "--env.compute_penalty", "0.07", "--agent.net_arch", "[32]"])
    c = load_config(args.config, overrides_from_args(args))
    assert c.env.compute_penalty == 0.07 and c.env.n_envs == 8 and c.agent.net_arch == [32]
    with raises(["env.n_envs", "'many'"]):
        load_config(None, overrides_from_args(parser.parse_args(["--env.n_envs", "many"])))


@pytest.mark.parametrize(
    ("overrides", "needles"),
    [
        (["--seed"], ["--seed", "no value"]),
        (["--seed", "--env.n_envs", "4"], ["--seed", "no value"]),
        (["seed", "3"], ["'seed'"]),
        (["--env.nenvs", "4"], ["env.nenvs", "n_envs"]),
        (["--env", "4"], ["'env' is a section", "--env.n_envs"]),
        (["--seed.x", "1"], ["'seed'", "has no keys"]),
        (["--env.n_envs", "[1, 2"], ["--env.n_envs", "not a YAML value"]),
        (["--env.n_envs", "4.5"], ["env.n_envs", "int", "4.5"]),
    ],
)
def test_bad_overrides(overrides, needles):
    with raises(needles):
        load_config(overrides=overrides)


def test_overrides_as_a_single_string_is_an_error():
    with raises(["list of strings"]):
        load_config(overrides="--seed 3")


# ----------------------------------------------------------------------------------------------
# file errors
# ----------------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with raises(["not found", str(missing)]):
        load_config(missing)


def test_unparsable_yaml_names_file_and_line(tmp_path):
    path = write(tmp_path, "env:\n  n_envs: 4\n  reward: [margin\nagent:\n  n_steps: 8\n")
    with raises([str(path), "line 4", "invalid YAML"]):
        load_config(path)


def test_top_level_must_be_a_mapping(tmp_path):
    with raises([str(tmp_path / "cfg.yaml"), "mapping", "list"]):
        load_config(write(tmp_path, "- env\n- agent\n"))


def test_duplicate_key_is_an_error(tmp_path):
    path = write(tmp_path, "env:\n  n_envs: 4\n  n_envs: 8\n")
    with raises([str(path), "line 3", "duplicate key 'n_envs'"]):
        load_config(path)


def test_user_yaml_is_read_by_one_loader_that_refuses_bombs(tmp_path):
    """Issue 20: every user file goes through ``read_yaml``; an alias bomb (549 bytes gave a 312 MB
    line) and a recursive alias are one short line, a few aliases and big plain files are fine."""
    from polar_rl.config_sources import read_yaml

    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"{c}: &{c} [" + ", ".join([f"*{p}"] * 9) + "]" for p, c in zip("abcdefgh", "bcdefghi", strict=True)]
    bomb = write(tmp_path, "\n".join(lines) + "\nmodel: {name: *i}\n", "bomb.yaml")
    assert bomb.stat().st_size < 700
    for path in (bomb, write(tmp_path, "model: &m {name: [*m]}\n", "loop.yaml")):
        with raises([str(path), "aliases expand"]) as err:
            load_config(path)
        assert len(str(err.value)) < 300
    deep = write(tmp_path, "seed: " + "[" * 5000 + "]" * 5000 + "\n", "deep.yaml")
    with raises([str(deep), "nested too deeply"]):
        load_config(deep)
    assert read_yaml(write(tmp_path, "a: &x [1, 2]\nb: [*x, *x]\nc: 1e-4\n", "ok.yaml")) == {
        "a": [1, 2], "b": [[1, 2], [1, 2]], "c": 1e-4}
    assert len(read_yaml(write(tmp_path, "\n".join(f"k{i}: {i}" for i in range(20_000)), "big.yaml"))) == 20_000
    with raises(["sweep config not found"]):
        read_yaml(tmp_path / "nope.yaml", "sweep config")


@pytest.mark.parametrize(
    ("data", "key"),
    [({"model": {"name": ["x" * 100] * 100_000}}, "model.name"), ({"run_name": "y" * 10**6 + "/"}, "run_name"),
     ({"env": {"compute_penalty": "z" * 10**6}}, "env.compute_penalty"), ({"k" * 10**5: 1}, "unknown key")],
    ids=["huge-list", "huge-string", "huge-wrong-type", "huge-key"],
)
def test_messages_quote_huge_values_briefly(data, key):
    with raises([key]) as err:
        Config.from_dict(data)
    assert len(str(err.value)) < 400


def test_yaml_cannot_run_code(tmp_path):
    path = write(tmp_path, "run_name: !!python/object/apply:os.getcwd []\n")
    with raises([str(path), "invalid YAML"]):
        load_config(path)


def test_empty_file_and_empty_section_mean_defaults(tmp_path):
    assert load_config(write(tmp_path, "")) == Config()
    assert load_config(write(tmp_path, "env:\n  # n_envs: 4\n", "b.yaml")) == Config()


def test_file_errors_name_the_file(tmp_path):
    path = write(tmp_path, "env:\n  compute_penalti: 0.2\n")
    with raises([str(path), "env.compute_penalti", "compute_penalty"]):
        load_config(path)


# ----------------------------------------------------------------------------------------------
# unknown keys and types
# ----------------------------------------------------------------------------------------------


def test_unknown_nested_key_names_dotted_key_and_valid_keys():
    with raises(["unknown key 'env.compute_penalti'", "did you mean 'compute_penalty'", "n_envs", "loop_runs"]):
        Config.from_dict({"env": {"compute_penalti": 0.2}})
    with raises(["unknown key 'agent.kwargs_'", "net_arch"]):
        Config.from_dict({"agent": {"kwargs_": {}}})
    with raises(["unknown key 'environment'", "model", "tracking", "seed"]):
        Config.from_dict({"environment": {}})


@pytest.mark.parametrize(
    ("data", "needles"),
    [
        ({"env": {"n_envs": "four"}}, ["env.n_envs", "expected int", "'four'"]),
        ({"env": {"n_envs": True}}, ["env.n_envs", "expected int", "True"]),
        ({"env": {"obs_pooled": 1}}, ["env.obs_pooled", "expected bool", "1"]),
        ({"env": {"compute_penalty": "a lot"}}, ["env.compute_penalty", "expected float", "'a lot'"]),
        ({"env": {"n_envs": None}}, ["env.n_envs", "null"]),
        ({"env": {"always_execute": [0, "x"]}}, ["env.always_execute[1]", "expected int", "'x'"]),
        ({"agent": {"net_arch": 64}}, ["agent.net_arch", "list[int]", "64"]),
        ({"agent": {"kwargs": [1]}}, ["agent.kwargs", "mapping"]),
        ({"tracking": {"tags": ["a", 2]}}, ["tracking.tags[1]", "expected str", "2"]),
        ({"seed": 1.5}, ["seed", "int | None", "1.5"]),
        ({"env": 3}, ["env", "mapping", "3"]),
    ],
)
def test_wrong_types(data, needles):
    with raises(needles):
        Config.from_dict(data)


def test_ints_are_accepted_for_float_fields():
    c = Config.from_dict({"env": {"compute_penalty": 1, "max_compute_fraction": 1}})
    assert c.env.compute_penalty == 1.0 and isinstance(c.env.compute_penalty, float)
    assert isinstance(c.env.max_compute_fraction, float)


def test_direct_construction_is_checked_too():
    with raises(["env.n_envs", "'4'"]):
        EnvConfig(n_envs="4")
    assert Config(agent={"algo": "ppo"}).agent == AgentConfig(algo="ppo")  # nested mappings are checked too
    with raises(["agent.algo", "'dqn'"]):
        Config(agent={"algo": "dqn"})


def test_validate_catches_changes_made_after_construction():
    c = Config()
    c.env.compute_penalty = -1.0
    with raises(["env.compute_penalty", "-1.0"]):
        c.revalidate()


# ----------------------------------------------------------------------------------------------
# value checks
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "needles"),
    [
        ({"env": {"compute_penalty": -0.1}}, ["env.compute_penalty", ">= 0", "-0.1"]),
        ({"env": {"compute_penalty": float("nan")}}, ["env.compute_penalty", "nan"]),
        ({"env": {"wrong_penalty": -1}}, ["env.wrong_penalty", "-1"]),
        ({"training": {"total_timesteps": 0}}, ["training.total_timesteps", "> 0", "0"]),
        ({"training": {"eval_freq": -5}}, ["training.eval_freq", "-5"]),
        ({"agent": {"algo": "dqn"}}, ["'dqn'", "ppo", "maskable_ppo", "a2c"]),
        ({"env": {"max_compute_fraction": 0}}, ["env.max_compute_fraction", "> 0", "got 0"]),
        ({"env": {"max_compute_fraction": -0.5}}, ["env.max_compute_fraction", "-0.5"]),
        ({"env": {"max_compute_fraction": 2.5}}, ["max_compute_fraction (2.5)", "loop_runs (2)"]),
        ({"env": {"reward": "accuracy"}}, ["env.reward", "'accuracy'", "margin", "gold_logprob", "correct"]),
        ({"env": {"loop_runs": 1}}, ["env.loop_runs", ">= 2", "1"]),
        ({"env": {"n_envs": 0}}, ["env.n_envs", "0"]),
        ({"env": {"max_loops": -1}}, ["env.max_loops", "-1"]),
        ({"env": {"always_execute": [0, -3]}}, ["env.always_execute[1]", "-3"]),
        ({"env": {"prefix_cache_gb": -1}}, ["env.prefix_cache_gb", "-1"]),
        ({"model": {"device": "gpu"}}, ["model.device", "'gpu'", "cuda:N"]),
        ({"model": {"device": "cuda:x"}}, ["model.device", "'cuda:x'"]),
        ({"model": {"dtype": "fp8"}}, ["model.dtype", "'fp8'", "bfloat16"]),
        ({"agent": {"batch_size": 1, "n_steps": 1, "algo": "a2c"}}, ["agent.batch_size", "> 1", "1"]),
        ({"agent": {"gamma": 1.5}}, ["agent.gamma", "<= 1", "1.5"]),
        ({"agent": {"learning_rate": 0}}, ["agent.learning_rate", "> 0", "got 0"]),
        ({"agent": {"net_arch": [64, 0]}}, ["agent.net_arch[1]", "0"]),
        ({"agent": {"kwargs": {"n_steps": 8}}}, ["agent.kwargs.n_steps", "agent.n_steps"]),
        ({"agent": {"kwargs": {"seed": 8}}}, ["agent.kwargs.seed"]),
        ({"agent": {"kwargs": {"policy_kwargs": {"net_arch": [8]}}}}, ["policy_kwargs.net_arch", "agent.net_arch"]),
        ({"tracking": {"mode": "sometimes"}}, ["tracking.mode", "'sometimes'", "offline"]),
        ({"task": {"eval_limit": 0}}, ["task.eval_limit", "0"]),
        ({"task": {"train_split": ""}}, ["task.train_split"]),
        ({"seed": -1}, ["seed", "-1"]),
        ({"run_name": "a/b"}, ["run_name", "'a/b'"]),
    ],
)
def test_bad_values(data, needles):
    with raises(needles):
        Config.from_dict(data)


def test_rollout_must_be_a_multiple_of_batch_size():
    with raises(["n_envs (16)", "n_steps (64)", "= 1024 is not a multiple of", "batch_size (300)", "256"]):
        Config.from_dict({"agent": {"batch_size": 300}})
    with raises(["n_envs (4)", "n_steps (16)", "= 64", "batch_size (48)"]):
        load_config(overrides=["--env.n_envs", "4", "--agent.n_steps", "16", "--agent.batch_size", "48"])
    # A2C does not use minibatches, so the same numbers are fine there
    assert Config.from_dict({"agent": {"batch_size": 300, "algo": "a2c"}}).agent.batch_size == 300
    assert Config.from_dict({"agent": {"batch_size": 1024}}).agent.batch_size == 1024


def test_cross_check_sees_the_merged_config(tmp_path):
    # The file alone is inconsistent (16 x 64 vs 300); the command line makes it consistent.
    path = write(tmp_path, "agent:\n  batch_size: 300\n")
    with raises(["batch_size (300)"]):
        load_config(path)
    assert load_config(path, ["--agent.n_steps", "75"]).rollout_size == 1200


def test_wandb_mode_env_var_overrides(monkeypatch):
    t = TrackingConfig(mode="offline")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert t.effective_mode() == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert t.effective_mode() == "disabled"
    assert t.mode == "offline"  # the config itself is unchanged
    monkeypatch.setenv("WANDB_MODE", "online")
    assert load_config(overrides=["--tracking.mode", "disabled"]).tracking.effective_mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "dryrun")
    assert t.effective_mode() == "offline"
    monkeypatch.setenv("WANDB_MODE", "loud")
    with raises(["WANDB_MODE", "'loud'"]):
        t.effective_mode()
    monkeypatch.setenv("WANDB_MODE", "")
    assert t.effective_mode() == "offline"


# ----------------------------------------------------------------------------------------------
# round trip and saving
# ----------------------------------------------------------------------------------------------


def non_default_config() -> Config:
    return load_config(
        overrides=[
            "--model.device", "cuda:1", "--model.dtype", "bfloat16",
            "--task.eval_limit", "10", "--task.name", "configs/tasks/x.yaml",
            "--env.max_compute_fraction", "0.75", "--env.always_execute", "[0, 1]",
            "--env.compute_penalty", "1e-3", "--env.prefix_cache_gb", "0",
            "--agent.algo", "ppo", "--agent.net_arch", "[]", "--agent.kwargs", "{clip_range: 0.2, policy_kwargs: {ortho_init: false}}",
            "--agent.learning_rate", "1e-10",
            "--tracking.tags", "[a, 'b: c']", "--tracking.entity", "me",
            "--seed", "4294967295", "--run_name", "yes",
        ]
    )


def test_round_trip_through_yaml():
    c = non_default_config()
    assert c != Config()
    assert c.run_name == "yes"  # not the YAML 1.1 bool
    back = Config.from_dict(yaml.safe_load(c.to_yaml()))
    assert back == c
    assert back.to_dict() == c.to_dict()
    assert Config.from_dict(yaml.safe_load(Config().to_yaml())) == Config()


def test_to_dict_is_a_copy():
    c = Config()
    d = c.to_dict()
    d["agent"]["net_arch"].append(1)
    assert c.agent.net_arch == [64, 64]


def test_save_config_is_atomic_and_loads_back(tmp_path):
    c = non_default_config()
    path = save_config(c, tmp_path / "run" / "config.yaml")
    assert load_config(path) == c
    assert sorted(p.name for p in path.parent.iterdir()) == ["config.yaml"]  # no temp file left
    save_config(Config(), path)  # replaces
    assert load_config(path) == Config()


def test_save_config_failure_keeps_the_old_file(tmp_path, monkeypatch):
    path = save_config(Config(), tmp_path / "config.yaml")
    before = path.read_text()

    def boom(self):
        raise RuntimeError("boom")

    monkeypatch.setattr(Config, "to_yaml", boom)
    with pytest.raises(RuntimeError):
        save_config(non_default_config(), path)
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]


def test_with_seed():
    assert Config().with_seed(7).seed == 7
    assert Config(seed=3).with_seed().seed == 3
    drawn = Config().with_seed()
    assert isinstance(drawn.seed, int) and 0 <= drawn.seed < 2**31


# ----------------------------------------------------------------------------------------------
# shipped configs
# ----------------------------------------------------------------------------------------------


def leaves(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict) and k != "kwargs":
            out.update(leaves(v, key))
        else:
            out[key] = v
    return out


@pytest.mark.parametrize("name", ["default.yaml", "smoke.yaml"])
def test_shipped_configs_load_and_hold_only_non_defaults(name):
    path = CONFIGS / name
    c = load_config(path)
    raw = leaves(yaml.safe_load(path.read_text()))
    defaults = Config().to_flat_dict()
    assert raw, f"{name} is empty"
    for key, value in raw.items():
        assert key in defaults
        assert value != defaults[key], f"{name}: {key} repeats the default {value!r}"
        assert c.to_flat_dict()[key] == value


def test_smoke_config_is_tiny():
    c = load_config(CONFIGS / "smoke.yaml")
    assert c.training.total_timesteps <= 1024
    assert c.env.n_envs * c.agent.n_steps <= c.training.total_timesteps
    assert c.task.eval_limit is not None and c.task.eval_limit <= 64
    assert c.task.test_limit is not None and c.task.test_limit <= 64
    assert c.tracking.mode == "disabled"
    assert c.training.checkpoint_freq <= c.training.total_timesteps


def test_agent_config_section_from_dict():
    assert AgentConfig.from_dict({"algo": "a2c"}).algo == "a2c"
    with raises(["unknown key 'agent.algorithm'"]):
        AgentConfig.from_dict({"algorithm": "a2c"})


def test_core_config_imports_no_rl_or_tracking_library():
    import subprocess
    import sys

    code = (
        "import sys, polar_rl.config\n"
        "bad = [m for m in ('stable_baselines3', 'sb3_contrib', 'wandb') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
