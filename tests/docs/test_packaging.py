"""Packaging (pyproject.toml): the base install is what the SDK needs, each extra declares
every third-party module its code imports, and a program whose extra is missing says so
in one line."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

from lattice_protocol import __version__
from tests.docs.test_docs import ALLOWED_IMPORTS, REPO, imported_modules

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]

# Who installs what (README): app backends the base, end users `daemon`, operators
# `gateway`; and the packages each install runs.
INSTALLS = {
    "base": ((), ("lattice_client",)),
    # `embedded` declares llama_cpp, which only the embedded engine's worker imports
    "daemon": (("daemon", "embedded"),
               ("lattice_daemon", "lattice_ctl", "providers", "lattice_protocol")),
    "gateway": (("gateway",), ("lattice_gateway", "lattice_protocol")),
}

# Modules of the daemon and gateway extras that the SDK must not need.
NOT_FOR_THE_SDK = ("click", "rich", "psutil", "nacl", "platformdirs", "tomli_w", "starlette",
                   "uvicorn", "sqlalchemy", "redis", "orjson")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared(extras: tuple[str, ...]) -> set[str]:
    requirements = [*PROJECT["dependencies"]]
    for extra in extras:
        requirements += PROJECT["optional-dependencies"][extra]
    return {canonical(re.match(r"[A-Za-z0-9._-]+", r).group()) for r in requirements}


def third_party_imports(packages: tuple[str, ...]) -> set[str]:
    found = set().union(*(imported_modules(package) for package in packages))
    return {m for m in found if m not in sys.stdlib_module_names and m not in ALLOWED_IMPORTS}


@pytest.mark.parametrize("install", sorted(INSTALLS))
def test_every_imported_module_is_declared(install: str) -> None:
    extras, packages = INSTALLS[install]
    distributions = packages_distributions()
    # A module not installed here (tomli on 3.11+) is named like its distribution.
    undeclared = {module for module in third_party_imports(packages)
                  if not {canonical(d) for d in distributions.get(module, [module])}
                  & declared(extras)}
    assert undeclared == set()


def test_the_base_install_is_what_the_sdk_imports() -> None:
    assert declared(()) == {"httpx"} == third_party_imports(("lattice_client",))


def run_without_extras(code: str, *argv: str) -> subprocess.CompletedProcess[str]:
    """Python code run as if only the base install were there: an import hook refuses
    every module of the extras."""
    guard = ("import sys\n"
             "class NoExtras:\n"
             "    def find_spec(self, name, path=None, target=None):\n"
             f"        if name.split('.')[0] in {NOT_FOR_THE_SDK!r}:\n"
             "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
             "sys.meta_path.insert(0, NoExtras())\n")
    return subprocess.run([sys.executable, "-c", guard + code, *argv], capture_output=True,
                          text=True, cwd=REPO, timeout=60)


def test_the_sdk_runs_without_the_extras() -> None:
    done = run_without_extras(
        "import httpx, lattice_client as lc\n"
        "answer = {'id': 'c1', 'choices': []}\n"
        "transport = httpx.MockTransport(lambda request: httpx.Response(200, json=answer))\n"
        "client = lc.ComputeClient(lc.ApiKeyCredential('sk_test'), base_url='http://gw.test',"
        " http_client=httpx.Client(transport=transport))\n"
        "print(client.chat_complete_for_personal_runtime('rt_1', {'messages': []})['id'])\n"
        "import lattice_protocol\n"
        "print(lattice_protocol.parse_model_string('lattice:personal:rt_1').lattice_id)\n"
        "try:\n    lattice_protocol.KeyPair\nexcept ModuleNotFoundError as e:\n"
        "    print('sealing needs', e.name)\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["c1", "rt_1", "sealing needs nacl"]


@pytest.mark.parametrize(("program", "extra", "code"), [
    ("lattice-ctl", "daemon", "import lattice_ctl; lattice_ctl.main()"),
    ("lattice-daemon", "daemon", "from lattice_daemon.__main__ import main; main()"),
    ("lattice-gateway", "gateway", "from lattice_gateway.__main__ import main; main()"),
])
def test_a_program_without_its_extra_says_which_to_install(program: str, extra: str,
                                                           code: str, tmp_path: Path) -> None:
    argv = {"lattice-ctl": ["ping"], "lattice-daemon": ["--home", str(tmp_path)],
            "lattice-gateway": ["serve"]}[program]
    done = run_without_extras(f"sys.argv[1:] = {argv!r}\n{code}")
    assert done.returncode == 1
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    assert line.startswith(f"{program}: the module ")
    assert line.endswith(f"install the {extra} extra: pip install 'lattice-runtimes[{extra}]'")


def test_ctl_version_needs_no_extra() -> None:
    done = run_without_extras("sys.argv[1:] = ['--version']\n"
                              "import lattice_ctl; lattice_ctl.main()")
    assert (done.returncode, done.stdout) == (0, f"lattice-ctl {__version__}\n")
