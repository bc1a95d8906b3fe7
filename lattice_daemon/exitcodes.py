"""`lattice-daemon` exit codes: what each tells the service manager (docs/operations.md).

Re-pair required is deliberately *not* an exit: the daemon stays up, idle, and reports
"re-pair required" on its control socket until a new pairing is loaded.
"""

OK = 0  # stopped on request (SIGTERM, `lattice-ctl daemon stop`): do not restart
FAILURE = 1  # unexpected failure: restart me (systemd Restart=on-failure, launchd KeepAlive)
USAGE = 2  # bad command line: restarting will not help
ALREADY_RUNNING = 73  # another daemon holds this config's lock: do not restart
CONFIG = 78  # config or key unreadable/invalid (EX_CONFIG): do not restart; run doctor
