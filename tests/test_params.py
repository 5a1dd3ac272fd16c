"""helpers.params: the typed parameter layer, its whole-file check, its CLI and its JSON Schema."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import params as params_lib
from helpers import stage
from helpers.params import ConfigError, check, check_file
from helpers.params.base import NAME_RULE
from helpers.params.root import produced_paths

REPO_ROOT = Path(__file__).resolve().parents[1]
DVC = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())


def errors_of(params: dict, *, files: bool = False, workdir: Path | None = None) -> list[str]:
    return check(params, dvc=DVC, files=files, workdir=workdir)


def with_change(params: dict, dotted: str, value, *, delete: bool = False) -> dict:
    """A deep copy of ``params`` with the value at ``dotted`` replaced (or deleted)."""
    out = copy.deepcopy(params)
    node = out
    *parents, last = dotted.split(".")
    for part in parents:
        node = node[part]
    if delete:
        del node[last]
    else:
        node[last] = value
    return out


# ------------------------------------------------------------------------------------ the real file


def test_the_projects_params_yaml_is_valid_with_its_files(params, tmp_path):
    # in an empty work folder every path is missing, but each one is an output of a stage of dvc.yaml
    assert errors_of(params, files=True, workdir=tmp_path) == []
    assert check_file(REPO_ROOT / "params.yaml") == []


def test_params_yaml_points_editors_at_the_committed_schema():
    first = (REPO_ROOT / "params.yaml").read_text().splitlines()[0]
    assert first == "# yaml-language-server: $schema=params.schema.json"


def test_the_committed_schema_is_the_generated_one():
    committed = (REPO_ROOT / "params.schema.json").read_text()
    assert committed == params_lib.json_schema(), "run `python -m helpers.params schema` and commit the result"
    schema = json.loads(committed)
    assert schema["additionalProperties"] is False
    assert {"corpora", "image_corpora", "evaluation", "text_search", "image_search"} <= set(schema["properties"])


def test_defaults_are_stated_once_in_the_models():
    search = params_lib.validate(params_lib.images.ImageSearch, {}, "image_search")
    assert (search.prob_floor, search.batch_size, search.executor, search.precision) == (0.5, 64, "serial", "fp32")
    text = params_lib.validate(params_lib.text.TextSearch, {}, "text_search")
    assert (text.mode, text.executor, text.allow_failed_shards) == ("phrase", "process", False)


# ---------------------------------------------------------------------------------------- typo keys


@pytest.mark.parametrize(
    "where",
    [
        "release",
        "release.openclip",
        "analysis",
        "analysis.zero_shot",
        "analysis.zero_shot.pretrains.cc3m",
        "analysis.retrieval",
        "figures",
        "samples",
        "concepts.downstream.sample_downstream",
        "concepts.downstream.sample_downstream.captions",
        "text_search",
        "corpora.sample_tsv",
        "corpora.sample_tsv.captions",
        "taggers.sample",
        "image_search",
        "image_corpora.sample_wds",
        "image_corpora.sample_wds.images",
        "image_corpora.sample_wds.tagger",
        "image_corpora.synthetic_clip.tagger",
        "image_corpora.synthetic_clip.tagger.calibration",
        "synthetic",
        "synthetic.world",
        "synthetic.sizes.ci",
        "clip_training",
        "clip_training.model",
        "evaluation",
        "evaluation.settings",
        "evaluation.models.synthetic-clip",
        "evaluation.datasets.synthetic-classification",
        "evaluation.datasets.synthetic-retrieval",
        "synthetic_validation",
    ],
)
def test_a_typo_key_anywhere_is_named_by_its_full_path(params, where):
    broken = with_change(params, f"{where}.qqq_zzz", 1)
    errors = errors_of(broken)
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"{where}.qqq_zzz: unknown key (known: ")


def test_a_typo_at_the_top_level_and_a_near_miss_get_a_suggestion(params):
    broken = with_change(params, "text_serach", {})
    assert errors_of(broken) == [errors_of(broken)[0]]
    assert errors_of(broken)[0].startswith("text_serach: unknown key; did you mean 'text_search'?")
    broken = with_change(params, "image_search.batchsize", 3)
    assert errors_of(broken)[0].startswith("image_search.batchsize: unknown key; did you mean 'batch_size'?")


def test_every_error_is_reported_at_once(params):
    broken = with_change(params, "text_search.mode", "phrasee")
    broken = with_change(broken, "figures.dpi", "150")
    broken = with_change(broken, "image_corpora.sample_wds.tagger.tempreature", 1)
    broken = with_change(broken, "synthetic_validation.model", "nope")
    errors = errors_of(broken)
    assert len(errors) == 4
    assert "text_search.mode: 'phrasee' is not one of phrase, bag, paper" in errors


# -------------------------------------------------------------------------- types, choices, ranges


@pytest.mark.parametrize(
    ("dotted", "value", "message"),
    [
        ("text_search.mode", "phrasee", "text_search.mode: 'phrasee' is not one of phrase, bag, paper"),
        ("text_search.allow_failed_shards", "yes", "text_search.allow_failed_shards: input should be a valid boolean"),
        ("text_search.workers", 0, "text_search.workers: input should be greater than or equal to 1, got 0"),
        ("figures.dpi", "150", "figures.dpi: input should be a valid integer, got '150'"),
        ("analysis.seed", True, "analysis.seed: input should be a valid integer, got True"),
        ("analysis.zero_shot.prompts", ["klass"], "analysis.zero_shot.prompts[0]: 'klass' is not one of"),
        ("corpora.sample_tsv.captions.format", "xml", "corpora.sample_tsv.captions.format: 'xml' is not one of"),
        ("corpora.sample_tsv.captions.decode", "base64", "corpora.sample_tsv.captions.decode: 'base64' is not one"),
        ("image_search.precision", "fp8", "image_search.precision: 'fp8' is not one of fp32, bf16, fp16"),
        ("image_search.batch_size", 0, "image_search.batch_size: input should be greater than or equal to 1"),
        ("image_corpora.sample_wds.tagger.backend", "clip", "image_corpora.sample_wds.tagger.backend: 'clip' is"),
        ("image_corpora.sample_wds.tagger.unknown_concepts", "drop", "tagger.unknown_concepts: 'drop' is not"),
        (
            "image_corpora.synthetic_clip.tagger.calibration.tau",
            -1,
            "tagger.calibration.tau: expected a number > 0 or 'model', got -1",
        ),
        ("image_corpora.synthetic_clip.tagger.templates", ["a photo"], "tagger.templates: every template needs"),
        ("evaluation.settings.ks", [0], "evaluation.settings.ks[0]: input should be greater than or equal to 1"),
        ("evaluation.datasets.synthetic-classification.format", "imagefoldr", "synthetic-classification.format:"),
        ("evaluation.datasets.synthetic-retrieval.label_key", "cls", "only used with task: zero_shot"),
        ("synthetic.size", "huge", "synthetic.size: 'huge' is not one of the sizes (default, ci)"),
        ("synthetic.world.frequency_law", "pareto", "synthetic.world.frequency_law: 'pareto' is not one of"),
        ("clip_training.lr", 0, "clip_training.lr: input should be greater than 0, got 0"),
        ("release.commit", "main", "release.commit: string should match pattern '^[0-9a-f]{40}$', got 'main'"),
    ],
)
def test_wrong_types_choices_and_ranges_are_named(params, dotted, value, message):
    errors = errors_of(with_change(params, dotted, value))
    assert len(errors) == 1, errors
    assert message in errors[0]


def test_a_missing_required_key_is_named(params):
    errors = errors_of(with_change(params, "corpora.sample_tsv.captions", None, delete=True))
    assert errors == ["corpora.sample_tsv.captions: missing"]
    errors = errors_of(with_change(params, "image_corpora.sample_wds.tagger.backend", None, delete=True))
    assert errors == ["image_corpora.sample_wds.tagger.backend: missing (which kind of entry this is)"]


@pytest.mark.parametrize(
    ("thresholds", "floor", "message"),
    [
        ([0.5, 1.5], 0.5, "image_search.thresholds[1]: input should be less than or equal to 1, got 1.5"),
        ([-0.1, 0.7], 0.0, "image_search.thresholds[0]: input should be greater than or equal to 0, got -0.1"),
        ([0.5, 0.7], 0.6, "image_search.thresholds: [0.5] below prob_floor 0.6"),
        ([0.7], 1.2, "image_search.prob_floor: input should be less than or equal to 1, got 1.2"),
    ],
)
def test_thresholds_are_probabilities_at_or_above_the_floor(params, thresholds, floor, message):
    broken = with_change(with_change(params, "image_search.thresholds", thresholds), "image_search.prob_floor", floor)
    errors = errors_of(broken)
    assert len(errors) == 1 and errors[0].startswith(message), errors


def test_a_synthetic_validation_threshold_is_a_probability(params):
    errors = errors_of(with_change(params, "synthetic_validation.threshold", 7))
    assert errors == ["synthetic_validation.threshold: input should be less than or equal to 1, got 7"]


# ------------------------------------------------------------------------------------------ references


@pytest.mark.parametrize(
    ("dotted", "value", "message"),
    [
        ("image_corpora.sample_wds.corpus", "sample_wdss", "image_corpora.sample_wds.corpus: 'sample_wdss' is not an"),
        ("synthetic_validation.corpus", "nope", "synthetic_validation.corpus: 'nope' is not an entry of corpora"),
        ("synthetic_validation.image_corpora", ["synthetic", "y"], "synthetic_validation.image_corpora[1]: 'y'"),
    ],
)
def test_references_name_existing_entries(params, dotted, value, message):
    errors = errors_of(with_change(params, dotted, value))
    assert len(errors) == 1 and errors[0].startswith(message), errors


def test_an_image_corpus_without_corpus_names_its_own_caption_side(params):
    broken = copy.deepcopy(params)
    entry = {k: v for k, v in params["image_corpora"]["sample_wds"].items() if k != "corpus"}
    broken["image_corpora"]["lonely"] = entry
    [error] = errors_of(broken)
    assert error.startswith("image_corpora.lonely.corpus: 'lonely' is not an entry of corpora (entries: sample_tsv")
    broken["image_corpora"]["sample_txt"] = entry  # named like a corpus: its caption side
    assert errors_of(broken) == [error]


def test_the_release_concept_table_is_refused_naming_the_stages_to_use(params):
    broken = with_change(params, "corpora.sample_tsv.concepts", "data/processed/release/concepts.parquet")
    [error] = errors_of(broken)
    assert error.startswith("corpora.sample_tsv.concepts: data/processed/release/concepts.parquet is the release's")
    assert "data/processed/concepts.parquet" in error and "downstream_concepts@<name>" in error


# --------------------------------------------------------------------------------------------- names


@pytest.mark.parametrize("bad", ["my.corpus", "a@b", "a/b", "a b", "tab\tname"])
@pytest.mark.parametrize(
    "section", ["corpora", "taggers", "image_corpora", "evaluation.models", "evaluation.datasets", "studies"]
)
def test_names_dvc_cannot_take_are_refused_in_one_line(params, section, bad):
    broken = copy.deepcopy(params)
    node = broken
    for part in section.split("."):
        node = node.setdefault(part, {})
    node[bad] = next(iter(node.values())) if node else {}
    errors = [e for e in errors_of(broken) if NAME_RULE in e]
    assert errors == [f"{section}.{bad}: {bad!r} cannot name a DVC stage: {NAME_RULE}"]


# --------------------------------------------------------------------------------------------- files


def test_a_missing_checkpoint_is_named_unless_a_stage_makes_it(params, tmp_path):
    broken = with_change(params, "image_corpora.sample_wds.tagger.checkpoint", "data/models/my_tagger.pt")
    assert errors_of(broken, files=True, workdir=tmp_path) == [
        "image_corpora.sample_wds.tagger.checkpoint: file not found: data/models/my_tagger.pt"
    ]
    # data/models/taggers/sample.pt is made by train_tagger@sample: fine before it exists...
    assert errors_of(params, files=True, workdir=tmp_path) == []
    # ...but not once no taggers entry makes it
    orphan = with_change(params, "taggers.sample.checkpoint", "data/models/taggers/other.pt")
    assert "image_corpora.sample_wds.tagger.checkpoint: file not found: data/models/taggers/sample.pt" in errors_of(
        orphan, files=True, workdir=tmp_path
    )


def test_an_existing_file_passes_and_absolute_paths_are_checked(params, tmp_path):
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "ram.pth").write_bytes(b"x")
    rampp = {"backend": "rampp", "checkpoint": "weights/ram.pth", "weights": "weights/ram.pth"}
    ok = with_change(params, "image_corpora.sample_wds.tagger", rampp)
    assert errors_of(ok, files=True, workdir=tmp_path) == []
    missing = with_change(params, "image_corpora.sample_wds.tagger", {**rampp, "checkpoint": str(tmp_path / "x.pth")})
    assert errors_of(missing, files=True, workdir=tmp_path) == [
        f"image_corpora.sample_wds.tagger.checkpoint: file not found: {tmp_path / 'x.pth'}"
    ]


@pytest.mark.parametrize(
    ("dotted", "value"),
    [
        ("evaluation.models.synthetic-clip.pretrained", "data/weights/nope.pt"),
        ("evaluation.models.synthetic-clip.weights", "data/weights"),
        ("evaluation.datasets.synthetic-classification.root", "data/elsewhere"),
        ("taggers.sample.labels", "labels.csv"),
        ("concepts.downstream.sample_downstream.class_names_file", "classes.txt"),
        ("corpora.sample_tsv.data", "data/cc3m"),
        ("image_corpora.synthetic_clip.audit.labels", "data/raw/nowhere/labels.csv"),
    ],
)
def test_missing_inputs_are_named(params, tmp_path, dotted, value):
    errors = errors_of(with_change(params, dotted, value), files=True, workdir=tmp_path)
    # a model's weights are restated by its evaluation runs: those differ now too (checked separately)
    # a model's weights are restated by its evaluation runs, and a corpus's captions must lie in its data:
    # those follow-on errors are checked separately
    errors = [e for e in errors if not e.startswith(("evaluation.runs.", "corpora.sample_tsv.captions.paths"))]
    assert errors == [f"{dotted}: file not found: {value}"]


def test_a_pretrained_tag_is_not_a_path(params, tmp_path):
    tagged = with_change(params, "evaluation.models.synthetic-clip", {"name": "ViT-B-32", "pretrained": "laion2b"})
    assert errors_of(tagged, files=True, workdir=tmp_path) == []


def test_produced_paths_expand_foreach_and_top_level_interpolation(params):
    produced = produced_paths(DVC, params)
    assert "data/models/taggers/sample.pt" in produced  # foreach over taggers: ${item.checkpoint}
    assert "data/models/synthetic-clip" in produced  # ${clip_training.out_dir}
    assert "data/processed/concept_tables/synthetic.parquet" in produced  # ${key}
    assert "data/processed/evaluations/synthetic-clip/synthetic-retrieval" in produced  # matrix


# --------------------------------------------------------------------------- keys other branches add


def test_the_dvc_dependency_and_reader_keys_are_accepted(params):
    ok = with_change(params, "evaluation.models.synthetic-clip.weights", "data/models/synthetic-clip")
    ok = with_change(ok, "evaluation.datasets.synthetic-classification.data", "data/eval/synthetic/classification")
    ok = with_change(ok, "image_corpora.sample_wds.tagger.weights", "data/models/taggers/sample.pt")
    ok = with_change(ok, "corpora.sample_tsv.captions.decode", "url")
    assert errors_of(ok) == []


# ------------------------------------------------------------------------------------ loading, get


def test_load_yaml_refuses_a_file_that_is_not_a_mapping_naming_it(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match=f"{path}: must hold a mapping"):
        params_lib.load_yaml(path)
    path.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        params_lib.load_yaml(path)


def test_get_follows_dotted_keys_and_names_a_missing_one(params):
    assert params_lib.get(params, "analysis.zero_shot.n_edges") == 12
    assert params_lib.get(params, "release.local_copy") is None
    with pytest.raises(ConfigError, match=r"^analysis\.nope: missing from params.yaml \(needed: 'analysis.nope.x'\)"):
        params_lib.get(params, "analysis.nope.x")


def test_there_is_one_error_type_for_bad_params():
    from helpers import shards

    assert shards.ConfigError is ConfigError and issubclass(ConfigError, ValueError)
    assert not (REPO_ROOT / "src" / "helpers" / "config.py").exists()


# ----------------------------------------------------------------------------------------------- CLI


def cli(*args: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "helpers.params", *args], capture_output=True, text=True, cwd=cwd, check=False
    )


def test_cli_check_passes_the_projects_params():
    done = cli("check")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "params.yaml: ok"


def test_cli_check_prints_every_error_and_exits_non_zero(params, tmp_path):
    broken = with_change(params, "text_search.mode", "phrasee")
    broken = with_change(broken, "image_corpora.sample_wds.tagger.checkpoint", "data/models/my.pt")
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(broken))
    done = cli("check", str(path), "--dvc", str(REPO_ROOT / "dvc.yaml"))
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert lines[0] == f"{path}: 2 error(s)"
    assert lines[1:] == [
        "text_search.mode: 'phrasee' is not one of phrase, bag, paper",
        "image_corpora.sample_wds.tagger.checkpoint: file not found: data/models/my.pt",
    ]


def test_cli_check_of_a_missing_file_and_a_usage_error(tmp_path):
    done = cli("check", str(tmp_path / "none.yaml"))
    assert done.returncode == 1 and "none.yaml: file not found" in done.stderr
    assert cli("frobnicate").returncode == 2


def test_cli_schema_writes_the_schema(tmp_path):
    out = tmp_path / "schema.json"
    done = cli("schema", str(out))
    assert done.returncode == 0, done.stderr
    assert out.read_text() == params_lib.json_schema()
    assert cli("schema", "-").stdout == params_lib.json_schema()


# -------------------------------------------------------------------------------------- stage runner


def test_the_stage_runner_refuses_bad_params_before_any_work(params, tmp_path, monkeypatch, capsys):
    root = tmp_path / "project"
    root.mkdir()
    (root / "dvc.yaml").write_text((REPO_ROOT / "dvc.yaml").read_text())
    (root / "params.yaml").write_text(yaml.safe_dump(with_change(params, "text_search.mode", "phrasee")))
    monkeypatch.setenv("FDP_ROOT", str(root))
    monkeypatch.setenv("FDP_WORKDIR", str(tmp_path / "work"))
    calls = []
    import papermill

    monkeypatch.setattr(papermill, "execute_notebook", lambda *a, **k: calls.append(a))
    with pytest.raises(ConfigError, match=r"text_search\.mode: 'phrasee' is not one of phrase, bag, paper"):
        stage.run("sample_corpora")
    assert stage.main(["text_search@sample_tsv", "--item", "corpus"]) == 2
    assert "text_search.mode: 'phrasee'" in capsys.readouterr().err
    assert calls == [] and not (tmp_path / "work").exists()  # no notebook ran, nothing was written


# ------------------------------------------------------------------------------- per-entry DVC paths


def test_a_tagger_without_weights_is_named(params):
    errors = errors_of(with_change(params, "image_corpora.sample_wds.tagger.weights", None, delete=True))
    assert errors == [
        "image_corpora.sample_wds.tagger.weights: missing (the file or folder of this tagger's weights, which the "
        "image_search@sample_wds stage depends on)"
    ]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("model", "nope", "evaluation.runs.{run}.model: 'nope' is not an entry of evaluation.models"),
        ("dataset", "nope", "evaluation.runs.{run}.dataset: 'nope' is not an entry of evaluation.datasets"),
        ("weights", "data/models/other", "evaluation.runs.{run}.weights: 'data/models/other' differs from"),
        ("data", "data/eval/other", "evaluation.runs.{run}.data: 'data/eval/other' differs from"),
    ],
)
def test_an_evaluation_run_names_existing_entries_and_their_paths(params, field, value, message):
    run = next(iter(params["evaluation"]["runs"]))
    errors = errors_of(with_change(params, f"evaluation.runs.{run}.{field}", value))
    assert len(errors) == 1 and errors[0].startswith(message.format(run=run)), errors


def test_an_evaluation_run_needs_all_four_keys(params):
    run = next(iter(params["evaluation"]["runs"]))
    errors = errors_of(with_change(params, f"evaluation.runs.{run}.weights", None, delete=True))
    assert errors == [f"evaluation.runs.{run}.weights: missing"]


def test_a_study_is_checked_with_the_whole_file(params):
    study = next(iter(params["studies"]))
    errors = errors_of(with_change(params, f"studies.{study}.counts.corpus", "nope"))
    assert errors[:1] == [
        f"studies.{study}.counts.corpus: 'nope' is not an entry of corpora (entries: {', '.join(params['corpora'])})"
    ]
    errors = errors_of(with_change(params, f"studies.{study}.modles", ["x"]))
    assert errors[0].startswith(f"studies.{study}.modles: unknown key; did you mean 'models'")
    # a retrieval k the models are not evaluated with fails here, not after every evaluation has run
    ks = params["evaluation"]["settings"]["ks"]
    errors = errors_of(with_change(params, f"studies.{study}.metrics", ["i2t_k=3"]))
    assert errors == [f"studies.{study}.metrics[0]: 'i2t_k=3': k=3 is not evaluated (evaluation.settings.ks: {ks})"]


def test_a_corpus_reads_only_inside_its_tracked_data(params):
    moved = with_change(params, "corpora.sample_tsv.captions.paths", "/elsewhere/*.tsv")
    assert errors_of(moved) == [
        "corpora.sample_tsv.captions.paths: '/elsewhere/*.tsv' is outside corpora.sample_tsv.data "
        "('data/raw/samples/tsv'); DVC would not see it change, so the counts could go stale: point data at "
        "the folder that holds it"
    ]
    images = with_change(params, "image_corpora.sample_wds.images.paths", ["data/raw/samples/wds/*.tar", "x/*.tar"])
    assert errors_of(images)[0].startswith("image_corpora.sample_wds.images.paths[1]: 'x/*.tar' is outside")


def test_a_corpus_without_data_is_named_before_dvc_fails_on_it(params):
    errors = errors_of(with_change(params, "corpora.sample_txt.data", None, delete=True))
    assert errors == [
        "corpora.sample_txt.data: missing (the folder text_search@sample_txt depends on, holding its input)"
    ]


def test_let_it_wag_candidates_lie_in_the_folder_its_stage_tracks(params):
    assert errors_of(with_change(params, "let_it_wag.data", None, delete=True)) == [
        "let_it_wag.data: missing (the folder let_it_wag_build depends on, holding its candidate images)"
    ]
    moved = with_change(params, "let_it_wag.images", {"root": "/elsewhere/wag"})
    assert errors_of(moved) == [
        "let_it_wag.images.root: '/elsewhere/wag' is outside let_it_wag.data ('data/raw/synthetic'); DVC would "
        "not see the candidates change, so the built set could go stale: point data at the folder that holds them"
    ]
    urls = with_change(params, "let_it_wag.images", {"urls": {"lists": ["data/raw/synthetic/a.csv", "b.csv"]}})
    assert [e.split(":")[0] for e in errors_of(urls)] == ["let_it_wag.images.urls.lists[1]"]
