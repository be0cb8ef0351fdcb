"""kernel.config: merge rules, env substitution, validation, listeners, instance id."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from kernel import config as kconfig
from kernel.config import (
    Config,
    ConfigError,
    access_log_path,
    deep_merge,
    instance_id,
    listen_addresses,
    load_config,
    load_yaml,
    parse_duration,
    parse_flag,
    parse_size,
    ssl_listen_addresses,
    worker_processes,
)

REPO = Path(__file__).resolve().parent.parent


DEFAULT_PLUGINS = ["real-ip", "request-id", "fault-injection", "cors", "ip-restriction",
                   "basic-auth", "jwt-auth", "key-auth", "consumer-restriction", "proxy-mirror",
                   "proxy-rewrite", "limit-conn", "limit-count", "limit-req", "gzip",
                   "traffic-split", "redirect", "response-rewrite", "prometheus", "echo",
                   "http-logger", "file-logger"]
"""The shipped default list (serverless functions are not in it: they run arbitrary code)."""


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> Config:
    return load_config(write(tmp_path, text), env=env or {})


def error_of(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text, env)
    return str(info.value)


# --- deep merge -------------------------------------------------------------------------


def test_objects_merge_key_by_key():
    base = {"a": {"x": 1, "y": {"p": 1, "q": 2}}, "b": True}
    merged = deep_merge(base, {"a": {"y": {"q": 3, "r": 4}}, "c": "new"})
    assert merged == {"a": {"x": 1, "y": {"p": 1, "q": 3, "r": 4}}, "b": True, "c": "new"}


def test_arrays_replace_wholesale():
    merged = deep_merge({"plugins": ["a", "b", "c"], "l": [{"x": 1}]}, {"plugins": ["z"], "l": []})
    assert merged == {"plugins": ["z"], "l": []}


def test_array_replaces_even_an_object():
    assert deep_merge({"a": {"x": 1}}, {"a": [1, 2]}) == {"a": [1, 2]}


def test_null_deletes_default_key():
    base = {"deployment": {"admin": {"allow_admin": ["127.0.0.0/24"], "https_admin": False}}}
    merged = deep_merge(base, {"deployment": {"admin": {"allow_admin": None}}, "absent": None})
    assert merged == {"deployment": {"admin": {"https_admin": False}}}


def test_empty_mapping_replaces_like_an_empty_list():
    # APISIX cannot tell {} from [] (both are empty Lua tables): the default is replaced.
    assert deep_merge({"plugin_attr": {"p": {"a": 1}}}, {"plugin_attr": {}}) == {"plugin_attr": {}}


def test_inputs_are_not_modified():
    base = {"a": {"b": [1]}, "c": {"d": 1}}
    override = {"a": {"b": [2]}, "c": {"e": 2}}
    merged = deep_merge(base, override)
    merged["a"]["b"].append(3)
    merged["c"]["d"] = 9
    assert base == {"a": {"b": [1]}, "c": {"d": 1}}
    assert override == {"a": {"b": [2]}, "c": {"e": 2}}


@pytest.mark.parametrize(
    ("base", "override", "message"),
    [
        (
            {"apisix": {"enable_admin": True}},
            {"apisix": {"enable_admin": "yes"}},
            "failed to merge, path[apisix->enable_admin] expect: boolean, but got: string",
        ),
        (
            {"apisix": {"router": {"http": "x"}}},
            {"apisix": {"router": {"http": 1}}},
            "failed to merge, path[apisix->router->http] expect: string, but got: number",
        ),
        (
            {"apisix": {"router": {"http": "x"}}},
            {"apisix": {"router": 5}},
            "failed to merge, path[apisix->router] expect: table, but got: number",
        ),
        (
            {"apisix": {"id": "x"}},
            {"apisix": {"id": {"a": 1}}},
            "failed to merge, path[apisix->id] expect: string, but got: table",
        ),
        (
            {"plugins": ["a"]},
            {"plugins": "a"},
            "failed to merge, path[plugins] expect: table, but got: string",
        ),
        (
            {"apisix": {"ssl": {"listen": [{"port": 9443}]}}},
            {"apisix": {"ssl": {"listen": 9443}}},
            "failed to merge, path[apisix->ssl->listen] expect: table, but got: number",
        ),
    ],
)
def test_type_mismatch_messages(base, override, message):
    with pytest.raises(ConfigError) as info:
        deep_merge(base, override)
    assert str(info.value) == message


def test_path_argument_prefixes_messages():
    with pytest.raises(ConfigError, match=r"path\[apisix->enable_admin\]"):
        deep_merge({"enable_admin": True}, {"enable_admin": 1}, path="apisix")


def test_node_listen_may_be_a_single_number():
    assert deep_merge({"apisix": {"node_listen": [9080]}}, {"apisix": {"node_listen": 8080}}) == {
        "apisix": {"node_listen": 8080}
    }


def test_nginx_config_scalars_may_switch_type():
    base = {
        "nginx_config": {
            "worker_processes": "auto",
            "http": {"client_max_body_size": 0, "real_ip_recursive": "off"},
        }
    }
    merged = deep_merge(
        base,
        {
            "nginx_config": {
                "worker_processes": 4,
                "http": {"client_max_body_size": "1m", "real_ip_recursive": True},
            }
        },
    )
    assert merged["nginx_config"]["worker_processes"] == 4
    assert merged["nginx_config"]["http"] == {
        "client_max_body_size": "1m",
        "real_ip_recursive": True,
    }


def test_nginx_config_table_over_scalar_is_an_error():
    with pytest.raises(ConfigError) as info:
        deep_merge(
            {"nginx_config": {"error_log": "logs/e"}}, {"nginx_config": {"error_log": {"a": 1}}}
        )
    assert str(info.value) == (
        "failed to merge, path[nginx_config->error_log] expect: string, but got: table"
    )


def test_keyring_accepts_any_type():
    base = {"apisix": {"data_encryption": {"keyring": ["a" * 16]}}}
    merged = deep_merge(base, {"apisix": {"data_encryption": {"keyring": "b" * 16}}})
    assert merged["apisix"]["data_encryption"]["keyring"] == "b" * 16


def test_merge_error_from_file_names_the_file(tmp_path):
    message = error_of(tmp_path, "apisix:\n  enable_admin: 'no'\n")
    assert message.startswith(
        "failed to merge, path[apisix->enable_admin] expect: boolean, but got: string"
    )
    assert str(tmp_path / "config.yaml") in message


# --- YAML flavour -----------------------------------------------------------------------


def test_only_true_false_are_booleans():
    data = load_yaml("a: on\nb: off\nc: yes\nd: true\ne: False\nf: 2024-01-02\n")
    assert data == {"a": "on", "b": "off", "c": "yes", "d": True, "e": False, "f": "2024-01-02"}


def test_nginx_on_off_unquoted(tmp_path):
    cfg = load(tmp_path, "nginx_config:\n  http:\n    real_ip_recursive: on\n")
    assert cfg.get("nginx_config.http.real_ip_recursive") == "on"


# --- loading ----------------------------------------------------------------------------


def test_shipped_config_runs_without_external_service():
    cfg = load_config(REPO / "conf" / "config.yaml", env={})
    # embedded mode: proxy + Admin API, config persisted to apisix.yaml (no etcd)
    assert cfg.get("deployment.role") == "traditional"
    assert cfg.get("deployment.role_traditional.config_provider") == "yaml"
    assert cfg.get("apisix.node_listen") == [9080]
    assert cfg.conf_dir == REPO / "conf"
    assert cfg.resolve(cfg.get("apisix.standalone_file")) == REPO / "conf" / "apisix.yaml"


def test_defaults_fill_in_everything(tmp_path):
    cfg = load(tmp_path, "# only comments\n\n")
    assert cfg.get("apisix.node_listen") == [9080]
    assert cfg.get("apisix.router.http") == "radixtree_host_uri"
    assert cfg.get("plugins") == DEFAULT_PLUGINS
    assert cfg.get("apisix.plugin_dirs") == []
    assert cfg.get("nginx_config.http.real_ip_from") == ["127.0.0.1", "unix:"]
    assert cfg.get("nginx_config.http.max_header_count") == 100
    assert cfg.get("deployment.admin.admin_listen.port") == 9180
    assert cfg.get("plugin_attr.prometheus.export_addr.port") == 9091
    assert cfg.path == tmp_path / "config.yaml"
    assert cfg.conf_dir == tmp_path


def test_user_plugins_list_replaces_default(tmp_path):
    cfg = load(tmp_path, "plugins:\n  - proxy-rewrite\n")
    assert cfg.get("plugins") == ["proxy-rewrite"]


def test_null_deletes_in_file(tmp_path):
    cfg = load(tmp_path, "deployment:\n  admin:\n    allow_admin:\n")
    assert cfg.get("deployment.admin.allow_admin", "deleted") == "deleted"
    assert cfg.get("deployment.admin.admin_listen.port") == 9180


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"failed to read config file .*nope\.yaml"):
        load_config(tmp_path / "nope.yaml", env={})


def test_invalid_yaml(tmp_path):
    message = error_of(tmp_path, "apisix:\n  node_listen: [9080\n")
    assert "invalid YAML" in message and "config.yaml" in message


def test_top_level_must_be_mapping(tmp_path):
    assert "top level must be a mapping" in error_of(tmp_path, "- 1\n- 2\n")


def test_get_dotted_and_defaults(tmp_path):
    cfg = load(tmp_path, "apisix:\n  node_listen:\n    - ip: 127.0.0.1\n      port: 9100\n")
    assert cfg.get("apisix.node_listen.0.port") == 9100
    assert cfg.get("apisix.node_listen.1.port", "none") == "none"
    assert cfg.get("apisix.nope.deeper", 5) == 5
    assert cfg.get("apisix.router")["ssl"] == "radixtree_sni"


def test_etcd_host_env_override(tmp_path):
    env = {"APISIX_DEPLOYMENT_ETCD_HOST": '["http://10.0.0.1:2379", "http://10.0.0.2:2379"]'}
    cfg = load(tmp_path, "", env)
    assert cfg.get("deployment.etcd.host") == ["http://10.0.0.1:2379", "http://10.0.0.2:2379"]
    assert "APISIX_DEPLOYMENT_ETCD_HOST" in error_of(
        tmp_path, "", {"APISIX_DEPLOYMENT_ETCD_HOST": "http://x"}
    )


# --- environment substitution -----------------------------------------------------------


def test_env_value_is_typed_by_yaml(tmp_path):
    cfg = load(
        tmp_path,
        'apisix:\n  node_listen: ${{PORT}}\n  id: "${{ID}}"\n',
        {"PORT": "8080", "ID": "123"},
    )
    assert cfg.get("apisix.node_listen") == 8080
    assert cfg.get("apisix.id") == "123"


def test_env_default_used_when_unset(tmp_path):
    cfg = load(tmp_path, "apisix:\n  node_listen:\n    - ${{PORT:=9181}}\n")
    assert cfg.get("apisix.node_listen") == [9181]
    cfg = load(tmp_path, "apisix:\n  node_listen:\n    - ${{PORT:=9181}}\n", {"PORT": "9300"})
    assert cfg.get("apisix.node_listen") == [9300]


def test_env_missing_names_file_variable_and_line(tmp_path):
    message = error_of(tmp_path, "apisix:\n  enable_admin: true\n  id: ${{SIXGATE_ID}}\n")
    assert "SIXGATE_ID" in message
    assert str(tmp_path / "config.yaml") in message
    assert "line 3" in message


def test_env_in_comment_lines_is_ignored(tmp_path):
    cfg = load(tmp_path, "# set ${{UNSET_VAR}} to ...\napisix:\n  # ${{OTHER}}\n  id: x\n")
    assert cfg.get("apisix.id") == "x"


# --- validation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        (
            "apisix:\n  node_listen: 70000\n",
            ["apisix.node_listen", "70000 is greater than the maximum of 65535"],
        ),
        (
            "apisix:\n  node_listen: [9080, 0]\n",
            ["apisix.node_listen[1]", "0 is less than the minimum of 1"],
        ),
        (
            "apisix:\n  node_listen:\n    - port: '80'\n",
            ["apisix.node_listen[0].port", "'80' is not of type 'integer'"],
        ),
        (
            "apisix:\n  node_listen: [abc]\n",
            ["apisix.node_listen[0]", "'abc' is invalid, expected a port number"],
        ),
        ("apisix:\n  node_listen: []\n", ["apisix.node_listen", "[]"]),
        ("apisix:\n  router:\n    http: radix\n", ["apisix.router.http", "'radix' is not one of"]),
        ("apisix:\n  control:\n    port: 99999\n", ["apisix.control.port", "99999"]),
        (
            "nginx_config:\n  error_log_level: verbose\n",
            ["nginx_config.error_log_level", "'verbose' is not one of"],
        ),
        (
            "nginx_config:\n  http:\n    client_max_body_size: 1x\n",
            ["nginx_config.http.client_max_body_size", "'1x'", "8k, 1m"],
        ),
        (
            "nginx_config:\n  http:\n    client_max_body_size: -1\n",
            ["nginx_config.http.client_max_body_size", "-1 is less than the minimum of 0"],
        ),
        (
            "nginx_config:\n  http:\n    max_header_size: 0\n",
            ["nginx_config.http.max_header_size", "0"],
        ),
        (
            "nginx_config:\n  http:\n    max_header_count: 0\n",
            ["nginx_config.http.max_header_count", "0 is less than the minimum of 1"],
        ),
        (
            "nginx_config:\n  http:\n    real_ip_from: [10.0.0.300/8]\n",
            [
                "nginx_config.http.real_ip_from[0]",
                "'10.0.0.300/8' is not a valid IP address or CIDR",
            ],
        ),
        (
            "nginx_config:\n  http:\n    real_ip_recursive: yes\n",
            ["nginx_config.http.real_ip_recursive", "'yes'", "on, off, true or false"],
        ),
        (
            "nginx_config:\n  http:\n    real_ip_header: ''\n",
            ["nginx_config.http.real_ip_header", "''"],
        ),
        (
            "nginx_config:\n  http:\n    keepalive_timeout: soon\n",
            ["nginx_config.http.keepalive_timeout", "'soon'", "60s"],
        ),
        (
            "nginx_config:\n  worker_processes: 0\n",
            ["nginx_config.worker_processes", "0 is less than the minimum of 1"],
        ),
        (
            "nginx_config:\n  worker_processes: many\n",
            ["nginx_config.worker_processes", "'many'", "an integer >= 1 or auto"],
        ),
        ("deployment:\n  role: standalone\n", ["deployment.role", "'standalone' is not one of"]),
        (
            "deployment:\n  role_data_plane:\n    config_provider: consul\n",
            ["deployment.role_data_plane.config_provider", "'consul' is not one of"],
        ),
        (
            "deployment:\n  role_data_plane: null\n",
            ["deployment", "'role_data_plane' is a required property"],
        ),
        (
            "deployment:\n  role_data_plane:\n    config_provider: null\n",
            ["deployment.role_data_plane", "'config_provider' is a required property"],
        ),
        (
            "deployment:\n  role: control_plane\n"
            "  role_control_plane:\n    config_provider: yaml\n",
            ["deployment.role_control_plane.config_provider", "'yaml' is not one of"],
        ),
        ("plugins:\n  - 1\n", ["plugins[0]", "1 is not of type 'string'"]),
        ("plugin_attr:\n  my-plugin: 1\n", ["plugin_attr.my-plugin", "1 is not of type 'object'"]),
        ("apisix:\n  plugin_dirs: [1]\n", ["apisix.plugin_dirs[0]", "1 is not of type"]),
        (
            "deployment:\n  admin:\n    admin_key:\n      - {name: a, key: b, role: root}\n",
            ["deployment.admin.admin_key[0].role", "'root' is not one of"],
        ),
        (
            "deployment:\n  etcd:\n    host: [127.0.0.1:2379]\n",
            ["deployment.etcd.host[0]", "does not match"],
        ),
        ("apisix: null\n", ["'apisix' is a required property"]),
    ],
)
def test_validation_errors_name_key_and_value(tmp_path, text, fragments):
    message = error_of(tmp_path, text)
    assert message.startswith(f"invalid configuration in {tmp_path / 'config.yaml'}: ")
    for fragment in fragments:
        assert fragment in message, message


@pytest.mark.parametrize(
    "text",
    [
        "apisix:\n  node_listen: 9080\n",
        "apisix:\n  node_listen: [9080, 9081]\n",
        "apisix:\n  node_listen:\n    - {ip: 127.0.0.1, port: 9080}\n    - port: 9081\n    - {}\n",
        "apisix:\n  router:\n    http: radixtree_uri_with_parameter\n",
        "nginx_config:\n  worker_processes: auto\n",
        "nginx_config:\n  worker_processes: '4'\n",
        "nginx_config:\n  http:\n    client_max_body_size: 8k\n    keepalive_timeout: 75\n",
        "nginx_config:\n  http:\n    real_ip_recursive: true\n",
        "nginx_config:\n  http:\n    real_ip_from: ['10.0.0.0/8', '::1', 'unix:']\n",
        "nginx_config:\n  http:\n    access_log: false\n",
        "nginx_config:\n  http:\n    access_log: ''\n",
        "deployment:\n  role: traditional\n",
        "deployment:\n  role_data_plane:\n    config_provider: json\n",
        "plugin_attr: {}\n",
        "apisix:\n  id: 42\n",
    ],
)
def test_valid_shapes_are_accepted(tmp_path, text):
    load(tmp_path, text)


def test_schema_is_a_valid_json_schema():
    from jsonschema import Draft202012Validator

    Draft202012Validator.check_schema(kconfig._SCHEMA)


# --- scalar helpers ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (60, 60.0),
        (1.5, 1.5),
        ("60s", 60.0),
        ("1m", 60.0),
        ("500ms", 0.5),
        ("1m30s", 90.0),
        ("1h 30m", 5400.0),
        ("2d", 172800.0),
        ("1w", 604800.0),
        ("1M", 2592000.0),
        ("1y", 31536000.0),
        ("10", 10.0),
        (" 5s ", 5.0),
        ("0", 0.0),
    ],
)
def test_parse_duration(value, seconds):
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["", "s", "10x", "-1s", "1.5.2s", True, -1, None])
def test_parse_duration_rejects(value):
    with pytest.raises(ValueError):
        parse_duration(value)


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (0, 0),
        (1024, 1024),
        ("0", 0),
        ("100", 100),
        ("8k", 8192),
        ("8K", 8192),
        ("1m", 1048576),
        ("2M", 2097152),
        ("1g", 1073741824),
    ],
)
def test_parse_size(value, size):
    assert parse_size(value) == size


@pytest.mark.parametrize("value", ["1x", "k", "-1", -1, True, "1.5m", "1t"])
def test_parse_size_rejects(value):
    with pytest.raises(ValueError):
        parse_size(value)


def test_parse_flag():
    assert parse_flag("on") is True and parse_flag(True) is True and parse_flag("ON") is True
    assert parse_flag("off") is False and parse_flag(False) is False
    with pytest.raises(ValueError):
        parse_flag("maybe")


# --- listeners --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "v4_only", "with_v6"),
    [
        ("apisix:\n  node_listen: 8080\n", [("0.0.0.0", 8080)], [("0.0.0.0", 8080), ("::", 8080)]),
        (
            "apisix:\n  node_listen: [9080, 9081, 9080]\n",
            [("0.0.0.0", 9080), ("0.0.0.0", 9081)],
            [("0.0.0.0", 9080), ("::", 9080), ("0.0.0.0", 9081), ("::", 9081)],
        ),
        (
            "apisix:\n  node_listen:\n    - ip: 127.0.0.1\n      port: 9100\n    - port: 9101\n"
            "    - {}\n    - ip: '[::1]'\n      port: 9102\n    - {ip: 127.0.0.1, port: 9100}\n",
            [("127.0.0.1", 9100), ("0.0.0.0", 9101), ("0.0.0.0", 9080), ("::1", 9102)],
            [
                ("127.0.0.1", 9100),
                ("0.0.0.0", 9101),
                ("::", 9101),
                ("0.0.0.0", 9080),
                ("::", 9080),
                ("::1", 9102),
            ],
        ),
    ],
)
def test_listen_addresses(tmp_path, text, v4_only, with_v6):
    cfg = load(tmp_path, text)
    assert listen_addresses(cfg, ipv6=False) == v4_only
    assert listen_addresses(cfg, ipv6=True) == with_v6


def test_enable_ipv6_false_disables_v6(tmp_path):
    cfg = load(tmp_path, "apisix:\n  enable_ipv6: false\n  node_listen: 9080\n")
    assert listen_addresses(cfg, ipv6=True) == [("0.0.0.0", 9080)]


def test_ipv6_follows_host_detection(tmp_path, monkeypatch):
    cfg = load(tmp_path, "")
    monkeypatch.setattr(kconfig, "host_supports_ipv6", lambda: False)
    assert listen_addresses(cfg) == [("0.0.0.0", 9080)]
    monkeypatch.setattr(kconfig, "host_supports_ipv6", lambda: True)
    assert listen_addresses(cfg) == [("0.0.0.0", 9080), ("::", 9080)]


def test_ssl_listen_addresses(tmp_path):
    cfg = load(
        tmp_path, "apisix:\n  ssl:\n    listen:\n      - port: 9443\n      - ip: 127.0.0.1\n"
    )
    assert ssl_listen_addresses(cfg, ipv6=False) == [("0.0.0.0", 9443), ("127.0.0.1", 9443)]
    cfg = load(tmp_path, "apisix:\n  ssl:\n    enable: false\n")
    assert ssl_listen_addresses(cfg, ipv6=False) == []


# --- derived values ---------------------------------------------------------------------


def test_worker_processes(tmp_path):
    assert worker_processes(load(tmp_path, "")) == 1
    assert worker_processes(load(tmp_path, "nginx_config:\n  worker_processes: 3\n")) == 3
    assert worker_processes(load(tmp_path, "nginx_config:\n  worker_processes: '2'\n")) == 2
    assert worker_processes(load(tmp_path, "nginx_config:\n  worker_processes: auto\n")) >= 1


def test_access_log_path(tmp_path):
    assert access_log_path(load(tmp_path, "")) == tmp_path / "logs" / "access.log"
    assert (
        access_log_path(load(tmp_path, "nginx_config:\n  http:\n    access_log: false\n")) is None
    )
    assert access_log_path(load(tmp_path, "nginx_config:\n  http:\n    access_log: ''\n")) is None
    assert (
        access_log_path(load(tmp_path, "nginx_config:\n  http:\n    enable_access_log: false\n"))
        is None
    )
    assert access_log_path(
        load(tmp_path, "nginx_config:\n  http:\n    access_log: /var/log/a.log\n")
    ) == Path("/var/log/a.log")


def test_resolve_relative_to_conf_dir(tmp_path):
    cfg = load(tmp_path, "")
    assert cfg.resolve("logs/error.log") == tmp_path / "logs" / "error.log"
    assert cfg.resolve(Path("apisix.yaml")) == tmp_path / "apisix.yaml"
    assert cfg.resolve("/abs/file") == Path("/abs/file")
    assert cfg.resolve("~/x") == Path.home() / "x"


# --- instance id ------------------------------------------------------------------------


def test_instance_id_generated_and_persisted(tmp_path):
    cfg = load(tmp_path, "")
    first = instance_id(cfg)
    assert uuid.UUID(first).version == 4
    assert (tmp_path / "apisix.uid").read_text() == first
    assert instance_id(cfg) == first


def test_instance_id_from_config_written_to_file(tmp_path):
    cfg = load(tmp_path, "apisix:\n  id: gateway-7\n")
    assert instance_id(cfg) == "gateway-7"
    assert (tmp_path / "apisix.uid").read_text() == "gateway-7"


def test_instance_id_file_wins_and_is_trimmed(tmp_path):
    (tmp_path / "apisix.uid").write_text("  from-file \n\n")
    cfg = load(tmp_path, "apisix:\n  id: gateway-7\n")
    assert instance_id(cfg) == "from-file"
    assert (tmp_path / "apisix.uid").read_text() == "  from-file \n\n"


def test_instance_id_empty_file_is_replaced(tmp_path):
    (tmp_path / "apisix.uid").write_text("\n")
    cfg = load(tmp_path, "apisix:\n  id: 42\n")
    assert instance_id(cfg) == "42"
    assert (tmp_path / "apisix.uid").read_text() == "42"


def test_instance_id_unwritable_dir_still_returns(tmp_path):
    cfg = Config(
        data={"apisix": {"id": "x"}},
        path=tmp_path / "none" / "config.yaml",
        conf_dir=tmp_path / "none",
    )
    assert instance_id(cfg) == "x"


# --- profiles ---------------------------------------------------------------------------


def test_default_path_is_conf_config_yaml_under_cwd(tmp_path, monkeypatch):
    (tmp_path / "conf").mkdir()
    write(tmp_path / "conf", "apisix:\n  node_listen: 9001\n")
    monkeypatch.chdir(tmp_path)
    cfg = load_config(env={})
    assert cfg.path == tmp_path / "conf" / "config.yaml"
    assert cfg.get("apisix.node_listen") == 9001
    assert cfg.get("apisix.standalone_file") == "apisix.yaml"


def test_profile_selects_config_file_and_standalone_file(tmp_path, monkeypatch):
    (tmp_path / "conf").mkdir()
    write(tmp_path / "conf", "apisix:\n  node_listen: 9001\n")
    write(tmp_path / "conf", "apisix:\n  node_listen: 9002\n", "config-dev.yaml")
    monkeypatch.chdir(tmp_path)
    cfg = load_config(env={"APISIX_PROFILE": "dev"})
    assert cfg.path == tmp_path / "conf" / "config-dev.yaml"
    assert cfg.get("apisix.node_listen") == 9002
    assert cfg.get("apisix.standalone_file") == "apisix-dev.yaml"


def test_profile_keeps_explicit_standalone_file(tmp_path):
    path = write(tmp_path, "apisix:\n  standalone_file: routes.yaml\n")
    cfg = load_config(path, env={"APISIX_PROFILE": "dev"})
    assert cfg.get("apisix.standalone_file") == "routes.yaml"


def test_bad_profile_name(tmp_path):
    with pytest.raises(ConfigError, match="APISIX_PROFILE"):
        load_config(env={"APISIX_PROFILE": "../etc"})


# --- the defaults file ------------------------------------------------------------------


def test_packaged_default_identical_to_conf_file():
    source = REPO / "conf" / "config-default.yaml"
    packaged = REPO / "kernel" / "config_default.yaml"
    assert packaged.read_bytes() == source.read_bytes(), (
        "kernel/config_default.yaml must be a copy of conf/config-default.yaml: "
        "cp conf/config-default.yaml kernel/config_default.yaml"
    )


def test_packaged_default_used_when_conf_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(kconfig, "_REPO_DEFAULT", tmp_path / "missing.yaml")
    assert kconfig.default_config_path() == REPO / "kernel" / "config_default.yaml"
    cfg = load(tmp_path, "")
    assert cfg.get("plugins") == DEFAULT_PLUGINS


def test_defaults_alone_are_valid(tmp_path):
    defaults = load_yaml((REPO / "conf" / "config-default.yaml").read_text())
    cfg = load(tmp_path, "")
    assert cfg.data == defaults


@pytest.mark.parametrize(("text", "expected"), [("true", True), ("false", False),
                                                ("poll", "poll")])
def test_plugin_watch_is_a_flag_or_poll(tmp_path: Path, text: str, expected: object) -> None:
    assert load(tmp_path, f"apisix:\n  plugin_watch: {text}\n").get("apisix.plugin_watch") == (
        expected
    )


def test_plugin_watch_refuses_anything_else(tmp_path: Path) -> None:
    message = error_of(tmp_path, "apisix:\n  plugin_watch: pol\n")
    assert "apisix.plugin_watch: 'pol' is invalid, expected true, false or \"poll\"" in message
