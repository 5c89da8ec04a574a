import string
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fissure.config import (
    Config,
    changed_keys,
    config_from_dict,
    config_to_dict,
    load_config,
    parse_overrides,
    save_config,
)
from fissure.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_defaults_follow_the_notebook():
    cfg = Config()
    assert cfg.model.encoder == "resnet34"
    assert cfg.train.lr == 1e-4 and cfg.train.batch_size == 16 and cfg.train.patience == 7
    assert cfg.train.loss.name == "bce" and cfg.train.optimizer == "adam"


def test_overrides_parse_yaml_values_and_nest():
    assert parse_overrides(["train.epochs=3", "data.root=x/y", "train.ema=null"]) == {
        "train": {"epochs": 3, "ema": None},
        "data": {"root": "x/y"},
    }
    cfg = load_config(None, ["train.epochs=3", "data.size=128", "train.lr=3e-4"])
    assert (cfg.train.epochs, cfg.data.size, cfg.train.lr) == (3, 128, 3e-4)


def test_int_is_accepted_for_float_but_bool_is_not_an_int():
    assert load_config(None, ["train.lr=1"]).train.lr == 1.0
    with pytest.raises(ConfigError, match="train.epochs"):
        load_config(None, ["train.epochs=true"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.epoch=3", "unknown config key 'train.epoch' (did you mean 'train.epochs'?)"),
        ("trian.epochs=3", "unknown config key 'trian'"),
        ("train.epochs=three", "train.epochs: expected int"),
        ("model.encoder=resnet35", "model.encoder: 'resnet35' is not one of"),
        ("data.size=16", "data.size: must be at least 32"),
        ("train.loss.nme=bce", "did you mean 'train.loss.name'"),
        ("data.split_files.tran=a.txt", "unknown split 'tran'"),
        ("train=3", "train: expected a mapping"),
        ("data.split_files={train: 3}", "data.split_files.train: expected str, got 3"),
        ("augment.hflip=1.5", "augment.hflip: a probability, so within [0, 1], got 1.5"),
        ("augment.blur=-0.1", "augment.blur: a probability"),
        ("augment.noise=-1", "augment.noise: must be >= 0"),
    ],
)
def test_bad_keys_and_values_name_the_key(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_override_without_equals_is_an_error():
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_overrides(["train.epochs"])


def test_yaml_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(listy)


def test_round_trip_through_yaml(tmp_path):
    cfg = load_config(None, ["train.epochs=4", "train.loss.params={pos_weight: 3.0}"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg
    assert config_from_dict(config_to_dict(cfg)) == cfg


def test_config_is_frozen():
    cfg = Config()
    with pytest.raises(AttributeError):
        cfg.train.epochs = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    "name", ["default.yaml", "cfd.yaml", "crack_segmentation_dataset.yaml", "snowflake.yaml"]
)
def test_shipped_configs_load(name):
    values = yaml.safe_load((CONFIGS / name).read_text())
    cfg = config_from_dict(values)
    assert cfg.model.encoder == "resnet34"


keys = st.sampled_from(["data", "train", "model", "augment", "eval", "root", "size", "epochs",
                        "lr", "loss", "name", "params", "snowflake", "encoder", "x", ""])
leaves = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(),
                   st.text(string.printable, max_size=8), st.lists(st.integers(), max_size=3))
configs = st.recursive(leaves, lambda kids: st.dictionaries(keys, kids, max_size=4), max_leaves=12)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs)
def test_any_garbage_config_is_a_config_error_or_valid(values):
    try:
        config_from_dict(values)
    except ConfigError as exc:
        assert "\n" not in str(exc)



