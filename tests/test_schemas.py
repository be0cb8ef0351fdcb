"""kernel.schemas: APISIX's validation messages, resource checks and defaults (spec §2.8, §11)."""

from __future__ import annotations

import base64
import copy
import sys
import types
from typing import Any

import pytest

from kernel.schemas import (
    INJECTED_MARK,
    SCHEMAS,
    ValidationError,
    check_resource,
    compile_validator,
    fill_defaults,
    plugin_conf_schema,
    resource_kind,
    schema_error,
    validate_resource,
    with_defaults,
)
from kernel.schemas.checks import FILTER_FUNC_UNSUPPORTED, SCRIPT_UNSUPPORTED
from plugin_sdk.errors import ExprError

UP = {"type": "roundrobin", "nodes": {"127.0.0.1:1980": 1}}
HOST_RE = r"^\*$|^\*?[0-9a-zA-Z-._\[\]:]+$"
HASH_VARS_RE = (
    "^((uri|server_name|server_addr|request_uri|remote_port|remote_addr|query_string|host"
    "|hostname|mqtt_client_id)|arg_[0-9a-zA-z_-]+)$"
)


def _pem(label: str, size: int = 300) -> str:
    der = bytes([0x30, 0x82, 0x01, 0x0A]) + bytes(range(256))[: size - 4]
    body = base64.b64encode(der).decode()
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return f"-----BEGIN {label}-----\n" + "\n".join(lines) + f"\n-----END {label}-----\n"


CERT = _pem("CERTIFICATE")
KEY = _pem("PRIVATE KEY")


def error_of(kind: str, obj: Any) -> str:
    with pytest.raises(ValidationError) as info:
        validate_resource(kind, obj)
    return info.value.message


def route(**fields: Any) -> dict[str, Any]:
    return {"uri": "/index.html", "upstream": copy.deepcopy(UP), **fields}


# -- spec §2.8 concrete examples and §11 admin cases ---------------------------------------------


def test_case8_methods_enum_item_index() -> None:
    msg = error_of("route", {"methods": ["invalid_method"], "uri": "/index.html", "upstream": UP})
    assert msg == (
        'invalid configuration: property "methods" validation failed: '
        "failed to validate item 1: matches none of the enum values"
    )
    msg = error_of("route", route(methods=["GET", "invalid_method"]))
    assert "failed to validate item 2: matches none of the enum values" in msg


def test_case8_methods_unique() -> None:
    assert error_of("route", route(methods=["GET", "GET"])) == (
        'invalid configuration: property "methods" validation failed: '
        "expected unique items but items 1 and 2 are equal"
    )
    assert error_of("route", route(methods=["GET", "PUT", "POST", "PUT"])).endswith(
        "items 2 and 4 are equal"
    )


def test_body_id_minus_one() -> None:
    assert error_of("route", route(id=-1)) == (
        'invalid configuration: property "id" validation failed: '
        "object matches none of the required"
    )


def test_ids_accepted() -> None:
    validate_resource("route", route(id=1))
    validate_resource("route", route(id="r-1_a.b"))
    assert "object matches none of the required" in error_of("route", route(id="a/b"))
    assert "object matches none of the required" in error_of("route", route(id="x" * 65))


def test_case11_host_and_hosts() -> None:
    assert error_of("route", route(host="a.com", hosts=["b.com"])) == (
        "only one of host or hosts is allowed"
    )


def test_remote_addr_and_remote_addrs() -> None:
    assert error_of("route", route(remote_addr="127.0.0.1", remote_addrs=["127.0.0.2"])) == (
        "only one of remote_addr or remote_addrs is allowed"
    )


def test_route_without_uri() -> None:
    assert error_of("route", {"upstream": UP}) == (
        "invalid configuration: allOf 1 failed: "
        "value should match only one schema, but matches none"
    )


