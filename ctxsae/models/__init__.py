"""SAE variants: ``base.py`` holds the shared interface, every other module one variant."""

import importlib
import pkgutil

from ctxsae.models.base import SAEConfig


def schemas() -> dict[str, type[SAEConfig]]:
    """{module name: its config dataclass}, found by importing every variant module."""
    schemas = {}
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        for obj in vars(module).values():
            if isinstance(obj, type) and issubclass(obj, SAEConfig) and obj is not SAEConfig and obj.__module__ == module.__name__:
                schemas[info.name] = obj
    return schemas

