"""Package attributes that import their module on first use (PEP 562): importing a package for
one light name (a pattern expander, a list of modes) does not pull in its heavy siblings."""
import importlib


def exports(package: str, modules: dict[str, list[str]]):
    """(`__getattr__`, `__all__`) of `package`, serving each module's listed names."""
    home = {name: module for module, names in modules.items() for name in names}

    def __getattr__(name):
        if name in home:
            return getattr(importlib.import_module(home[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__, list(home)
