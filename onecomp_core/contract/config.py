"""Parameters as data: typed fields with their allowed values declared once.

A method's parameters are dataclass fields made with :func:`param`. From
those declarations alone, :class:`Config` validates every field (and lists
every problem in one error), writes a versioned ``to_dict`` with the declared
on-disk names, and reads it back with ``from_dict`` — no plugin hand-writes
serialization, renames or ``isinstance`` checks.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

#: the kinds a parameter may declare, and how each is named in messages
_KIND_WORDS = {
    int: "an integer",
    float: "a number",
    bool: "true or false",
    str: "a string",
    dict: "a mapping",
    list: "a list",
}


class ConfigError(ValueError):
    """One or more parameters are invalid; the message lists every problem."""


@dataclass(frozen=True)
class Spec:
    """What a parameter may hold (stored in the dataclass field's metadata)."""

    kind: type | None = None
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple[Any, ...] | None = None
    optional: bool = False
    disk: str | None = None
    internal: bool = False
    saved: bool = True
    doc: str = ""
    #: allowed exceptional values outside the range (e.g. groupsize -1)
    special: tuple[Any, ...] = ()
    #: the type of every item, for list parameters
    items: type | None = None

    def problem(self, name: str, value: Any) -> str | None:
        """None when ``value`` is allowed, else one phrase naming the value and what is allowed."""
        if value is None and self.optional:
            return None
        if value in self.special and not isinstance(value, bool):
            return None
        if not self._kind_ok(value) or not self._range_ok(value):
            return f"{name}={value!r}: expected {self.describe()}"
        return None

    def _kind_ok(self, value: Any) -> bool:
        if self.choices is not None:
            return any(value == c and type(value) is type(c) for c in self.choices)
        if self.kind is None:
            return True
        if self.kind is bool:
            return isinstance(value, bool)
        if isinstance(value, bool):
            return False
        if self.kind is float:
            return isinstance(value, int | float) and math.isfinite(value)
        if self.items is not None and isinstance(value, list | tuple):
            return all(isinstance(v, self.items) for v in value)
        return isinstance(value, self.kind)

    def _range_ok(self, value: Any) -> bool:
        if self.kind not in (int, float) or self.choices is not None:
            return True
        return not (
            (self.ge is not None and value < self.ge)
            or (self.gt is not None and value <= self.gt)
            or (self.le is not None and value > self.le)
            or (self.lt is not None and value >= self.lt)
        )

    def describe(self) -> str:
        """What is allowed, in words ("an integer from 1 to 8", "one of l1, l2")."""
        if self.choices is not None:
            text = "one of " + ", ".join(str(c) for c in self.choices)
        else:
            text = _KIND_WORDS.get(self.kind, "a value") if self.kind else "a value"
            if self.items is str:
                text += " of strings"
            if self.ge is not None and self.le is not None:
                text += f" from {_num(self.ge)} to {_num(self.le)}"
            else:
                bounds = [
                    f"{op} {_num(v)}"
                    for op, v in ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt))
                    if v is not None
                ]
                text += (" " + " and ".join(bounds)) if bounds else ""
        extras = [repr(s) for s in self.special] + (["null"] if self.optional else [])
        return text + (" or " + " or ".join(extras) if extras else "")


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def param(
    default: Any = dataclasses.MISSING,
    kind: type | None = None,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    choices: tuple[Any, ...] | list[Any] | None = None,
    optional: bool = False,
    special: tuple[Any, ...] = (),
    items: type | None = None,
    disk: str | None = None,
    internal: bool = False,
    saved: bool = True,
    doc: str = "",
    factory: Any = dataclasses.MISSING,
) -> Any:
    """A dataclass field declaring a parameter: its kind, allowed range and on-disk name.

    ``kind`` is inferred from the default when not given. ``internal``
    parameters are run settings, not method parameters: they are neither
    settable from the command line nor saved; ``saved=False`` parameters are
    settable but describe the run rather than the method (layer selection).
    ``disk`` is the name in saved configs (e.g. GPTQ's ``wbits`` is ``bits``).
    """
    sample = default if factory is dataclasses.MISSING else factory()
    if kind is None and sample is not None and sample is not dataclasses.MISSING:
        kind = type(sample) if type(sample) in _KIND_WORDS else None
    spec = Spec(
        kind=kind,
        ge=ge,
        gt=gt,
        le=le,
        lt=lt,
        choices=tuple(choices) if choices is not None else None,
        optional=optional,
        disk=disk,
        internal=internal,
        saved=saved,
        doc=doc,
        special=tuple(special),
        items=items,
    )
    metadata = {"onecomp": spec}
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def spec_of(field: dataclasses.Field) -> Spec | None:
    return field.metadata.get("onecomp")


