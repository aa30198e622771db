"""What the two binaries share on the command line: a short --help and quiet warnings.

`short_help` lists a binary's own flags, one line each (absl's --helpshort for the main
module, without its multi-line layout), after a one-line summary and an example command.
`wants_help` tells whether argv asks for it. Within `quiet_warnings()` each warning shows
once and JAX's probe of absent backends ("Unable to initialize backend 'tpu'") is hidden.

Example:
    >>> from absl import flags
    >>> fv = flags.FlagValues()
    >>> _ = flags.DEFINE_integer('steps', 3, 'Steps to run.', flag_values=fv)
    >>> print(short_help('prog', 'Runs.', 'prog --steps=5', fv, [fv['steps']]))
    prog: Runs.
    <BLANKLINE>
    example:
      prog --steps=5
    <BLANKLINE>
    flags:
      --steps=3  Steps to run.
    <BLANKLINE>
    --helpfull lists absl's flags too.
"""
import contextlib
import logging
import sys
import warnings
from typing import Iterable, Iterator, Sequence

from absl import flags

_MULTI_SUFFIX = ';\n    repeat this option to specify a list of values'
HELP_FLAGS = ('--help', '-help', '-h', '--helpshort', '-helpshort', '-?')
# Logged by JAX when it looks for accelerators that are not there: not a user problem.
_PROBE_MESSAGES = ('Unable to initialize backend', 'An NVIDIA GPU may be present')


def wants_help(argv: Sequence[str]) -> bool:
    """Whether the command line asks for the short help (--help, -h, --helpshort)."""
    return any(arg in HELP_FLAGS for arg in argv[1:])


def _default(flag: flags.Flag) -> str:
    if flag.default is None or flag.default == [] or flag.flag_type() == 'bool':
        return ''
    return f'={str(flag.default_as_str).strip(chr(39))}'


def _usage(flag: flags.Flag) -> str:
    if flag.flag_type() == 'bool':
        return f'--[no]{flag.name}' + (' (on)' if flag.default else '')
    return f'--{flag.name}{_default(flag)}'


def short_help(program: str, summary: str, example: str, flag_values: flags.FlagValues,
               own: Iterable[flags.Flag]) -> str:
    """The help text: summary, example command, then `own` flags one line each."""
    own = list(own)
    usages = [_usage(f) for f in own]
    width = max(map(len, usages), default=0)
    lines = [f'{program}: {summary}', '', 'example:', f'  {example}', '', 'flags:']
    for usage, flag in zip(usages, own):
        text = ' '.join(flag.help.replace(_MULTI_SUFFIX, '').split())
        lines.append(f'  {usage.ljust(width)}  {text}')
    lines += ['', "--helpfull lists absl's flags too."]
    return '\n'.join(lines)


def module_flags(flag_values: flags.FlagValues, *module_names: str) -> list[flags.Flag]:
    """The flags defined by any of `module_names`, in definition order, without repeats."""
    by_module = flag_values.flags_by_module_dict()
    seen, result = set(), []
    for name in module_names:
        for flag in by_module.get(name, []):
            if flag.name not in seen:
                seen.add(flag.name)
                result.append(flag)
    return result


def print_help_and_exit(text: str) -> None:
    """Writes `text` to stdout and exits 0."""
    sys.stdout.write(text + '\n')
    sys.exit(0)


class _Quiet(logging.Filter):
    """Drops JAX's backend probe messages and repeats of a warning already shown."""

    def __init__(self):
        super().__init__()
        self._shown: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any(m in message for m in _PROBE_MESSAGES):
            return False
        if record.levelno >= logging.WARNING:
            if message in self._shown:
                return False
            self._shown.add(message)
        return True


QUIET_LOGGERS = ('trax_sparse', 'trax_sparse.training', 'trax_sparse.data', 'absl', 'jax',
                 'jax._src.xla_bridge')


@contextlib.contextmanager
def quiet_warnings() -> Iterator[None]:
    """Within it: each warning shown once; JAX's backend probe messages hidden; trax_sparse's
    checkpoint warnings, which are logged, not shown a second time as a RuntimeWarning."""
    quiet = _Quiet()
    with warnings.catch_warnings():
        warnings.simplefilter('once')
        warnings.filterwarnings('ignore', message=r'checkpoint .* is unusable',
                                category=RuntimeWarning)
        for name in QUIET_LOGGERS:
            logging.getLogger(name).addFilter(quiet)
        try:
            yield
        finally:
            for name in QUIET_LOGGERS:
                logging.getLogger(name).removeFilter(quiet)


def one_line(message: str) -> str:
    """`message` with its whitespace (newlines too) collapsed into single spaces."""
    return ' '.join(str(message).split())


__all__ = ['HELP_FLAGS', 'module_flags', 'one_line', 'print_help_and_exit', 'quiet_warnings',
           'short_help', 'wants_help']
