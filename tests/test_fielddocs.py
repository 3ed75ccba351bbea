"""Field docstrings are the help of config keys and CLI options."""

import dataclasses

import pytest
from typer.testing import CliRunner

from centelha.cli import app
from centelha.config import ModelConfig
from centelha.errors import CentelhaError
from centelha.fielddocs import field_docs, section_docs
from centelha.sampling import SamplingConfig
from centelha.train.config import TrainConfig

CLASSES = {"model": ModelConfig, "train": TrainConfig, "sampling": SamplingConfig}


@pytest.mark.parametrize("section", CLASSES)
def test_every_field_is_documented_in_order(section):
    docs = section_docs(section)
    assert [d.name for d in docs] == [f.name for f in dataclasses.fields(CLASSES[section])]
    assert all(len(d.help) > 10 for d in docs), [d.name for d in docs if len(d.help) <= 10]


def test_a_docstring_is_read_as_written():
    lr = field_docs("centelha.train.config", "TrainConfig")["lr"]
    assert (lr.kind, lr.default) == ("float", "1e-3")
    assert lr.help == "The peak learning rate, reached after warmup (> 0)."


def test_the_cli_shows_the_docstrings():
    runner = CliRunner()
    result = runner.invoke(app, ["config", "train"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "The peak learning rate, reached after warmup" in result.output
    shown = runner.invoke(app, ["generate", "--help"], env={"COLUMNS": "200"})
    assert "0 takes the most likely token every time (greedy)" in shown.output


def test_an_unknown_section_is_a_clear_error():
    result = CliRunner().invoke(app, ["config", "optim"])
    assert isinstance(result.exception, CentelhaError)  # main() prints it as one line
    assert str(result.exception) == ("no config section 'optim' (sections: model, train, "
                                     "objective, sampling)")