def test_batch_size_takes_a_number_or_auto():
    assert Config().train.batch_size == 16
    assert load_config(None, ["train.batch_size=auto"]).train.batch_size == "auto"
    assert load_config(None, ["train.batch_size=32"]).train.batch_size == 32
    for bad, message in (("big", "expected a positive int or 'auto', got 'big'"),
                         ("0", "train.batch_size: must be at least 1"),
                         ("AUTO", "expected a positive int or 'auto'"),
                         ("1.5", "train.batch_size: expected")):
        with pytest.raises(ConfigError, match="train.batch_size") as info:
            load_config(None, [f"train.batch_size={bad}"])
        assert message in str(info.value)


def test_data_cache_choices(tmp_path):
    assert Config().data.cache == "auto"
    for value in ("auto", "none", "decoded"):
        assert load_config(None, [f"data.cache={value}"]).data.cache == value
    with pytest.raises(ConfigError, match="data.cache: 'mmap' is not one of auto, none, decoded"):
        load_config(None, ["data.cache=mmap"])
    cfg = load_config(None, ["train.batch_size=auto", "data.cache=decoded"])
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg


def test_data_size_takes_a_number_or_auto_in_crop_mode():
    cfg = load_config(None, ["data.mode=crop", "data.size=auto"])
    assert cfg.data.size == "auto"
    with pytest.raises(ConfigError, match="data.size: 'auto' picks a crop, so it needs"):
        load_config(None, ["data.mode=resize", "data.size=auto"])
    with pytest.raises(ConfigError, match="data.size: expected a positive int or 'auto'"):
        load_config(None, ["data.mode=crop", "data.size=big"])


@pytest.mark.parametrize(("override", "message"), [
    ("train.ema_start=1", "train.ema_start: must be within [0, 1)"),
    ("train.select_window=0", "train.select_window: must be at least 1"),
    ("train.select_tolerance=-0.1", "train.select_tolerance and train.min_val_images"),
    ("train.min_val_images=-1", "train.select_tolerance and train.min_val_images"),
    ("train.max_minutes=-5", "train.max_minutes: must be >= 0"),
    ("train.init_bias=prior", "train.init_bias: 'prior' is not one of none, auto"),
    ("train.keep_every=-1", "train.keep_every: must be >= 0 (0: keep no epoch), got -1"),
])
def test_budget_and_selection_keys_are_checked(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert message in str(info.value)


@pytest.mark.parametrize(("override", "message"), [
    ("train.grad_clip=-1", "train.grad_clip: must be >= 0, got -1"),
    ("train.weight_decay=-0.1", "train.weight_decay: must be >= 0, got -0.1"),
    ("train.min_delta=-0.01", "train.min_delta: must be >= 0"),
    ("train.warmup_epochs=-1", "train.warmup_epochs: must be >= 0"),
    ("train.steps_per_epoch=-3", "train.steps_per_epoch: must be >= 0, got -3"),
    ("eval.thresholds=0", "eval.thresholds: must be at least 1, got 0"),
    ("eval.tolerance=-2", "eval.tolerance: must be >= 0"),
    ("eval.min_area=-1", "eval.min_area: must be >= 0"),
])
def test_values_out_of_range_are_refused_before_training(override, message):
    """Each would otherwise fail deep inside torch mid-run, or (grad_clip, min_delta) train
    silently wrong."""
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert message in str(info.value)


def test_the_shipped_cfd_recipe_is_budgeted():
    """bf16 where the CPU has it, the crack prior as output bias, a run the clock ends."""
    cfg = load_config(CONFIGS / "cfd.yaml")
    train = cfg.train
    assert train.amp and train.init_bias == "auto" and train.max_minutes == 30
    assert train.patience == 0 and train.select_window > 1


def test_changed_keys_names_each_dotted_key_that_differs():
    before = load_config(None, ["train.loss.params={pos_weight: 3.0}"])
    after = load_config(None, ["train.epochs=4", "train.loss.params={pos_weight: 3.0, x: 1}",
                               "data.snowflake.refresh=true", "train.lr=0.0001"])
    assert changed_keys(before, after) == [
        "data.snowflake.refresh", "train.epochs", "train.loss.params.x"]
    assert changed_keys(after, after) == []
