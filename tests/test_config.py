import pytest

from jlang.config import ConfigError, RunConfig, load_config


def test_default_config_loads():
    cfg = load_config("configs/lape_default.yaml")
    assert cfg.model.source == "default" and cfg.identify.method == "lape"
    assert cfg.corpus.languages[:3] == ("en", "zh", "fr") and cfg.identify.top_rate == 0.01


def test_overrides_and_types(tmp_path):
    cfg = load_config(
        "configs/lape_default.yaml", RunConfig, ["stats.batch_size=2", "corpus.languages=[en, fr]", "identify.lam=0.1"]
    )
    assert cfg.stats.batch_size == 2 and cfg.corpus.languages == ("en", "fr") and cfg.identify.lam == 0.1


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "stats: {batchsize: 4}",
            r"config.*stats: unknown key\(s\) \['batchsize'\]; allowed: \['batch_size', 'seq_len'\]",
        ),
        ("stats: {batch_size: four}", r"stats.batch_size: expected int, got str"),
        ("model: {dtype: float16}", r"model.dtype: 'float16' is not one of \['float32', 'bfloat16'\]"),
        ("corpus: {languages: en}", r"corpus.languages: expected a list"),
        ("identify: {lam: often}", r"identify.lam: 'often' fits none"),
        ("stats: [1, 2]", r"stats: expected a mapping"),
        ("nonsense: 1", r"unknown key\(s\) \['nonsense'\]"),
        ("a: [", "not valid YAML"),
    ],
)
def test_bad_configs_name_the_key(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_missing_config_and_bad_override(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "none.yaml")
    with pytest.raises(ConfigError, match="expected key.sub=value"):
        load_config(None, RunConfig, ["stats.batch_size"])
