"""``encodeq learn [NAME] [--json] [--seed N] [--knob NAME=VALUE]``: the lessons, in the terminal.

No name lists them; a name runs one in a scratch space of its own (console/learn/scratch.py),
narrated step by step, and ends with the verdict computed from the broker's counters, what to
keep, and where the real system does the same. ``--json`` prints only the outcome. Exit codes: 0
the verdict is pass, 1 fail, 2 the lesson could not run (unknown name, no broker, an error).
"""

from __future__ import annotations

import random
import signal
from typing import Annotated

import typer
from rich.table import Table

from console.demo.stack import sigterm_as_interrupt
from console.learn.catalog import SCENARIOS, find
from console.learn.lesson import Counter, Narrator, Outcome, Scenario, SilentNarrator
from console.learn.narration import RichNarrator
from console.learn.scratch import ScratchError, run_scenario
from console.terminal import err, fail, out, print_json


def parse_knob(text: str) -> tuple[str, Counter]:
    """``late_ack=false`` -> ("late_ack", False); numbers as numbers, the rest as text."""
    name, sep, raw = text.partition("=")
    if not sep or not name:
        fail(f"--knob {text!r}: expected NAME=VALUE, e.g. late_ack=false")
    lowered = raw.strip().lower()
    if lowered in ("true", "yes", "on", "false", "no", "off"):
        return name.strip(), lowered in ("true", "yes", "on")
    for kind in (int, float):
        try:
            return name.strip(), kind(raw)
        except ValueError:
            pass
    return name.strip(), raw


def list_lessons(as_json: bool) -> None:
    if as_json:
        print_json(
            {
                "scenarios": [
                    {"name": s.name, "title": s.title, "summary": s.summary, "knobs": dict(s.knobs)}
                    for s in SCENARIOS
                ]
            }
        )
        return
    table = Table("name", "title", "summary", title="encodeq learn NAME", title_justify="left")
    for s in SCENARIOS:
        table.add_row(s.name, s.title, s.summary)
    out.print(table)


def run_lesson(
    scenario: Scenario, narrator: Narrator, seed: int, knobs: dict[str, Counter]
) -> Outcome:
    """The outcome, or exit 2 with a sentence (never a traceback) when the lesson cannot run."""
    previous = sigterm_as_interrupt()  # a SIGTERM unwinds too: workers stopped, vhost deleted
    try:
        return run_scenario(scenario, narrator, seed, knobs)
    except KeyboardInterrupt:
        err.print("interrupted: everything the lesson started is stopped")
        raise typer.Exit(130) from None
    except (ScratchError, ValueError) as exc:
        fail(str(exc))
    except Exception as exc:
        notes = "".join(f"\n{note}" for note in getattr(exc, "__notes__", []))
        fail(f"the lesson {scenario.name} could not run: {type(exc).__name__}: {exc}{notes}")
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def learn(
    name: Annotated[
        str | None, typer.Argument(metavar="[NAME]", help="The lesson to run; none: list them.")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print only the outcome (or the list) as JSON.")
    ] = False,
    seed: Annotated[
        int | None,
        typer.Option(help="Seed of the lesson's random choices (printed; default random)."),
    ] = None,
    knob: Annotated[
        list[str] | None,
        typer.Option(help="NAME=VALUE: break a mechanism on purpose, e.g. late_ack=false."),
    ] = None,
) -> None:
    """Learn message-queue ideas by running them against the real broker: each lesson's verdict
    is computed from what RabbitMQ and S3 report."""
    if name is None:
        list_lessons(as_json)
        return
    scenario = find(name)
    if scenario is None:
        fail(f"no lesson {name!r}; the lessons are: {', '.join(s.name for s in SCENARIOS)}")
    seed = seed if seed is not None else random.SystemRandom().randrange(2**31)
    knobs = dict(parse_knob(k) for k in knob or [])
    if as_json:
        err.print(f"seed {seed}", highlight=False)
        outcome = run_lesson(scenario, SilentNarrator(), seed, knobs)
        print_json(
            {
                "scenario": scenario.name,
                "verdict": outcome.verdict,
                "counters": outcome.counters,
                "lesson": outcome.lesson,
                "see": outcome.see,
            }
        )
    else:
        narrator = RichNarrator(out)
        out.rule(f"[bold]{scenario.title}")
        narrator.step(f"seed {seed} (--seed {seed} repeats this run's choices)")
        outcome = run_lesson(scenario, narrator, seed, knobs)
        narrator.table("the counters the verdict is computed from", {"value": outcome.counters})
        narrator.ending(outcome)
    raise typer.Exit(0 if outcome.passed else 1)
