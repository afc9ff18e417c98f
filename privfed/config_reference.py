"""The configuration reference (``docs/configuration.md``), generated from the config schema.

Every section dataclass of :mod:`privfed.config` becomes one table: key, type,
default, allowed values (range rules and choices from the field metadata) and a
description. So does every method table a registered strategy or adapter method
brings (``[server.fedadam]``, ``[adapter.lora]``, ...), right after its section.
The description is, in order of preference, the field's ``help`` metadata,
a short text kept here (:data:`FALLBACK_HELP`, for fields without a comment or
whose comment is only a tag), or the comments written next to the field in its
source (the lines directly above it and the one trailing it, read with
:mod:`tokenize`).

``python -m privfed.config_reference > docs/configuration.md`` rewrites the
committed reference; ``tests/unit/test_config_reference.py`` fails when the two
differ. Choices that come from registries (models, datasets, adapter methods,
strategies, partitioners, accountants) are listed as registered when this
module runs, so run it in a fresh process (as the command above does), not
after registering extensions.
"""

from __future__ import annotations

import dataclasses
import inspect
import io
import math
import textwrap
import tokenize
import typing
from collections.abc import Iterator
from typing import Any

from privfed import config as _config

__all__ = ["FieldDoc", "SectionDoc", "field_comments", "render_reference", "sections"]

REGENERATE = "python -m privfed.config_reference > docs/configuration.md"

# Descriptions for fields whose line in config.py carries no comment (or only a tag).
# A `help=` in the field metadata takes precedence; a test checks that every key here
# names a field of the schema and does not shadow a comment of more than a few words.
FALLBACK_HELP: dict[str, str] = {
    "name": "Name of the experiment; required in a config file (an empty or truncated file is refused).",
    "seed": "Seed of every random draw of the run (cohorts, batches, dropout, adapter init, noise).",
    "model.name": "Registered base model (`privfed models`).",
    "model.max_length": "Tokens per example; with prompt-tuning tokens, at most the model's positions.",
    "data.name": "Registered dataset (`privfed datasets`).",
    "data.eval_fraction": "Fraction of the dataset held out (stratified) for evaluation.",
    "partition.method": "How examples are split among clients: `iid`, `dirichlet` (label skew), `shards`, "
    "`natural` (one client per natural group).",
    "partition.num_clients": "Number of clients in the federation.",
    "partition.min_examples_per_client": "Dirichlet splits are redrawn until every client has this many examples.",
    "adapter.method": "PEFT method; `full` trains and sends the whole model (the baseline PEFT is compared against; "
    "refused under record-level DP).",
    "client.local_epochs": "Passes over the client's data per round (unless `local_steps` > 0).",
    "client.batch_size": "Examples per local step (the expected batch under Poisson sampling).",
    "client.learning_rate": "Local optimizer learning rate.",
    "client.optimizer": "Local optimizer, fresh in every local run.",
    "client.weight_decay": "Local optimizer weight decay.",
    "server.strategy": "Registered server strategy (aggregation + server optimizer).",
    "server.rounds": "Federated rounds.",
    "server.clients_per_round": "Cohort size (the expected cohort under user-level DP's Poisson sampling).",
    "server.learning_rate": "Server learning rate applied to the aggregated delta.",
    "server.weighting": "Weight of each client in the mean: its example count, or uniform (required under SecAgg).",
    "eval.batch_size": "Batch size of evaluation.",
    "transport.kind": "How updates travel; `simulation` runs every client in-process.",
    "secagg.enabled": "Secure aggregation: the server learns only the sum of the cohort's updates.",
    "privacy.mode": "`sample` = record-level DP-SGD, `user` = user-level DP-FedAvg, `both`, or `none`.",
    "privacy.delta": "DP delta; must be below 1/num_clients (user) and 1/smallest client (sample).",
    "privacy.accountant": "Opacus accountant composing the noise events (`rdp` or `prv`).",
    "privacy.sample.max_grad_norm": "Per-example gradient clip norm of DP-SGD.",
    "privacy.user.clip_norm": "L2 clip norm C of each client's delta (initial value with adaptive clipping).",
    "privacy.user.adaptive_clipping": "Move C towards `target_quantile` of the update norms (Andrew et al. 2021).",
    "privacy.user.target_quantile": "Quantile of unclipped updates adaptive clipping aims for.",
    "privacy.user.clip_learning_rate": "Geometric step size of adaptive clipping.",
    "run.checkpoint_every": "Write a checkpoint every this many rounds (and after the last).",
    # Fields whose comment is only a tag: this text replaces it.
    "privacy.sample.grad_sample_mode": "`hooks`: Opacus per-sample gradients; `ghost`: ghost clipping "
    "(per-sample norms without per-sample gradients).",
}


