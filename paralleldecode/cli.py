"""The ``paralleldecode`` command: a LightningCLI (``fit``, ``validate``, ``test``, ``predict``).

Model and data are chosen by ``class_path`` (any LightningModule / LightningDataModule
subclass), so ``configs/*.yaml`` pick e.g. ``lightning_modules.StrategyModule`` and
``datamodules.QAGroupsDataModule``. Models load in ``configure_model``, so ``--help`` and
config errors answer without touching weights.

What a user reads when something is wrong: the package's own errors
(:class:`~paralleldecode.errors.UserError`: data, options, strategies, model not found,
context window, checkpoints) and LightningCLI's config errors print one line,
``paralleldecode: error: <message>``, and exit with status 2; the traceback is shown only
with ``PARALLELDECODE_DEBUG=1``. Before Lightning is even imported (it takes seconds),
:mod:`paralleldecode.config_check` checks the options it can read from the config files and
the command line, so most config errors answer at once. A run stopped by SIGTERM stops
between two units of work and exits with status 143 after saying where its finished work is.
"""

from __future__ import annotations

import os
import re
import signal
import sys

EXIT_USAGE = 2
SIGTERM_STATUS = 128 + signal.SIGTERM  # the status of a process ended by SIGTERM


def main() -> None:
    """Entry point of the ``paralleldecode`` console script."""
    args = sys.argv[1:]
    debug = os.environ.get("PARALLELDECODE_DEBUG") == "1"
    try:
        from paralleldecode.config_check import check_command_line

        check_command_line(args)
        build_cli(None, exit_on_error=False)  # None: LightningCLI reads sys.argv itself
    except SystemExit as stop:
        # Lightning stops a fit on SIGTERM with a SystemExit of status 0 (and a checkpoint of
        # ours); a scheduler must see that the job did not finish.
        if type(stop).__name__ == "SIGTERMException" and not stop.code:
            sys.exit(SIGTERM_STATUS)
        raise
    except Exception as err:  # noqa: BLE001 - every way out gets one readable line
        message = user_message(err)
        if message is None or debug:
            raise
        print(f"paralleldecode: error: {message}", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def build_cli(args: list[str] | None = None, run: bool = True, exit_on_error: bool = True):
    """The ``LightningCLI``; ``args`` and ``run`` as in ``LightningCLI`` (tests pass both);
    ``exit_on_error=False`` raises config errors instead of printing usage and exiting."""
    # Quiet, offline-friendly defaults a user can still override from the environment.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from paralleldecode.quiet import quiet_libraries

    quiet_libraries()
    from lightning.pytorch import LightningDataModule, LightningModule
    from lightning.pytorch.cli import LightningCLI

    class CLI(LightningCLI):
        def before_fit(self) -> None:
            # `--ckpt_path last` is resolved before a module's own callbacks are attached,
            # so Lightning would not find the module's resumable checkpoint: name it here.
            config = self.config_init[self.subcommand]
            if config.get("ckpt_path") == "last" and hasattr(self.model, "last_checkpoint"):
                found = self.model.last_checkpoint(self.trainer)
                if found is not None:
                    config["ckpt_path"] = str(found)

    return CLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=args,
        run=run,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
        parser_kwargs={"exit_on_error": exit_on_error},
    )


def user_message(err: BaseException) -> str | None:
    """One line for an error a user caused (ours, or a config error LightningCLI found),
    or None for anything else (a bug, which keeps its traceback)."""
    from paralleldecode.errors import UserError

    chain = _chain(err)
    for e in chain:
        if isinstance(e, UserError):
            return _one_line(str(e))
    if not any(type(e).__module__.startswith(("jsonargparse", "argparse")) or
               type(e).__name__ in ("ArgumentError", "NSKeyError") for e in chain):
        return None
    return _config_message(chain)


def _chain(err: BaseException) -> list[BaseException]:
    seen, out = set(), []
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        out.append(err)
        err = err.__cause__ or err.__context__
    return out


_KEY = re.compile(r'Parser key "([^"]+)"')
_NOISE = ("Given value type:", "Given value:", "Subtypes:", "Does not validate against", "Errors:",
          "- Expected a <class 'NoneType'>")


def _config_message(chain: list[BaseException]) -> str:
    """jsonargparse nests a config error in layers of context (and dumps the whole parsed
    namespace); keep the option's dotted name and the innermost explanation."""
    text = str(chain[0])
    keys = _KEY.findall(text)
    lines = [ln.strip() for ln in text.splitlines()]
    useful = [ln for ln in lines if ln and not ln.startswith(_NOISE) and not _KEY.match(ln)]
    useful = [re.sub(r"^- ", "", ln) for ln in useful]
    useful = [ln for ln in useful if not ln.startswith("Problem with given class_path")] or useful
    where = ".".join(_dotted(keys))
    innermost = str(chain[-1]).strip().splitlines()[-1] if str(chain[-1]).strip() else ""
    detail = innermost if innermost and not innermost.startswith(_NOISE) else (useful[-1] if useful else text)
    detail = re.sub(r"<class '([\w.]+)'>", r"\1", detail)
    return _one_line(f"{where}: {detail}" if where and where not in detail else detail)


def _dotted(keys: list[str]) -> list[str]:
    # "model" then "temperature" is the user's --model.init_args.temperature.
    out = []
    for i, k in enumerate(keys):
        out.append(k)
        if i == 0 and k in ("model", "data") and len(keys) > 1:
            out.append("init_args")
    return out


def _one_line(text: str) -> str:
    return " ".join(text.split())


if __name__ == "__main__":
    main()
