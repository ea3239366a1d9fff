"""Built-in pipelines for `tether run`: default.yaml (the sentiment task, ~20 minutes on 2
CPU cores) and presets layered on top of it (quick.yaml: a first look in ~5 minutes;
smoke.yaml: every stage on tiny random models in seconds, a check that a pipeline runs)."""

from __future__ import annotations

from pathlib import Path

from tether.errors import ConfigError

HERE = Path(__file__).parent


def names() -> list[str]:
    return sorted(p.stem for p in HERE.glob("*.yaml"))


def pipeline_sources(spec: str | None, config: str | None) -> tuple[list[Path], str | None]:
    """The files `tether run [PIPELINE] [--config FILE]` reads, in order: the built-in default,
    a preset on top of it if PIPELINE names one, then the user's YAML (PIPELINE or --config)."""
    base = [HERE / "default.yaml"]
    if spec is None:
        return base, config
    if spec in names():
        return base + ([HERE / f"{spec}.yaml"] if spec != "default" else []), config
    if Path(spec).suffix in (".yaml", ".yml") or Path(spec).exists():
        if config:
            raise ConfigError(f"two pipeline files given ({spec} and --config {config}); "
                              f"give one")
        return base, spec
    raise ConfigError(f"'{spec}' is neither a pipeline YAML file nor a built-in preset "
                      f"({', '.join(names())})")
