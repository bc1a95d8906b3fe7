"""The root of `lattice-ctl`: global options and lazily loaded command groups.

Command modules are imported only when their command runs, so `lattice-ctl --version`
and `lattice-ctl ping` stay fast (budgets in benchmarks/README.md).
"""

from __future__ import annotations

import importlib
import sys

import click

from lattice_protocol import __version__

# command name -> "module:attribute" (one module per command group)
COMMANDS: dict[str, str] = {
    "daemon": "lattice_ctl.commands.daemon:daemon",
    "ping": "lattice_ctl.commands.status:ping",
    "status": "lattice_ctl.commands.status:status",
    "relay": "lattice_ctl.commands.relay:relay",
    "providers": "lattice_ctl.commands.providers:providers",
    "models": "lattice_ctl.commands.models:models",
    "service": "lattice_ctl.commands.service:service",
    "doctor": "lattice_ctl.commands.doctor:doctor",
    "activity": "lattice_ctl.commands.activity:activity",
    "top": "lattice_ctl.commands.top:top",
    "pause": "lattice_ctl.commands.controls:pause",
    "resume": "lattice_ctl.commands.controls:resume",
    "limits": "lattice_ctl.commands.controls:limits",
}

_HELP = {
    "daemon": "Start, stop and inspect the local daemon.",
    "ping": "Round trip to the daemon over its control socket.",
    "status": "One-line state of this machine's runtime, and details.",
    "relay": "Pair with a gateway (connect), show or forget the pairing.",
    "providers": "Detect local model servers (Ollama, LM Studio).",
    "models": "List the provider's models and the GGUF files here; pull a GGUF model.",
    "service": "Install the daemon as a launchd/systemd user service.",
    "doctor": "Run the troubleshooting checks and print a fix for each failure.",
    "activity": "The jobs this machine ran: who asked, tokens, time; per-app totals.",
    "top": "Live view: jobs running now, tokens/s, each app's usage today.",
    "pause": "Stop taking jobs now (--for 30m: for a while); the gateway learns it at once.",
    "resume": "Take jobs again after a pause.",
    "limits": "Show or change who may use this machine, when and how much (live).",
}


def _set_json_mode(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.find_root().obj["json"] = True


def _accept_json_after_subcommand(command: click.Command) -> None:
    """Give every leaf command its own `--json` flag.

    People type `lattice-ctl status --json` (as with `tailscale status --json`) as
    often as `lattice-ctl --json status`; both must give the JSON output.
    """
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            _accept_json_after_subcommand(sub)
        if not command.invoke_without_command:  # a group that is a command itself
            return
    if any(param.name == "json_flag" for param in command.params):
        return
    command.params.append(click.Option(
        ["--json", "json_flag"], is_flag=True, expose_value=False, callback=_set_json_mode,
        help="Machine-readable output on stdout."))


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, _, attr = target.partition(":")
        command: click.Command = getattr(importlib.import_module(module_name), attr)
        _accept_json_after_subcommand(command)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Help lists every command without importing them all.
        with formatter.section("Commands"):
            formatter.write_dl([(name, _HELP.get(name, "")) for name in sorted(COMMANDS)])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="lattice-ctl",
                      message="%(prog)s %(version)s")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output on stdout.")
@click.option("--socket", "socket_path", envvar="LATTICE_SOCKET", type=click.Path(),
              help="The daemon's control socket (default: the user runtime dir).")
@click.pass_context
def cli(ctx: click.Context, as_json: bool, socket_path: str | None) -> None:
    """Control the Lattice daemon that serves this machine's personal runtime."""
    ctx.ensure_object(dict)
    ctx.obj["json"] = as_json
    ctx.obj["socket"] = socket_path


def main() -> None:
    sys.exit(cli.main(prog_name="lattice-ctl", standalone_mode=True))
