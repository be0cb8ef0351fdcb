"""Admin key at startup: generated and written back, the well-known default refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kernel.admin_key import WELL_KNOWN_KEY, check_admin_keys
from kernel.config import ConfigError, load_config

TRADITIONAL = "deployment:\n  role: traditional\n  role_traditional:\n    config_provider: yaml\n"


def keys(path: Path) -> list[dict]:
    return yaml.safe_load(path.read_text())["deployment"]["admin"]["admin_key"]


def test_missing_key_is_generated_and_written_back_keeping_comments(tmp_path: Path) -> None:
    cfg_path = tmp_path / "config.yaml"
    cfg_path.write_text("# my gateway\napisix:\n  node_listen: [9080]  # proxy\n" + TRADITIONAL)
    result = check_admin_keys(load_config(cfg_path))
    assert result.generated is not None and len(result.generated) == 32
    assert result.generated.isalpha() and result.written_back
    text = cfg_path.read_text()
    assert text.startswith("# my gateway\n") and "# proxy" in text
    assert keys(cfg_path) == [{"name": "admin", "key": result.generated, "role": "admin"}]
    # the next start finds it and generates nothing
    again = check_admin_keys(load_config(cfg_path))
    assert again.generated is None


def test_empty_key_in_user_file_is_filled(tmp_path: Path) -> None:
    cfg_path = tmp_path / "config.yaml"
    cfg_path.write_text(TRADITIONAL + "  admin:\n    allow_admin: [127.0.0.0/24]\n"
                        "    admin_key:\n      - name: admin\n        key: ''\n        role: admin\n"
                        "      - name: viewer\n        key: viewkey\n        role: viewer\n")
    result = check_admin_keys(load_config(cfg_path))
    assert result.written_back
    assert keys(cfg_path)[0]["key"] == result.generated
    assert keys(cfg_path)[1] == {"name": "viewer", "key": "viewkey", "role": "viewer"}


def test_well_known_key_refused_unless_loopback(tmp_path: Path) -> None:
    cfg_path = tmp_path / "config.yaml"
    cfg_path.write_text(TRADITIONAL + "  admin:\n    admin_key:\n      - name: admin\n"
                        f"        key: {WELL_KNOWN_KEY}\n        role: admin\n")
    with pytest.raises(ConfigError, match="well-known default key"):
        check_admin_keys(load_config(cfg_path))
    cfg_path.write_text(cfg_path.read_text() + "    admin_listen:\n      ip: 127.0.0.1\n"
                        "      port: 9180\n")
    assert check_admin_keys(load_config(cfg_path)).generated is None
