"""``GET /install.sh`` and ``GET /install/<wheel>``: the installer points at the gateway's
own wheel, and the wheel is complete (every file in RECORD with its hash, the commands'
entry points); anything else under /install/ is a 404 envelope."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from lattice_protocol import __version__
from tests.support.gateway import InProcessGateway

WHEEL = f"lattice_runtimes-{__version__}-py3-none-any.whl"


async def test_the_served_installer_installs_this_gateways_wheel(
        gateway: InProcessGateway, tmp_path: Path) -> None:
    response = await gateway.client.get("/install.sh")
    assert response.status_code == 200
    wheel_url = shlex.quote(f"http://gateway.test/install/{WHEEL}")  # the --public-url
    assert f"\nSERVED_PACKAGE={wheel_url}\n" in response.text
    script = tmp_path / "install.sh"
    script.write_text(response.text)
    shellcheck = shutil.which("shellcheck", path=str(Path(sys.executable).parent))
    assert shellcheck
    checked = await asyncio.to_thread(
        subprocess.run, [shellcheck, "--shell=sh", "--severity=style", str(script)],
        capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout


async def test_the_wheel_is_complete(gateway: InProcessGateway) -> None:
    response = await gateway.client.get(f"/install/{WHEEL}")
    assert response.status_code == 200
    wheel = zipfile.ZipFile(io.BytesIO(response.content))
    dist_info = f"lattice_runtimes-{__version__}.dist-info"
    record = wheel.read(f"{dist_info}/RECORD").decode().splitlines()
    listed = {line.split(",")[0]: line.split(",")[1] for line in record}
    assert set(listed) == set(wheel.namelist())
    for name, digest in listed.items():
        if name != f"{dist_info}/RECORD":
            expected = base64.urlsafe_b64encode(hashlib.sha256(wheel.read(name)).digest())
            assert digest == "sha256=" + expected.rstrip(b"=").decode(), name
    assert "lattice-daemon = " in wheel.read(f"{dist_info}/entry_points.txt").decode()
    assert f"Version: {__version__}" in wheel.read(f"{dist_info}/METADATA").decode()
    for module in ("lattice_daemon/__main__.py", "lattice_ctl/cli.py",
                   "lattice_ctl/service_manager/lattice-daemon.service.tmpl",
                   "lattice_protocol/tokens.py", "lattice_gateway/install.sh"):
        assert module in listed, module
    assert not [n for n in listed if "__pycache__" in n or n.endswith(".pyc")]


async def test_other_files_under_install_are_404(gateway: InProcessGateway) -> None:
    for name in ("lattice_runtimes-0.0.1-py3-none-any.whl", "x", "..%2Fgateway.db"):
        response = await gateway.client.get(f"/install/{name}")
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"
    assert WHEEL in (await gateway.client.get("/install/x")).json()["error"]["message"]
