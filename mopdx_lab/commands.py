"""The lab's CLI command, ``python -m mopdx lab build|info``, registered through the plug-in.

Why the lab adds it itself: the framework's CLI must not know that a lab exists
(``mopdx.plugins.Command``); the lab decides what its command takes and prints.
"""

from __future__ import annotations

import argparse

from omegaconf import DictConfig

from mopdx.plugins import Command


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["build", "info"], help="build: run missing stages; info: print the manifest")
    p.add_argument("--force", action="store_true", help="rebuild from scratch")


def _run(args: argparse.Namespace, cfg: DictConfig) -> int:
    from mopdx_lab.info import lab_command  # imports the build (torch, transformers): only when run

    lab_command(cfg, args.action, force=args.force, progress=not args.quiet)
    return 0


COMMANDS = {"lab": Command("build the offline lab (tokenizer, Stage 1 generalist, Stage 2 specialists)", _arguments, _run)}