def test_case23_schema_error_has_no_prefix() -> None:
    assert schema_error("route", {"upstream": UP}) == (
        "allOf 1 failed: value should match only one schema, but matches none"
    )
    assert schema_error("routes", route()) is None


def test_case10_host_patterns() -> None:
    validate_resource("route", route(host="*.foo.com"))
    validate_resource("route", route(host="*"))
    validate_resource("route", route(host="[::1]:80"))
    assert error_of("route", route(host="a.*.foo.com")) == (
        'invalid configuration: property "host" validation failed: '
        f'failed to match pattern "{HOST_RE}" with "a.*.foo.com"'
    )
    assert error_of("route", route(hosts=["foo.com", "a.*.foo.com"])) == (
        'invalid configuration: property "hosts" validation failed: failed to validate item 2: '
        f'failed to match pattern "{HOST_RE}" with "a.*.foo.com"'
    )


def test_case31_status() -> None:
    validate_resource("route", route(status=0))
    assert error_of("route", route(status=100)) == (
        'invalid configuration: property "status" validation failed: '
        "matches none of the enum values"
    )


def test_case17_chash_missing_key() -> None:
    assert error_of("upstream", {"nodes": {"127.0.0.1:8080": 1}, "type": "chash"}) == (
        "missing key"
    )


def test_property_errors_before_structure_errors() -> None:
    # no uri (allOf fails) *and* a bad method: the property is reported
    msg = error_of("route", {"methods": ["BAD"], "upstream": UP})
    assert msg.startswith('invalid configuration: property "methods" validation failed')


def test_id_checks_are_not_ours() -> None:
    validate_resource("route", route(id="3"))  # path/body agreement is the Admin API's job