@dataclasses.dataclass(frozen=True)
class FieldDoc:
    """One configuration key as the reference shows it."""

    path: str
    type: str
    default: str
    allowed: str
    help: str


@dataclasses.dataclass(frozen=True)
class SectionDoc:
    """One config section (a dataclass of :mod:`privfed.config`)."""

    path: str
    class_name: str
    summary: str
    fields: tuple[FieldDoc, ...]


def field_comments(cls: type) -> dict[str, str]:
    """Comments written beside each field of a dataclass's source: ``{field: text}``.

    A field's text is the run of whole-line comments directly above it (no blank
    line between) followed by its trailing comment.
    """
    source = textwrap.dedent(inspect.getsource(cls))
    names = {f.name for f in dataclasses.fields(cls)}
    lines = source.splitlines()
    standalone: dict[int, str] = {}
    trailing: dict[int, str] = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type != tokenize.COMMENT:
            continue
        row, col = token.start
        text = token.string.lstrip("#").strip()
        if lines[row - 1][:col].strip():
            trailing[row] = text
        else:
            standalone[row] = text
    result: dict[str, str] = {}
    for row, line in enumerate(lines, start=1):
        stripped = line.strip()
        name = stripped.split(":", 1)[0].strip()
        if ":" not in stripped or name not in names or line[: len(line) - len(line.lstrip())] != "    ":
            continue
        above: list[str] = []
        r = row - 1
        while r in standalone:
            above.insert(0, standalone[r])
            r -= 1
        parts = [" ".join(above)] if above else []
        if row in trailing:
            parts.append(trailing[row])
        if parts:
            result[name] = _sentence(" ".join(parts))
    return result


def _sentence(text: str) -> str:
    text = " ".join(text.split())
    return text[:1].upper() + text[1:] if text else text


def _type_name(annotation: Any) -> str:
    if annotation is bool:
        return "bool"
    if annotation is int:
        return "int"
    if annotation is float:
        return "float"
    if annotation is str:
        return "string"
    if typing.get_origin(annotation) is tuple:
        return f"list of {_type_name(typing.get_args(annotation)[0])}"
    return str(annotation)  # pragma: no cover - config.py refuses other annotations


def _number(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        if abs(value) >= 10**6 and value & (value - 1) == 0:
            return f"2^{value.bit_length() - 1}"
        return f"{value:,}".replace(",", "_") if abs(value) >= 10**5 else str(value)
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:g}".replace("e+0", "e").replace("e-0", "e-").replace("e+", "e")
    return repr(value)


