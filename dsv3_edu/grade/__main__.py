"""Command line of the autograder: ``python -m dsv3_edu.grade --help``."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

COMMANDS = ("grade", "generate", "nbgrader-course", "autograde", "refresh", "clean")


def _shown(path: str) -> str:
    """A path relative to the current folder when it is below it (shorter, and no machine paths)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return path


def _grade(args) -> int:
    from .cells import resolve_notebook
    from .grader import grade_notebook

    path = resolve_notebook(args.notebook)
    print(f"grading {_shown(str(path))} ({args.timeout:g} s per cell) ...", flush=True)
    report = grade_notebook(path, source=args.source, timeout=args.timeout, log=print)
    print(f"tests from {_shown(report.source)}, {report.seconds:.1f} s, {report.sandbox}\n")
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
    changed = generate_exercises(args.solutions, args.exercises, force=args.force, log=print)
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


def _autograde(args) -> int:
    from .course import autograde_course

    rows = autograde_course(args.dir, args.assignment, students=args.student, timeout=args.timeout, log=print)
    for student, outcome in rows:
        print(f"{student:<20} {outcome}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dsv3_edu.grade",
        description="Exercises and grading for dsv3-edu. `python -m dsv3_edu.grade NOTEBOOK` grades a notebook "
                    "(the `grade` command). Learner code runs in a sandboxed worker; see docs/exercises.md.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    g = sub.add_parser("grade", help="grade an exercise notebook (the default command)",
                       description="Grade an exercise notebook: your cells run in a sandbox, the course's tests "
                                   "(hidden ones too) check the results. Prints a score table.")
    g.add_argument("notebook", help="your notebook: a path, or a bare file name such as 02_mla.ipynb, found in "
                                    "exercises/ from any folder")
    g.add_argument("--source", help="the solutions/ notebook with the tests (default: found from the notebook's "
                                    "metadata or name); must be in the course's solutions/ folder")
    g.add_argument("--timeout", type=float, default=60.0,
                   help="seconds each cell may run (default 60; the locked setup cells get at least 300)")
    g.add_argument("--save", metavar="FILE",
                   help="also write the notebook as graded, with what each cell printed and each test's verdict")
    g.set_defaults(run=_grade)

    g = sub.add_parser("generate", help="write exercises/ (and the test fixtures) from solutions/",
                       description="Write exercises/ from solutions/ with nbgrader's preprocessors, and record the "
                                   "probes (test inputs, the solution's gradients) in solutions/fixtures/.")
    g.add_argument("--check", action="store_true",
                   help="only check that exercises/ and existing fixtures match solutions/; exit 1 if not")
    g.add_argument("--force", action="store_true",
                   help="overwrite exercises you have worked in (outputs or code in solution cells), and "
                        "re-record every fixture")
    g.add_argument("--solutions", help="folder of sources (default: solutions/ of this checkout)")
    g.add_argument("--exercises", help="output folder (default: exercises/ of this checkout)")
    g.set_defaults(run=_generate)

    g = sub.add_parser("nbgrader-course", help="lay out an nbgrader course folder (config + source/) from solutions/",
                       description="Lay out an nbgrader course folder from solutions/: nbgrader_config.py and "
                                   "source/<assignment>/<assignment>.ipynb.")
    g.add_argument("dir", help="the course folder to create or update (gradebook and submissions are kept)")
    g.add_argument("--solutions", help="folder of sources (default: solutions/ of this checkout)")
    g.add_argument("--course-id", default="dsv3-edu", help="nbgrader course id (default dsv3-edu)")
    g.set_defaults(run=_course)

    g = sub.add_parser("autograde", help="classroom: grade submissions with the sandboxed grader into gradebook.db",
                       description="Grade DIR/submitted/<student>/<assignment>/<assignment>.ipynb with the sandboxed "
                                   "grader (instead of `nbgrader autograde`, which runs student code with the "
                                   "instructor's rights) and record the scores in DIR/gradebook.db.")
    g.add_argument("dir", help="the nbgrader course folder (made by nbgrader-course)")
    g.add_argument("assignment", help="assignment name, e.g. 02_mla")
    g.add_argument("--student", action="append",
                   help="grade only this student (repeat for several; default: every submission)")
    g.add_argument("--timeout", type=float, default=60.0, help="seconds each cell may run (default 60, as `grade`)")
    g.set_defaults(run=_autograde)

    g = sub.add_parser("refresh", help="re-execute notebooks/ and solutions/ to refresh outputs, then clean them",
                       description="Re-execute notebooks/ and solutions/ in place (full mode), then clean them.")
    g.add_argument("--fast", action="store_true", help="DSV3_FAST=1 (small sizes; for a quick look, not to commit)")
    g.add_argument("--only", metavar="PATTERN", help="glob on the name or repo path, e.g. '02_*' or 'solutions/*'")
    g.set_defaults(run=_refresh)

    g = sub.add_parser("clean", help="strip widget state, timing metadata and absolute paths from notebooks",
                       description="Strip widget state, timing metadata and absolute paths from notebooks, in place.")
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
