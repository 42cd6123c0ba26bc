"""The options the ``encodeq dlq`` commands share, declared once.

The five message filters (``--task``, ``--reason``, ``--job``, ``--error-type``,
``--older-than``) are added to a command by ``@with_filters``: the command declares one
``filters: Filters`` parameter and receives them gathered, ready to become a ``Selection``. Typer
reads a command's options from its signature, so the decorator puts the five in that signature
where ``filters`` stood.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Annotated, Any, TypeVar

import typer

from dlq_inspector.filters import Selection, parse_duration
from dlq_inspector.operations import INSPECTED_QUEUES


def inspected_queue(name: str) -> str:
    if name not in INSPECTED_QUEUES:
        allowed = " and ".join(INSPECTED_QUEUES)
        raise typer.BadParameter(f"{name!r}: the inspector works on {allowed}")
    return name


JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
QueueOpt = Annotated[
    str,
    typer.Option("--queue", help="encodeq.dlq or encodeq.dlq.parked.", callback=inspected_queue),
]
IdsArg = Annotated[list[str] | None, typer.Argument(help="Message ids from `list`.")]
AllOpt = Annotated[bool, typer.Option("--all", help="Every message in the queue.")]


@dataclass(frozen=True)
class Filters:
    """What ``list`` filters by; every command that picks messages takes the same five."""

    task: Annotated[str | None, typer.Option("--task", help="Task name (glob).")] = None
    reason: Annotated[
        str | None, typer.Option("--reason", help="rejected, delivery_limit, expired...")
    ] = None
    job: Annotated[str | None, typer.Option("--job", help="Job id.")] = None
    error_type: Annotated[
        str | None, typer.Option("--error-type", help="Exception type or error code.")
    ] = None
    older_than: Annotated[
        str | None,
        typer.Option("--older-than", help="Died longer ago than this: 30s, 10m, 2h, 1d."),
    ] = None

    def selection(self, ids: list[str] | None = None, everything: bool = False) -> Selection:
        """The ``Selection`` these filters (and ids, or ``--all``) make; ValueError for a
        duration that does not parse."""
        return Selection(
            ids=set(ids or []),
            everything=everything,
            task=self.task,
            reason=self.reason,
            job=self.job,
            error_type=self.error_type,
            older_than=parse_duration(self.older_than) if self.older_than else None,
        )


Command = TypeVar("Command", bound=Callable[..., Any])
#: The filter options as keyword parameters, annotations evaluated (Typer reads them from here).
_FILTER_PARAMETERS = [
    inspect.Parameter(
        f.name,
        inspect.Parameter.KEYWORD_ONLY,
        default=f.default,
        annotation=inspect.get_annotations(Filters, eval_str=True)[f.name],
    )
    for f in fields(Filters)
]


def with_filters(command: Command) -> Command:
    """Give ``command`` the filter options in place of its ``filters: Filters`` parameter."""
    signature = inspect.signature(command, eval_str=True)
    names = [p.name for p in _FILTER_PARAMETERS]
    parameters: list[inspect.Parameter] = []
    for parameter in signature.parameters.values():
        if parameter.name == "filters":
            parameters += _FILTER_PARAMETERS
        else:
            parameters.append(parameter.replace(kind=inspect.Parameter.KEYWORD_ONLY))

    @functools.wraps(command)
    def wrapper(**options: Any) -> Any:
        filters = Filters(**{name: options.pop(name) for name in names})
        return command(filters=filters, **options)

    wrapper.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
    return wrapper  # type: ignore[return-value]
