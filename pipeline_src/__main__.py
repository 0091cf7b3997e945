import sys

from pipeline_src.cli import main

sys.exit(main())
