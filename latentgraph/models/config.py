"""A base for the models' frozen dataclass configs: JSON-safe dicts both ways (they are
stored in safetensors metadata)."""

from __future__ import annotations

from dataclasses import asdict, fields


class JsonConfig:
    """Mixin for frozen dataclasses: ``to_dict()`` with tuples as lists, ``from_dict()`` that
    refuses unknown fields."""

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict):
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields: {', '.join(sorted(unknown))}")
        return cls(**d)
