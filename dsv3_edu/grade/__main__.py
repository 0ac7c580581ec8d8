"""Command line of the autograder: ``python -m dsv3_edu.grade --help``."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

COMMANDS = ("grade", "generate", "nbgrader-course", "refresh", "clean")


def _shown(path: str) -> str:
    """A path relative to the current folder when it is below it (shorter, and no machine paths)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return path


def _grade(args) -> int:
    from .grader import grade_notebook

    print(f"grading {args.notebook} in a fresh kernel ({args.timeout:g} s per cell) ...", flush=True)
    report = grade_notebook(args.notebook, source=args.source, timeout=args.timeout)
    print(f"tests from {_shown(report.source)}, {report.seconds:.1f} s\n")
    print(report.table())
    details = report.details()
    if details:
        print("\n" + details)
    if args.save:
        import nbformat
        nbformat.write(report.executed, args.save)
        print(f"\nthe notebook as graded, with outputs: {args.save}")
    return 0  # a graded run is a report, whatever the score


def _generate(args) -> int:
    from .generate import check_exercises, generate_exercises

    if args.check:
        problems = check_exercises(args.solutions, args.exercises)
        for p in problems:
            print(p)
        if problems:
            print("exercises/ is out of sync: run `python -m dsv3_edu.grade generate`", file=sys.stderr)
            return 1
        print("exercises/ is in sync with solutions/")
        return 0
    changed = generate_exercises(args.solutions, args.exercises)
    for p in changed:
        print(f"wrote {p}")
    if not changed:
        print("exercises/ already up to date")
    return 0


def _course(args) -> int:
    from .course import make_nbgrader_course

    names = make_nbgrader_course(args.dir, args.solutions, course_id=args.course_id)
    print(f"nbgrader course in {args.dir}: assignments {', '.join(names)}")
    print(f"next: cd {args.dir} && nbgrader generate_assignment {names[0]}   (see docs/exercises.md)")
    return 0


def _refresh(args) -> int:
    from .execute import refresh_notebooks

    done = refresh_notebooks(fast=args.fast, only=args.only)
    if not done:
        print(f"no notebook matches {args.only!r}" if args.only else "no notebooks found", file=sys.stderr)
        return 1
    print(f"refreshed {len(done)} notebook(s) in {sum(s for _, s in done):.0f} s")
    return 0


def _clean(args) -> int:
    from .clean import clean_file, committed_notebooks, notebook_problems

    targets = ([(Path(p), "exercises" not in Path(p).parts) for p in args.paths] if args.paths
               else committed_notebooks())
    for p, _ in targets:
        if not p.is_file():
            raise ValueError(f"no such notebook: {p}")
    if args.check:
        bad = 0
        for p, allow_outputs in targets:
            for problem in notebook_problems(p, allow_outputs=allow_outputs):
                print(f"{p}: {problem}")
                bad += 1
        return 1 if bad else 0
    for p, _ in targets:
        if clean_file(p):
            print(f"cleaned {p}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dsv3_edu.grade",
        description="Exercises and grading for dsv3-edu. `python -m dsv3_edu.grade NOTEBOOK` grades a notebook.")
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("grade", help="grade an exercise notebook (the default command)")
    g.add_argument("notebook", help="your notebook, e.g. exercises/02_mla.ipynb")
    g.add_argument("--source", help="the solutions/ notebook with the tests (default: found by name)")
    g.add_argument("--timeout", type=float, default=60.0, help="seconds per cell (default 60)")
    g.add_argument("--save", help="also write the graded notebook, with outputs and tracebacks, to this file")
    g.set_defaults(run=_grade)

    g = sub.add_parser("generate", help="write exercises/ from solutions/ (or --check that they agree)")
    g.add_argument("--check", action="store_true", help="only check; exit 1 if exercises/ is out of sync")
    g.add_argument("--solutions", help="folder of sources (default: solutions/ of this checkout)")
    g.add_argument("--exercises", help="output folder (default: exercises/ of this checkout)")
    g.set_defaults(run=_generate)

    g = sub.add_parser("nbgrader-course", help="lay out an nbgrader course folder (config + source/) from solutions/")
    g.add_argument("dir", help="the course folder to create or update")
    g.add_argument("--solutions", help="folder of sources (default: solutions/ of this checkout)")
    g.add_argument("--course-id", default="dsv3-edu")
    g.set_defaults(run=_course)

    g = sub.add_parser("refresh", help="re-execute notebooks/ and solutions/ to refresh outputs, then clean them")
    g.add_argument("--fast", action="store_true", help="DSV3_FAST=1 (small sizes; for a quick look, not to commit)")
    g.add_argument("--only", metavar="PATTERN", help="glob on the name or repo path, e.g. '02_*' or 'solutions/*'")
    g.set_defaults(run=_refresh)

    g = sub.add_parser("clean", help="strip widget state, timing metadata and absolute paths from notebooks")
    g.add_argument("paths", nargs="*", help="notebooks (default: notebooks/, solutions/, exercises/)")
    g.add_argument("--check", action="store_true", help="report problems instead of fixing; exit 1 if any")
    g.set_defaults(run=_clean)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in COMMANDS and not argv[0].startswith("-"):
        argv.insert(0, "grade")  # python -m dsv3_edu.grade NOTEBOOK
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