# -- jsonschema vocabulary -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "obj", "expected"),
    [
        ("consumer", {}, 'property "username" is required'),
        ("route", route(uri=1), 'property "uri" validation failed: '
         "wrong type: expected string, got number"),
        ("route", route(uri=""), 'property "uri" validation failed: '
         "string too short, expected at least 1, got 0"),
        ("route", route(name="n" * 257), 'property "name" validation failed: '
         "string too long, expected at most 256, got 257"),
        ("route", route(enable_websocket="yes"), 'property "enable_websocket" validation '
         "failed: wrong type: expected boolean, got string"),
        ("route", route(plugins=[1]), 'property "plugins" validation failed: '
         "wrong type: expected object, got table"),
        ("route", route(priority=None), 'property "priority" validation failed: '
         "wrong type: expected integer, got userdata"),
        ("route", route(priority=1.5), 'property "priority" validation failed: '
         "wrong type: expected integer, got number"),
        ("route", route(hosts=[]), 'property "hosts" validation failed: '
         "expect array to have at least 1 items"),
        ("route", route(foo=1), "additional properties forbidden, found foo"),
        ("route", route(labels={"env": ""}), 'property "labels" validation failed: '
         'failed to validate env (matching ".*"): string too short, expected at least 1, got 0'),
        ("route", route(labels={"env": "a b"}), 'property "labels" validation failed: '
         'failed to validate env (matching ".*"): failed to match pattern "^\\S+$" with "a b"'),
        ("route", route(timeout={"connect": 0, "send": 1, "read": 1}),
         'property "timeout" validation failed: property "connect" validation failed: '
         "expected 0 to be greater than 0"),
        ("route", route(timeout={"connect": 1, "send": 1}),
         'property "timeout" validation failed: property "read" is required'),
        ("upstream", {"nodes": {"a:80": -1}}, 'property "nodes" validation failed: '
         "object matches none of the required"),
        ("upstream", {"nodes": {}, "retries": -1}, 'property "retries" validation failed: '
         "expected -1 to be at least 0"),
        ("upstream", {"nodes": {}, "keepalive_pool": {"size": 0}},
         'property "keepalive_pool" validation failed: property "size" validation failed: '
         "expected 0 to be at least 1"),
        ("upstream", {"nodes": {}, "checks": {"active": {"healthy": {"http_statuses": [600]}}}},
         'property "checks" validation failed: property "active" validation failed: '
         'property "healthy" validation failed: property "http_statuses" validation failed: '
         "failed to validate item 1: expected 600 to be at most 599"),
        ("upstream", {"nodes": {}, "checks": {"passive": {}}},
         'property "checks" validation failed: '
         'object matches none of the required: ["active"] or ["active","passive"]'),
        ("upstream", {"nodes": {}, "service_name": "a", "discovery_type": "dns"},
         "value should match only one schema, but matches both schemas 1 and 2"),
        ("upstream", {"nodes": {}, "scheme": "ftp"},
         'property "scheme" validation failed: matches none of the enum values'),
        ("upstream", {"nodes": {}, "tls": {"client_cert": CERT}},
         'property "tls" validation failed: failed to validate dependent schema for '
         '"client_cert": property "client_key" is required'),
        ("upstream", {"nodes": {}, "tls": {"client_cert_id": 1, "client_cert": CERT,
                                           "client_key": KEY}},
         'property "tls" validation failed: failed to validate dependent schema for '
         """"client_cert_id": value wasn't supposed to match schema"""),
        ("credential", {"plugins": {"key-auth": {}, "basic-auth": {}}},
         'property "plugins" validation failed: expect object to have at most 1 properties'),
        ("route", route(script="return {}--pad", plugins={}),
         "value wasn't supposed to match schema"),
        ("ssl", {"cert": CERT, "key": KEY}, "then clause did not match"),
        ("ssl", {"type": "client"}, "else clause did not match"),
        ("route", route(remote_addr="not-an-ip"), 'property "remote_addr" validation failed: '
         "object matches none of the required"),
        ("route", {"uri": "/x"}, 'object matches none of the required: ["plugins","uri"] or '
         '["upstream","uri"] or ["upstream_id","uri"] or ["service_id","uri"] or '
         '["plugins","uris"] or ["upstream","uris"] or ["upstream_id","uris"] or '
         '["service_id","uris"] or ["script","uri"] or ["script","uris"]'),
    ],
)
def test_messages(kind: str, obj: Any, expected: str) -> None:
    assert error_of(kind, obj) == "invalid configuration: " + expected
    assert schema_error(kind, obj) == expected


def test_value_quoting_in_pattern_message() -> None:
    assert schema_error("route", route(host='a"b\\c')) == (
        'property "host" validation failed: '
        f'failed to match pattern "{HOST_RE}" with "a\\"b\\\\c"'
    )


def test_generic_vocabulary_from_compiled_validators() -> None:
    check = compile_validator({
        "type": "object",
        "properties": {
            "n": {"type": ["string", "number"]},
            "m": {"type": "number", "multipleOf": 5},
            "x": {"type": "number", "exclusiveMaximum": 10},
            "c": {"const": "fixed"},
            "p": {"type": "array", "items": [{"type": "string"}], "additionalItems": False},
            "a": {"type": "array", "maxItems": 1},
            "dep": {"type": "string"},
        },
        "dependencies": {"dep": ["other"]},
        "minProperties": 1,
    })
    assert check({"n": {}}) == (
        'property "n" validation failed: wrong type: expected one of string, number, got table'
    )
    assert check({"m": 7}) == 'property "m" validation failed: expected 7 to be a multiple of 5'
    assert check({"x": 10}) == 'property "x" validation failed: expected 10 to be smaller than 10'
    assert check({"c": "other"}) == 'property "c" validation failed: failed to check const value'
    assert check({"p": ["a", "b"]}) == (
        'property "p" validation failed: found unexpected extra items in array'
    )
    assert check({"a": [1, 2]}) == (
        'property "a" validation failed: expect array to have at most 1 items'
    )
    assert check({"dep": "x"}) == 'property "other" is required when "dep" is set'
    assert check({}) == "expect object to have at least 1 properties"
    assert check({"n": 1.0, "x": 9.5}) is None


