"""Field docstrings: the string written under a dataclass field is that field's help.

`ModelConfig`, `TrainConfig` and `SamplingConfig` document each field where it is
declared (as litgpt does with its argument dataclasses); the CLI's option help and
`centelha config` show the same words, so the code and the help cannot disagree.

The docstrings are read from the module's source with `ast`, without importing it:
`centelha --help` must stay fast, and the sampling module imports torch.
"""

from __future__ import annotations

import ast
import importlib.util
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from centelha.errors import CentelhaError


@dataclass(frozen=True)
class FieldDoc:
    name: str
    kind: str      # the annotation as written: "int | None"
    default: str   # the default as written: "1e-3", "None", "field(default_factory=list)"
    help: str


@cache
def field_docs(module: str, cls: str) -> dict[str, FieldDoc]:
    """The documented fields of class `cls` in `module`, in declaration order."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise CentelhaError(f"no module {module}")
    source = Path(spec.origin).read_text(encoding="utf-8")
    for node in ast.parse(source).body:
        if isinstance(node, ast.ClassDef) and node.name == cls:
            return _documented_fields(node, source)
    raise CentelhaError(f"no class {cls} in {module}")


def _documented_fields(node: ast.ClassDef, source: str) -> dict[str, FieldDoc]:
    docs = {}
    for statement, following in zip(node.body, [*node.body[1:], None], strict=True):
        if not (isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name)):
            continue
        name = statement.target.id
        default = "" if statement.value is None else ast.get_source_segment(source,
                                                                             statement.value)
        kind = ast.get_source_segment(source, statement.annotation)
        docs[name] = FieldDoc(name, kind, default, _docstring(following))
    return docs


def _docstring(node: ast.stmt | None) -> str:
    """The text of a bare string statement, folded to one paragraph; "" if there is none."""
    if (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)):
        return " ".join(node.value.value.split())
    return ""


def help_for(section: str, name: str) -> str:
    """One field's help, for a CLI option."""
    return field_docs(*SECTIONS[section])[name].help


SECTIONS = {"model": ("centelha.config", "ModelConfig"),
            "train": ("centelha.train.config", "TrainConfig"),
            "objective": ("centelha.objectives.config", "ObjectiveConfig"),
            "sampling": ("centelha.sampling", "SamplingConfig")}


def section_docs(section: str) -> list[FieldDoc]:
    """The fields of a config section: `model`, `train` and `objective` (YAML), `sampling`
    (generation)."""
    if section not in SECTIONS:
        raise CentelhaError(f"no config section {section!r} (sections: {', '.join(SECTIONS)})")
    return list(field_docs(*SECTIONS[section]).values())
