"""The spdu command group's core: the context every command shares (the
configuration, read once) and the one error boundary, where every domain
error leaves as one stderr line and its exit status (a traceback only with
--debug), and a closed pipe ends the command quietly.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import click

from spdu_cli import config, logsetup, shell
from spdu_cli.errors import ExitStatus, SpduError


@dataclass
class Context:
    config_path: str | None
    debug: bool = False
    logging: tuple = (0, False, False)  # verbose, quiet, syslog
    _site: config.Site | None = field(default=None, repr=False)
    strict: bool = False  # config check: unknown keys are its findings, not warnings

    def site(self) -> config.Site:
        if self._site is None:
            self._site = config.load(self.config_path, strict=self.strict)
            verbose, quiet, use_syslog = self.logging
            if use_syslog:  # the configured socket, now that it is known
                logsetup.setup(verbose, quiet, True, self._site.syslog_socket)
        return self._site


def _error(message: str) -> None:
    click.echo(f"spdu: error: {message}", err=True)


class SpduGroup(click.Group):
    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True,
             **extra):
        """click's own errors (a bad option...) leave as one line, like spdu's."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            status = super().main(args, prog_name, complete_var, False, **extra)
            sys.stdout.flush()  # here, not at exit: a closed pipe is then seen below
        except BrokenPipeError:
            shell.closed_pipe()
        except click.UsageError as e:
            where = shell.global_first(getattr(e, "option_name", None), "spdu",
                                       sys.argv[1:] if args is None else list(args))
            where = where or (f"; see {e.ctx.command_path} --help" if e.ctx is not None else "")
            _error(f"{e.format_message().rstrip('.')}{where}")
            sys.exit(int(ExitStatus.USAGE))
        except click.ClickException as e:
            _error(e.format_message())
            sys.exit(e.exit_code)
        except click.Abort:
            _error("aborted")
            sys.exit(1)
        sys.exit(status if isinstance(status, int) else 0)

    def make_context(self, *args, **kwargs):
        try:  # `spdu --help | head -1`: the help is written here
            return super().make_context(*args, **kwargs)
        except BrokenPipeError:
            shell.closed_pipe()

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except SpduError as e:
            if ctx.obj is not None and ctx.obj.debug:
                raise
            _error(str(e))
            ctx.exit(int(e.exit_status))
        except BrokenPipeError:  # before click's own handler, which exits 1
            shell.closed_pipe()
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except KeyboardInterrupt:
            _error("interrupted")
            ctx.exit(130)
        except Exception as e:  # a bug: say so, without a traceback in cron mail
            if ctx.obj is not None and ctx.obj.debug:
                raise
            _error(f"internal error: {type(e).__name__}: {e} (rerun with --debug and report it)")
            ctx.exit(int(ExitStatus.SOFTWARE))