def test_schema_ref_and_bool_schemas() -> None:
    schema = {
        "definitions": {"port": {"type": "integer", "minimum": 1, "maximum": 65535}},
        "type": "object",
        "properties": {"port": {"$ref": "#/definitions/port"}, "never": False},
    }
    check = compile_validator(schema)
    assert check({"port": 70000}) == (
        'property "port" validation failed: expected 70000 to be at most 65535'
    )
    assert check({"never": 1}) == 'property "never" validation failed: expect false always'
    assert check({"port": 80}) is None


def test_compile_validator_is_cached_and_pure() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer", "default": 3}}}
    assert compile_validator(schema) is compile_validator(schema)
    value: dict[str, Any] = {}
    assert compile_validator(schema)(value) is None
    assert value == {}


# -- resource checks -----------------------------------------------------------------------------


def test_pass_host_rewrite() -> None:
    up = {"nodes": {"127.0.0.1:80": 1}, "pass_host": "rewrite"}
    msg = "`upstream_host` can't be empty when `pass_host` is `rewrite`"
    assert error_of("upstream", up) == msg
    assert error_of("upstream", {**up, "upstream_host": ""}).startswith(
        'invalid configuration: property "upstream_host" validation failed'
    )  # the host pattern refuses "" before the rewrite check
    assert error_of("route", route(upstream=up)) == msg
    assert error_of("service", {"upstream": up}) == msg
    validate_resource("upstream", {**up, "upstream_host": "example.com"})


def test_ipv6_nodes_must_be_bracketed() -> None:
    msg = "invalid configuration: IPv6 address must be enclosed with '[' and ']'"
    assert error_of("upstream", {"nodes": {"::1:80": 1}}) == msg
    assert error_of("upstream", {"nodes": [{"host": "::1", "port": 80, "weight": 1}]}) == msg
    validate_resource("upstream", {"nodes": {"[::1]:80": 1, "[::2]": 1}})
    validate_resource("upstream", {"nodes": [{"host": "[::1]", "port": 80, "weight": 1}]})


def test_hash_node_ports() -> None:
    assert error_of("upstream", {"nodes": {"127.0.0.1:65536": 1}}) == "invalid port 65536"
    assert error_of("upstream", {"nodes": {"127.0.0.1:0": 1}}) == "invalid port 0"
    assert error_of("upstream", {"nodes": {"[::1]:70000": 1}}) == "invalid port 70000"
    validate_resource("upstream", {"nodes": {"127.0.0.1:65535": 1, "example.com": 2}})


def test_node_forms() -> None:
    validate_resource("upstream", {"nodes": {}})
    validate_resource("upstream", {"nodes": []})
    validate_resource("upstream", {"nodes": {"127.0.0.1:80": 0, "foo.com:8080": 3}})
    validate_resource("upstream", {
        "nodes": [{"host": "127.0.0.1", "port": 80, "weight": 1, "priority": -1,
                   "metadata": {"zone": "a"}},
                  {"host": "foo.com", "weight": 1}],
    })
    validate_resource("upstream", {"service_name": "svc", "discovery_type": "dns"})
    assert error_of("upstream", {"type": "roundrobin"}) == (
        "invalid configuration: value should match only one schema, but matches none"
    )
    assert error_of("upstream", {"nodes": [{"host": "a", "port": 0, "weight": 1}]}) == (
        'invalid configuration: property "nodes" validation failed: '
        "object matches none of the required"
    )


