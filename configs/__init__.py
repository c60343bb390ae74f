"""Shipped configs (imported as ``npu_retu.configs``; the YAML files sit beside this file)."""

from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent


def config_path(name: str) -> Path:
    """Path of a shipped config by file name (``demo_cpu.yaml``) or stem (``demo_cpu``)."""
    from npu_retu.errors import UserError

    candidate = CONFIG_DIR / (name if name.endswith((".yaml", ".yml")) else f"{name}.yaml")
    if not candidate.is_file():
        names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
        if "/" in name or "\\" in name or Path(name).exists():  # meant as a path
            raise UserError(f"config file not found: {name}" + (" (it is a folder)" if Path(name).is_dir() else ""))
        raise UserError(f"config file not found: {name}, and no shipped config has that name; shipped: {', '.join(names)}")
    return candidate


def resolve_config_path(name: str) -> Path:
    """What ``--config NAME`` means: an existing file as given, else a shipped config by name."""
    return Path(name) if Path(name).is_file() else config_path(name)