@dataclass
class Config:
    """Base of every method's parameters: generic validation and versioned (de)serialization.

    Subclasses are dataclasses whose fields are made with :func:`param`;
    cross-field rules go in :meth:`more_problems`. Bump ``config_version``
    and extend :meth:`upgrade` when saved names or meanings change.
    """

    config_version: ClassVar[int] = 1

    # -- validation ----------------------------------------------------------------------
    def problems(self) -> list[str]:
        """Every invalid parameter, one phrase each (empty when all is well)."""
        found = []
        for f in dataclasses.fields(self):
            spec = spec_of(f)
            if spec is not None:
                problem = spec.problem(f.name, getattr(self, f.name))
                if problem:
                    found.append(problem)
        return found + self.more_problems()

    def more_problems(self) -> list[str]:
        """Rules that involve several fields or the contents of a mapping; override to add."""
        return []

    def validate(self) -> None:
        """Raise one :class:`ConfigError` listing every problem."""
        problems = self.problems()
        if problems:
            lines = "\n  - ".join(problems)
            raise ConfigError(f"invalid parameters for {type(self).__name__}:\n  - {lines}")

    # -- the parameters ----------------------------------------------------------------------
    @classmethod
    def parameters(cls) -> dict[str, Spec]:
        """User-settable parameters (name → spec), in declaration order."""
        return {
            f.name: spec
            for f in dataclasses.fields(cls)
            if f.init and (spec := spec_of(f)) is not None and not spec.internal
        }

    @classmethod
    def from_user(cls, params: dict[str, Any], what: str) -> Config:
        """A validated config from user settings; unknown names are refused with the allowed ones.

        ``what`` names the settings in the message ("method 'gptq'", "--set-qep").
        """
        allowed = cls.parameters()
        unknown = sorted(set(params) - set(allowed))
        if unknown:
            raise ConfigError(
                f"unknown parameter(s) {unknown} for {what}; allowed: {', '.join(allowed)}"
            )
        config = cls(**params)
        config.validate()
        return config

    # -- serialization -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The parameters under their on-disk names, plus ``config_version``."""
        out: dict[str, Any] = {}
        for name, spec in self.parameters().items():
            if not spec.saved:
                continue
            value = getattr(self, name)
            out[spec.disk or name] = _plain(value)
        out["config_version"] = self.config_version
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        """Inverse of :meth:`to_dict`; keys that are no parameter of this config are ignored."""
        data = cls.upgrade(dict(data), int(data.get("config_version", 1)))
        by_disk = {(spec.disk or name): name for name, spec in cls.parameters().items()}
        kwargs = {by_disk[k]: v for k, v in data.items() if k in by_disk}
        return cls(**kwargs)

    @classmethod
    def upgrade(cls, data: dict[str, Any], version: int) -> dict[str, Any]:
        """Turn a dict saved by an older ``config_version`` into the current form."""
        if version > cls.config_version:
            raise ConfigError(
                f"{cls.__name__} config_version {version} is newer than this plugin reads "
                f"({cls.config_version}); upgrade the plugin"
            )
        return data


def _plain(value: Any) -> Any:
    """JSON-ready copies of containers (so a saved config never aliases live state)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