@pytest.mark.parametrize(
    ("hash_on", "key", "error"),
    [
        ("vars", "remote_addr", None),
        ("vars", "arg_user-id", None),
        ("vars", "mqtt_client_id", None),
        ("vars", "not_support",
         f'invalid configuration: failed to match pattern "{HASH_VARS_RE}" with "not_support"'),
        ("header", "X-User_ID", None),
        ("cookie", "sid", None),
        ("header", "bad header",
         'invalid configuration: failed to match pattern "^[a-zA-Z0-9-_]+$" with "bad header"'),
        ("vars_combinations", "$request_uri$remote_addr", None),
        ("consumer", None, None),
        ("header", None, "missing key"),
    ],
)
def test_chash_keys(hash_on: str, key: str | None, error: str | None) -> None:
    up: dict[str, Any] = {"nodes": {"127.0.0.1:80": 1}, "type": "chash", "hash_on": hash_on}
    if key is not None:
        up["key"] = key
    if error is None:
        validate_resource("upstream", up)
    else:
        assert error_of("upstream", up) == error


def test_chash_default_hash_on_is_vars() -> None:
    up = {"nodes": {"127.0.0.1:80": 1}, "type": "chash", "key": "uri"}
    validate_resource("upstream", up)
    assert error_of("upstream", {**up, "key": "http_x"}).startswith(
        "invalid configuration: failed to match pattern"
    )


def test_filter_func_and_script_are_lua_only() -> None:
    fn = "function(vars) return vars.arg_name == 'json' end"
    assert error_of("route", route(filter_func=fn)) == FILTER_FUNC_UNSUPPORTED
    assert "filter_func" in FILTER_FUNC_UNSUPPORTED and "vars" in FILTER_FUNC_UNSUPPORTED
    assert error_of("route", route(filter_func="return 1")).startswith(
        'invalid configuration: property "filter_func" validation failed'
    )
    assert error_of("route", {"uri": "/a", "script": "return {} -- x"}) == SCRIPT_UNSUPPORTED
    assert error_of("service", {"script": "return {} -- x"}) == SCRIPT_UNSUPPORTED


def test_ssl_checks() -> None:
    validate_resource("ssl", {"cert": CERT, "key": KEY, "sni": "test.com"})
    validate_resource("ssl", {"cert": CERT, "key": KEY, "snis": ["*.test.com"]})
    validate_resource("ssl", {"type": "client", "cert": CERT, "key": KEY})
    validate_resource("ssl", {"cert": "$secret://vault/1/c" + "x" * 120,
                              "key": "$env://KEY" + "x" * 60, "sni": "a.com"})
    bad_cert = "-----BEGIN CERTIFICATE-----\n" + "not base64 !" * 20 + "\n-----END CERTIFICATE-----"
    assert error_of("ssl", {"cert": bad_cert, "key": KEY, "sni": "a.com"}) == (
        "failed to parse cert: PEM_read_bio_X509_AUX() failed"
    )
    assert error_of("ssl", {"cert": CERT, "key": "k" * 64, "sni": "a.com"}) == (
        "failed to parse key: PEM_read_bio_PrivateKey() failed"
    )
    assert error_of("ssl", {"cert": CERT, "key": KEY, "sni": "a.com", "certs": [CERT]}) == (
        "mismatched number of certs and keys"
    )
    assert error_of("ssl", {"cert": CERT, "key": "short", "sni": "a.com"}) == (
        'invalid configuration: property "key" validation failed: '
        "string too short, expected at least 64, got 5"
    )


def test_other_kinds() -> None:
    validate_resource("consumer", {"username": "jack", "plugins": {"key-auth": {"key": "k"}}})
    assert error_of("consumer", {"username": "ja ck"}).startswith(
        'invalid configuration: property "username" validation failed: failed to match pattern'
    )
    validate_resource("credential", {"id": "jack/credentials/c1", "plugins": {"key-auth": {}}})
    validate_resource("consumer_group", {"id": "g1", "plugins": {}})
    validate_resource("plugin_config", {"id": 1, "plugins": {}})
    validate_resource("global_rule", {"id": "1", "plugins": {"prometheus": {}}})
    assert error_of("global_rules", {"id": "1"}) == (
        'invalid configuration: property "plugins" is required'
    )
    validate_resource("proto", {"content": "syntax = \"proto3\";"})
    validate_resource("plugin_metadata", {"id": "file-logger", "log_format": {}})
    validate_resource("stream_route", {"server_port": 9100, "upstream": UP})
    validate_resource("plugins", [{"name": "key-auth"}, {"name": "ip-restriction", "stream": True}])
    validate_resource("id_schema", "route-1")
    assert error_of("stream_route", {"server_port": 0}) == (
        'invalid configuration: property "server_port" validation failed: '
        "expected 0 to be at least 1"
    )
    with pytest.raises(KeyError):
        resource_kind("routs")