def _toml_value(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return _number(value)


def _default(field: dataclasses.Field[Any]) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    assert field.default_factory is not dataclasses.MISSING
    return field.default_factory()


def _allowed(rules: typing.Mapping[str, Any]) -> str:
    parts: list[str] = []
    if "choices" in rules:
        parts.append(", ".join(f"`{c}`" for c in rules["choices"]()))
    bounds = [f"{symbol} {_number(rules[key])}" for key, symbol in _BOUNDS if key in rules]
    if bounds:
        text = " and ".join(bounds)
        if "off" in rules:
            text = f"{_number(rules['off'])} (off) or {text}"
        parts.append(text)
    if rules.get("text"):
        parts.append(f"1 to {_config._MAX_TEXT} printable characters")
    return "; ".join(parts)


_BOUNDS = (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<"))


def sections(cls: type = _config.ExperimentConfig, prefix: str = "") -> Iterator[SectionDoc]:
    """Every config section, depth first, the top level first; a section's method tables right after it."""
    hints = typing.get_type_hints(cls)
    try:
        comments = field_comments(cls)
    except (OSError, TypeError):  # a class defined where its source cannot be read (a notebook cell)
        comments = {}
    leaves: list[FieldDoc] = []
    nested: list[tuple[str, type]] = []
    for field in _config.schema_fields(cls):
        annotation = hints[field.name]
        path = f"{prefix}.{field.name}" if prefix else field.name
        if dataclasses.is_dataclass(annotation) and isinstance(annotation, type):
            nested.append((path, annotation))
            continue
        help_text = field.metadata.get("help") or FALLBACK_HELP.get(path) or comments.get(field.name, "")
        leaves.append(
            FieldDoc(
                path=path,
                type=_type_name(annotation),
                default=_toml_value(_default(field)),
                allowed=_allowed(field.metadata),
                help=help_text,
            )
        )
    doc = inspect.getdoc(cls) or ""
    yield SectionDoc(path=prefix, class_name=cls.__name__, summary=doc, fields=tuple(leaves))
    readers = _table_readers(cls)
    for table, table_cls in _config.method_tables(cls).items():
        path = f"{prefix}.{table}"
        for doc_section in sections(table_cls, path):
            names = [f"`{name}`" for name in readers.get(table, ())]
            either = " or ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)
            note = (
                f"Used when `{prefix}.{readers.selector}` is {either}; with another method the table is "
                "checked and kept, not used."
            )
            summary = f"{doc_section.summary}\n\n{note}" if doc_section.summary else note
            yield dataclasses.replace(doc_section, summary=summary)
    for path, sub in nested:
        yield from sections(sub, path)


class _Readers(dict[str, tuple[str, ...]]):
    selector: str = ""


def _table_readers(cls: type) -> _Readers:
    """``{table: methods that read it}`` for a section with method tables (``ffa_lora`` reads ``lora``)."""
    readers = _Readers()
    selector = _config._method_selector(cls)
    if selector is None:
        return readers
    name, lookup = selector
    readers.selector = name
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    for method in field.metadata["choices"]():
        found = lookup(method)
        if found is not None:
            readers[found[0]] = (*readers.get(found[0], ()), method)
    return readers


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _rst_to_md(text: str) -> str:
    return text.replace("``", "`").replace(":class:", "")


_INTRO = """\
# Configuration reference

<!-- Generated from privfed/config.py by `{command}`; do not edit by hand. -->

A config is a TOML file with one small table per concern. Every key but `name`
is optional; `privfed validate CONFIG.toml` prints the config with every default
filled in. Unknown keys, wrong types and values outside the ranges below stop
the run before anything loads, with one line naming the key, the value found
and what is allowed (`ConfigError`, exit status 2). Some rules involve several
keys or the model and are checked when the config loads or the model is known;
they are listed in [Running experiments](running.md#what-a-config-file-must-hold).
Privacy settings are explained in [Differential privacy](differential-privacy.md),
secure aggregation in [Secure aggregation](secure-aggregation.md).

Choices marked by a registry (models, datasets, partitioners, adapter methods,
strategies, accountants) grow with `register_*` calls; see [Extending privfed](extending.md).

A strategy or adapter method with settings of its own has its own table inside
its section, listed right after it (`[server.fedadam]`, `[adapter.lora]`, ...).
Only the selected method's table is used; a table for another method is still
checked (and kept, so a sweep over the method uses it). Keys that older configs
set directly in `[server]` or `[adapter]` (`server.beta1`, `adapter.rank`,
`adapter.num_virtual_tokens`, ...) are still read, with a `DeprecationWarning`
naming the new key; one that the selected method does not use is checked and
ignored, as before.

"""


def render_reference() -> str:
    """The Markdown text of ``docs/configuration.md``."""
    out = [_INTRO.format(command=REGENERATE)]
    for section in sections():
        title = f"`[{section.path}]`" if section.path else "Top level"
        out.append(f"## {title}\n\n")
        if section.summary:
            out.append(_rst_to_md(section.summary) + "\n\n")
        if not section.fields:
            out.append("(Only sub-tables.)\n\n")
            continue
        out.append("| key | type | default | allowed | description |\n|---|---|---|---|---|\n")
        for f in section.fields:
            key = f.path.rsplit(".", 1)[-1]
            row = [f"`{key}`", f.type, f"`{f.default}`", f.allowed, _rst_to_md(f.help)]
            out.append("| " + " | ".join(_cell(c) for c in row) + " |\n")
        out.append("\n")
    return "".join(out).rstrip("\n") + "\n"


def main() -> None:
    """Print the reference to stdout."""
    print(render_reference(), end="")


if __name__ == "__main__":
    main()
