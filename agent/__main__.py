"""``python -m ftlct.agent`` is ``ftl-agent``."""

from ftlct.agent.cli import main

main()