def test_vars_expression_checked_with_plugin_sdk_expr(monkeypatch: pytest.MonkeyPatch) -> None:
    stub = types.ModuleType("plugin_sdk.expr")

    def compile_expr(rule: Any) -> Any:
        for leaf in rule:
            if isinstance(leaf, list) and len(leaf) == 3 and leaf[1] == "=":
                raise ExprError("invalid operator '='")
        return lambda _vars: True

    stub.compile_expr = compile_expr  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "plugin_sdk.expr", stub)
    assert error_of("route", route(vars=[["arg_name", "=", "aaa"]])) == (
        "failed to validate the 'vars' expression: invalid operator '='"
    )
    validate_resource("route", route(vars=[["arg_k", "==", "v"]]))


def test_vars_expression_with_real_expr_module() -> None:
    pytest.importorskip("plugin_sdk.expr")
    assert error_of("route", route(vars=[["arg_name", "=", "aaa"]])) == (
        "failed to validate the 'vars' expression: invalid operator '='"
    )
    validate_resource("route", route(vars=[["arg_k", "==", "v"], ["http_k", "==", "v"]]))


# -- defaults ------------------------------------------------------------------------------------


def test_route_defaults_and_stored_object_untouched() -> None:
    stored = route()
    snapshot = copy.deepcopy(stored)
    filled = with_defaults("route", stored)
    assert stored == snapshot
    assert filled["priority"] == 0 and filled["status"] == 1
    up = filled["upstream"]
    assert (up["type"], up["pass_host"], up["scheme"], up["hash_on"]) == (
        "roundrobin", "pass", "http", "vars"
    )
    assert "keepalive_pool" not in up and "checks" not in up
    validate_resource("route", stored)
    assert stored == snapshot
    assert check_resource("route", stored) == filled
    assert stored == snapshot


def test_explicit_values_win_over_defaults() -> None:
    filled = with_defaults("route", route(priority=5, status=0))
    assert (filled["priority"], filled["status"]) == (5, 0)


def test_upstream_nested_defaults() -> None:
    up = {
        "nodes": [{"host": "127.0.0.1", "port": 80, "weight": 1}],
        "keepalive_pool": {},
        "tls": {"client_cert_id": 1},
        "checks": {"active": {"healthy": {}, "unhealthy": {"interval": 2}},
                   "passive": {"unhealthy": {}}},
    }
    filled = with_defaults("upstream", up)
    assert up["keepalive_pool"] == {}
    assert filled["nodes"][0]["priority"] == 0
    assert filled["keepalive_pool"] == {"size": 320, "idle_timeout": 60, "requests": 1000}
    assert filled["tls"]["verify"] is False
    active = filled["checks"]["active"]
    assert (active["type"], active["timeout"], active["concurrency"], active["http_path"]) == (
        "http", 1, 10, "/"
    )
    assert active["https_verify_certificate"] is True
    assert active["healthy"] == {"interval": 1, "http_statuses": [200, 302], "successes": 2}
    assert active["unhealthy"]["interval"] == 2
    assert active["unhealthy"]["http_statuses"] == [429, 404, 500, 501, 502, 503, 504, 505]
    assert (active["unhealthy"]["http_failures"], active["unhealthy"]["tcp_failures"],
            active["unhealthy"]["timeouts"]) == (5, 2, 3)
    passive = filled["checks"]["passive"]
    assert passive["type"] == "http"
    assert passive["unhealthy"] == {"http_statuses": [429, 500, 503], "tcp_failures": 2,
                                    "timeouts": 7, "http_failures": 5}


