import sys

from pipeline_src.malloc_tuning import reexec_with_tunables

reexec_with_tunables()  # first: glibc reads its malloc settings only at process start (malloc_tuning.py)

from pipeline_src.cli import main  # noqa: E402

sys.exit(main())
