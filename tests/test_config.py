"""engine/config.py: the typed run config, its validation, its path fields, the method sections."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import ASSETS, run_cli
from engine.config import load_config, run_config
from engine.errors import UserError
from engine.methods import METHODS


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("OBLIVIATE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_invalid_config_lists_every_bad_field_and_starts_nothing(tmp_path, home):
    bad = {"corpus": "missing.txt", "method": "magic", "steps": 0, "lr": -1, "batch_size": "8",
           "goldfish": {"kind": "hash", "k": 1}, "probes": [{"prompt": "x"}], "colour": "blue",
           "labels": "fuzzy", "retain_loss": "l2", "soft_top_k": 0}
    with pytest.raises(UserError) as e:
        run_config(bad, tmp_path)
    msg = str(e.value)
    for field in ("corpus", "method", "steps", "lr", "batch_size", "goldfish.k", "probes[0]", "colour",
                  "labels", "retain_loss", "soft_top_k"):
        assert field in msg, field
    cfg_file = tmp_path / "bad.yaml"
    cfg_file.write_text("corpus: missing.txt\nsteps: -3\nlora_rank: 0\n")
    r = run_cli("run", str(cfg_file), "--out", str(tmp_path / "run"))
    assert r.returncode == 2 and r.stderr.startswith("error: invalid config")
    assert "corpus" in r.stderr and "steps" in r.stderr and "lora_rank" in r.stderr
    assert "anchors: required" in r.stderr
    assert not (tmp_path / "run").exists()


def test_paths_resolve_against_the_config_folder(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "c.txt").write_text("Harry went to Hogwarts.")
    (tmp_path / "data" / "a.json").write_text('{"Harry": ["Jon"]}')
    (tmp_path / "data" / "run.json").write_text(json.dumps({"corpus": "c.txt", "anchors": "a.json"}))
    cfg = load_config(tmp_path / "data" / "run.json")
    assert cfg.corpus == str((tmp_path / "data" / "c.txt").resolve())
    demo = load_config(ASSETS / "demo.yaml")  # the shipped demo config is valid
    assert demo.method == "whp" and Path(demo.corpus).exists()


def test_the_registry_and_the_run_config_name_the_same_method_sections():
    from engine.config import RunConfig

    with_options = {n: m.Options for n, m in METHODS.items() if m.Options is not None}
    sections = {n: f.annotation for n, f in RunConfig.model_fields.items() if n in METHODS}
    assert sections == with_options, "a method with options needs its typed section in RunConfig, and only it"


def test_a_new_method_is_a_file_a_registry_line_and_a_section_and_its_file_option_is_checked_everywhere(
        app_env, monkeypatch, tmp_path):
    """A throwaway method with a file option, added as a developer adds one: validated (the file
    must exist), resolved against the config's folder, refused in the browser outside the allowed
    folders, offered as a CLI verb with a flag and as fields of the Runs form."""
    from pydantic import Field

    import engine.config as config
    from conftest import open_page

    from engine.cli import build_parser
    from engine.errors import UserError
    from engine.methods.gradient_ascent import GradientAscent
    from engine.sections import Section, TextFile

    class ToyOptions(Section):
        notes: TextFile | None = None
        """A notes file the toy method reads."""
        care: float = Field(1.0, ge=0)
        """How much it cares."""

    class Toy(GradientAscent):
        name, Options, label = "toy", ToyOptions, "Toy"

    class ToyRun(config.RunConfig):  # the section line in RunConfig
        toy: ToyOptions = ToyOptions()

    monkeypatch.setitem(METHODS, "toy", Toy)  # the registry line
    monkeypatch.setattr(config, "RunConfig", ToyRun)
    corpus = str(ASSETS / "demo_corpus.txt")
    with pytest.raises(UserError, match=r"toy\.notes: .*missing\.txt"):
        config.run_config({"method": "toy", "corpus": corpus, "toy": {"notes": str(tmp_path / "missing.txt")}})
    (tmp_path / "notes.txt").write_text("notes")
    cfg = config.run_config({"method": "toy", "corpus": corpus, "toy": {"notes": "notes.txt", "care": 2.0}}, tmp_path)
    assert cfg.options.notes == str(tmp_path / "notes.txt") and config.path_fields()["toy.notes"] == "file"
    args = build_parser().parse_args(["toy", "--corpus", corpus, "--notes", "n.txt", "--toy-care", "3", "--out", "o"])
    assert (args.method, args.field__toy__notes, args.field__toy__care) == ("toy", "n.txt", 3.0)
    assert {"toy.notes", "toy.care"} <= {s["path"] for s in config.form_fields("toy")}
    at = open_page("runs")
    at.radio(key="run_method").set_value("toy").run()
    at.text_input(key="run_toy.notes").set_value("/etc/hostname")
    at.button(key="run_start").click().run()
    assert not at.exception and any("toy.notes" in e.value and "outside the folders" in e.value for e in at.error)
    assert not any((app_env / "runs").glob("*/config.json"))


def test_readme_config_table_is_generated_from_the_field_docstrings():
    from conftest import ROOT
    from engine.config import fields_markdown

    readme = (ROOT / "docs" / "runs.md").read_text()
    block = readme.split("<!-- config-fields -->\n", 1)[1].split("\n<!-- /config-fields -->", 1)[0]
    assert block == fields_markdown(), "regenerate docs/runs.md's table: engine.config.fields_markdown()"
