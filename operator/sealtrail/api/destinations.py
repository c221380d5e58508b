"""Where a row goes: the index and stream naming rules, and the templates that pick one per row.

An export's index (Splunk, Elasticsearch) or log stream (CloudWatch), and a route's `index`
override, is a template with `${tenant:id}` and `${event:type}`. The export loop renders it for
each row (`render_template`); the models refuse, when a config or a custom resource is read, a
template that some tenant could make render a name the backend refuses (`check_template`). Both
the worker and the operator read these rules from here, so "the operator says Ready" and "the
worker takes the config" cannot disagree.

`template_pattern` and `KNOWN_VARIABLES_ONLY` say the same as `check_template` as regular
expressions that RE2 and Python read alike, for the CRDs' CEL rules.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final

__all__ = [
    "CLOUDWATCH_LOG_STREAM",
    "DESTINATION_RULES",
    "ELASTIC_INDEX",
    "KNOWN_VARIABLES_ONLY",
    "SPLUNK_INDEX",
    "TEMPLATE_MAX_LENGTH",
    "VARIABLES",
    "DestinationRule",
    "TemplateError",
    "check_template",
    "render_template",
    "template_pattern",
]

#: The variables a template may use.
VARIABLES: Final = ("tenant:id", "event:type")
#: The longest template a model or a custom resource takes (variables included). Far beyond any
#: name a backend takes, it only bounds what a CRD's rules must read.
TEMPLATE_MAX_LENGTH: Final = 1024


class TemplateError(ValueError):
    """A destination template can render a name the backend would refuse."""


@dataclass(frozen=True, slots=True)
class DestinationRule:
    """What a backend accepts as an index or stream name, and how values are made to fit.

    A legal name is a `first_chars` character, then `name_chars` characters, `max_length` in
    all, and none of `reserved`. The character sets are bodies of a regex class (`a-z0-9_-`)
    that RE2 and Python read alike.

    Substituted values (tenant ids, event types) are lowercased when the backend wants that and
    every character outside `fit_chars` becomes `_`, so that a template that is valid for
    its literal parts is valid for every tenant: an illegal name is a config error, caught when
    the config is loaded, not a 400 at three in the morning.
    """

    what: str  # "Splunk index", for messages
    first_chars: str
    name_chars: str
    fit_chars: str
    lowercase: bool
    max_length: int
    reserved: frozenset[str] = frozenset()
    #: A whole legal name but for `reserved` (compiled once from the fields above).
    pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)
    #: One character a substituted value keeps.
    allowed_chars: re.Pattern[str] = field(init=False, repr=False, compare=False)
    #: One character a name may hold after its first.
    name_char: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        """Compile the patterns the fields describe."""
        whole = f"[{self.first_chars}][{self.name_chars}]{{0,{self.max_length - 1}}}"
        object.__setattr__(self, "pattern", re.compile(whole))
        object.__setattr__(self, "allowed_chars", re.compile(f"[{self.fit_chars}]"))
        object.__setattr__(self, "name_char", re.compile(f"[{self.name_chars}]"))

    def legal(self, name: str) -> bool:
        """True when the backend takes `name` as it is."""
        return self.pattern.fullmatch(name) is not None and name not in self.reserved


#: Splunk index names: lowercase letters, digits, `_` and `-`, not starting with `_` or `-`
#: (Splunk reserves `_` for its own indexes), at most 80 characters.
SPLUNK_INDEX: Final = DestinationRule(
    what="Splunk index",
    first_chars="a-z0-9",
    name_chars="a-z0-9_-",
    fit_chars="a-z0-9_-",
    lowercase=True,
    max_length=80,
)

# Index names, as Elasticsearch's MetadataCreateIndexService checks them: lowercase; none of
# \ / * ? " < > | , # : or space (':' is the cross-cluster separator since 7.0); not starting
# with - _ +; not . or ..; at most 255 bytes. Only printable ASCII is allowed here, so that
# characters and bytes count the same and "lowercase" needs no locale.
ELASTIC_INDEX: Final = DestinationRule(
    what="Elasticsearch index name",
    first_chars=r"a-z0-9!$%&'().;=@\[\]^`{}~",
    name_chars=r"a-z0-9!$%&'()+\-.;=@\[\]^_`{}~",
    fit_chars="a-z0-9_.-",
    lowercase=True,
    max_length=255,
    reserved=frozenset({".", ".."}),
)

#: CloudWatch Logs stream names: 1 to 512 characters, none of them `:` or `*`.
CLOUDWATCH_LOG_STREAM: Final = DestinationRule(
    what="CloudWatch log stream name",
    first_chars="^:*",
    name_chars="^:*",
    fit_chars="^:*",
    lowercase=False,
    max_length=512,
)

#: Every rule, by the backend kind whose destination it names.
DESTINATION_RULES: Final = {
    "splunk": SPLUNK_INDEX,
    "elastic": ELASTIC_INDEX,
    "cloudwatch": CLOUDWATCH_LOG_STREAM,
}

_VARIABLE: Final = re.compile(r"\$\{(tenant:id|event:type)\}")
_SAMPLES: Final = ({"tenant:id": "Acme.Corp-1", "event:type": "safety.decision"},
                   {"tenant:id": "_system", "event:type": "x.y"})


def _fit(value: str, rule: DestinationRule) -> str:
    if rule.lowercase:
        value = value.lower()
    return "".join(char if rule.allowed_chars.match(char) else "_" for char in value)


def render_template(template: str, row_tenant: str, row_type: str, rule: DestinationRule) -> str:
    """Substitute `${tenant:id}` and `${event:type}`, fitted to the backend's rule and length."""
    values = {"tenant:id": row_tenant, "event:type": row_type}
    rendered = _VARIABLE.sub(lambda match: _fit(values[match.group(1)], rule), template)
    return rendered[: rule.max_length]


