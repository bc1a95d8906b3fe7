"""`relay connect` at a terminal: asks which provider when it cannot decide by itself."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import time
from pathlib import Path

from tests.e2e.harness import CTL, create_runtime, ctl, ctl_env, home_paths, mint_bootstrap
from tests.support.gateway import run_gateway

PROVIDER = ("--provider", "ollama", "--provider-url", "http://127.0.0.1:9")


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


def test_prompts_for_a_hidden_token_at_a_terminal(lattice_home: Path) -> None:
    terminal = Terminal([CTL, "relay", "connect", "--gateway", "http://127.0.0.1:9",
                         "--provider", "ollama"], ctl_env(lattice_home))
    secret = "plrt_v1_" + "H" * 43
    try:
        terminal.expect(b"Bootstrap token")
        terminal.type(secret)
        terminal.expect(b"cannot reach the gateway")
    finally:
        code = terminal.close()
    assert code == 1
    assert secret.encode() not in terminal.screen  # not echoed, not in the error


def test_a_healthy_pairing_is_replaced_only_when_the_person_says_so(
        lattice_home: Path, tmp_path: Path) -> None:
    with run_gateway(tmp_path / "gw") as gateway:
        key = gateway.create_key("tty")
        tokens = []
        for _ in range(2):
            runtime = create_runtime(gateway.url, key)
            tokens.append((runtime["latticeId"],
                           mint_bootstrap(gateway.url, key, runtime["latticeId"])))
        (first_id, first), (second_id, second) = tokens
        assert ctl(lattice_home, "relay", "connect", "--gateway", gateway.url,
                   "--bootstrap-token", first["bootstrapToken"], *PROVIDER).returncode == 0
        argv = [CTL, "relay", "connect", "--gateway", gateway.url,
                "--bootstrap-token", second["bootstrapToken"], *PROVIDER]
        for answer, paired_with in (("n", first_id), ("y", second_id)):
            terminal = Terminal(argv, ctl_env(lattice_home))
            try:
                terminal.expect(b"Replace it?")
                terminal.type(answer)
                terminal.expect(b"Paired" if answer == "y" else b"add --replace")
            finally:
                code = terminal.close()
            assert code == (0 if answer == "y" else 1)
            assert paired_with in home_paths(lattice_home).config_file.read_text()
