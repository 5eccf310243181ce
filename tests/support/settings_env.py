"""Settings as the service builds them from a deployment file's environment variables."""

from __future__ import annotations

from safegen.settings import Settings


def settings_from_env(values: dict[str, str]) -> Settings:
    """Validate ``SAFEGEN_*`` variables the way the service reads them; each must be a setting."""
    fields = {}
    for name, value in values.items():
        assert name.startswith("SAFEGEN_"), name
        field = name.removeprefix("SAFEGEN_").lower()
        assert field in Settings.model_fields, f"{name} is not a setting (src/safegen/settings.py)"
        fields[field] = value
    return Settings.model_validate(fields)