def check_template(template: str, rule: DestinationRule) -> None:
    """Raise `TemplateError` if any tenant could make `template` render an illegal name."""
    unknown = re.findall(r"\$\{([^}]*)\}", _VARIABLE.sub("", template))
    if unknown:
        raise TemplateError(
            f"unknown variable ${{{unknown[0]}}}; use ${{tenant:id}} or ${{event:type}}"
        )
    if len(_VARIABLE.sub("", template)) > rule.max_length:
        raise TemplateError(f"{rule.what} {template!r} is longer than {rule.max_length}")
    for sample in _SAMPLES:
        rendered = render_template(template, sample["tenant:id"], sample["event:type"], rule)
        if not rule.legal(rendered):
            raise TemplateError(
                f"{template!r} renders {rendered!r}, which is not a legal {rule.what}"
            )
    # A character the samples' renders cut off at the maximum length is still there when the
    # values are shorter (a one-letter tenant).
    illegal = [char for char in _VARIABLE.sub("", template) if not rule.name_char.fullmatch(char)]
    if illegal:
        raise TemplateError(f"{template!r} holds {illegal[0]!r}, which no {rule.what} may hold")


# -- the same, as regular expressions (for the CRDs) ---------------------------------------------

_ANY_VARIABLE: Final = r"\$\{(?:tenant:id|event:type)\}"

#: The templates `check_template` finds no unknown variable in: once the known variables are
#: taken out, no `${` is followed by a `}`. Read as a walk over the characters left: after a
#: `$`, then after a `${`, where no `}` may follow.
KNOWN_VARIABLES_ONLY: Final = (
    rf"^(?:{_ANY_VARIABLE}|[^$]|\$(?:{_ANY_VARIABLE}|\$)*[^${{])*"
    rf"(?:\$(?:{_ANY_VARIABLE}|\$)*(?:\{{(?:{_ANY_VARIABLE}|[^}}])*)?)?$"
)


def _token(variable: str) -> str:
    return re.escape("${" + variable + "}")


def template_pattern(rule: DestinationRule) -> str:
    """The templates whose every render is legal under `rule`, but for `rule.reserved`.

    With `KNOWN_VARIABLES_ONLY` and "not one of `rule.reserved`", a template matches exactly
    when `check_template` takes it. This holds for rules of the shape `DestinationRule` has
    (a first character, then any of a set, truncated to the maximum length), which the checks
    below make sure of for what the shape does not say by itself.
    """
    if re.fullmatch(f"[{rule.name_chars}]", ":"):
        raise ValueError(f"{rule.what}: ':' is legal, so a variable could read as literal text")
    renders = {variable: [_fit(sample[variable], rule) for sample in _SAMPLES]
               for variable in VARIABLES}
    for name in rule.reserved:
        if len(name) >= rule.max_length or any(value in name for values in renders.values()
                                               for value in values):
            raise ValueError(f"{rule.what}: a template with a variable could render {name!r}")
    name_char, first_char = f"[{rule.name_chars}]", f"[{rule.first_chars}]"
    anywhere = [variable for variable, values in renders.items()
                if all(re.fullmatch(f"{name_char}+", value) for value in values)]
    first = [variable for variable in anywhere
             if all(re.match(first_char, value) for value in renders[variable])]
    tail = ""
    if anywhere:
        tail = "(?:" + "|".join(_token(variable) for variable in anywhere) + ")*"

    def literals(most: int) -> str:
        # Literal characters are counted, variables are not (check_template's length test).
        return f"(?:{name_char}{tail}){{0,{most}}}"

    options = [f"{first_char}{tail}{literals(rule.max_length - 1)}"]
    options += [f"{_token(variable)}{tail}{literals(rule.max_length)}" for variable in first]
    return "^(?:" + "|".join(options) + ")$"
