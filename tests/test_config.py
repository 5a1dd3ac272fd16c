"""helpers.config: the one loader of params.yaml and its key-naming checks."""

from __future__ import annotations

import pytest

from helpers import config
from helpers.config import ParamsError


def test_load_params_reads_the_real_params_yaml(repo_root, params):
    loaded = config.load_params(repo_root / "params.yaml")
    assert loaded == params
    assert {"release", "analysis", "figures"} <= set(loaded)


def test_load_params_without_a_path_finds_the_projects_params_yaml(params, monkeypatch, repo_root):
    monkeypatch.delenv("FDP_ROOT", raising=False)
    monkeypatch.chdir(repo_root)
    assert config.load_params() == params


def test_load_yaml_refuses_a_file_that_is_not_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ParamsError, match="mapping"):
        config.load_yaml(path)


@pytest.mark.parametrize(
    "dotted, expected",
    [
        ("figures.dpi", 150),
        ("analysis.zero_shot.n_edges", 12),
        ("analysis.t2i.pretrain", "laion_aesthetics"),
        ("analysis.zero_shot.pretrains.cc3m.label", "CC-3M"),
    ],
)
def test_get_follows_dotted_keys(params, dotted, expected):
    assert config.get(params, dotted) == expected


def test_get_returns_a_whole_subtree(params):
    assert config.get(params, "analysis.retrieval") == params["analysis"]["retrieval"]


def test_get_returns_none_for_a_key_present_with_a_null_value(params):
    assert "local_copy" in params["release"]
    assert config.get(params, "release.local_copy") is None


@pytest.mark.parametrize(
    "dotted, walked",
    [
        ("analysis.zero_shot.no_such_key", "analysis.zero_shot.no_such_key"),
        ("analysis.nope.deeper.still", "analysis.nope"),
        ("nothing", "nothing"),
        ("figures.dpi.below_a_leaf", "figures.dpi.below_a_leaf"),  # walking into a non-mapping
        ("release.local_copy.x", "release.local_copy.x"),  # walking into a null
    ],
)
def test_get_missing_key_raises_params_error_naming_the_full_dotted_key(params, dotted, walked):
    with pytest.raises(ParamsError) as err:
        config.get(params, dotted)
    message = str(err.value)
    assert f"'{dotted}'" in message
    assert f"'{walked}'" in message


def test_params_error_is_a_value_error():
    assert issubclass(ParamsError, ValueError)


def test_require_returns_a_value_of_the_right_type():
    assert config.require(150, "figures.dpi", int) == 150
    assert config.require(50.0, "figures.let_it_wag_split", (int, float)) == 50.0
    assert config.require([1, 2], "analysis.bin_sensitivity", list) == [1, 2]


def test_require_type_error_names_the_key_the_expected_type_and_the_value():
    with pytest.raises(ParamsError) as err:
        config.require("150", "figures.dpi", int)
    message = str(err.value)
    assert "'figures.dpi'" in message and "int" in message and "'150'" in message


def test_require_tuple_of_types_names_each_type():
    with pytest.raises(ParamsError, match=r"'figures.let_it_wag_split' must be int or float"):
        config.require("50", "figures.let_it_wag_split", (int, float))


@pytest.mark.parametrize("flag", [True, False])
def test_require_int_refuses_a_bool(flag):
    with pytest.raises(ParamsError, match="'analysis.seed'"):
        config.require(flag, "analysis.seed", int)


def test_require_int_or_float_refuses_a_bool():
    with pytest.raises(ParamsError, match="'figures.let_it_wag_split'"):
        config.require(True, "figures.let_it_wag_split", (int, float))


def test_require_none_is_allowed_only_when_asked():
    assert config.require(None, "release.local_copy", str, allow_none=True) is None
    with pytest.raises(ParamsError, match="'release.local_copy'"):
        config.require(None, "release.local_copy", str)


def test_require_choice_accepts_a_listed_value():
    assert config.require_choice("class", "prompt", ["class", "simple", "ensemble"]) == "class"
    assert config.require_choice("t2i", "direction", {"i2t", "t2i"}) == "t2i"


def test_require_choice_rejects_an_unlisted_value_naming_key_and_choices():
    with pytest.raises(ParamsError) as err:
        config.require_choice("classes", "analysis.zero_shot.prompts", ("simple", "class", "ensemble"))
    message = str(err.value)
    assert "'analysis.zero_shot.prompts'" in message
    assert "['class', 'ensemble', 'simple']" in message  # sorted, so the message is stable
    assert "'classes'" in message


def test_require_choice_with_mixed_type_choices_still_raises_params_error():
    with pytest.raises(ParamsError, match="'release.local_copy'"):
        config.require_choice("b", "release.local_copy", [None, "a"])
