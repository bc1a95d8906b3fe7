"""`relay connect` at a terminal: asks which provider when it cannot decide by itself."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import time
from pathlib import Path

from tests.e2e.harness import CTL, create_runtime, ctl_env, home_paths, mint_bootstrap
from tests.support.gateway import run_gateway


class Terminal:
    """A pseudo-terminal session with a deadline on every read."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.master, slave = pty.openpty()
        self.process = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave,
                                        env=env, close_fds=True)
        os.close(slave)
        self.screen = b""

    def expect(self, text: bytes, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.screen:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"{text!r} not shown; screen: {self.screen[-500:]!r}"
            ready, _, _ = select.select([self.master], [], [], remaining)
            if ready:
                try:
                    self.screen += os.read(self.master, 4096)
                except OSError:  # the program exited and closed the terminal
                    assert text in self.screen, self.screen[-500:]
                    return

    def type(self, line: str) -> None:
        os.write(self.master, line.encode() + b"\r")

    def close(self) -> int:
        try:
            return self.process.wait(10)
        finally:
            os.close(self.master)


def test_asks_for_the_provider_and_its_url_at_a_terminal(lattice_home: Path,
                                                         tmp_path: Path) -> None:
    with run_gateway(tmp_path / "gw") as gateway:
        key = gateway.create_key("tty")
        runtime = create_runtime(gateway.url, key)
        minted = mint_bootstrap(gateway.url, key, runtime["latticeId"])
        # The question comes once the token is redeemed: only then is it known that the
        # runtime needs a model server (an assistant-runtime one does not).
        terminal = Terminal([CTL, "relay", "connect", "--gateway", gateway.url,
                             "--bootstrap-token", minted["bootstrapToken"]],
                            ctl_env(lattice_home))
        try:
            terminal.expect(b"(ollama, lmstudio, openai)")
            terminal.type("openai")
            terminal.expect(b"base URL")
            terminal.type("http://127.0.0.1:8000")
            terminal.expect(f"Paired: runtime {runtime['latticeId']}".encode())
        finally:
            code = terminal.close()
    assert code == 0
    config = home_paths(lattice_home).config_file.read_text()
    assert 'kind = "openai"' in config and "http://127.0.0.1:8000" in config
