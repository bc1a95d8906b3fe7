"""The user-facing documentation stays true to the code.

Every `lattice-ctl` / `lattice-gateway` command line shown in README.md and docs/*.md
names real subcommands and options that exist where they are written; the endpoint
tables of docs/protocol.md and docs/control-api.md are the routes the gateway and the
daemon serve; the packages import each other only as docs/architecture.md says.
"""

from __future__ import annotations

import ast
import re
import shlex
from pathlib import Path

import click
import pytest

from lattice_ctl.cli import cli as ctl_cli
from lattice_gateway.cli import main as gateway_cli

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
CLIS: dict[str, click.Command] = {"lattice-ctl": ctl_cli, "lattice-gateway": gateway_cli}
COMMAND_START = re.compile(r"^(lattice-ctl|lattice-gateway)(\s|$)")


def shown_commands(text: str) -> list[str]:
    """Command lines in fenced blocks and in inline code spans, comments dropped."""
    found: list[str] = []
    in_block = False
    pending = ""
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            in_block = not in_block
            continue
        if in_block:
            line = pending + line.strip()
            pending = ""
            if line.endswith("\\"):
                pending = line[:-1] + " "
                continue
            if COMMAND_START.match(line):
                found.append(line.split(" #")[0].strip())
        else:
            found.extend(span for span in re.findall(r"`([^`]+)`", line)
                         if COMMAND_START.match(span))
    return found


def subcommands(group: click.Group) -> dict[str, click.Command]:
    ctx = click.Context(group)
    return {name: group.get_command(ctx, name) for name in group.list_commands(ctx)}


def problems_in(line: str) -> list[str]:
    """What in one shown command line the CLI would refuse (synopsis forms allowed:
    `a|b` alternatives, `[-f]` optional parts, `...` elisions)."""
    words = shlex.split(line)
    command: click.Command = CLIS[words[0]]
    problems: list[str] = []
    expects_value = False
    for word in words[1:]:
        if expects_value:
            expects_value = False
            continue
        word = word.strip("[]")
        if word in ("", "...") or word.startswith("<"):
            continue
        if word.startswith("-"):
            name = word.split("=")[0]
            option = next((p for p in command.params if isinstance(p, click.Option)
                           and name in (*p.opts, *p.secondary_opts)), None)
            if option is None and name not in ("-h", "--help"):
                problems.append(f"{line!r}: {command.name} has no option {name}")
            expects_value = bool(option and not option.is_flag and "=" not in word)
            continue
        if isinstance(command, click.Group):
            known = subcommands(command)
            alternatives = word.split("|")
            missing = [a for a in alternatives if a not in known]
            if missing:
                problems.append(f"{line!r}: {command.name} has no command {missing}")
                break
            command = known[alternatives[-1]]  # `start|logs [-f]`: options of the last
    return problems


def test_docs_stand_on_their_own() -> None:
    # They once cited sections of a product contract that is not in the repository.
    for doc in (*DOCS, REPO / "benchmarks" / "README.md"):
        assert not re.search(r"\bSPEC\b|§", doc.read_text()), doc.name


def test_docs_show_some_commands_of_both_clis() -> None:
    lines = [line for doc in DOCS for line in shown_commands(doc.read_text())]
    assert {line.split()[0] for line in lines} == set(CLIS)
    assert any("relay connect --gateway" in line for line in lines)


@pytest.mark.parametrize("doc", DOCS, ids=[d.name for d in DOCS])
def test_every_shown_command_parses(doc: Path) -> None:
    problems = [p for line in shown_commands(doc.read_text()) for p in problems_in(line)]
    assert problems == []


def test_the_checker_catches_what_the_cli_refuses() -> None:
    assert problems_in("lattice-ctl relay connect --gateway '<url>' --replace") == []
    assert problems_in("lattice-ctl daemon start|stop|logs [-f]") == []
    assert problems_in("lattice-ctl relay connect --frobnicate")
    assert problems_in("lattice-ctl daemon launch")
    assert problems_in("lattice-gateway keys create --ttl 60")  # --ttl is tokens' option


def table_endpoints(doc: str) -> set[tuple[str, str]]:
    rows = re.findall(r"^\|(?:[^|\n]*\|)*?\s*`(GET|POST|DELETE|PUT|PATCH) (/[^`]+)`\s*\|",
                      (REPO / "docs" / doc).read_text(), re.MULTILINE)
    return {(method, re.sub(r"\{[^}]+\}", "{}", path)) for method, path in rows}


def test_protocol_doc_lists_exactly_the_relay_routes() -> None:
    from lattice_gateway.routes import bootstrap, relay

    served = {(method, re.sub(r"\{[^}]+\}", "{}", route.path))
              for route in (*relay.routes, *bootstrap.routes)
              for method in route.methods - {"HEAD"}}
    assert table_endpoints("protocol.md") == served


# docs/architecture.md: routes reach the broker only as ``services.broker`` (the
# ``relay.base.RelayBroker`` protocol), never a concrete broker.
CONCRETE_BROKERS = {"lattice_gateway.relay.memory", "lattice_gateway.relay.redis"}


