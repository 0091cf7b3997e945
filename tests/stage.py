"""Run one stage as the CLI parses it, but let its errors propagate (the CLI would print a user error as one
`error:` line and exit 2; tests/test_bad_inputs.py checks that path). For tests that assert the error itself."""
from pipeline_src.cli import STAGES, build_parser


def run_stage(argv: list[str]) -> int:
    args = build_parser({argv[0]: STAGES[argv[0]]}).parse_args([str(a) for a in argv])
    return int(args._run(args) or 0)
