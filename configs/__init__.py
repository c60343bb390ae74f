"""Shipped configs (imported as ``npu_retu.configs``; the YAML files sit beside this file)."""

from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent


def config_path(name: str) -> Path:
    """Path of a shipped config by file name (``demo_cpu.yaml``) or stem (``demo_cpu``)."""
    from npu_retu.errors import UserError

    candidate = CONFIG_DIR / (name if name.endswith((".yaml", ".yml")) else f"{name}.yaml")
    if not candidate.is_file():
        names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
        raise UserError(f"no shipped config named {name!r}; available: {', '.join(names)}")
    return candidate