def imports_in_source(text: str, module: str) -> set[str]:
    """Every module (and ``module.name`` of each from-import) that the source of
    ``module`` (a dotted name) imports, relative imports resolved."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            parts = module.split(".")
            base = parts[:len(parts) - node.level] if node.level else []
            origin = ".".join([*base, *([node.module] if node.module else [])])
            found.add(origin)
            found.update(f"{origin}.{alias.name}" for alias in node.names)
    return found


def route_broker_imports(text: str, module: str) -> set[str]:
    imported = imports_in_source(text, module)
    return {name for name in imported
            if any(name == c or name.startswith(c + ".") for c in CONCRETE_BROKERS)
            or name.rsplit(".", 1)[-1] in ("MemoryBroker", "RedisBroker")}


@pytest.mark.parametrize("route", sorted((REPO / "lattice_gateway" / "routes").glob("*.py")),
                         ids=lambda p: p.name)
def test_routes_import_no_concrete_broker(route: Path) -> None:
    assert route_broker_imports(route.read_text(), f"lattice_gateway.routes.{route.stem}") \
        == set()


def test_the_broker_import_checker_catches_concrete_brokers() -> None:
    chat = "lattice_gateway.routes.chat"
    assert route_broker_imports("from ..relay.base import RelayBroker", chat) == set()
    assert route_broker_imports("from ..relay.memory import MemoryBroker", chat)
    assert route_broker_imports("from ..relay import redis", chat)
    assert route_broker_imports("import lattice_gateway.relay.redis", chat)
    assert route_broker_imports("from lattice_gateway.relay import MemoryBroker", chat)


def test_control_api_doc_lists_exactly_the_daemon_routes() -> None:
    from lattice_daemon.control import controls_routes, routes_for

    class Backend:  # routes_for only takes the bound handlers' names
        def __getattr__(self, name: str) -> None:
            return None

    served = {(method, path) for path, (method, _) in routes_for(Backend()).items()}
    served |= {(method, path) for path, (method, _) in controls_routes(Backend()).items()}
    assert table_endpoints("control-api.md") == served


# docs/architecture.md: who may import whom among our packages.
ALLOWED_IMPORTS = {
    "lattice_protocol": set(),
    "providers": set(),
    "lattice_client": set(),
    "lattice_daemon": {"lattice_protocol", "providers"},
    "lattice_ctl": {"lattice_protocol", "providers", "lattice_daemon"},
    "lattice_gateway": {"lattice_protocol"},
}


def imported_modules(package: str) -> set[str]:
    """The top-level name of every module the package's code imports (ours or not)."""
    found: set[str] = set()
    for source in (REPO / package).rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text(), str(source))):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found


def imported_packages(package: str) -> set[str]:
    return (imported_modules(package) & set(ALLOWED_IMPORTS)) - {package}


@pytest.mark.parametrize("package", sorted(ALLOWED_IMPORTS))
def test_package_dependencies_point_one_way(package: str) -> None:
    assert imported_packages(package) <= ALLOWED_IMPORTS[package]


def test_lattice_ctl_imports_only_the_daemons_shared_module() -> None:
    """lattice_ctl reaches into lattice_daemon through lattice_daemon.shared alone."""
    imported: set[str] = set()
    for source in (REPO / "lattice_ctl").rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text(), str(source))):
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module)
    daemon_modules = {name for name in imported if name.split(".")[0] == "lattice_daemon"}
    assert daemon_modules == {"lattice_daemon.shared"}


def all_docs_text() -> str:
    return "\n".join(doc.read_text() for doc in DOCS)


def test_every_environment_variable_the_code_reads_is_documented() -> None:
    read: set[str] = set()
    for package in ALLOWED_IMPORTS:
        for source in (REPO / package).rglob("*.py"):
            read.update(re.findall(r"\"((?:LATTICE|LOVELACE)_[A-Z_]*[A-Z])\"", source.read_text()))
    read.discard("LATTICE_GATEWAY")  # the prefix of the settings below
    assert read >= {"LATTICE_HOME", "LATTICE_BOOTSTRAP_TOKEN", "LOVELACE_API_KEY"}
    text = all_docs_text()
    assert sorted(name for name in read if f"`{name}`" not in text) == []


def test_every_gateway_setting_is_documented_with_its_default() -> None:
    from dataclasses import fields

    from lattice_gateway.settings import Settings

    table = (REPO / "docs" / "gateway.md").read_text()
    for setting in fields(Settings):
        if setting.name == "extra":
            continue
        row = next((line for line in table.splitlines()
                    if f"`LATTICE_GATEWAY_{setting.name.upper()}`" in line), None)
        assert row is not None, f"LATTICE_GATEWAY_{setting.name.upper()} is not in docs/gateway.md"
        default = setting.default
        if isinstance(default, int | float):
            shown = f"{default:g}" if isinstance(default, float) else str(default)
            assert re.search(rf"\b{shown}\b", row), (setting.name, row)


def test_daemon_toml_example_loads_and_shows_every_setting_and_default(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dataclasses import MISSING, fields

    from lattice_daemon.config import AssistantConfig, DaemonSettings, ProviderConfig, load_config
    from lattice_daemon.paths import get_paths

    text = (REPO / "docs" / "operations.md").read_text()
    example = re.search(r"```toml\n(.*?)```", text, re.DOTALL)
    assert example, "docs/operations.md has no daemon.toml example"
    monkeypatch.setenv("LATTICE_HOME", str(tmp_path))
    paths = get_paths()
    paths.config_file.parent.mkdir(parents=True)
    paths.config_file.write_text(example[1])
    config = load_config(paths)  # unknown keys or wrong types would raise ConfigError
    sections = {"provider": (config.provider, ProviderConfig),
                "daemon": (config.daemon, DaemonSettings),
                "assistant": (config.assistant, AssistantConfig)}
    for section, (shown, settings) in sections.items():
        for setting in fields(settings):
            assert re.search(rf"^{setting.name} = ", example[1], re.MULTILINE), \
                f"[{section}] {setting.name} is not in the example"
            default = (setting.default_factory() if setting.default is MISSING  # type: ignore[misc]
                       else setting.default)
            if default is not None:
                assert getattr(shown, setting.name) == default, (section, setting.name)