def test_defaults_are_fresh_copies() -> None:
    a = with_defaults("upstream", {"nodes": {}, "checks": {"active": {"healthy": {}}}})
    a["checks"]["active"]["healthy"]["http_statuses"].append(999)
    b = with_defaults("upstream", {"nodes": {}, "checks": {"active": {"healthy": {}}}})
    assert b["checks"]["active"]["healthy"]["http_statuses"] == [200, 302]


def test_ssl_defaults_seen_by_later_keywords() -> None:
    filled = with_defaults("ssl", {"cert": CERT, "key": KEY, "sni": "a.com"})
    assert (filled["type"], filled["status"]) == ("server", 1)


def test_empty_table_normalised_in_copy() -> None:
    validate_resource("route", route(plugins=[]))  # Lua cannot tell {} from []
    assert with_defaults("route", route(plugins=[]))["plugins"] == {}
    assert with_defaults("route", route(vars={}))["vars"] == []


def test_fill_defaults_generic() -> None:
    schema = {
        "type": "object",
        "properties": {
            "count": {"type": "integer", "default": 2},
            "opts": {"type": "object", "properties": {"on": {"type": "boolean", "default": False}}},
        },
    }
    conf: dict[str, Any] = {"opts": {}}
    assert fill_defaults(schema, conf) == {"count": 2, "opts": {"on": False}}
    assert conf == {"opts": {}}


# -- plugin _meta injection ----------------------------------------------------------------------


PLUGIN_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"key": {"type": "string"}},
    "required": ["key"],
    "additionalProperties": False,
}


def test_plugin_meta_injected() -> None:
    injected = plugin_conf_schema(PLUGIN_SCHEMA)
    assert injected["$comment"] == INJECTED_MARK == "this is a mark for our injected plugin schema"
    assert "_meta" not in PLUGIN_SCHEMA["properties"]  # the plugin's own schema is unchanged
    assert plugin_conf_schema(PLUGIN_SCHEMA) is injected
    assert plugin_conf_schema(injected) is injected
    check = compile_validator(injected)
    assert check({"key": "k", "_meta": {"disable": True, "priority": 10, "filter": [],
                                        "error_response": {"m": 1}, "pre_function": "x"}}) is None
    assert check({"key": "k", "_meta": {"error_response": "text"}}) is None
    assert check({"key": "k", "_meta": {"foo": 1}}) == (
        'property "_meta" validation failed: additional properties forbidden, found foo'
    )
    assert check({"key": "k", "_meta": {"disable": "yes"}}) == (
        'property "_meta" validation failed: property "disable" validation failed: '
        "wrong type: expected boolean, got string"
    )
    assert check({"key": "k", "_meta": {"error_response": 1}}) == (
        'property "_meta" validation failed: property "error_response" validation failed: '
        "value should match only one schema, but matches none"
    )
    assert check({"_meta": {"disable": True}}) == 'property "key" is required'


def test_plugin_meta_on_schema_without_properties() -> None:
    injected = plugin_conf_schema({"type": "object"})
    assert set(injected["properties"]) == {"_meta"}
    assert compile_validator(injected)({"anything": 1, "_meta": {"disable": False}}) is None


def test_schemas_table_complete() -> None:
    assert set(SCHEMAS) >= {
        "route", "service", "upstream", "consumer", "credential", "consumer_group",
        "plugin_config", "global_rule", "ssl", "plugin_metadata", "proto", "stream_route",
        "id_schema", "plugins",
    }
    for schema in SCHEMAS.values():
        compile_validator(schema)
